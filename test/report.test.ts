import { summarizeService } from '../src/bench/service/index.js';
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { summarize } from '../src/bench/stats.js';
import type { DensityResult, HostDescription, IsolationResult, ServiceBenchResult, StartupResult, StartupScenario } from '../src/measurements/index.js';
import { CLI, freshHybridbox } from './helpers.js';

// Density starts real containers, so this needs root. Start-up and isolation results are
// synthetic (their benchmarks take minutes): shaped exactly as src/bench/types.ts says.
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test : test.skip;
const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';
const EXPECTED_CHARTS = ['startup-distribution', 'startup-phases', 'isolation-degradation', 'density-overhead', 'density-ramp-memory', 'density-ramp-time', 'service-throughput'];

/** Deterministic samples around a median, with a tail. */
function samples(medianMs: number, n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => Math.round(medianMs * (0.85 + ((i * 37 + seed * 11) % 23) / 50 + (i === n - 1 ? 0.6 : 0)) * 10) / 10);
}

function scenario(name: string, kind: 'backend' | 'baseline', backend: StartupScenario['backend'], medianMs: number, seed: number, phases: Record<string, number> = {}): StartupScenario {
  const totalMs = samples(medianMs, 12, seed);
  const phasesMs = Object.fromEntries(Object.entries(phases).map(([p, ms], i) => [p, samples(ms, 12, seed + i)]));
  return {
    name,
    kind,
    backend,
    description: `${name} (synthetic)`,
    totalMs,
    firstOutputMs: totalMs.map((t) => Math.round(t * 0.9 * 10) / 10),
    phasesMs,
    stats: summarize(totalMs),
    firstOutputStats: summarize(totalMs.map((t) => t * 0.9)),
    phaseStats: Object.fromEntries(Object.entries(phasesMs).map(([p, v]) => [p, summarize(v)])),
  };
}

function startupResult(host: HostDescription): StartupResult {
  return {
    kind: 'startup',
    startedAtMs: Date.now() - 60_000,
    durationMs: 45_000,
    host,
    options: { runs: 12, warmup: 2, image: 'busybox', command: 'echo ready' },
    summary: ['A container started in 48 ms, 1.2x raw `crun run`.'],
    scenarios: [
      scenario('container', 'backend', 'container', 48, 1, { placement: 1, create: 12, start: 30, teardown: 5 }),
      scenario('crun-raw', 'baseline', 'container', 40, 2),
      scenario('microvm', 'backend', 'microvm', 1250, 3, { placement: 1, create: 40, boot: 1100, teardown: 60 }),
      scenario('qemu-raw', 'baseline', 'microvm', 1150, 4),
      scenario('vm', 'backend', 'vm', 3900, 5, { placement: 1, create: 300, boot: 3300, teardown: 250 }),
      {
        ...scenario('podman', 'baseline', 'container', 1, 6),
        totalMs: [],
        firstOutputMs: [],
        phasesMs: {},
        stats: summarize([]),
        firstOutputStats: null,
        phaseStats: {},
        skipped: 'podman is not installed',
      },
    ],
    ratios: [
      { name: 'container / crun-raw', numerator: 'container', denominator: 'crun-raw', value: 1.2, target: { max: 1.5, met: true } },
      { name: 'microvm / qemu-raw', numerator: 'microvm', denominator: 'qemu-raw', value: 1.09, target: { max: 1.15, met: true } },
    ],
  };
}

function isolationResult(host: HostDescription): IsolationResult {
  const perf = (backend: 'container' | 'microvm', neighbour: IsolationResult['performance'][number]['neighbour'], score: number, degradationPct: number | null, contained: boolean | null) => ({
    backend,
    neighbour,
    victimScore: [score, score * 1.02, score * 0.98],
    degradationPct,
    contained,
    containment: contained === null ? 'no neighbour' : contained ? 'held at its limit (cgroup counters)' : 'limit not reached',
    hostProbeMs: summarize([2, 2.5, 3, 2.2, 2.4]),
    hostSleepOvershootMs: summarize([0.1, 0.2, 0.4, 0.1, 0.3]),
  });
  return {
    kind: 'isolation',
    startedAtMs: Date.now() - 30_000,
    durationMs: 120_000,
    host,
    options: { backends: ['container', 'microvm'], quick: true },
    summary: ['A kernel panic in a microVM left the host and the container running.'],
    performance: [
      perf('container', 'none', 1000, null, null),
      perf('container', 'cpu-hog', 560, 44, true),
      perf('container', 'memory-bomb', 930, 7, true),
      perf('microvm', 'none', 300, null, null),
      perf('microvm', 'cpu-hog', 250, 17, true),
      perf('microvm', 'memory-bomb', 296, 1.3, false),
    ],
    security: [
      { probe: 'kernel shared with host', values: { container: { value: 'yes', safe: false }, microvm: { value: 'no (6.1 guest)', safe: true }, host: { value: 'yes', safe: null } } },
      {
        probe: 'mount succeeds',
        values: { container: { value: 'EPERM', safe: true }, microvm: { value: 'yes, in the guest', safe: true }, host: { value: 'yes', safe: false } },
        variants: { 'container:untrusted': { value: 'EPERM (user namespace)', safe: true } },
      },
      { probe: 'host PIDs visible', values: { container: { value: 'no', safe: true }, microvm: { value: 'no', safe: true } } },
    ],
    fault: [
      { fault: 'Kernel panic', in: 'microvm', survivors: [{ backend: 'container', name: 'bystander', keptRunning: true }], hostUp: true, detail: 'echo c > /proc/sysrq-trigger in the guest' },
      { fault: 'Fork bomb', in: 'container', survivors: [{ backend: 'microvm', name: 'bystander', keptRunning: true }], hostUp: true, detail: 'stopped at pids.max' },
    ],
  };
}

function serviceResult(host: DensityResult['host']): ServiceBenchResult {
  const st = (m: number, seed: number) => summarize(samples(m, 20, seed));
  const r: ServiceBenchResult = {
    kind: 'service',
    startedAtMs: Date.now(),
    durationMs: 20_000,
    host,
    options: { runs: 20, image: 'busybox' },
    overhead: { apiMs: st(19, 7), libraryMs: st(15, 8), medianOverheadMs: 4 },
    throughput: [
      { backend: 'container', concurrency: 1, runs: 40, runsPerSecond: 50, p50Ms: 18, p99Ms: 39 },
      { backend: 'container', concurrency: 4, runs: 40, runsPerSecond: 77, p50Ms: 51, p99Ms: 75 },
      { backend: 'microvm', concurrency: 1, runs: 8, runsPerSecond: 1.4, p50Ms: 689, p99Ms: 830 },
    ],
    cli: { throughServiceMs: st(106, 9), nodeMs: st(52, 10), crunRawMs: st(21, 11), ratioToFloor: 1.45, crunSkipped: null },
    summary: [],
  };
  r.summary = summarizeService(r);
  return r;
}

rootTest('bench density measures and cleans up; report renders every section as one self-contained page', async (t) => {
  t.timeout(120_000);
  if (!existsSync(CHROMIUM)) return t.fail(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)`);
  const { hb, root, cleanup } = await freshHybridbox('hbx-report-test-');
  t.teardown(cleanup);
  const env = { ...process.env, HYBRIDBOX_ROOT: root };

  // 1. Density: two containers, measured and removed.
  const d = await run(process.execPath, [CLI, 'bench', 'density', '--count', '2', '--backends', 'container', '--json'], { env, timeout: 60_000, maxBuffer: 8 << 20 });
  const density = JSON.parse(d.stdout) as DensityResult;
  t.is(density.kind, 'density');
  t.is(typeof density.host.key, 'string');
  t.true(density.memoryBudgetBytes > 0);
  t.is(density.backends.length, 1);
  const c = density.backends[0]!;
  t.is(c.backend, 'container');
  t.is(c.started, 2);
  t.regex(c.stopReason, /count reached/);
  t.deepEqual(
    c.ramp.map((p) => p.count),
    [0, 1, 2],
  );
  t.true(c.ramp.every((p, i) => p.hostUsedBytes > 0 && (i === 0 || p.elapsedMs >= c.ramp[i - 1]!.elapsedMs)));
  t.true(c.startRatePerS > 0);
  t.true(c.hostRssBytesPerSandbox > 0, 'the shim and runtime have resident memory');
  t.true(c.overheadBytesPerSandbox >= c.hostRssBytesPerSandbox);
  t.true(density.summary.length > 0);
  t.deepEqual(await hb.sandboxes.list({ all: true }), [], 'no sandbox is left');
  t.deepEqual(readdirSync(join(root, 'sandboxes')), [], 'no sandbox directory is left');
  const results = hb.measurements;
  t.is(results.latest('density')?.id, density.id);

  // 2. Synthetic start-up and isolation results, so every section has something to show.
  results.save(startupResult(density.host));
  results.save(isolationResult(density.host));
  results.save(serviceResult(density.host));

  // 3. The report.
  const dir = mkdtempSync(join(tmpdir(), 'hbx-report-'));
  const file = join(dir, 'report.html');
  const r = await run(process.execPath, [CLI, 'report', '--out', file], { env, timeout: 60_000, maxBuffer: 8 << 20 });
  t.regex(r.stdout, /== start-up/);
  t.regex(r.stdout, /== isolation/);
  t.regex(r.stdout, /== density/);
  t.regex(r.stdout, /== service/);
  t.regex(r.stdout, new RegExp(`wrote ${file} .*7 charts`));
  const html = readFileSync(file, 'utf8');
  t.notRegex(html, /<script|(?:src|href)="(?!data:|#)/i, 'nothing to load: no script, no external reference');
  t.notRegex(html, /not measured yet/i, 'every section has results');
  t.deepEqual(readdirSync(dir), ['report.html'], 'the temporary file was renamed into place');
  const j = await run(process.execPath, [CLI, 'report', '--json', '--out', file], { env, timeout: 60_000, maxBuffer: 8 << 20 });
  const data = JSON.parse(j.stdout) as { startup: StartupResult; isolation: IsolationResult; density: DensityResult; summary: string[]; charts: string[] };
  t.deepEqual(data.charts.sort(), [...EXPECTED_CHARTS].sort());
  t.is(data.density.id, density.id);
  t.regex(data.summary.join(' '), /A microVM started \d+x slower than a container here .*, and kept a kernel panic to itself/);

  // 4. In a real browser: every chart drawn, nothing fetched, no errors.
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const errors: string[] = [];
    const requests: string[] = [];
    page.on('console', (m) => void (m.type() === 'error' && errors.push(m.text())));
    page.on('pageerror', (e) => void errors.push(e.message));
    page.on('request', (req) => void requests.push(req.url()));
    const url = pathToFileURL(file).href;
    await page.goto(url, { waitUntil: 'load' });
    for (const name of EXPECTED_CHARTS) {
      const svg = page.locator(`figure[data-chart="${name}"] svg`);
      t.is(await svg.count(), 1, `${name}: one <svg>`);
      const box = await svg.boundingBox();
      t.true(!!box && box.width > 100 && box.height > 50, `${name}: drawn with a size (${JSON.stringify(box)})`);
      t.true((await svg.locator('g.role-mark > *').count()) > 0, `${name}: has data marks`);
    }
    t.true((await page.locator('table.matrix td.safe').count()) > 0, 'security matrix: safe cells');
    t.true((await page.locator('table.matrix td.unsafe').count()) > 0, 'security matrix: unsafe cells');
    t.is(await page.locator('table.matrix th').filter({ hasText: 'container:untrusted' }).count(), 1, 'security matrix: a variant column');
    t.is(await page.locator('ul.faults li').count(), 2, 'fault list');
    t.deepEqual(errors, [], 'no console errors');
    t.deepEqual(
      requests.filter((u) => u !== url && !u.startsWith('data:')),
      [],
      'no request beyond the file itself',
    );
    const png = join(dir, 'report.png');
    await page.screenshot({ path: png, fullPage: true });
    t.true(readFileSync(png).length > 10_000);
    t.log(`report: ${file}`);
    t.log(`screenshot: ${png}`);
  } finally {
    await browser.close();
  }
});
