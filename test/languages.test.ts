import test from 'ava';
import { execa } from 'execa';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostCapabilityError, HybridboxError, SpecError, type Hybridbox, type RuntimeInfo } from '../src/index.js';
import { baseArchiveDir, debianInputsKey, type DebianInputs } from '../src/images/bases/debian.js';
import { DEFINITIONS } from '../src/languages/definitions/index.js';
import { checkDefinitions, ensureRuntimeImages, listRuntimes, resolveRuntime, type RuntimeDefinition } from '../src/languages/index.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { readMountinfo } from '../src/util/mountinfo.js';
import { CLI, freshHybridbox, hostTraces, mentions } from './helpers.js';

// Every runtime's image comes from the set-up's archive cache (scripts/setup.sh builds it);
// here it is only imported into a fresh state root. Should Debian's mirror have published
// since the set-up, the inputs differ and the images are built again, hence the long limit.

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;
let runtimes: RuntimeInfo[];
const work = mkdtempSync(join(tmpdir(), 'hbx-lang-src-'));

test.before(async (t) => {
  t.timeout(20 * 60_000);
  ({ hb, root, cleanup } = await freshHybridbox('hbx-lang-'));
  const made = await ensureRuntimeImages(hb);
  t.log(made.map((m) => `${m.ref}: ${m.source} in ${m.ms} ms`).join('; '));
  runtimes = await listRuntimes(hb);
});
test.after.always(async () => {
  await cleanup?.();
  rmSync(work, { recursive: true, force: true });
});

// Each prints "hello from <runtime> 55": the sum is computed, so an echo of the source fails.
const HELLO: Record<string, string> = {
  shell: 'n=0; for i in $(seq 1 10); do n=$((n + i)); done; words=(hello from); echo "${words[*]} shell $n"\n',
  c: '#include <stdio.h>\nint main(void) { int s = 0; for (int i = 1; i <= 10; i++) s += i; printf("hello from c %d\\n", s); return 0; }\n',
  cpp: '#include <iostream>\n#include <numeric>\n#include <vector>\nint main() { std::vector<int> v(10); std::iota(v.begin(), v.end(), 1); std::cout << "hello from cpp " << std::accumulate(v.begin(), v.end(), 0) << std::endl; }\n',
  python: 'print(f"hello from python {sum(range(1, 11))}")\n',
  node: 'let s = 0;\nfor (let i = 1; i <= 10; i++) s += i;\nconsole.log(`hello from node ${s}`);\n',
};

/** Writes the runtime's source into a fresh host directory that becomes /box. */
function box(rt: RuntimeInfo): string {
  const dir = mkdtempSync(join(work, `${rt.name}-`));
  writeFileSync(join(dir, rt.fileName), HELLO[rt.name]!);
  return dir;
}

async function runIn(rt: RuntimeInfo, dir: string, command: string[], isolation: 'container' | 'microvm') {
  return hb.sandboxes.run(
    {
      image: rt.image,
      command,
      workdir: rt.workdir,
      volumes: [{ hostPath: dir, guestPath: rt.workdir }],
      isolation,
      // gcc's cc1 alone wants over 100 MiB for larger programs; 512 MiB leaves the guest room.
      resources: isolation === 'microvm' ? { memoryMiB: 512 } : {},
    },
    { remove: true },
  );
}

/** The compile step (if the runtime has one) and the run step, each a sandbox of its own, as a judge runs them. */
async function compileAndRun(rt: RuntimeInfo, isolation: 'container' | 'microvm') {
  const dir = box(rt);
  if (rt.compile) {
    const c = await runIn(rt, dir, rt.compile, isolation);
    if (c.exitCode !== 0) return { phase: 'compile', ...c };
  }
  return { phase: 'run', ...(await runIn(rt, dir, rt.run, isolation)) };
}

test('every shipped runtime is listed with its image, commands and a version read from that image', (t) => {
  t.deepEqual(
    runtimes.map((r) => r.name),
    ['shell', 'c', 'cpp', 'python', 'node'],
  );
  for (const r of runtimes) {
    t.truthy(r.imageDigest, `${r.name}: image ${r.image} is in the store`);
    t.regex(r.version ?? '', /^\d+\.\d+(\.\d+)?$/, `${r.name}: ${r.version}`);
    t.true(r.packageVersion?.includes(r.version!), `${r.name}: ${r.packageVersion} is dpkg's version of ${r.version}`);
    t.is(r.workdir, '/box');
  }
  // c and cpp share one image: one toolchain is built once.
  const byName = new Map(runtimes.map((r) => [r.name, r]));
  t.is(byName.get('c')!.image, byName.get('cpp')!.image);
  t.is(byName.get('shell')!.image, 'debian:bookworm', 'a runtime without packages uses the base itself');
});

for (const name of Object.keys(HELLO)) {
  test(`${name}: hello world ${name === 'shell' || name === 'python' || name === 'node' ? 'runs' : 'compiles and runs'} in a container`, async (t) => {
    const rt = runtimes.find((r) => r.name === name)!;
    const r = await compileAndRun(rt, 'container');
    t.is(r.exitCode, 0, `${r.phase}: ${r.stderr}`);
    t.is(r.stdout, `hello from ${name} 55\n`);
    t.is(r.backend, 'container');
    t.deepEqual(hostTraces([r.id]), []);
  });
}

// The real versions: what the interpreter or compiler in the image says of itself.
const SELF_REPORT: Record<string, [string[], RegExp]> = {
  shell: [['bash', '-c', 'echo "${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}.${BASH_VERSINFO[2]}"'], /^(\S+)$/],
  c: [['gcc', '-dumpfullversion'], /^(\S+)$/],
  cpp: [['g++', '-dumpfullversion'], /^(\S+)$/],
  python: [['python3', '--version'], /^Python (\S+)$/],
  node: [['node', '--version'], /^v(\S+)$/],
};

test('the versions listed are the ones the programs in the images report', async (t) => {
  for (const rt of runtimes) {
    const [command, pattern] = SELF_REPORT[rt.name]!;
    const r = await hb.sandboxes.run({ image: rt.image, command }, { remove: true });
    t.is(r.exitCode, 0, r.stderr);
    t.is(pattern.exec(r.stdout.trim())?.[1], rt.version!, `${rt.name}: ${r.stdout.trim()}`);
  }
});

test('hybridbox runtimes lists the same names, aliases and versions', async (t) => {
  const r = await execa('node', [CLI, 'runtimes', '--json'], { env: { HYBRIDBOX_ROOT: root }, reject: false });
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), runtimes);
  const table = await execa('node', [CLI, 'runtimes'], { env: { HYBRIDBOX_ROOT: root } });
  t.regex(table.stdout, /^RUNTIME\s+VERSION\s+ALIASES/);
  for (const rt of runtimes) t.regex(table.stdout, new RegExp(`^${rt.name}\\s+${rt.version!.replace(/\./g, '\\.')}\\s+${rt.aliases.join(', ').replace(/\+/g, '\\+')}\\s`, 'm'));
});

test('a second ensure of every runtime image finds them in the store, in well under a second', async (t) => {
  const again = await ensureRuntimeImages(hb);
  t.deepEqual(
    again.map((m) => m.source),
    again.map(() => 'present'),
  );
  t.deepEqual(again.find((m) => m.runtimes.includes('c'))?.runtimes, ['c', 'cpp'], 'one image for both');
  const total = again.reduce((n, m) => n + m.ms, 0);
  t.true(total < 1000, `${total} ms`);
});

for (const name of ['c', 'python']) {
  test.serial(`${name}: hello world on a microVM`, async (t) => {
    t.timeout(5 * 60_000);
    if (!findGuestBoot()) return t.fail('no guest kernel: run `npm run setup` first');
    const rt = runtimes.find((r) => r.name === name)!;
    const r = await compileAndRun(rt, 'microvm');
    t.is(r.exitCode, 0, `${r.phase}: ${r.stderr}`);
    t.is(r.stdout, `hello from ${name} 55\n`);
    t.is(r.backend, 'microvm');
    t.deepEqual(hostTraces([r.id]), []);
  });
}

test.serial('the largest runtime image fits its VM disk with room to spare', async (t) => {
  t.timeout(5 * 60_000);
  const sized = await Promise.all(runtimes.map(async (r) => ({ image: r.image, bytes: (await hb.images.inspect(r.image)).sizeBytes })));
  const largest = sized.sort((a, b) => b.bytes - a.bytes)[0]!.image;
  const r = await hb.sandboxes.run({ image: largest, isolation: 'microvm', command: ['df', '-k', '--output=avail,ipcent', '/'] }, { remove: true });
  t.is(r.exitCode, 0, r.stderr);
  const [avail, inodes] = r.stdout.trim().split('\n')[1]!.trim().split(/\s+/);
  t.log(`${largest}: ${Math.round(Number(avail) / 1024)} MiB free on the VM's root, ${inodes} of its inodes used`);
  t.true(Number(avail) > 32 * 1024, `${avail} KiB free`);
  t.true(Number.parseInt(inodes!, 10) < 50, `${inodes} of the inodes used`);
});

test('an unknown runtime is one line that names the field and every allowed name', (t) => {
  const err = t.throws(() => resolveRuntime('cobol'), { instanceOf: SpecError })!;
  t.is((err as SpecError).field, 'runtime');
  t.is(err.exitCode, 125);
  t.false(err.message.includes('\n'));
  t.is(err.message, 'runtime: "cobol" is not valid; use one of: shell (sh, bash), c (gcc, c11), cpp (c++, g++, cxx), python (python3, py), node (javascript, js, nodejs)');
  t.throws(() => resolveRuntime(''), { instanceOf: SpecError, message: /^runtime: "" is not valid/ });
  // Names are looked up in a Map: the object prototype's keys are no runtimes.
  for (const n of ['__proto__', 'constructor', 'toString']) t.throws(() => resolveRuntime(n), { instanceOf: SpecError });
  const long = t.throws(() => resolveRuntime('x'.repeat(5000)))!;
  t.true(long.message.length < 400, 'a long value is cut in the message');
});

test('names and aliases resolve, in any case', (t) => {
  for (const def of DEFINITIONS) for (const n of [def.name, ...def.aliases, def.name.toUpperCase()]) t.is(resolveRuntime(n), def, n);
  t.is(resolveRuntime(' Py ').name, 'python');
});

test('definitions are checked against each other', (t) => {
  const base: RuntimeDefinition = { name: 'x', aliases: [], packages: ['gcc'], fileName: 'main.x', run: ['/box/main'], versionPackage: 'gcc' };
  t.notThrows(() => checkDefinitions(DEFINITIONS));
  const bad = (defs: RuntimeDefinition[], message: RegExp) => t.throws(() => checkDefinitions(defs), { instanceOf: HybridboxError, message });
  bad([base, { ...base, name: 'y', aliases: ['x'] }], /runtime definition "y": the name "x" is taken by x/);
  bad([base, { ...base, name: 'y', image: 'x', packages: ['g++'] }], /shares the image hybridbox\/runtime-x:bookworm with x but lists other packages \(g\+\+ against gcc\)/);
  bad([{ ...base, fileName: '../etc/passwd' }], /fileName "..\/etc\/passwd" must be a plain file name/);
  bad([{ ...base, packages: ['gcc;rm'] }], /the package "gcc;rm" is not a valid Debian package name/);
  bad([{ ...base, name: 'X Y' }], /the name "X Y" is not valid/);
  bad([{ ...base, compile: [] }], /non-empty argv/);
});

test('the cache key of a Debian image changes with its package list, and only with the set', (t) => {
  const inputs: DebianInputs = {
    tool: 'mmdebstrap 1.3.5',
    suite: 'bookworm',
    variant: 'minbase',
    sources: ['deb http://m/debian bookworm main'],
    sourceDateEpoch: 1700000000,
    include: [],
    releases: ['r1'],
  };
  const key = (include: string[]) => debianInputsKey({ ...inputs, include });
  const plain = key([]);
  t.regex(plain, /^[0-9a-f]{64}$/);
  t.not(key(['python3']), plain);
  t.not(key(['gcc']), key(['g++']));
  t.not(key(['gcc', 'g++']), key(['gcc']));
  t.is(key(['gcc', 'g++', 'gcc']), key(['g++', 'gcc']), 'order and repeats do not matter');
  t.not(debianInputsKey({ ...inputs, include: ['gcc'], releases: ['r2'] }), key(['gcc']), 'the mirror state still counts');
  t.throws(() => key(['python3-']), { instanceOf: HostCapabilityError, message: /debian package "python3-" is not a valid package name/ });
  // The stored images carry the list they were made with, which is how a changed definition is noticed.
  return Promise.all(
    runtimes
      .filter((r) => r.packages.length)
      .map(async (r) => {
        const d = await hb.images.inspect(r.image);
        t.is(d.config.config.Labels?.['dev.hybridbox.base.packages'], [...r.packages].sort().join(','));
      }),
  );
});

test.serial('a runtime image whose package does not exist fails in one line and leaves nothing behind', async (t) => {
  t.timeout(5 * 60_000);
  const tmpBefore = new Set(readdirSync(tmpdir()).filter((n) => n.startsWith('hbx-debian-')));
  const archivesBefore = readdirSync(baseArchiveDir());
  const err = await t.throwsAsync(hb.images.ensureDebian('hybridbox/runtime-nosuch:bookworm', ['hbx-no-such-package']), { instanceOf: HostCapabilityError });
  t.is(err!.message, 'mmdebstrap failed (exit 25): Unable to locate package hbx-no-such-package');
  t.false(hb.images.has('hybridbox/runtime-nosuch:bookworm'));
  t.deepEqual(
    readdirSync(join(root, 'images')).filter((n) => n.startsWith('.')),
    [],
    'no build directory in the store',
  );
  t.deepEqual(
    readdirSync(tmpdir()).filter((n) => n.startsWith('hbx-debian-') && !tmpBefore.has(n)),
    [],
  );
  t.deepEqual(readdirSync(baseArchiveDir()), archivesBefore, 'no archive for a failed build');
  t.deepEqual(
    readMountinfo().filter((m) => mentions(m, root)),
    [],
    'no chroot mount (/proc, /dev) outlives mmdebstrap',
  );
});
