// Startup-latency benchmark: how long `/bin/true` in a busybox container takes through the
// library, through the CLI, and through a raw `crun run` of an equivalent bundle, next to
// the cost of starting Node itself. Scenarios are measured interleaved (A B C D E, A B C D
// E, ...) so that drift of the machine hits all of them alike. See benchmarks/README.md.
//
//   node dist/benchmarks/startup.js [--runs N] [--warmup N] [--json] [--out DIR]
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Hybridbox } from '../src/api/hybridbox.js';
import { probeHost } from '../src/host/probe.js';
import type { HostInfo } from '../src/host/types.js';
import { cgroupMounts, removeCgroupTree } from '../src/runtimes/container/cgroups.js';
import { INIT_PATH } from '../src/runtimes/container/oci-config.js';
import { packageRoot } from '../src/util/paths.js';

const SCENARIOS = ['library', 'cli', 'crun-raw', 'node-e0', 'cli-version'] as const;
type Scenario = (typeof SCENARIOS)[number];

const DESCRIPTIONS: Record<Scenario, string> = {
  library: "hb.run({ image: 'busybox', command: ['/bin/true'], isolation: 'container' }, { remove: true }) in this process",
  cli: 'node dist/cli.js run --rm --isolation container busybox -- /bin/true',
  'crun-raw': 'hbx-shim --private-mounts --mask-dir /sys/fs/cgroup/unified --ro-self CRUN -- crun run --bundle DIR ID (same config.json, read-only image rootfs)',
  'node-e0': 'node -e 0',
  'cli-version': 'node dist/cli.js --version',
};

const SPEC = { image: 'busybox', command: ['/bin/true'], isolation: 'container' } as const;
/** Cgroup parent of the raw crun runs, in every hierarchy; removed at the end. */
const CGROUP_PARENT = 'hybridbox-bench';
/** Where the raw bundle mounts tini: inside the config's own /dev tmpfs (see README). */
const RAW_INIT_PATH = '/dev/.hbx/init';
/** One iteration that takes longer than this is a hang, not a measurement. */
const ITERATION_TIMEOUT_MS = 60_000;

interface Options {
  runs: number;
  warmup: number;
  json: boolean;
  out: string | null;
}

interface Stats {
  n: number;
  min: number;
  median: number;
  p95: number;
  max: number;
  mean: number;
}

interface Ratio {
  formula: string;
  value: number;
  target: number;
  pass: boolean;
}

class BenchError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

function usage(): string {
  return 'usage: node dist/benchmarks/startup.js [--runs N (30)] [--warmup N (3)] [--json] [--out DIR]';
}

const OPTION_SPEC = {
  runs: { type: 'string', default: '30' },
  warmup: { type: 'string', default: '3' },
  json: { type: 'boolean', default: false },
  out: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function parseOptions(argv: string[]): Options {
  let values: ReturnType<typeof parseArgs<{ options: typeof OPTION_SPEC }>>['values'];
  try {
    ({ values } = parseArgs({ args: argv, options: OPTION_SPEC, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new BenchError(`${(e as Error).message}\n${usage()}`, 2);
  }
  if (values.help) {
    process.stdout.write(`${usage()}\n`);
    process.exit(0);
  }
  const int = (name: string, s: string, min: number): number => {
    if (!/^\d+$/.test(s) || Number(s) < min) throw new BenchError(`--${name}: "${s}" is not valid; allowed: an integer >= ${min}`, 2);
    return Number(s);
  };
  return { runs: int('runs', values.runs, 1), warmup: int('warmup', values.warmup, 0), json: values.json, out: values.out ?? null };
}

// ---------------------------------------------------------------------------------------
// Statistics

function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const n = s.length;
  const at = (i: number): number => s[Math.min(n - 1, Math.max(0, i))]!;
  const median = n % 2 ? at((n - 1) / 2) : (at(n / 2 - 1) + at(n / 2)) / 2;
  const r = (x: number): number => Math.round(x * 100) / 100;
  return {
    n,
    min: r(at(0)),
    median: r(median),
    // Nearest rank: the smallest sample that at least 95% of the samples do not exceed.
    p95: r(at(Math.ceil(0.95 * n) - 1)),
    max: r(at(n - 1)),
    mean: r(s.reduce((a, b) => a + b, 0) / n),
  };
}

function ratios(m: Record<Scenario, Stats>): Record<string, Ratio> {
  const mk = (formula: string, value: number, target: number): Ratio => ({
    formula,
    value: Math.round(value * 1000) / 1000,
    target,
    pass: value <= target,
  });
  return {
    'library/crun-raw': mk('median(library) / median(crun-raw)', m.library.median / m['crun-raw'].median, 1.3),
    'cli/(node-e0+crun-raw)': mk('median(cli) / (median(node-e0) + median(crun-raw))', m.cli.median / (m['node-e0'].median + m['crun-raw'].median), 1.3),
    'cli-version/node-e0': mk('median(cli-version) / median(node-e0)', m['cli-version'].median / m['node-e0'].median, 1.2),
  };
}

// ---------------------------------------------------------------------------------------
// Running things

interface ProcResult {
  ms: number;
  code: number | null;
  signal: string | null;
  stderr: string;
}

/** The current child, so that a signal to the benchmark can end it. */
let current: ReturnType<typeof spawn> | null = null;

/** Wall time from spawn() to the child's exit (and its pipes closing). */
function timeSpawn(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<ProcResult> {
  return new Promise((resolvePromise, reject) => {
    let stderr = '';
    const t0 = performance.now();
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    current = child;
    // Output is drained (a full pipe would stall the child) but only stderr is kept.
    child.stdout!.resume();
    child.stderr!.on('data', (c: Buffer) => {
      if (stderr.length < 8192) stderr += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), ITERATION_TIMEOUT_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      current = null;
      reject(new BenchError(`cannot start ${file}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      current = null;
      resolvePromise({ ms, code, signal, stderr });
    });
  });
}

function lastLine(text: string): string {
  return text.trim().split('\n').filter(Boolean).pop() ?? '(no output)';
}


// ---------------------------------------------------------------------------------------
// The benchmark

interface Context {
  node: string;
  cli: string;
  shim: string;
  crun: string;
  env: NodeJS.ProcessEnv;
  hb: Hybridbox;
  bundle: string;
  rawConfig: Record<string, unknown>;
  rawSeq: number;
  /** Raw container ids started so far, for the final clean-up. */
  rawIds: string[];
}

/** Builds the raw bundle from the config.json hybridbox writes for the same spec. */
async function prepareRawBundle(hb: Hybridbox, bundle: string): Promise<Record<string, unknown>> {
  const info = await hb.create(SPEC);
  let config: Record<string, unknown>;
  try {
    const details = (await hb.inspect(info.id)).backendDetails as { ociConfig?: Record<string, unknown> | null };
    if (!details.ociConfig) throw new BenchError(`sandbox ${info.id} has no OCI config to copy`);
    config = structuredClone(details.ociConfig);
  } finally {
    await hb.remove(info.id, { force: true });
  }
  // The image's own root filesystem, read-only (the library mounts an overlay over it instead).
  config.root = { path: hb.images.resolve(SPEC.image).rootfs, readonly: true };
  // tini stays PID 1, but its mount target cannot be /.hbx/init: the image has no /.hbx,
  // and crun would create it in the shared image directory (it makes the root read-only
  // only after the mounts). Inside the config's own /dev tmpfs the target costs nothing.
  const mounts = (config.mounts ?? []) as { destination: string }[];
  const init = mounts.find((m) => m.destination === INIT_PATH);
  if (init) {
    init.destination = RAW_INIT_PATH;
    const proc = config.process as { args: string[] };
    if (proc.args[0] === INIT_PATH) proc.args[0] = RAW_INIT_PATH;
  }
  const linux = config.linux as { namespaces?: { type: string; path?: string }[] };
  if (linux.namespaces?.some((ns) => ns.path)) throw new BenchError('the sandbox config joins an existing namespace; the raw bundle needs a self-contained one');
  mkdirSync(bundle, { recursive: true });
  return config;
}

async function runRaw(ctx: Context): Promise<ProcResult> {
  const id = `bench-${process.pid}-${++ctx.rawSeq}`;
  ctx.rawIds.push(id);
  const config = structuredClone(ctx.rawConfig);
  (config.linux as { cgroupsPath: string }).cgroupsPath = `/${CGROUP_PARENT}/${id}`;
  writeFileSync(join(ctx.bundle, 'config.json'), JSON.stringify(config));
  const args = [
    '--private-mounts', '--mask-dir', '/sys/fs/cgroup/unified', '--ro-self', ctx.crun,
    // One prctl(2), so that a killed benchmark takes crun with it.
    '--pdeathsig', 'KILL',
    '--', ctx.crun, 'run', '--bundle', ctx.bundle, id,
  ];
  const r = await timeSpawn(ctx.shim, args, ctx.env);
  await cleanupRaw(ctx, id);
  return r;
}

/** What a raw run leaves: crun state (a failed or killed run) and cgroup directories. */
async function cleanupRaw(ctx: Context, id: string): Promise<void> {
  if (existsSync(`/run/crun/${id}`)) {
    await timeSpawn(ctx.shim, ['--private-mounts', '--mask-dir', '/sys/fs/cgroup/unified', '--ro-self', ctx.crun, '--', ctx.crun, 'delete', '--force', id], ctx.env);
    rmSync(`/run/crun/${id}`, { recursive: true, force: true });
  }
  const left = removeCgroupTree(join(CGROUP_PARENT, id));
  if (left.length) throw new BenchError(`could not remove cgroup ${left[0]} of raw container ${id}`);
}

async function runOnce(ctx: Context, s: Scenario): Promise<number> {
  const fail = (what: string, detail: string): never => {
    throw new BenchError(`scenario "${s}" failed: ${what}; ${detail}`);
  };
  const check = (r: ProcResult): number => {
    if (r.code !== 0) {
      // Others rebuilding dist/ mid-run replace the chunk files under a running benchmark.
      const hint = /Cannot find module .*dist\/chunks\//.test(r.stderr) ? ' (dist/ was rebuilt while the benchmark ran: run it again)' : '';
      fail(r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`, `stderr: ${lastLine(r.stderr)}${hint}`);
    }
    return r.ms;
  };
  switch (s) {
    case 'library': {
      const t0 = performance.now();
      const r = await ctx.hb.run(SPEC, { remove: true });
      const ms = performance.now() - t0;
      if (r.exitCode !== 0) fail(`exit code ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}`, `stderr: ${lastLine(r.stderr)}`);
      return ms;
    }
    case 'cli':
      return check(await timeSpawn(ctx.node, [ctx.cli, 'run', '--rm', '--isolation', 'container', 'busybox', '--', '/bin/true'], ctx.env));
    case 'crun-raw':
      return check(await runRaw(ctx));
    case 'node-e0':
      return check(await timeSpawn(ctx.node, ['-e', '0'], ctx.env));
    case 'cli-version':
      return check(await timeSpawn(ctx.node, [ctx.cli, '--version'], ctx.env));
  }
}

function hostDescription(host: HostInfo): Record<string, unknown> {
  return {
    cpuModel: host.cpuModel,
    cores: host.cpus,
    arch: host.arch,
    kernel: host.kernelRelease,
    memTotalBytes: host.memTotalBytes,
    crunVersion: host.tools.crun?.version ?? null,
    tiniVersion: host.tools.tini?.version ?? null,
    kvm: host.kvm.usable,
    kvmReason: host.kvm.reason,
    cgroupLayout: host.cgroup.layout,
    node: process.version,
  };
}

const fmt = (x: number): string => x.toFixed(1);

function formatTable(result: { host: Record<string, unknown>; options: { runs: number; warmup: number }; scenarios: Record<string, Stats>; ratios: Record<string, Ratio> }): string {
  const h = result.host;
  const lines = [
    `startup benchmark: ${result.options.runs} runs (+${result.options.warmup} warm-up), interleaved; times in ms`,
    `host: ${h.cpuModel}, ${h.cores} cores, kernel ${h.kernel}, crun ${h.crunVersion ?? '-'}, KVM ${h.kvm ? 'yes' : 'no'}, cgroup ${h.cgroupLayout}, node ${h.node}`,
    '',
  ];
  const rows = [['scenario', 'n', 'min', 'median', 'p95', 'max']];
  for (const [name, st] of Object.entries(result.scenarios)) rows.push([name, String(st.n), fmt(st.min), fmt(st.median), fmt(st.p95), fmt(st.max)]);
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) lines.push(r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  '));
  lines.push('');
  const rr = [['ratio (medians)', 'value', 'target', 'result']];
  for (const [name, r] of Object.entries(result.ratios)) rr.push([name, r.value.toFixed(2), `<= ${r.target}`, r.pass ? 'pass' : 'FAIL']);
  const w2 = rr[0]!.map((_, i) => Math.max(...rr.map((r) => r[i]!.length)));
  for (const r of rr) lines.push(r.map((c, i) => (i === 0 ? c.padEnd(w2[i]!) : c.padStart(w2[i]!))).join('  '));
  return lines.join('\n') + '\n';
}

// Signals: the first one stops after the current iteration and cleans up; a second one exits.
let interrupted: NodeJS.Signals | null = null;
function onSignal(sig: NodeJS.Signals): void {
  if (interrupted) {
    process.stderr.write(`startup benchmark: ${sig} again, exiting without clean-up\n`);
    process.exit(130);
  }
  interrupted = sig;
  current?.kill('SIGTERM');
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new BenchError('container sandboxes need root: run the benchmark as root');
  const pkgRoot = packageRoot();
  const cli = join(pkgRoot, 'dist', 'cli.js');
  const shim = process.env.HYBRIDBOX_SHIM ?? join(pkgRoot, 'dist', 'hbx-shim');
  for (const f of [cli, shim]) if (!existsSync(f)) throw new BenchError(`${f} is missing; run \`npm run build\` first`);

  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  const log = (s: string): void => void process.stderr.write(s);
  const tty = process.stderr.isTTY;

  // Everything this run creates lives under one temporary directory: the state root, the
  // raw bundle. Host-side leftovers (cgroups, crun state) are tracked and removed too.
  const work = mkdtempSync(join(os.tmpdir(), 'hbx-bench-'));
  const root = join(work, 'state');
  let hb: Hybridbox | null = null;
  let ctx: Context | null = null;
  try {
    const host = await probeHost({ cacheDir: join(root, 'cache') });
    const crun = host.tools.crun?.path;
    if (!crun) throw new BenchError('crun is not installed (apt-get install crun)');
    hb = await Hybridbox.open({ root, host, ociRuntime: 'crun' });
    await hb.ensureBaseImages();
    ctx = {
      node: process.execPath,
      cli,
      shim,
      crun,
      env: { ...process.env, HYBRIDBOX_ROOT: root },
      hb,
      bundle: join(work, 'bundle'),
      rawConfig: {},
      rawSeq: 0,
      rawIds: [],
    };
    ctx.rawConfig = await prepareRawBundle(hb, ctx.bundle);

    const samples = Object.fromEntries(SCENARIOS.map((s) => [s, [] as number[]])) as Record<Scenario, number[]>;
    const loadStart = os.loadavg();
    const total = opts.warmup + opts.runs;
    for (let round = 0; round < total; round++) {
      const warm = round < opts.warmup;
      if (tty) log(`\r${warm ? 'warm-up' : 'round'} ${warm ? round + 1 : round - opts.warmup + 1}/${warm ? opts.warmup : opts.runs}   `);
      for (const s of SCENARIOS) {
        if (interrupted) throw new BenchError(`interrupted by ${interrupted}`);
        let ms: number;
        try {
          ms = await runOnce(ctx, s);
        } catch (e) {
          if (interrupted) throw new BenchError(`interrupted by ${interrupted}`);
          const where = warm ? `warm-up round ${round + 1}` : `round ${round - opts.warmup + 1}`;
          throw new BenchError(`${(e as Error).message} (${where})`);
        }
        if (!warm) samples[s].push(ms);
      }
    }
    if (tty) log('\r\x1b[K');

    const scenarios = Object.fromEntries(SCENARIOS.map((s) => [s, stats(samples[s])])) as Record<Scenario, Stats>;
    const result = {
      benchmark: 'startup',
      schemaVersion: 1,
      timestamp: new Date().toISOString(),
      hybridboxVersion: (JSON.parse(readFileSync(join(pkgRoot, 'package.json'), 'utf8')) as { version: string }).version,
      options: { runs: opts.runs, warmup: opts.warmup, order: [...SCENARIOS] },
      host: { ...hostDescription(host), loadavgStart: loadStart, loadavgEnd: os.loadavg() },
      unit: 'ms',
      scenarios,
      ratios: ratios(scenarios),
      descriptions: DESCRIPTIONS,
      samples,
    };
    const table = formatTable(result);
    if (opts.json) {
      // stdout stays machine-readable; the table goes to stderr for whoever is watching.
      process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      log(table);
    } else process.stdout.write(table);
    if (opts.out) {
      const dir = resolve(opts.out);
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `startup-${result.timestamp.replace(/[:.]/g, '-')}.json`);
      writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
      log(`wrote ${file}\n`);
    }
    return 0;
  } finally {
    if (tty) log('\r\x1b[K');
    const problems: string[] = [];
    const attempt = async (what: string, f: () => unknown): Promise<void> => {
      try {
        await f();
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
      }
    };
    if (ctx) for (const id of ctx.rawIds) await attempt(`raw container ${id}`, () => cleanupRaw(ctx!, id));
    // The shared parent goes too, unless another benchmark is still using it (then it is
    // not empty and stays: never walk into it, those children are not ours).
    for (const m of cgroupMounts()) {
      try {
        rmdirSync(join(m.path, CGROUP_PARENT));
      } catch {
        /* absent, or in use */
      }
    }
    if (hb) {
      const h = hb;
      await attempt('sandboxes', async () => {
        for (const s of await h.list({ all: true })) await h.remove(s.id, { force: true });
        await h.cleanupOrphans();
      });
      await attempt('state store', () => h.close());
    }
    await attempt('temporary directory', () => rmSync(work, { recursive: true, force: true }));
    for (const p of problems) log(`startup benchmark: clean-up: ${p}\n`);
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const msg = e instanceof BenchError ? e.message : ((e as Error)?.stack ?? String(e));
    process.stderr.write(`startup benchmark: ${msg}\n`);
    process.exitCode = e instanceof BenchError ? e.exitCode : 1;
  },
);
