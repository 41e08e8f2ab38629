import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

// The startup benchmark runs real containers, so it needs root. This test checks only the
// shape of its output: timings on a shared machine are not something a test can assert.
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test : test.skip;
const run = promisify(execFile);

const bench = resolve('dist/benchmarks/startup.js');
const SCENARIOS = ['library', 'cli', 'crun-raw', 'node-e0', 'cli-version'];
const RATIOS = ['library/crun-raw', 'cli/(node-e0+crun-raw)', 'cli-version/node-e0'];

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

  const r = await run(process.execPath, [bench, '--runs', '2', '--warmup', '0', '--json', '--out', out], {
    timeout: 140_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  const result = JSON.parse(r.stdout) as {
    options: { runs: number; warmup: number };
    host: Record<string, unknown>;
    scenarios: Record<string, Record<string, unknown>>;
    ratios: Record<string, { value: unknown; target: unknown; pass: unknown }>;
    samples: Record<string, unknown[]>;
  };

  t.is(result.options.runs, 2);
  t.is(result.options.warmup, 0);
  t.is(typeof result.host.cpuModel, 'string');
  t.is(typeof result.host.cores, 'number');
  t.is(typeof result.host.kernel, 'string');
  t.is(typeof result.host.kvm, 'boolean');
  t.true('crunVersion' in result.host);

  t.deepEqual(Object.keys(result.scenarios).sort(), [...SCENARIOS].sort());
  for (const s of SCENARIOS) {
    const st = result.scenarios[s]!;
    t.is(st.n, 2, s);
    for (const k of ['min', 'median', 'p95', 'max']) {
      t.true(typeof st[k] === 'number' && Number.isFinite(st[k]) && (st[k] as number) > 0, `${s}.${k} = ${String(st[k])}`);
    }
    // Order only, never magnitude: min <= median <= p95 <= max holds for any timings.
    t.true((st.min as number) <= (st.median as number) && (st.median as number) <= (st.p95 as number) && (st.p95 as number) <= (st.max as number), s);
    t.is(result.samples[s]!.length, 2, s);
  }

  for (const name of RATIOS) {
    const ratio = result.ratios[name];
    t.truthy(ratio, `ratio ${name} is missing`);
    t.true(typeof ratio!.value === 'number' && Number.isFinite(ratio!.value), name);
    t.is(typeof ratio!.target, 'number', name);
    t.is(typeof ratio!.pass, 'boolean', name);
  }

  // The table goes to stderr when stdout carries the JSON.
  t.regex(r.stderr, /scenario\s+n\s+min\s+median\s+p95\s+max/);

  const files = readdirSync(out);
  t.is(files.length, 1);
  t.regex(files[0]!, /^startup-.*\.json$/);
  t.deepEqual(JSON.parse(readFileSync(join(out, files[0]!), 'utf8')), result);
});
