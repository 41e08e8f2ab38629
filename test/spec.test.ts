import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { type HybridboxError, ImageNotFoundError, NameConflictError, SpecError } from '../src/errors.js';
import { parseCpus, parseDuration, parseSize, parseSpecText, specFromFlags, validateForHost, validateSpec, type CliRunFlags, type HostContext } from '../src/spec/index.js';

const IMAGES = ['alpine:3.20', 'busybox:latest'];
const withTag = (ref: string) => (ref.includes(':') ? ref : `${ref}:latest`);
const host: HostContext = {
  hostCpus: 4,
  hostMemoryMiB: 8192,
  imageExists: (ref) => IMAGES.includes(withTag(ref)),
  knownImages: () => IMAGES,
  nameTaken: (name) => (name === 'web' ? 'sb-7f3a9c' : null),
  pathExists: (p) => ['/srv/data', '/srv/logs', '/tmp'].includes(p),
  isBlockDevice: (p) => p === '/dev/vda',
};

type Input = { spec: unknown } | { yaml: string } | { flags: CliRunFlags; args?: string[] };

/** The whole path a request takes: source → unvalidated spec → validateSpec → validateForHost. */
function run(input: Input) {
  let raw: unknown;
  if ('spec' in input) raw = input.spec;
  else if ('yaml' in input) raw = parseSpecText(input.yaml, 'spec.yaml');
  else {
    const [image, ...command] = input.args ?? ['busybox'];
    raw = specFromFlags(input.flags, { image, command });
  }
  return validateForHost(validateSpec(raw), host);
}

interface Row {
  title: string;
  input: Input;
  /** the field the message must name */
  field: string;
  /** the offending value as it must appear in the message */
  bad: string;
  error?: abstract new (...args: never[]) => HybridboxError;
}

const spec = (extra: object) => ({ spec: { image: 'busybox', ...extra } });
const volume = (hostPath: unknown, guestPath: unknown, extra: object = {}) => spec({ volumes: [{ hostPath, guestPath, ...extra }] });

const rows: Row[] = [
  // resource limits
  { title: 'negative memory', input: spec({ resources: { memoryMiB: -5 } }), field: 'resources.memoryMiB', bad: '-5' },
  { title: 'zero memory flag', input: { flags: { memory: '0' } }, field: 'resources.memoryMiB', bad: '0' },
  { title: 'NaN memory', input: spec({ resources: { memoryMiB: NaN } }), field: 'resources.memoryMiB', bad: 'NaN' },
  { title: '10 TiB of memory', input: { flags: { memory: '10t' } }, field: 'resources.memoryMiB', bad: '10485760' },
  { title: 'Infinity cpus', input: spec({ resources: { cpus: Infinity } }), field: 'resources.cpus', bad: 'Infinity' },
  { title: '5000 cpus', input: { flags: { cpus: '5000' } }, field: 'resources.cpus', bad: '5000' },
  { title: 'zero cpus', input: { flags: { cpus: '0' } }, field: 'resources.cpus', bad: '0' },
  { title: 'negative cpus flag', input: { flags: { cpus: '-1' } }, field: '--cpus', bad: '"-1"' },
  { title: 'NaN cpus flag', input: { flags: { cpus: 'NaN' } }, field: '--cpus', bad: '"NaN"' },
  { title: 'fractional pids', input: { flags: { pids: '1.5' } }, field: 'resources.pids', bad: '1.5' },
  { title: 'zero pids in YAML', input: { yaml: 'image: busybox\nresources:\n  pids: 0\n' }, field: 'resources.pids', bad: '0' },
  { title: 'ioWeight out of range', input: spec({ resources: { ioWeight: 5000 } }), field: 'resources.ioWeight', bad: '5000' },
  // the limits a judge sets
  { title: 'CPU time below 10 ms', input: { flags: { cpuTime: '5ms' } }, field: 'resources.cpuTimeMs', bad: '5' },
  { title: 'CPU time as a word', input: { flags: { cpuTime: 'forever' } }, field: '--cpu-time', bad: '"forever"' },
  { title: 'fractional CPU time in a spec', input: spec({ resources: { cpuTimeMs: 1.5 } }), field: 'resources.cpuTimeMs', bad: '1.5' },
  { title: 'zero file size', input: spec({ resources: { fileSizeBytes: 0 } }), field: 'resources.fileSizeBytes', bad: '0' },
  { title: 'negative file size flag', input: { flags: { fileSize: '-1m' } }, field: '--file-size', bad: '"-1m"' },
  { title: 'two open files', input: { flags: { openFiles: '2' } }, field: 'resources.openFiles', bad: '2' },
  { title: 'open files above fs.nr_open', input: spec({ resources: { openFiles: 2_000_000 } }), field: 'resources.openFiles', bad: '2000000' },
  { title: 'tmpfs size as a word', input: { flags: { tmpfsSize: 'lots' } }, field: '--tmpfs-size', bad: '"lots"' },
  { title: 'zero tmpfs', input: spec({ resources: { tmpfsMiB: 0 } }), field: 'resources.tmpfsMiB', bad: '0' },
  { title: 'zero output limit', input: { flags: { outputLimit: '0' } }, field: 'outputLimitBytes', bad: '0' },
  { title: 'output limit as a string', input: spec({ outputLimitBytes: '1m' }), field: 'outputLimitBytes', bad: '"1m"' },
  { title: 'readOnlyRoot as a string', input: { yaml: 'image: busybox\nreadOnlyRoot: "yes"\n' }, field: 'readOnlyRoot', bad: '"yes"' },
  { title: 'cpus above host', input: { flags: { cpus: '8' } }, field: 'resources.cpus', bad: '8' },
  { title: 'memory above host', input: { flags: { memory: '16g' } }, field: 'resources.memoryMiB', bad: '16384' },
  // disk and network limits
  { title: 'negative write bps', input: { flags: { deviceWriteBps: ['-1'] } }, field: '--device-write-bps', bad: '"-1"' },
  { title: 'write bps unit 10xb', input: { flags: { deviceWriteBps: ['10xb'] } }, field: '--device-write-bps', bad: '"10xb"' },
  { title: 'write bps on a device that does not exist', input: { flags: { deviceWriteBps: ['/dev/nonexistent:1m'] } }, field: 'resources.deviceWriteBps[0].path', bad: '"/dev/nonexistent"' },
  { title: 'read bps on a path outside /dev', input: { flags: { deviceReadBps: ['/etc/passwd:1m'] } }, field: '--device-read-bps', bad: '"/etc/passwd:1m"' },
  { title: 'fractional iops', input: { flags: { deviceReadIops: ['1.5'] } }, field: 'resources.deviceReadIops[0].rate', bad: '1.5' },
  { title: 'zero iops', input: { flags: { deviceWriteIops: ['/dev/vda:0'] } }, field: 'resources.deviceWriteIops[0].rate', bad: '0' },
  { title: 'two rates for one device', input: { flags: { deviceWriteBps: ['/dev/vda:1m', '/dev/vda:2m'] } }, field: 'resources.deviceWriteBps[1].path', bad: '"/dev/vda"' },
  { title: 'two rates for the writable layer', input: { flags: { deviceReadBps: ['1m', '2m'] } }, field: 'resources.deviceReadBps[1]', bad: '2097152' },
  { title: '.. in a device path', input: spec({ resources: { deviceReadBps: [{ path: '/dev/../etc', rate: 1 }] } }), field: 'resources.deviceReadBps[0].path', bad: '"/dev/../etc"' },
  { title: 'device limit as a number in YAML', input: { yaml: 'image: busybox\nresources:\n  deviceWriteBps: 1000\n' }, field: 'resources.deviceWriteBps', bad: '1000' },
  { title: 'net rate without a unit', input: { flags: { netRate: '10', network: 'bridge' } }, field: '--net-rate', bad: '"10"' },
  { title: 'negative net rate', input: { flags: { netRate: '-5mbit', network: 'bridge' } }, field: '--net-rate', bad: '"-5mbit"' },
  { title: 'net rate in kbps (bytes, in tc)', input: { flags: { netRate: '10kbps', network: 'bridge' } }, field: '--net-rate', bad: '"10kbps"' },
  { title: 'net rate below 8 kbit', input: { flags: { netRate: '1kbit', network: 'bridge' } }, field: 'resources.netRateKbit', bad: '1' },
  { title: 'net rate without a bridge', input: { flags: { netRate: '10mbit' } }, field: 'resources.netRateKbit', bad: '10000' },
  // enums
  { title: 'unknown isolation', input: { flags: { isolation: 'kvm' } }, field: 'isolation', bad: '"kvm"' },
  { title: 'unknown network', input: { yaml: 'image: busybox\nnetwork: host\n' }, field: 'network', bad: '"host"' },
  { title: 'unknown trust', input: spec({ trust: 'maybe' }), field: 'trust', bad: '"maybe"' },
  // volumes
  { title: 'relative hostPath', input: { flags: { volume: ['data:/data'] } }, field: 'volumes[0].hostPath', bad: '"data"' },
  { title: 'relative guestPath', input: { yaml: 'image: busybox\nvolumes:\n  - { hostPath: /srv/data, guestPath: data }\n' }, field: 'volumes[0].guestPath', bad: '"data"' },
  { title: 'volume onto /proc', input: { flags: { volume: ['/srv/data:/proc'] } }, field: 'volumes[0].guestPath', bad: '"/proc"' },
  { title: 'volume under /proc', input: volume('/srv/data', '/proc/x'), field: 'volumes[0].guestPath', bad: '"/proc/x"' },
  { title: 'volume onto /', input: volume('/srv/data', '/'), field: 'volumes[0].guestPath', bad: '"/"' },
  { title: 'volume under /.hbx', input: volume('/srv/data', '/.hbx/state'), field: 'volumes[0].guestPath', bad: '"/.hbx/state"' },
  { title: 'duplicate guest paths', input: { flags: { volume: ['/srv/data:/data', '/srv/logs:/data/'] } }, field: 'volumes[1].guestPath', bad: '"/data/"' },
  { title: '.. in hostPath', input: volume('/srv/data/../../etc', '/data'), field: 'volumes[0].hostPath', bad: '"/srv/data/../../etc"' },
  { title: '.. in workdir', input: spec({ workdir: '/app/..' }), field: 'workdir', bad: '"/app/.."' },
  { title: 'readOnly as a string', input: volume('/srv/data', '/data', { readOnly: 'yes' }), field: 'volumes[0].readOnly', bad: '"yes"' },
  { title: 'volumes as a string', input: { yaml: 'image: busybox\nvolumes: /srv/data:/data\n' }, field: 'volumes', bad: '"/srv/data:/data"' },
  { title: 'bad volume flag mode', input: { flags: { volume: ['/srv/data:/data:rx'] } }, field: '--volume', bad: '"/srv/data:/data:rx"' },
  { title: 'non-existent host path', input: { flags: { volume: ['/nope:/data'] } }, field: 'volumes[0].hostPath', bad: '"/nope"' },
  // image, command, name, user, workdir
  { title: 'unknown image', input: { spec: { image: 'nginx' } }, field: 'image', bad: '"nginx"', error: ImageNotFoundError },
  { title: 'image with whitespace', input: { flags: {}, args: ['busy box'] }, field: 'image', bad: '"busy box"' },
  { title: 'missing image', input: { flags: {}, args: [] }, field: 'image', bad: 'a missing value' },
  { title: 'empty command array', input: { yaml: 'image: busybox\ncommand: []\n' }, field: 'command', bad: '[]' },
  { title: 'empty first argument', input: { flags: {}, args: ['busybox', '', '-c', 'true'] }, field: 'command[0]', bad: '""' },
  { title: 'duplicate name', input: { flags: { name: 'web' } }, field: 'name', bad: '"web"', error: NameConflictError },
  { title: 'bad name characters', input: { flags: { name: 'my box!' } }, field: 'name', bad: '"my box!"' },
  { title: 'bad user format', input: { yaml: 'image: busybox\nuser: "root:wheel:x"\n' }, field: 'user', bad: '"root:wheel:x"' },
  { title: 'relative workdir', input: { flags: { workdir: 'app' } }, field: 'workdir', bad: '"app"' },
  // YAML shape and types
  { title: 'unknown YAML key', input: { yaml: 'image: busybox\nbogus: 1\n' }, field: 'bogus', bad: 'unknown key "bogus"' },
  { title: 'unknown nested key', input: { yaml: 'image: busybox\nresources:\n  memory: 512\n' }, field: 'resources.memory', bad: 'unknown key "memory"' },
  { title: 'string memory in YAML', input: { yaml: 'image: busybox\nresources:\n  memoryMiB: 512M\n' }, field: 'resources.memoryMiB', bad: '"512M"' },
  { title: 'number image in YAML', input: { yaml: 'image: 42\n' }, field: 'image', bad: '42' },
  { title: 'boolean env value in YAML', input: { yaml: 'image: busybox\nenv:\n  DEBUG: true\n' }, field: 'env.DEBUG', bad: 'true' },
  { title: 'YAML list at top level', input: { yaml: '- busybox\n' }, field: '--file', bad: '"spec.yaml"' },
  { title: 'YAML duplicate keys', input: { yaml: 'image: busybox\nimage: alpine\n' }, field: '--file', bad: 'Map keys must be unique' },
  { title: 'missing spec file', input: { flags: { file: '/nonexistent/spec.yaml' } }, field: '--file', bad: '"/nonexistent/spec.yaml"' },
  // env
  { title: 'bad env key', input: { flags: { env: ['1BAD=x'] } }, field: 'env', bad: '"1BAD"' },
  { title: "env flag without '='", input: { flags: { env: ['FOO'] } }, field: '--env', bad: '"FOO"' },
  // what no backend can carry (NUL, control characters in paths, lone surrogates, PATH_MAX)
  { title: 'NUL in an env value', input: spec({ env: { A: 'x\0y' } }), field: 'env.A', bad: '"x\\u0000y"' },
  { title: 'lone surrogate in an env value', input: spec({ env: { A: 'x\uD800' } }), field: 'env.A', bad: '"x\\ud800"' },
  { title: 'NUL in a command argument', input: { flags: {}, args: ['busybox', 'echo', 'a\0b'] }, field: 'command[1]', bad: '"a\\u0000b"' },
  { title: 'newline in a guest path', input: { flags: { volume: ['/srv/data:/da\nta'] } }, field: 'volumes[0].guestPath', bad: '"/da\\nta"' },
  { title: 'tab in a guest path', input: volume('/srv/data', '/da\tta'), field: 'volumes[0].guestPath', bad: '"/da\\tta"' },
  { title: 'NUL in workdir', input: spec({ workdir: '/app\0' }), field: 'workdir', bad: '"/app\\u0000"' },
  { title: 'guest path over PATH_MAX', input: volume('/srv/data', `/${'d'.repeat(4095)}`), field: 'volumes[0].guestPath', bad: '(4096 characters)' },
  // units
  { title: 'size unit 12q', input: { flags: { memory: '12q' } }, field: '--memory', bad: '"12q"' },
  { title: 'size -1g', input: { flags: { memory: '-1g' } }, field: '--memory', bad: '"-1g"' },
  { title: 'empty size', input: { flags: { memory: '' } }, field: '--memory', bad: '""' },
  { title: 'duration 10 parsecs', input: { flags: { timeout: '10 parsecs' } }, field: '--timeout', bad: '"10 parsecs"' },
  { title: 'duration -5s', input: { flags: { startupBudget: '-5s' } }, field: '--startup-budget', bad: '"-5s"' },
  { title: 'zero timeout', input: { flags: { timeout: '0' } }, field: 'timeoutMs', bad: '0' },
  { title: 'timeout above 7 days', input: { flags: { timeout: '8d' } }, field: 'timeoutMs', bad: '691200000' },
];

for (const row of rows) {
  test(`rejects ${row.title}`, (t) => {
    const err = t.throws(() => run(row.input), { instanceOf: row.error ?? SpecError });
    if (!err) return;
    t.false(/[\r\n]/.test(err.message), 'message is one line');
    t.true(err.message.startsWith(`${row.field}: `), `names ${row.field}: ${err.message}`);
    t.true(err.message.includes(row.bad), `contains ${row.bad}: ${err.message}`);
  });
}

test('odd but legal paths, arguments and env values are kept as given', (t) => {
  const odd = '/da"ta, x=\u00e9:1%20 \u{1F600}';
  const s = validateSpec({ image: 'busybox', command: ['echo', 'a "b", c=d', 'line1\nline2'], env: { A: 'x\ny "z"' }, workdir: odd, volumes: [{ hostPath: '/tmp/a,b"c d', guestPath: odd }] });
  t.deepEqual(s.command, ['echo', 'a "b", c=d', 'line1\nline2']);
  t.is(s.env.A, 'x\ny "z"');
  t.is(s.workdir, odd);
  t.deepEqual(s.volumes[0], { hostPath: '/tmp/a,b"c d', guestPath: odd, readOnly: false });
  t.notThrows(() => validateSpec({ image: 'busybox', volumes: [{ hostPath: '/srv/data', guestPath: `/${'d'.repeat(4094)}` }] }));
});

test('allowed text is in plain words', (t) => {
  const msg = (input: unknown) => t.throws(() => validateSpec(input))?.message ?? '';
  t.is(msg({ image: 'busybox', resources: { memoryMiB: 2 } }), 'resources.memoryMiB: 2 is not valid; allowed: an integer from 6 to 4194304 (MiB)');
  t.is(msg({ image: 'busybox', isolation: 'kvm' }), 'isolation: "kvm" is not valid; allowed: one of auto, container, microvm, vm');
  t.regex(msg({ image: 'busybox', bogus: 1 }), /unknown key "bogus": allowed keys are name, image, command, /);
});

test('flags become a spec, with units converted', (t) => {
  const raw = specFromFlags(
    {
      name: 'job-1',
      env: ['LANG=C.UTF-8', 'EQ=a=b'],
      workdir: '/work',
      user: '1000:1000',
      cpus: '0.5',
      memory: '1.5G',
      pids: '128',
      ioWeight: '500',
      deviceWriteBps: ['/dev/vda:10mb', '1.5k'],
      deviceReadIops: ['300'],
      netRate: '2.5mbit',
      network: 'bridge',
      volume: ['/srv/data:/data:ro', '/tmp:/scratch'],
      isolation: 'microvm',
      trust: 'untrusted',
      startupBudget: '1.5s',
      timeout: '2m',
      ownKernel: true,
      cpuTime: '1.5s',
      fileSize: '10m',
      openFiles: '256',
      tmpfsSize: '64m',
      readOnly: true,
      outputLimit: '64k',
    },
    { image: 'alpine:3.20', command: ['sh', '-c', 'echo hi'] },
  );
  t.deepEqual(validateForHost(validateSpec(raw), host), {
    name: 'job-1',
    image: 'alpine:3.20',
    command: ['sh', '-c', 'echo hi'],
    env: { LANG: 'C.UTF-8', EQ: 'a=b' },
    workdir: '/work',
    user: '1000:1000',
    resources: {
      cpus: 0.5,
      memoryMiB: 1536,
      pids: 128,
      ioWeight: 500,
      deviceWriteBps: [{ path: '/dev/vda', rate: 10485760 }, { rate: 1536 }],
      deviceReadIops: [{ rate: 300 }],
      netRateKbit: 2500,
      cpuTimeMs: 1500,
      fileSizeBytes: 10485760,
      openFiles: 256,
      tmpfsMiB: 64,
    },
    network: 'bridge',
    volumes: [
      { hostPath: '/srv/data', guestPath: '/data', readOnly: true },
      { hostPath: '/tmp', guestPath: '/scratch', readOnly: false },
    ],
    isolation: 'microvm',
    trust: 'untrusted',
    startupBudgetMs: 1500,
    timeoutMs: 120_000,
    readOnlyRoot: true,
    outputLimitBytes: 65536,
    kernel: { ownKernel: true },
  });
});

test('a YAML file is the base and flags override it field by field', (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'hbx-spec-')), 'spec.yaml');
  writeFileSync(
    file,
    [
      'name: from-file',
      'image: busybox',
      'command: [sleep, "60"]',
      'env: { A: "1", B: "2" }',
      'resources: { cpus: 1, memoryMiB: 256 }',
      'volumes:',
      '  - { hostPath: /srv/data, guestPath: /data, readOnly: true }',
      '  - { hostPath: /tmp, guestPath: /scratch }',
      'trust: untrusted',
    ].join('\n'),
  );
  const raw = specFromFlags({ file, name: 'from-flag', memory: '512m', env: ['B=3'], volume: ['/srv/logs:/data'] }, { command: [] });
  const s = validateSpec(raw);
  t.is(s.name, 'from-flag');
  t.is(s.image, 'busybox');
  t.deepEqual(s.command, ['sleep', '60']);
  t.deepEqual(s.env, { A: '1', B: '3' });
  t.deepEqual(s.resources, { cpus: 1, memoryMiB: 512 });
  t.deepEqual(s.volumes, [
    { hostPath: '/tmp', guestPath: '/scratch', readOnly: false },
    { hostPath: '/srv/logs', guestPath: '/data', readOnly: false },
  ]);
  t.is(s.trust, 'untrusted');
});

test('a JSON spec file is read too', (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'hbx-spec-')), 'spec.json');
  writeFileSync(file, JSON.stringify({ image: 'alpine:3.20', resources: { pids: 64 } }));
  t.deepEqual(validateSpec(specFromFlags({ file }, { command: [] })).resources, { pids: 64 });
});

test('defaults are filled in', (t) => {
  t.deepEqual(validateSpec({ image: 'busybox' }), {
    image: 'busybox',
    env: {},
    workdir: '/',
    user: '0:0',
    resources: {},
    network: 'none',
    volumes: [],
    isolation: 'auto',
    trust: 'trusted',
    readOnlyRoot: false,
    kernel: { ownKernel: false },
  });
});

test('paths are normalised', (t) => {
  const s = validateSpec({ image: 'busybox', workdir: '/app/', volumes: [{ hostPath: '/srv//data/', guestPath: '/data/./x/' }] });
  t.is(s.workdir, '/app');
  t.deepEqual(s.volumes[0], { hostPath: '/srv/data', guestPath: '/data/x', readOnly: false });
});

test('size, duration and cpu parsing', (t) => {
  const sizes: [string, number][] = [
    ['256m', 256],
    ['256M', 256],
    ['256MiB', 256],
    ['256mb', 256],
    ['1g', 1024],
    ['1.5G', 1536],
    ['512k', 1],
    ['1536k', 2],
    ['64', 64],
    [' 2 g ', 2048],
    ['1t', 1048576],
    ['1048576b', 1],
  ];
  for (const [text, mib] of sizes) t.is(parseSize(text, '--memory'), mib, text);
  const durations: [string, number][] = [
    ['500ms', 500],
    ['10s', 10_000],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['1.5s', 1500],
    ['250', 250],
    ['1d', 86_400_000],
  ];
  for (const [text, ms] of durations) t.is(parseDuration(text, '--timeout'), ms, text);
  t.is(parseCpus('0.5', '--cpus'), 0.5);
  t.is(parseCpus('2', '--cpus'), 2);
  for (const bad of ['', ' ', 'Infinity', '1e3', '0x10', '1.', '1..5', '2 cpus', '1' + '0'.repeat(400)]) {
    t.throws(() => parseCpus(bad, '--cpus'), { instanceOf: SpecError, message: /^--cpus: .* allowed: a number of CPUs/ }, JSON.stringify(bad));
  }
});
