import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';

// The startup benchmark runs real containers, so it needs root. This test checks only the
// shape of its output: timings on a shared machine are not something a test can assert.
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test : test.skip;
const run = promisify(execFile);

const bench = resolve('dist/benchmarks/startup.js');
// The container scenarios only: the VM ones take seconds per run under TCG (one test below
// runs the microvm pair once; the libvirt pair, ~8 s a round, is left to the benchmark itself).
const SCENARIOS = ['library', 'cli', 'crun-raw', 'node-e0', 'cli-version'];
const RATIOS = ['library/crun-raw', 'cli/(node-e0+crun-raw)', 'cli-version/node-e0'];
const VM_SCENARIOS = ['microvm', 'microvm-raw'];
const vmTest = isRoot && findGuestBoot() ? test : test.skip;

type Result = {
  options: { runs: number; warmup: number; vmRuns: number; scenarios: string[] };
  host: Record<string, unknown>;
  scenarios: Record<string, Record<string, unknown>>;
  firstOutput: Record<string, Record<string, unknown>>;
  phases: Record<string, Record<string, Record<string, unknown>>>;
  ratios: Record<string, { value: unknown; target: unknown; pass: unknown }>;
  samples: Record<string, unknown[]>;
  firstOutputSamples: Record<string, unknown[]>;
};

/** Order only, never magnitude: min <= median <= p95 <= max holds for any timings. */
function checkStats(t: ExecutionContext, st: Record<string, unknown> | undefined, n: number, what: string): void {
  t.truthy(st, `${what} is missing`);
  if (!st) return;
  t.is(st.n, n, what);
  for (const k of ['min', 'median', 'p95', 'max']) {
    t.true(typeof st[k] === 'number' && Number.isFinite(st[k]) && (st[k] as number) > 0, `${what}.${k} = ${String(st[k])}`);
  }
  t.true((st.min as number) <= (st.median as number) && (st.median as number) <= (st.p95 as number) && (st.p95 as number) <= (st.max as number), what);
}

function checkRatio(t: ExecutionContext, result: Result, name: string): void {
  const ratio = result.ratios[name];
  t.truthy(ratio, `ratio ${name} is missing`);
  t.true(typeof ratio!.value === 'number' && Number.isFinite(ratio!.value), name);
  t.is(typeof ratio!.target, 'number', name);
  t.is(typeof ratio!.pass, 'boolean', name);
}

test.before(async () => {
  // The benchmark, the CLI and the shim it drives all come from the build.
  if (!existsSync(bench) || !existsSync('dist/cli.js') || !existsSync('dist/hbx-shim')) {
    await run(process.execPath, ['scripts/build.mjs'], { timeout: 120_000 });
  }
});

rootTest('startup benchmark prints well-formed JSON and writes the same to --out', async (t) => {
  t.timeout(150_000);
  const out = mkdtempSync(join(tmpdir(), 'hbx-bench-test-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));

  const r = await run(process.execPath, [bench, '--scenarios', SCENARIOS.join(','), '--runs', '2', '--warmup', '0', '--json', '--out', out], {
    timeout: 140_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  const result = JSON.parse(r.stdout) as Result;

  t.is(result.options.runs, 2);
  t.is(result.options.warmup, 0);
  t.deepEqual(result.options.scenarios, SCENARIOS);
  t.is(typeof result.host.cpuModel, 'string');
  t.is(typeof result.host.cores, 'number');
  t.is(typeof result.host.kernel, 'string');
  t.is(typeof result.host.kvm, 'boolean');
  t.true('crunVersion' in result.host);

  t.deepEqual(Object.keys(result.scenarios).sort(), [...SCENARIOS].sort());
  for (const s of SCENARIOS) {
    checkStats(t, result.scenarios[s], 2, s);
    t.is(result.samples[s]!.length, 2, s);
  }
  // No VM scenario was asked for: no first-output figures, no VM ratios.
  t.deepEqual(result.firstOutput, {});
  t.deepEqual(Object.keys(result.ratios).sort(), [...RATIOS].sort());
  for (const name of RATIOS) checkRatio(t, result, name);

  // The table goes to stderr when stdout carries the JSON.
  t.regex(r.stderr, /scenario\s+n\s+min\s+median\s+p95\s+max/);

  const files = readdirSync(out);
  t.is(files.length, 1);
  t.regex(files[0]!, /^startup-.*\.json$/);
  t.deepEqual(JSON.parse(readFileSync(join(out, files[0]!), 'utf8')), result);
});

vmTest('VM scenarios report wall time, time to first output and phases, interleaved with --vm-runs', async (t) => {
  t.timeout(60_000);
  // Two rounds, VM scenarios in the first only: ~1 s per microvm boot under TCG.
  const r = await run(process.execPath, [bench, '--scenarios', ['node-e0', ...VM_SCENARIOS].join(','), '--runs', '2', '--vm-runs', '1', '--warmup', '0', '--json'], {
    timeout: 50_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  const result = JSON.parse(r.stdout) as Result;
  t.is(result.options.vmRuns, 1);
  t.deepEqual(Object.keys(result.scenarios), ['node-e0', ...VM_SCENARIOS]);
  checkStats(t, result.scenarios['node-e0'], 2, 'node-e0');
  t.deepEqual(Object.keys(result.firstOutput), VM_SCENARIOS);
  for (const s of VM_SCENARIOS) {
    checkStats(t, result.scenarios[s], 1, s);
    checkStats(t, result.firstOutput[s], 1, `${s} first output`);
    t.is(result.samples[s]!.length, 1, s);
    t.is(result.firstOutputSamples[s]!.length, 1, s);
    checkStats(t, result.phases[s]?.firstOutput, 1, `${s} phases.firstOutput`);
  }
  for (const p of ['overlay', 'connected', 'ready', 'exitFrame', 'qemuExit']) checkStats(t, result.phases['microvm-raw']?.[p], 1, `microvm-raw phases.${p}`);
  t.deepEqual(Object.keys(result.ratios), ['microvm/microvm-raw']);
  checkRatio(t, result, 'microvm/microvm-raw');
  t.is(result.ratios['microvm/microvm-raw']!.target, 1.15);
  t.regex(r.stderr, /first output\s+n\s+min\s+median\s+p95\s+max/);
});

test('unknown scenarios and a zero --vm-runs are refused with exit code 2', async (t) => {
  for (const args of [['--scenarios', 'library,nope'], ['--scenarios', ''], ['--vm-runs', '0']]) {
    const e = await t.throwsAsync(run(process.execPath, [bench, ...args], { timeout: 20_000 }));
    t.is((e as { code?: number }).code, 2, args.join(' '));
    t.regex((e as { stderr?: string }).stderr ?? '', /is not valid; allowed/, args.join(' '));
  }
});
