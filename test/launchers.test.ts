import test from 'ava';
import { execa } from 'execa';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseStringPromise } from 'xml2js';
import { SpecError } from '../src/errors.js';
import type { HostInfo } from '../src/host/types.js';
import type { Hybridbox } from '../src/index.js';
import { findGuestBoot, type GuestBoot } from '../src/runtimes/vm/boot.js';
import { vmFiles } from '../src/runtimes/vm/files.js';
import { COMMAND_LINE_SIZE, encodeParamValue, fittedKernelCmdline, kernelCmdline, type GuestParams } from '../src/runtimes/vm/kernel-cmdline.js';
import { domainXml } from '../src/runtimes/vm/libvirt.js';
import type { MachineSpec } from '../src/runtimes/vm/machine.js';
import { microvmArgv, microvmCmdlineReserve, microvmMaxVolumes } from '../src/runtimes/vm/microvm.js';
import { CLI, freshHybridbox } from './helpers.js';

// What each launcher hands to QEMU, the guest kernel and libvirt, fed with paths that mean
// something to one of them: a comma (QemuOpts), a quote and a space (the kernel's parser),
// `=`, `:` and `%` (the agent's fields and escapes), non-ASCII (the kernel's isspace takes
// byte 0xA0, which is in "à"), and length.

const ODD_HOST = ['/tmp/a,b', '/tmp/x,,y,', '/tmp/q"u\'o te', '/tmp/k=v', '/tmp/été/à', `/tmp/${'l,'.repeat(600)}`];
const ODD_GUEST = ['/da"ta', '/a b', '/k=v,w', '/c:o:l:ro', '/p%41th', '/été/à\u00a0x', '/emoji\u{1F600}'];

const host = { cpuMHz: 2600 } as HostInfo;
const boot: GuestBoot = { kernel: '/cache,k/vmlinux', initrd: '/cache,k/init"rd.cpio.gz', flavour: 'custom', kernelRelease: '6.1' };
const files = vmFiles('/state,"root/sandboxes/abc');

function machine(volumes: { hostPath: string; guestPath: string }[], extra: Partial<MachineSpec> = {}): MachineSpec {
  const vols = volumes.map((v, i) => ({ tag: `v${i}`, readOnly: i % 2 === 1, ...v }));
  return {
    id: 'abc',
    name: 'sb-abc',
    memoryMiB: 256,
    vcpus: 1,
    cpuQuota: null,
    boot,
    useKvm: false,
    tap: null,
    mac: null,
    volumes: vols,
    cmdline: kernelCmdline(host, false, guest(vols)),
    ...extra,
  };
}

function guest(volumes: GuestParams['volumes'], more: Partial<GuestParams> = {}): GuestParams {
  return { hostname: 'sb-abc', ip: null, volumes, agentPort: 'hbx.agent', loadModules: false, extra: [], ...more };
}

/** QEMU's QemuOpts reading of an option string: `,` separates, `,,` is a comma; the first bare word is the implied key. */
function qemuOpts(text: string): Map<string, string> {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',' && text[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (text[i] === ',') {
      parts.push(cur);
      cur = '';
    } else cur += text[i];
  }
  parts.push(cur);
  const opts = new Map<string, string>();
  parts.forEach((p, i) => {
    const eq = p.indexOf('=');
    if (eq === -1 && i === 0) opts.set('', p);
    else if (eq === -1) throw new Error(`QEMU would refuse ${JSON.stringify(text)}: Invalid parameter '${p}'`);
    else if (opts.has(p.slice(0, eq))) throw new Error(`QEMU would refuse ${JSON.stringify(text)}: '${p.slice(0, eq)}' given twice`);
    else opts.set(p.slice(0, eq), p.slice(eq + 1));
  });
  return opts;
}

/** The values of every `flag` in argv, parsed as QemuOpts. */
const optsOf = (argv: string[], flag: string): Map<string, string>[] => argv.flatMap((a, i) => (argv[i - 1] === flag ? [qemuOpts(a)] : []));

test('microvm argv: every path inside an option string comes back whole; whole-argument options stay as given', (t) => {
  const spec = machine(ODD_HOST.map((hostPath, i) => ({ hostPath, guestPath: `/g${i}` })).slice(0, 5));
  const argv = microvmArgv(spec, files);
  t.deepEqual(
    optsOf(argv, '-fsdev').map((o) => [o.get('id'), o.get('path'), o.get('readonly')]),
    spec.volumes.map((v) => [v.tag, v.hostPath, v.readOnly ? 'on' : undefined]),
  );
  t.deepEqual(
    optsOf(argv, '-chardev').map((o) => [o.get('id'), o.get('path')]),
    [
      ['con', files.console],
      ['agent', files.agentSock],
      ['qmp', files.qmpSock],
    ],
  );
  t.is(optsOf(argv, '-drive')[0]!.get('file'), files.disk);
  // QEMU takes these whole: a doubled comma would be part of the file name.
  for (const [flag, value] of [
    ['-kernel', boot.kernel],
    ['-initrd', boot.initrd],
    ['-append', spec.cmdline],
    ['-pidfile', files.pid],
  ] as const) {
    t.is(argv[argv.indexOf(flag) + 1], value, flag);
  }
  // qemuPid() recognises our QEMU by the sandbox directory in its command line.
  t.true(argv.join('\0').includes(files.dir));
});

test("microvm: the RTC's IRQ goes to a placeholder; the volume limit and the command-line reserve follow the devices", (t) => {
  const devices = (s: MachineSpec) => microvmArgv(s, files).filter((a, i, all) => all[i - 1] === '-device' && /^virtio-\w+-device/.test(a));
  const small = machine([{ hostPath: '/h0', guestPath: '/g0' }]);
  t.deepEqual(
    devices(small).map((d) => d.split(',')[0]),
    ['virtio-serial-device', 'virtio-blk-device', 'virtio-9p-device'],
  );
  const bridged = machine(
    [0, 1, 2, 3].map((i) => ({ hostPath: `/h${i}`, guestPath: `/g${i}` })),
    { tap: 'htabc', mac: '52:54:00:00:00:01' },
  );
  // Transports are taken from IRQ 12 down: the 5th has IRQ 8, the RTC's.
  t.deepEqual(
    devices(bridged).map((d) => d.split(',')[0]),
    ['virtio-serial-device', 'virtio-blk-device', 'virtio-net-device', 'virtio-9p-device', 'virtio-rng-device', 'virtio-9p-device', 'virtio-9p-device', 'virtio-9p-device'],
  );
  t.is(microvmMaxVolumes({ boot, tap: 'htabc' }), 4);
  t.is(microvmMaxVolumes({ boot, tap: null }), 5);
  t.is(microvmMaxVolumes({ boot: { ...boot, flavour: 'debian' }, tap: null }), null);
  // One " virtio_mmio.device=512@0xfeb00e00:12" per device, rounded up.
  t.is(microvmCmdlineReserve(bridged), 8 * 38);
  t.is(microvmCmdlineReserve({ ...bridged, boot: { ...boot, flavour: 'debian' } }), 0);
});

/** The kernel's next_arg() (lib/cmdline.c) over the line's bytes: isspace() includes 0xA0; `"` toggles quoting. */
function kernelArgs(line: string): { param: string; val: string | null }[] {
  const bytes = Buffer.from(line, 'utf8').toString('latin1');
  const isspace = (c: string) => ' \t\n\v\f\r\u00a0'.includes(c);
  const out: { param: string; val: string | null }[] = [];
  let s = bytes.replace(/^[ \t\n\v\f\r\u00a0]+/, '');
  while (s) {
    let i = 0;
    let inQuote = false;
    let equals = -1;
    if (s[0] === '"') {
      s = s.slice(1);
      inQuote = true;
    }
    for (; i < s.length; i++) {
      if (isspace(s[i]!) && !inQuote) break;
      if (equals === -1 && s[i] === '=') equals = i;
      if (s[i] === '"') inQuote = !inQuote;
    }
    const arg = s.slice(0, i);
    out.push(equals === -1 ? { param: arg, val: null } : { param: arg.slice(0, equals), val: arg.slice(equals + 1) });
    s = s.slice(i).replace(/^[ \t\n\v\f\r\u00a0]+/, '');
  }
  return out;
}

/** The agent's reading of an hbx.vol value (guest-images/agent/hbx-agent.c: split on `:`, then %XX). */
function agentVolume(val: string): { tag: string; path: string; ro: boolean } {
  const decode = (s: string) => {
    if (/%(?![0-9A-Fa-f]{2})|%00/.test(s)) throw new Error(`the agent refuses ${s}`);
    return Buffer.from(
      s.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
      'latin1',
    ).toString('utf8');
  };
  const colon = val.indexOf(':');
  let path = val.slice(colon + 1);
  const ro = path.endsWith(':ro');
  if (ro || path.endsWith(':rw')) path = path.slice(0, -3);
  return { tag: decode(val.slice(0, colon)), path: decode(path), ro };
}

test('kernel command line: odd guest paths reach the agent intact, as parameters of their own', (t) => {
  const volumes = ODD_GUEST.map((guestPath, i) => ({ tag: `v${i}`, guestPath, readOnly: i % 2 === 0 }));
  const line = kernelCmdline(host, false, guest(volumes, { hostname: 'h-1.x' }));
  t.regex(line, /^[\x21-\x7e ]+$/, 'printable ASCII only: no quotes, no bytes the kernel takes for spaces');
  t.false(line.includes('"'));
  const args = kernelArgs(line);
  t.deepEqual(
    args.map((a) => a.param),
    line.split(' ').map((a) => a.split('=')[0]),
    'each parameter stays one',
  );
  t.deepEqual(
    args.filter((a) => a.param === 'hbx.vol').map((a) => agentVolume(a.val!)),
    volumes.map((v) => ({ tag: v.tag, path: v.guestPath, ro: v.readOnly })),
  );
  t.is(args.find((a) => a.param === 'hbx.hostname')?.val, 'h-1.x');
  t.is(encodeParamValue('/a b"c%'), '/a%20b%22c%25');
});

test('kernel command line: what does not fit in COMMAND_LINE_SIZE is refused, naming the volume; 16 volumes at most', (t) => {
  const base = kernelCmdline(host, false, guest([]));
  const room = COMMAND_LINE_SIZE - 1 - base.length - ' hbx.vol=v0::rw'.length;
  // The exact limit fits, with and without what the machine appends; one byte more does not.
  const fits = fittedKernelCmdline(host, false, guest([{ tag: 'v0', guestPath: `/${'a'.repeat(room - 1)}`, readOnly: false }]), 0);
  t.is(fits.length, COMMAND_LINE_SIZE - 1);
  const over = t.throws(() => fittedKernelCmdline(host, false, guest([{ tag: 'v0', guestPath: `/${'a'.repeat(room)}`, readOnly: false }]), 0), { instanceOf: SpecError });
  t.regex(over!.message, /^volumes\[0\]\.guestPath: .* allowed for VM sandboxes: guest paths that fit the guest kernel's command line of 2047 bytes; up to this volume it needs 2048/);
  t.throws(() => fittedKernelCmdline(host, false, guest([{ tag: 'v0', guestPath: `/${'a'.repeat(room - 1)}`, readOnly: false }]), 38), { instanceOf: SpecError });
  // Encoded bytes count three times: 330 "é" (660 bytes) need 1980.
  const vols = [
    { tag: 'v0', guestPath: '/ok', readOnly: false },
    { tag: 'v1', guestPath: `/${'é'.repeat(330)}`, readOnly: false },
  ];
  t.regex(t.throws(() => fittedKernelCmdline(host, false, guest(vols), 0))!.message, /^volumes\[1\]\.guestPath: /);
  const many = Array.from({ length: 17 }, (_, i) => ({ tag: `v${i}`, guestPath: `/m${i}`, readOnly: false }));
  t.regex(t.throws(() => fittedKernelCmdline(host, false, guest(many), 0))!.message, /^volumes: "17 volumes" is not valid; allowed for VM sandboxes: at most 16 volumes/);
  t.notThrows(() => fittedKernelCmdline(host, false, guest(many.slice(0, 16)), 0));
});

test('libvirt XML: odd paths come back from the XML whole, and the domain validates', async (t) => {
  const volumes = ODD_HOST.map((hostPath, i) => ({ hostPath, guestPath: ODD_GUEST[i % ODD_GUEST.length]! }));
  const spec = machine(volumes, { tap: 'htabc', mac: '52:54:00:00:00:01' });
  const xml = domainXml(spec, files);
  const dom = (await parseStringPromise(xml)) as {
    domain: {
      os: { kernel: string[]; initrd: string[]; cmdline: string[] }[];
      devices: { filesystem: { source: { $: { dir: string } }[] }[]; disk: { source: { $: { file: string } }[] }[]; channel: { source: { $: { path: string } }[] }[] }[];
    };
  };
  t.deepEqual(
    dom.domain.devices[0]!.filesystem.map((f) => f.source[0]!.$.dir),
    volumes.map((v) => v.hostPath),
  );
  t.is(dom.domain.devices[0]!.disk[0]!.source[0]!.$.file, files.disk);
  t.is(dom.domain.devices[0]!.channel[0]!.source[0]!.$.path, files.agentSock);
  t.deepEqual([dom.domain.os[0]!.kernel[0], dom.domain.os[0]!.initrd[0], dom.domain.os[0]!.cmdline[0]], [boot.kernel, boot.initrd, spec.cmdline]);
  const file = join(mkdtempSync(join(tmpdir(), 'hbx-xml-')), 'domain.xml');
  writeFileSync(file, xml);
  const v = await execa('virt-xml-validate', [file, 'domain'], { reject: false });
  t.is(v.exitCode, 0, v.stderr || v.stdout);
});

// ---- real VMs ---------------------------------------------------------------------------------

const guestBoot = findGuestBoot();
const vmTest = guestBoot?.flavour === 'custom' ? test.serial : test.serial.skip;

let hb: Hybridbox;
let root: string;
let cleanup: (() => Promise<void>) | undefined;

test.before(async () => {
  if (!guestBoot) return;
  // The state root itself has a comma and a quote: every sandbox file QEMU opens carries them.
  ({ hb, root, cleanup } = await freshHybridbox('hbx-esc,"q-'));
});
test.after.always(async () => {
  await cleanup?.();
});

const ODD_VOLUME_GUEST = '/da"ta, x=é:1%';

for (const kind of ['microvm', 'vm'] as const) {
  vmTest(`${kind}: a volume whose host path has a comma, a quote and a space, at an odd guest path`, async (t) => {
    const dir = join(mkdtempSync(join(tmpdir(), 'hbx-esc-vol-')), 'a,b"c d');
    mkdirSync(dir);
    writeFileSync(join(dir, 'f'), 'through the volume\n');
    const r = await hb.sandboxes.run(
      {
        image: 'busybox',
        command: ['sh', '-c', 'cat "$1/f"; echo back > "$1/g"; cat /proc/cmdline', 'sh', ODD_VOLUME_GUEST],
        isolation: kind,
        volumes: [{ hostPath: dir, guestPath: ODD_VOLUME_GUEST }],
      },
      { remove: true },
    );
    t.is(r.crash, null);
    t.is(r.exitCode, 0, r.stderr);
    const [content, cmdline] = r.stdout.split('\n');
    t.is(content, 'through the volume');
    t.is(readFileSync(join(dir, 'g'), 'utf8'), 'back\n');
    if (kind === 'microvm') {
      // What QEMU appended stays within what the check reserved for it.
      const appended = cmdline!.slice(cmdline!.indexOf(' virtio_mmio.device='));
      t.regex(appended, /^( virtio_mmio\.device=512@0x[0-9a-f]+:\d+)+$/);
      t.true(appended.length <= microvmCmdlineReserve({ boot: guestBoot!, tap: null, volumes: [{ tag: 'v0', hostPath: dir, guestPath: ODD_VOLUME_GUEST, readOnly: false }] }));
    }
  });
}

vmTest("microvm: with a NIC and 4 volumes every device works (the 5th transport's IRQ is the RTC's)", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hbx-esc-many-'));
  writeFileSync(join(dir, 'f'), 'x\n');
  const volumes = [0, 1, 2, 3].map((i) => ({ hostPath: dir, guestPath: `/m${i}`, readOnly: true }));
  const r = await hb.sandboxes.run(
    { image: 'busybox', command: ['sh', '-c', 'cat /m0/f /m1/f /m2/f /m3/f; ip -o link show eth0 | grep -c eth0'], isolation: 'microvm', network: 'bridge', volumes },
    { remove: true },
  );
  t.is(r.crash, null);
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'x\nx\nx\nx\n1\n');
});

vmTest('CLI: a guest path with a quote works on a microVM; what cannot be carried exits 125 at once and leaves nothing', async (t) => {
  const cli = (args: string[]) => execa('node', [CLI, ...args], { env: { HYBRIDBOX_ROOT: root }, reject: false, timeout: 60_000 });
  const started = Date.now();
  const ok = await cli(['run', '--rm', '-v', '/tmp:/da"ta', '--isolation', 'microvm', 'busybox', '--', 'ls', '-d', '/da"ta']);
  t.is(ok.exitCode, 0, ok.stderr);
  t.is(ok.stdout, '/da"ta');
  t.true(Date.now() - started < 60_000);
  const refusals: [string[], RegExp][] = [
    [['-v', '/tmp:/da\nta'], /^hybridbox: volumes\[0\]\.guestPath: "\/da\\nta" is not valid; allowed: a path without control characters/],
    [['-v', `/tmp:/${'é'.repeat(400)}`], /^hybridbox: volumes\[0\]\.guestPath: .* allowed for VM sandboxes: guest paths that fit the guest kernel's command line/],
    [[0, 1, 2, 3, 4, 5].flatMap((i) => ['-v', `/tmp:/m${i}`]), /^hybridbox: volumes: "6 volumes" is not valid; allowed for microvm sandboxes: at most 5 volumes/],
    [['-e', `BIG=${'x'.repeat(70_000)}`], /^hybridbox: env: "\d+ variables" is not valid; allowed for VM sandboxes: a command and environment that fit in 65536 bytes of JSON together/],
  ];
  for (const [flags, message] of refusals) {
    const t0 = Date.now();
    const r = await cli(['run', '--rm', '--isolation', 'microvm', ...flags, 'busybox', '--', 'true']);
    t.is(r.exitCode, 125, r.stderr);
    t.regex(r.stderr, message);
    t.is(r.stderr.trim().split('\n').length, 1);
    t.true(Date.now() - t0 < 10_000, 'refused before any boot');
  }
  t.deepEqual(readdirSync(join(root, 'sandboxes')), []);
  t.deepEqual(await hb.sandboxes.list({ all: true }), []);
});

vmTest('a volume the guest cannot mount is reported as such, not as a hang', async (t) => {
  const r = await hb.sandboxes.run({ image: 'busybox', command: ['true'], isolation: 'microvm', volumes: [{ hostPath: '/tmp', guestPath: '/bin/sh' }] }, { remove: true });
  t.regex(r.crash ?? '', /^the guest could not be set up: .*mount: v0 on \/run\/hbx\/root\/bin\/sh \(9p\): Not a directory/);
  t.false(existsSync(join(root, 'sandboxes', r.id)));
});
