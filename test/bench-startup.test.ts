import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describeHost } from '../src/bench/host.js';
import { summarize } from '../src/bench/stats.js';
import type { StartupResult, StartupScenario, Stats } from '../src/measurements/index.js';
import { Hybridbox } from '../src/index.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { formatPlacement } from '../src/scheduler/index.js';
import { CLI, ensureBuilt, freshHybridbox } from './helpers.js';

// The benchmark runs real sandboxes, so it needs root. These tests check the shape of what it
// prints and stores, never a timing: a shared machine's timings are not something to assert.
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test : test.skip;
const vmTest = isRoot && findGuestBoot() ? test : test.skip;
const run = promisify(execFile);

test.before(() => {
  if (isRoot) ensureBuilt();
});

/** Runs `hybridbox bench startup ARGS --json` on a fresh state root; returns the result and the root. */
async function bench(t: ExecutionContext, args: string[]): Promise<{ result: StartupResult; root: string; out: string; stderr: string }> {
  const root = mkdtempSync(join(tmpdir(), 'hbx-bench-startup-test-'));
  const out = mkdtempSync(join(tmpdir(), 'hbx-bench-startup-out-'));
  t.teardown(() => {
    rmSync(root, { recursive: true, force: true });
    rmSync(out, { recursive: true, force: true });
  });
  const r = await run(process.execPath, [CLI, 'bench', 'startup', ...args, '--json', '--out', out], {
    env: { ...process.env, HYBRIDBOX_ROOT: root },
    timeout: 170_000,
    maxBuffer: 32 * 1024 * 1024,
  });
  return { result: JSON.parse(r.stdout) as StartupResult, root, out, stderr: r.stderr };
}

/** Order, never magnitude: min <= median <= p95 <= p99 <= max holds for any timings. */
function checkStats(t: ExecutionContext, st: Stats | null | undefined, n: number, what: string): void {
  t.truthy(st, `${what} is missing`);
  if (!st) return;
  t.is(st.n, n, what);
  const v = [st.minMs, st.medianMs, st.p95Ms, st.p99Ms, st.maxMs, st.meanMs, ...st.medianCiMs];
  t.true(
    v.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0),
    `${what}: ${JSON.stringify(st)}`,
  );
  t.true(st.minMs <= st.medianMs && st.medianMs <= st.p95Ms && st.p95Ms <= st.p99Ms && st.p99Ms <= st.maxMs, what);
  t.true(st.medianCiMs[0] <= st.medianMs && st.medianMs <= st.medianCiMs[1], `${what}: the CI contains the median`);
  t.is(typeof st.noisy, 'boolean');
}

/** Every scenario asked for: n runs with finite stats, or a skip reason and nothing else. */
function checkScenarios(t: ExecutionContext, result: StartupResult, names: string[], n: number): void {
  t.deepEqual(
    result.scenarios.map((s) => s.name),
    names,
  );
  for (const s of result.scenarios) {
    if (s.skipped) {
      t.is(typeof s.skipped, 'string');
      t.is(s.totalMs.length, 0, `${s.name} is skipped but has samples`);
      continue;
    }
    t.is(s.totalMs.length, n, s.name);
    t.is(s.firstOutputMs.length, n, s.name);
    checkStats(t, s.stats, n, `${s.name} wall time`);
    checkStats(t, s.firstOutputStats, n, `${s.name} first output`);
    t.true(Object.keys(s.phasesMs).length >= 2, `${s.name} has phases`);
    for (const [k, v] of Object.entries(s.phasesMs)) {
      t.is(v.length, n, `${s.name} phase ${k}`);
      checkStats(t, s.phaseStats[k], n, `${s.name} phase ${k}`);
    }
    t.is(typeof s.description, 'string');
  }
}

function checkRatio(t: ExecutionContext, result: StartupResult, name: string): void {
  const r = result.ratios.find((x) => x.name === name);
  t.truthy(r, `ratio ${name} is missing (have: ${result.ratios.map((x) => x.name).join(', ')})`);
  t.true(typeof r!.value === 'number' && Number.isFinite(r!.value) && r!.value > 0, name);
  t.is(typeof r!.target?.max, 'number', name);
  t.is(typeof r!.target?.met, 'boolean', name);
}

rootTest('bench startup: container, host and crun-raw interleaved; well-formed JSON, stored, written to --out', async (t) => {
  t.timeout(180_000);
  const { result, root, out, stderr } = await bench(t, ['--runs', '2', '--warmup', '0', '--backends', 'container,host,crun']);

  t.is(result.kind, 'startup');
  t.like(result.options, { runs: 2, warmup: 0, image: 'busybox', command: 'echo ready' });
  checkScenarios(t, result, ['host', 'crun-raw', 'container'], 2);
  t.false(
    result.scenarios.some((s) => s.skipped),
    result.scenarios.map((s) => `${s.name}: ${s.skipped ?? 'ok'}`).join('; '),
  );
  const container = result.scenarios.find((s) => s.name === 'container')!;
  t.like(container, { kind: 'backend', backend: 'container' });
  t.deepEqual(Object.keys(container.phasesMs), ['placement', 'prepare', 'start', 'firstOutput', 'exit', 'teardown']);
  checkRatio(t, result, 'container / crun-raw');
  t.true(result.summary.length >= 1 && result.summary.length <= 3 && result.summary.every((s) => typeof s === 'string' && s.endsWith('.')), result.summary.join(' | '));
  t.regex(stderr, /wall time +n +min +median \[95% CI\] +p95 +p99 +max +noisy/);
  t.regex(stderr, /container \/ crun-raw +\d+\.\d\d +<= 1\.3/);

  // Stored in the state database of that root, under this host's key, and written to --out.
  const hb = await Hybridbox.open({ root });
  try {
    t.is(hb.measurements.hostKey, (await describeHost(hb.host)).key);
    t.is(result.host.key, hb.measurements.hostKey);
    const stored = hb.measurements.latest('startup', hb.measurements.hostKey);
    t.is(stored?.id, result.id);
    t.deepEqual(
      stored?.scenarios.map((s) => s.totalMs),
      result.scenarios.map((s) => s.totalMs),
    );
    t.deepEqual(await hb.sandboxes.list({ all: true }), [], 'no sandbox is left behind');
  } finally {
    hb.close();
  }
  const files = readdirSync(out);
  t.is(files.length, 1);
  t.is((JSON.parse(readFileSync(join(out, files[0]!), 'utf8')) as StartupResult).id, result.id);
  t.false(
    ['blkio', 'memory', 'pids'].some((c) => existsSync(`/sys/fs/cgroup/${c}/hybridbox-bench`)),
    "the baselines' cgroup parent is removed",
  );
});

vmTest('bench startup: a microVM next to raw QEMU, one run each', async (t) => {
  t.timeout(180_000);
  const { result } = await bench(t, ['--runs', '1', '--warmup', '0', '--backends', 'microvm,qemu']);
  checkScenarios(t, result, ['qemu-raw', 'microvm'], 1);
  t.false(
    result.scenarios.some((s) => s.skipped),
    result.scenarios.map((s) => `${s.name}: ${s.skipped ?? 'ok'}`).join('; '),
  );
  checkRatio(t, result, 'microvm / qemu-raw (first output)');
  t.is(result.ratios.find((r) => r.name.startsWith('microvm / qemu-raw'))!.basis, 'firstOutput');
});

rootTest('bench startup: an unknown scenario is refused before anything runs', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hbx-bench-startup-test-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const err = await t.throwsAsync(run(process.execPath, [CLI, 'bench', 'startup', '--backends', 'container,nope'], { env: { ...process.env, HYBRIDBOX_ROOT: root } }));
  t.regex(String((err as { stderr?: string }).stderr), /--backends: "container,nope" is not valid; allowed: .*host, crun-raw, podman, container/);
});

/** A stored result with one backend scenario per entry: `firstOutput` and `total` stats as given. */
function syntheticResult(key: string, backends: Record<string, { total: number[]; firstOutput: number[] }>): StartupResult {
  const scenario = (name: string, v: { total: number[]; firstOutput: number[] }): StartupScenario => ({
    name,
    kind: 'backend',
    backend: name as StartupScenario['backend'],
    description: 'synthetic',
    totalMs: v.total,
    firstOutputMs: v.firstOutput,
    phasesMs: {},
    stats: summarize(v.total),
    firstOutputStats: summarize(v.firstOutput),
    phaseStats: {},
  });
  return {
    kind: 'startup',
    startedAtMs: Date.now(),
    durationMs: 1,
    host: { key, hostname: 'test', cpuModel: '', cores: 2, memoryBytes: 0, kernel: '', accel: 'tcg', cgroup: 'hybrid', versions: {} },
    options: {},
    summary: [],
    scenarios: Object.entries(backends).map(([k, v]) => scenario(k, v)),
    ratios: [],
  };
}

rootTest('the scheduler predicts from stored measurements of this host and rules out a backend whose measured p95 exceeds the budget', async (t) => {
  const { hb, cleanup } = await freshHybridbox('hbx-bench-sched-');
  t.teardown(cleanup);
  const spec = { image: 'busybox', command: ['true'], startupBudgetMs: 1000, isolation: 'auto' as const };

  // Before any measurement: the documented defaults, said to be so.
  const before = hb.placement.place(spec);
  t.true(before.predictedStartupByBackend.every((p) => p.source === 'default'));
  t.regex(formatPlacement(before), /default estimate/);

  const runs = (ms: number) => Array.from({ length: 30 }, (_, i) => ms - 15 + i);
  // microvm: p95 of the first output is ~5000 ms; its wall time (which includes power-off) is higher still.
  const hostKey = (await describeHost(hb.host)).key;
  hb.measurements.save(
    syntheticResult(hostKey, {
      container: { total: runs(50), firstOutput: runs(40) },
      microvm: { total: [...runs(5500)], firstOutput: [...Array(27).fill(3000), 5000, 5000, 5000] },
    }),
  );
  // Another host's result is never used.
  hb.measurements.save(syntheticResult('0000000000000000', { container: { total: runs(900), firstOutput: runs(900) }, microvm: { total: runs(100), firstOutput: runs(100) } }));

  const p = hb.placement.place(spec);
  t.is(p.backend, 'container');
  t.like(p.predictedStartupMs, { source: 'measured', samples: 30, median: 39.5 });
  const microvm = p.predictedStartupByBackend.find((x) => x.backend === 'microvm');
  t.like(microvm, { source: 'measured', p95: 5000, median: 3000, samples: 30 });
  const why = p.rejected.find((r) => r.backend === 'microvm')?.reason ?? '';
  t.regex(why, /p95 of 5000 ms \(measured on this host\) is over the start-up budget of 1000 ms/);
  const text = formatPlacement(p);
  t.regex(text, /microvm +3000 ms median, 5000 ms p95 +\(measured on this host, 30 runs\)/);
  t.regex(text, /vm +\d+ ms median, \d+ ms p95 +\(default estimate\)/, 'the unmeasured libvirt VM keeps its default');

  // The same figures reach every run's placement.
  const r = await hb.sandboxes.run({ image: 'busybox', command: ['true'], startupBudgetMs: 1000 }, { remove: true });
  t.is(r.placement.rejected.find((x) => x.backend === 'microvm')?.reason, why);

  // A budget above the measured p95 lets the microVM in.
  t.is(hb.placement.place({ ...spec, startupBudgetMs: 6000, isolation: 'microvm' }).backend, 'microvm');
});
