import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Hybridbox } from '../src/index.js';
import { SandboxRegister, runIsolationBench } from '../src/bench/isolation/index.js';
import { LIMITS } from '../src/bench/isolation/context.js';
import type { IsolationResult, SecurityCell } from '../src/measurements/index.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { CLI, REPO, freshHybridbox, hostTraces, stateOf } from './helpers.js';

// `hybridbox bench isolation` on real backends (containers and microVMs; the libvirt VM is
// left to full runs: it adds little here but boot time). No timing is asserted: only what
// the probes saw, that the result is well formed, and that nothing is left behind.

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;

/** The newest mtime of the files that make up the isolation bench. */
function newestSource(): number {
  const dirs = ['src/bench/isolation', 'src/bench/probe'].map((d) => join(REPO, d));
  const files = [...dirs.flatMap((d) => readdirSync(d).map((f) => join(d, f))), join(REPO, 'src/bench/commands/isolation.ts')];
  return Math.max(...files.map((f) => statSync(f).mtimeMs));
}

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, root, cleanup } = await freshHybridbox('hbx-bench-iso-'));
  // The CLI bundle must contain the bench as it is in the tree.
  if (!existsSync(CLI) || statSync(CLI).mtimeMs < newestSource() || !existsSync(join(REPO, 'dist', 'hbx-probe'))) {
    execFileSync('node', ['scripts/build.mjs'], { cwd: REPO, stdio: 'inherit' });
  }
});
test.after.always(async () => {
  await cleanup?.();
});

/** Host traces of VM sandboxes: QEMU processes naming them. */
function qemuTraces(ids: Iterable<string>): string[] {
  const found: string[] = [];
  for (const d of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (!cmd.startsWith('qemu-system') && !cmd.includes('/qemu-system')) continue;
    if (cmd.includes(root)) found.push(`qemu ${d} under the test root`);
    for (const id of ids) if (cmd.includes(id)) found.push(`qemu ${d} of ${id}`);
  }
  return found;
}

const cell = (r: IsolationResult, probe: string, col: string): SecurityCell | undefined => {
  const row = r.security.find((x) => x.probe === probe);
  return (row?.values as Record<string, SecurityCell> | undefined)?.[col] ?? row?.variants?.[col];
};

test.serial('CLI --quick --parts security,fault --json: the container shares the host kernel, the microVM does not; faults stay put', async (t) => {
  const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
    execFile(
      'node',
      [CLI, 'bench', 'isolation', '--quick', '--parts', 'security,fault', '--backends', 'container,microvm', '--json'],
      { env: { ...process.env, HYBRIDBOX_ROOT: root }, maxBuffer: 16 * 1024 * 1024, timeout: 150_000 },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve({ stdout, stderr })),
    );
  });
  const r = JSON.parse(stdout) as IsolationResult;
  t.is(r.kind, 'isolation');
  t.is(typeof r.host.key, 'string');
  t.true(r.durationMs > 0);
  t.deepEqual(r.performance, []);
  t.true(r.summary.length > 0);
  t.regex(stderr, /security: probe in microvm/);

  // Security: one row per probe, a cell per column, a verdict on every sandbox cell.
  t.true(r.security.length >= 15);
  for (const row of r.security) {
    for (const col of ['host', 'container', 'container:untrusted', 'microvm']) t.truthy(cell(r, row.probe, col), `${row.probe}: ${col}`);
    t.is(row.values.host!.safe, null);
  }
  const hostBoot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  const probes = r.securityProbes!;
  t.is(probes.host!.bootId, hostBoot);
  t.is(probes.container!.bootId, hostBoot, 'a container runs on the host kernel');
  t.not(probes.microvm!.bootId, hostBoot, 'a microVM has a kernel of its own');
  t.is(cell(r, 'kernel shared with host (boot id)', 'container')!.safe, false);
  t.is(cell(r, 'kernel shared with host (boot id)', 'microvm')!.safe, true);
  for (const col of ['container', 'container:untrusted', 'microvm']) {
    t.false(probes[col]!.hostPidVisible, `${col}: no host process visible`);
    t.false(probes[col]!.pid1IsHostInit, `${col}: PID 1 is not the host's init`);
    t.is(cell(r, 'host processes visible', col)!.safe, true);
    t.false(probes[col]!.markerVisible, `${col}: the host marker file is out of reach`);
  }
  t.is(probes.container!.seccomp, '2', 'the container runs under a seccomp filter');
  t.is(probes['container:untrusted']!.seccomp, '2');
  t.regex(cell(r, 'root inside = root on host', 'container:untrusted')!.value, /^no: root is host uid \d+/);
  t.regex(cell(r, 'host syscalls reachable', 'container')!.value, /^\d+ of \d+ \(seccomp refuses \d+\)$/);
  t.regex(cell(r, 'host syscalls reachable', 'microvm')!.value, /^0:/);
  t.regex(cell(r, 'device model on the host', 'microvm')!.value, /virtio-blk-device/);

  // Fault isolation: every fault stayed in its sandbox.
  const faults = r.fault.map((f) => `${f.fault} in ${f.in}`);
  t.true(faults.includes('guest kernel panic in microvm'), faults.join('; '));
  t.true(faults.some((f) => f.startsWith('out of memory') && f.endsWith('in container')));
  t.true(faults.some((f) => f.startsWith('fork bomb') && f.endsWith('in container')));
  t.true(faults.includes('QEMU killed (SIGKILL) in microvm'));
  for (const f of r.fault) {
    t.true(f.hostUp, f.fault);
    t.deepEqual(f.survivors.map((s) => s.backend).sort(), ['container', 'microvm']);
    for (const s of f.survivors) t.true(s.keptRunning, `${s.backend} kept running through ${f.fault} in ${f.in}`);
  }
  t.regex(r.fault.find((f) => f.fault === 'guest kernel panic')!.detail, /kernel panic/i);
  t.regex(r.fault.find((f) => f.fault.startsWith('out of memory'))!.detail, /^OOM-killed/);

  // Stored, and nothing left behind.
  t.is(hb.measurements.latest('isolation')?.startedAtMs, r.startedAtMs);
  t.deepEqual(await hb.sandboxes.list({ all: true }), []);
  t.deepEqual(existsSync(join(root, 'sandboxes')) ? readdirSync(join(root, 'sandboxes')) : [], []);
  t.deepEqual(qemuTraces([]), []);
  t.deepEqual(stateOf(root).leases(), []);
});

test.serial('a tiny performance run: container victim alone and next to a CPU hog', async (t) => {
  const register = new SandboxRegister(hb);
  const r = await runIsolationBench(hb, { backends: ['container'], parts: ['performance'], neighbours: ['cpu-hog'], reps: 1, seconds: 1, quick: true, register });
  t.deepEqual(r.security, []);
  t.deepEqual(r.fault, []);
  t.deepEqual(
    r.performance.map((c) => `${c.backend} ${c.neighbour}`),
    ['container none', 'container cpu-hog'],
  );
  const [alone, hog] = r.performance;
  t.is(alone!.victimScore.length, 1);
  t.true(alone!.victimScore[0]! > 0);
  t.is(alone!.degradationPct, 0);
  t.is(hog!.victimScore.length, 1);
  t.is(typeof hog!.degradationPct, 'number');
  t.is(typeof hog!.contained, 'boolean');
  t.regex(hog!.containment, /CPU quota/);
  t.is(hog!.neighbourReport?.mode, 'cpu-hog');
  t.true((hog!.hostProbeMs?.n ?? 0) > 0, 'the host probe ran during the case');
  t.true(r.summary.some((s) => s.includes('cores')));
  // Victim and neighbour were made and removed, leaving nothing on the host.
  t.is(register.ids.size, 2);
  t.deepEqual(hostTraces(register.ids), []);
  t.deepEqual(await hb.sandboxes.list({ all: true }), []);
});

test.serial('a tiny performance run with limited neighbours: each reports its rate against its limit', async (t) => {
  const register = new SandboxRegister(hb);
  const r = await runIsolationBench(hb, { backends: ['container'], parts: ['performance'], neighbours: ['limited-disk-writer', 'limited-network-flood'], reps: 1, seconds: 2, quick: true, register });
  t.deepEqual(
    r.performance.map((c) => `${c.backend} ${c.neighbour}`),
    ['container none', 'container limited-disk-writer', 'container limited-network-flood'],
  );
  const [, disk, net] = r.performance;
  t.like(disk!.rate, { unit: 'MiB/s', limit: LIMITS.diskMiBps });
  t.like(net!.rate, { unit: 'Mbit/s', limit: LIMITS.netMbit });
  for (const c of [disk!, net!]) {
    const rate = c.rate!;
    t.true(typeof rate.measured === 'number' && rate.measured > 0, `${c.neighbour}: ${JSON.stringify(rate)}`);
    t.is(rate.ratio, Math.round((100 * rate.measured!) / rate.limit!) / 100);
    t.is(typeof c.degradationPct, 'number');
    t.log(`${c.neighbour}: ${rate.measured} ${rate.unit} against ${rate.limit} (x${rate.ratio}); victim lost ${c.degradationPct}%`);
  }
  t.true(
    r.summary.some((s) => /limit/.test(s)),
    r.summary.join('\n'),
  );
  t.deepEqual(hostTraces(register.ids), []);
  t.deepEqual(await hb.sandboxes.list({ all: true }), []);
});
