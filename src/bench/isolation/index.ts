// `hybridbox bench isolation`: performance, security and fault isolation of each backend.
// Every sandbox it makes is registered and removed at the end, when a part fails, and on
// SIGINT/SIGTERM.
import type { Hybridbox } from '../../api/index.js';
import type { BackendKind } from '../../spec/schema.js';
import { describeHost } from '../host.js';
import { median } from '../stats.js';
import type { FaultCase, IsolationResult, PerformanceCase, SecurityRow } from '../../measurements/index.js';
import { containmentRows, containmentSummary } from './containment.js';
import { LIMITS, SandboxRegister, chooseBackends, ensureBenchImage, ensureProbe, type Log } from './context.js';
import { runFault } from './fault.js';
import { NEIGHBOURS, runPerformance, type Neighbour } from './performance.js';
import { runSecurity } from './security.js';

export { NEIGHBOURS, type Neighbour } from './performance.js';
export { SandboxRegister } from './context.js';
export { renderIsolation } from './render.js';

export const PARTS = ['performance', 'security', 'fault'] as const;
export type Part = (typeof PARTS)[number];

export interface IsolationBenchOptions {
  /** Default: every backend available on this host. */
  backends?: BackendKind[];
  /** Default: all three. */
  parts?: Part[];
  /** Fewer and shorter repetitions. */
  quick?: boolean;
  /** Performance: which neighbours (default: all five). */
  neighbours?: readonly Neighbour[];
  /** Performance: victim measurements per case and their length (defaults: 3 x 3 s, quick 1 x 2 s). */
  reps?: number;
  seconds?: number;
  /** Security: also run the container with trust `untrusted`, as its own column (default true). */
  untrustedContainer?: boolean;
  /** Where the bench registers its sandboxes (a caller's own, to check for leaks afterwards). */
  register?: SandboxRegister;
  /** Remove everything and exit on SIGINT/SIGTERM (the CLI). */
  handleSignals?: boolean;
  log?: Log;
}

export async function runIsolationBench(hb: Hybridbox, opts: IsolationBenchOptions = {}): Promise<IsolationResult> {
  const log: Log = opts.log ?? (() => undefined);
  const startedAtMs = Date.now();
  const t0 = performance.now();
  const parts = opts.parts ?? [...PARTS];
  const { use: backends, skipped } = chooseBackends(hb, opts.backends ?? null);
  const quick = opts.quick === true;
  const reps = opts.reps ?? (quick ? 1 : 3);
  const seconds = opts.seconds ?? (quick ? 2 : 3);
  const neighbours = opts.neighbours ?? NEIGHBOURS;
  const register = opts.register ?? new SandboxRegister(hb);

  let onSignal: ((sig: NodeJS.Signals) => void) | null = null;
  if (opts.handleSignals) {
    let cleaning = false;
    onSignal = (sig) => {
      if (cleaning) process.exit(130);
      cleaning = true;
      register.aborted = true;
      process.stderr.write(`\nhybridbox: ${sig}: removing the bench's sandboxes (again to quit at once)\n`);
      void register.removeAll().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }

  const result: IsolationResult = {
    kind: 'isolation',
    startedAtMs,
    durationMs: 0,
    host: await describeHost(hb.host),
    options: { backends, parts, quick, reps, seconds, neighbours: [...neighbours], limits: { ...LIMITS }, skippedBackends: skipped },
    summary: [],
    performance: [],
    security: [],
    fault: [],
  };
  try {
    if (backends.length === 0) throw new Error(`no backend to measure${skipped.length ? `: ${skipped.join('; ')}` : ''}`);
    log(`building the bench image (busybox + hbx-probe)`);
    const probe = await ensureProbe();
    const image = await ensureBenchImage(hb, probe);
    const ctx = { hb, image, probe, register, log };
    if (parts.includes('security')) {
      const s = await runSecurity(ctx, backends, { untrustedContainer: opts.untrustedContainer ?? true });
      result.security = s.rows;
      result.securityProbes = s.probes;
      result.options.hostSyscalls = s.hostSyscalls.source;
    }
    if (parts.includes('fault')) result.fault = await runFault(ctx, backends);
    if (parts.includes('performance')) {
      result.performance = await runPerformance(ctx, { backends, neighbours, reps, seconds, baselineAfter: !quick });
    }
  } finally {
    const failed = await register.removeAll();
    if (onSignal) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    if (failed.length) log(`could not remove: ${failed.join('; ')}`);
  }
  result.durationMs = Math.round(performance.now() - t0);
  result.summary = summarize(result, backends, skipped, result.host.cores);
  return result;
}

const pct = (x: number | null): string => (x === null ? '?' : `${x.toFixed(1)}%`);

/** A few plain-language findings. */
export function summarize(r: IsolationResult, backends: BackendKind[], skipped: string[], cores: number): string[] {
  const out: string[] = [];
  if (skipped.length) out.push(`Not measured here: ${skipped.join('; ')}.`);
  if (r.performance.length) {
    for (const b of backends) {
      const cs = r.performance.filter((c) => c.backend === b && c.neighbour !== 'none' && c.degradationPct !== null);
      if (!cs.length) continue;
      const worst = cs.reduce((a, c) => (c.degradationPct! > a.degradationPct! ? c : a));
      const limited = cs.filter((c) => c.contained !== null);
      const held = limited.filter((c) => c.contained).length;
      const alone = r.performance.find((c) => c.backend === b && c.neighbour === 'none')?.victimScore ?? [];
      const spread = alone.length > 1 ? (100 * (Math.max(...alone) - Math.min(...alone))) / median(alone) : 0;
      if (spread > 20) {
        out.push(
          `${b}: alone, the victim scored between ${Math.min(...alone).toFixed(1)} and ${Math.max(...alone).toFixed(1)} Mops/s across repetitions: differences within that spread are noise` +
            ` (host load average up to ${Math.max(...r.performance.filter((c) => c.backend === b).map((c) => c.hostLoadAvg ?? 0)).toFixed(1)} during these cases).`,
        );
      }
      out.push(
        `${b}: the victim lost at most ${pct(worst.degradationPct)} (next to the ${worst.neighbour}); ` +
          `${held} of ${limited.length} neighbours with an applicable limit were held by it` +
          (cs.some((c) => c.contained === null) ? ' (the unlimited disk writer and flood have no limit to hold them).' : '.'),
      );
    }
    const limits = containmentSummary(containmentRows(r));
    if (limits) out.push(limits);
    const hostProbe = (cs: PerformanceCase[]) => cs.map((c) => c.hostProbeMs?.p95Ms).filter((x): x is number => typeof x === 'number');
    const idle = hostProbe(r.performance.filter((c) => c.neighbour === 'none'));
    const stressed = hostProbe(r.performance.filter((c) => c.neighbour !== 'none'));
    if (idle.length && stressed.length) {
      out.push(`Host responsiveness: spawning /bin/true on the host took p95 ${median(idle).toFixed(1)} ms with the victim alone and up to ${Math.max(...stressed).toFixed(1)} ms under a neighbour.`);
    }
    if (cores <= 2) {
      out.push(
        `This host has ${cores} cores: victim (1 CPU) and neighbour (1 CPU) together ask for all of them, so a 1-CPU neighbour necessarily competes with the victim and the host${r.host.accel === 'tcg' ? ', and VMs run under TCG, where every guest instruction costs host CPU' : ''}.`,
      );
    }
  }
  if (r.security.length) out.push(...securitySummary(r.security));
  if (r.fault.length) out.push(...faultSummary(r.fault));
  return out;
}

function securitySummary(rows: SecurityRow[]): string[] {
  const out: string[] = [];
  const kernel = rows.find((x) => x.probe.startsWith('kernel shared'));
  if (kernel) {
    const cols = { ...kernel.values, ...(kernel.variants ?? {}) } as Record<string, { value: string; safe: boolean | null }>;
    const sharing = Object.entries(cols)
      .filter(([k, v]) => k !== 'host' && v.safe === false)
      .map(([k]) => k);
    const own = Object.entries(cols)
      .filter(([k, v]) => k !== 'host' && v.safe === true)
      .map(([k]) => k);
    if (sharing.length)
      out.push(
        `The host kernel is shared by ${sharing.join(', ')} (same boot id as the host); ${own.length ? `${own.join(', ')} ${own.length === 1 ? 'runs its' : 'run their'} own kernel` : 'no column runs its own kernel'}.`,
      );
  }
  const unsafe: Record<string, string[]> = {};
  for (const row of rows) {
    for (const [k, v] of Object.entries({ ...row.values, ...(row.variants ?? {}) })) {
      if (k !== 'host' && v?.safe === false && !row.probe.startsWith('kernel shared')) (unsafe[k] ??= []).push(row.probe);
    }
  }
  for (const [k, probes] of Object.entries(unsafe)) out.push(`${k}: exposed to the host on ${probes.length} probe(s): ${probes.join(', ')}.`);
  return out;
}

function faultSummary(cases: FaultCase[]): string[] {
  const all = cases.every((c) => c.hostUp && c.survivors.every((s) => s.keptRunning));
  const out = [
    all
      ? `Every fault (${cases.map((c) => `${c.fault} in ${c.in}`).join('; ')}) stayed in its sandbox: every bystander kept running and the host stayed up.`
      : `Not every fault stayed in its sandbox: ${cases
          .filter((c) => !c.hostUp || c.survivors.some((s) => !s.keptRunning))
          .map(
            (c) =>
              `${c.fault} in ${c.in} (${c.hostUp ? '' : 'host down; '}stopped: ${
                c.survivors
                  .filter((s) => !s.keptRunning)
                  .map((s) => s.backend)
                  .join(', ') || 'none'
              })`,
          )
          .join('; ')}.`,
  ];
  return out;
}
