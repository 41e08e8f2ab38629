// `hybridbox bench startup`: how long each backend takes to run one short workload, next to
// raw baselines (the host's own shell, `crun run`, `podman run`, QEMU, `virsh create`) in the
// same run. Scenarios are measured interleaved (A B C ..., A B C ..., ...) so that drift of
// the machine hits all of them alike; what is compared are ratios of medians from one run.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type { Hybridbox } from '../api/index.js';
import { HybridboxError, ImageNotFoundError } from '../errors.js';
import { ensureLibvirtd } from '../runtimes/vm/libvirt.js';
import { packageRoot } from '../util/paths.js';
import { describeHost } from './host.js';
import { libraryScenario } from './startup/library.js';
import { podmanScenario } from './startup/podman.js';
import { crunRawScenario, hostScenario, qemuRawScenario, removeCgroupParent, virshRawScenario } from './startup/raw.js';
import { SCENARIOS, VM_SCENARIOS, type BenchContext, type Measurement, type Scenario, type ScenarioName } from './startup/types.js';
import { fmtMs, fmtRatio } from './report/format.js';
import { summarize } from './stats.js';
import type { StartupRatio, StartupResult, StartupScenario, Stats } from '../measurements/index.js';

export { SCENARIOS, VM_SCENARIOS, type ScenarioName } from './startup/types.js';

export interface StartupBenchOptions {
  /** Which scenarios, any order (they always run in SCENARIOS order). */
  scenarios: readonly ScenarioName[];
  /** Measured runs per scenario. */
  runs: number;
  /** Runs before those, per scenario, not counted. */
  warmup: number;
  /** The VM scenarios run in the first `vmRuns` measured rounds only (default: every round). */
  vmRuns?: number;
  image: string;
  /** The workload, run as `/bin/sh -c COMMAND` by every scenario. */
  command: string;
  /** Progress for a watching human (one line per call, or `\r`-updated on a terminal). */
  progress?: (text: string) => void;
  /** Checked between iterations: once true, the benchmark stops, cleans up and throws. */
  interrupted?: () => string | null;
}

/** The targets the project has set for ratios of medians (see benchmarks/README.md). */
const RATIOS: { num: ScenarioName; den: ScenarioName; basis: 'total' | 'firstOutput'; max?: number }[] = [
  { num: 'container', den: 'crun-raw', basis: 'total', max: 1.3 },
  { num: 'container', den: 'podman', basis: 'total', max: 1 },
  { num: 'microvm', den: 'qemu-raw', basis: 'firstOutput', max: 1.15 },
  { num: 'vm', den: 'virsh-raw', basis: 'firstOutput', max: 1.15 },
  { num: 'microvm', den: 'container', basis: 'firstOutput' },
  { num: 'vm', den: 'container', basis: 'firstOutput' },
];

function scenarioFor(ctx: BenchContext, name: ScenarioName): Scenario {
  switch (name) {
    case 'host':
      return hostScenario(ctx);
    case 'crun-raw':
      return crunRawScenario(ctx);
    case 'podman':
      return podmanScenario(ctx);
    case 'qemu-raw':
      return qemuRawScenario(ctx);
    case 'virsh-raw':
      return virshRawScenario(ctx);
    case 'container':
    case 'microvm':
    case 'vm':
      return libraryScenario(ctx, name);
  }
}

interface Track {
  s: Scenario;
  skipped: string | null;
  /** Set when an iteration failed: the scenario stops, its samples are dropped. */
  failed: boolean;
  samples: Measurement[];
}

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/**
 * Runs the startup benchmark with `hb` (its state root, its backends) and returns the
 * result; the caller stores and prints it. Scenarios this host cannot run are skipped with
 * the reason; a scenario whose iteration fails is reported as skipped with the failure.
 */
export async function runStartupBench(hb: Hybridbox, opts: StartupBenchOptions): Promise<{ result: StartupResult; failures: string[] }> {
  const startedAtMs = Date.now();
  const t0 = performance.now();
  const progress = opts.progress ?? (() => undefined);
  const vmRuns = Math.min(opts.vmRuns ?? opts.runs, opts.runs);
  if (!(await hb.images.ensureBase(opts.image))) throw new ImageNotFoundError(opts.image, hb.images.list());
  const shim = process.env.HYBRIDBOX_SHIM ?? join(packageRoot(), 'dist', 'hbx-shim');
  if (!existsSync(shim)) throw new HybridboxError(`${shim} is missing; run \`npm run build\` first`);
  const work = mkdtempSync(join(os.tmpdir(), 'hbx-bench-startup-'));
  const ctx: BenchContext = { hb, image: opts.image, command: opts.command, work, shim };
  const tracks: Track[] = SCENARIOS.filter((n) => opts.scenarios.includes(n)).map((n) => ({ s: scenarioFor(ctx, n), skipped: null, failed: false, samples: [] }));
  const loadStart = os.loadavg();
  try {
    for (const t of tracks) {
      progress(`preparing ${t.s.name}`);
      try {
        t.skipped = await t.s.prepare();
      } catch (e) {
        t.skipped = `could not be prepared: ${message(e)}`;
      }
    }
    // hybridbox starts libvirtd on its first VM; started here, no iteration pays for it.
    if (tracks.some((t) => !t.skipped && (t.s.name === 'vm' || t.s.name === 'virsh-raw'))) await ensureLibvirtd(!hb.host.kvm.usable);

    const rounds = opts.warmup + opts.runs;
    for (let round = 0; round < rounds; round++) {
      const warm = round < opts.warmup;
      const measured = round - opts.warmup;
      progress(warm ? `warm-up ${round + 1}/${opts.warmup}` : `round ${measured + 1}/${opts.runs}`);
      for (const t of tracks) {
        if (t.skipped || t.failed) continue;
        if (!warm && VM_SCENARIOS.includes(t.s.name) && measured >= vmRuns) continue;
        const why = opts.interrupted?.();
        if (why) throw new HybridboxError(`bench startup: interrupted by ${why}`);
        try {
          const m = await t.s.once();
          if (!warm) t.samples.push(m);
        } catch (e) {
          t.failed = true;
          t.skipped = `failed in ${warm ? `warm-up ${round + 1}` : `round ${measured + 1}`}: ${message(e)}`;
          t.samples = [];
        }
      }
    }
  } finally {
    progress('cleaning up');
    for (const t of tracks) await t.s.cleanup().catch(() => undefined);
    removeCgroupParent();
    rmSync(work, { recursive: true, force: true });
    progress('');
  }

  const scenarios = tracks.map(toScenario);
  const result: StartupResult = {
    kind: 'startup',
    startedAtMs,
    durationMs: Math.round(performance.now() - t0),
    host: await describeHost(hb.host),
    options: {
      scenarios: tracks.map((t) => t.s.name),
      runs: opts.runs,
      warmup: opts.warmup,
      vmRuns,
      image: opts.image,
      command: opts.command,
      workload: `/bin/sh -c ${JSON.stringify(opts.command)}`,
      order: 'interleaved: every round runs each scenario once, in the order of `scenarios`',
      loadavgStart: loadStart,
      loadavgEnd: os.loadavg(),
    },
    summary: [],
    scenarios,
    ratios: ratios(scenarios),
  };
  result.summary = summarizeStartup(result);
  return { result, failures: tracks.filter((t) => t.failed).map((t) => `${t.s.name}: ${t.skipped}`) };
}

function toScenario(t: Track): StartupScenario {
  const totalMs = t.samples.map((m) => round2(m.totalMs));
  const firstOutputMs = t.samples.map((m) => (m.firstOutputMs === null ? null : round2(m.firstOutputMs)));
  const phasesMs: Record<string, number[]> = {};
  for (const m of t.samples) for (const [k, v] of Object.entries(m.phases)) (phasesMs[k] ??= []).push(v);
  const outputs = firstOutputMs.filter((x): x is number => x !== null);
  return {
    name: t.s.name,
    kind: t.s.kind,
    backend: t.s.backend,
    description: t.s.description,
    totalMs,
    firstOutputMs,
    phasesMs,
    stats: summarize(totalMs),
    firstOutputStats: outputs.length ? summarize(outputs) : null,
    phaseStats: Object.fromEntries(Object.entries(phasesMs).map(([k, v]) => [k, summarize(v)])),
    ...(t.skipped ? { skipped: t.skipped } : {}),
  };
}

const round2 = (x: number): number => Math.round(x * 100) / 100;

/** The stats a ratio compares: first output where asked and measured, else the wall time. */
function basisStats(s: StartupScenario, basis: 'total' | 'firstOutput'): Stats {
  return basis === 'firstOutput' && s.firstOutputStats ? s.firstOutputStats : s.stats;
}

function ratios(scenarios: StartupScenario[]): StartupRatio[] {
  const measured = (n: ScenarioName) => scenarios.find((s) => s.name === n && !s.skipped && s.stats.n > 0);
  const out: StartupRatio[] = [];
  for (const r of RATIOS) {
    const a = measured(r.num);
    const b = measured(r.den);
    if (!a || !b) continue;
    const basis = r.basis === 'firstOutput' && a.firstOutputStats && b.firstOutputStats ? 'firstOutput' : 'total';
    const value = Math.round((basisStats(a, basis).medianMs / basisStats(b, basis).medianMs) * 1000) / 1000;
    out.push({
      name: `${r.num} / ${r.den}${basis === 'firstOutput' ? ' (first output)' : ''}`,
      numerator: r.num,
      denominator: r.den,
      value,
      basis,
      ...(r.max !== undefined ? { target: { max: r.max, met: value <= r.max } } : {}),
    });
  }
  return out;
}

/** One to three plain-language findings of a startup result. */
export function summarizeStartup(r: StartupResult): string[] {
  const get = (n: string) => r.scenarios.find((s) => s.name === n && !s.skipped && s.stats.n > 0);
  const ratio = (num: string, den: string) => r.ratios.find((x) => x.numerator === num && x.denominator === den);
  const first = (s: StartupScenario) => basisStats(s, 'firstOutput').medianMs;
  const verdict = (x: StartupRatio) => (x.target ? ` (target ${x.target.max === 1 ? '< 1' : `≤ ${x.target.max}`}: ${x.target.met ? 'met' : 'missed'})` : '');
  const out: string[] = [];

  const container = get('container');
  const vms = (['microvm', 'vm'] as const).map((k) => ({ k, s: get(k) })).filter((v) => v.s);
  if (container && vms.length) {
    const parts = vms.map(({ k, s }, i) => {
      const what = k === 'microvm' ? 'a microVM' : 'a libvirt VM';
      const x = fmtRatio(first(s!) / first(container));
      return i === 0 ? `${what} took ${x} as long as a container (${fmtMs(first(s!))} vs ${fmtMs(first(container))} median)` : `${what} ${x} (${fmtMs(first(s!))})`;
    });
    const tcg = r.host.accel === 'tcg' ? '; without usable KVM the guests ran under TCG software emulation, which makes them several times slower than they would be with KVM' : '';
    out.push(`To the workload's first output, ${parts.join(' and ')}${tcg}.`);
  } else if (container && get('host')) {
    const host = get('host')!;
    out.push(
      `To the workload's first output, a container took ${fmtMs(first(container))} median, ${fmtRatio(first(container) / first(host))} the ${fmtMs(first(host))} of running it directly on the host.`,
    );
  }

  const crun = ratio('container', 'crun-raw');
  const podman = ratio('container', 'podman');
  if (crun || podman) {
    const parts = [
      crun && `${crun.value.toFixed(2)}x as long as a bare \`crun run\` of the same bundle${verdict(crun)}`,
      podman && `${podman.value.toFixed(2)}x as long as \`podman run --rm\` of the same image${verdict(podman)}`,
    ].filter(Boolean);
    out.push(`A hybridbox container run took ${parts.join(' and ')}.`);
  }

  const raws = [ratio('microvm', 'qemu-raw'), ratio('vm', 'virsh-raw')].filter((x): x is StartupRatio => !!x);
  if (raws.length) {
    const parts = raws.map((x) => `${x.numerator === 'microvm' ? 'its microVM' : 'its libvirt VM'} at ${x.value.toFixed(2)}x${verdict(x)}`);
    out.push(`Against QEMU and libvirt driven by hand with the same kernel, disk and agent, hybridbox reached the first output with ${parts.join(' and ')}.`);
  }
  return out.slice(0, 3);
}
