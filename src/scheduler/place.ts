import { BackendUnavailableError, PlacementError } from '../errors.js';
import type { HostInfo, HostLoad } from '../host/types.js';
import { limitWarnings, type BackendDescriptor, type LimitEnforcement } from '../runtimes/descriptor.js';
import { BACKEND_KINDS, type BackendKind, type WorkloadSpec } from '../spec/schema.js';

export interface StartupStats {
  median: number;
  p95: number;
  samples: number;
}

/**
 * A start-up prediction: measured on this host (`hybridbox bench startup`, stored in the
 * state database) or, before that, the backend's documented default.
 */
export interface PredictedStartup {
  median: number;
  p95: number;
  source: 'measured' | 'default';
  /** How many measured starts the figures come from (measured only). */
  samples?: number;
}

export interface Placement {
  backend: BackendKind;
  /** Full sentences: why this backend was chosen. */
  reasons: string[];
  /** Every backend not chosen, with why. */
  rejected: { backend: BackendKind; reason: string }[];
  predictedStartupMs: PredictedStartup;
  /** The prediction for every backend this host can run (chosen or not), lightest first. */
  predictedStartupByBackend: ({ backend: BackendKind } & PredictedStartup)[];
  /** How the chosen backend enforces each limit of the spec. */
  limits: LimitEnforcement[];
  /** The limits it cannot enforce here, and their caveats, in words. */
  warnings: string[];
}

/** Fewer measured starts than this say more about noise than about the backend. */
export const MIN_SAMPLES = 5;

// Ties go to the lighter backend.
const ORDER: Record<BackendKind, number> = { container: 0, microvm: 1, vm: 2 };

// No spec field asks for a full machine model (PCI devices, firmware tables) yet; when
// one does, this is the only place that reads it.
const needsFullMachine = (_spec: WorkloadSpec): boolean => false;

interface Candidate {
  d: BackendDescriptor;
  predicted: PredictedStartup;
}

const mib = (bytes: number): number => Math.floor(bytes / (1024 * 1024));
const ms = (n: number): string => `${Math.round(n)} ms`;
/** Where a prediction comes from, in words: "measured on this host" (with `runs`: ", 30 runs") or "default estimate". */
export function predictionSource(p: PredictedStartup, opts: { runs?: boolean } = {}): string {
  if (p.source !== 'measured') return 'default estimate';
  return opts.runs && p.samples !== undefined ? `measured on this host, ${p.samples} runs` : 'measured on this host';
}

/**
 * Chooses where a workload runs. Pure: everything it knows comes in as arguments, so the
 * same inputs always give the same answer and the same explanation.
 */
export function place(spec: WorkloadSpec, host: HostInfo, load: HostLoad, backends: BackendDescriptor[], stats: Partial<Record<BackendKind, StartupStats>> = {}): Placement {
  const rejected: Placement['rejected'] = [];
  const fits: Candidate[] = [];
  const predictions: Placement['predictedStartupByBackend'] = [];
  // Backends this host could run but that this particular workload rules out (budget, memory, kernel).
  const ruledOutByWorkload = new Set<BackendKind>();
  for (const kind of BACKEND_KINDS) {
    const d = backends.find((b) => b.kind === kind);
    if (!d) {
      rejected.push({ backend: kind, reason: 'not implemented in this version of hybridbox' });
      continue;
    }
    const predicted = predict(d, stats[kind], host);
    const hostReason = d.unavailableReason(host);
    if (!hostReason) predictions.push({ backend: kind, ...predicted });
    const workloadReason = hostReason ? null : rejection(spec, host, load, d, predicted);
    if (workloadReason) ruledOutByWorkload.add(kind);
    if (hostReason || workloadReason) rejected.push({ backend: kind, reason: (hostReason ?? workloadReason)! });
    else fits.push({ d, predicted });
  }
  const finish = (chosen: Candidate, reasons: string[], whyNot: (c: Candidate) => string): Placement => {
    if (chosen.d.traits.ownKernel && !host.kvm.usable) reasons.push(`KVM is not usable (${host.kvm.reason}), so the guest starts and runs slower.`);
    const notChosen = fits.filter((c) => c !== chosen).map((c) => ({ backend: c.d.kind, reason: whyNot(c) }));
    const limits = chosen.d.limits(spec, host);
    return {
      limits,
      warnings: limitWarnings(limits),
      backend: chosen.d.kind,
      reasons,
      rejected: [...rejected, ...notChosen].sort((a, b) => ORDER[a.backend] - ORDER[b.backend]),
      predictedStartupMs: chosen.predicted,
      predictedStartupByBackend: predictions.sort((a, b) => ORDER[a.backend] - ORDER[b.backend]),
    };
  };

  if (spec.isolation !== 'auto') {
    const want = spec.isolation;
    const chosen = fits.find((c) => c.d.kind === want);
    if (!chosen) {
      const why = rejected.find((r) => r.backend === want)!.reason;
      throw new BackendUnavailableError(want, why, rejected);
    }
    return finish(chosen, [`You asked for isolation: ${want}, so hybridbox uses ${chosen.d.summary}.`], () => `isolation: ${want} was requested`);
  }

  if (fits.length === 0) {
    throw new PlacementError(`no backend can run this workload: ${rejected.map((r) => `${r.backend}: ${r.reason}`).join('; ')}`, rejected);
  }

  const reasons: string[] = [];
  // A backend that would leave one of the workload's limits unenforced loses to one that
  // enforces them all (an explicit isolation keeps its choice, and says so in warnings).
  const unenforced = (c: Candidate): LimitEnforcement[] => c.d.limits(spec, host).filter((l) => l.mechanism === null);
  const enforcing = fits.filter((c) => unenforced(c).length === 0);
  if (enforcing.length > 0 && enforcing.length < fits.length) {
    for (const c of fits.filter((x) => !enforcing.includes(x))) {
      const [first] = unenforced(c);
      rejected.push({ backend: c.d.kind, reason: `it cannot enforce ${first!.field} here (${first!.note}), and another backend can` });
      ruledOutByWorkload.add(c.d.kind);
    }
    fits.splice(0, fits.length, ...enforcing);
    reasons.push(`Only ${enforcing.map((c) => c.d.kind).join(' and ')} can enforce every limit of this workload here.`);
  }
  if (spec.kernel.ownKernel) reasons.push('The workload needs a kernel of its own, so only VM backends qualify.');

  const fastest = (cs: Candidate[]): Candidate => [...cs].sort((a, b) => a.predicted.median - b.predicted.median || ORDER[a.d.kind] - ORDER[b.d.kind])[0]!;

  if (spec.trust === 'untrusted') {
    const hw = fits.filter((c) => c.d.traits.hardwareIsolation);
    if (hw.length === 0) {
      const vmKinds = backends.filter((b) => b.traits.hardwareIsolation).map((b) => b.kind);
      reasons.push(
        vmKinds.some((k) => ruledOutByWorkload.has(k))
          ? 'No VM backend fits this workload (see the rejected alternatives): running untrusted code in a hardened container (user namespace, strict seccomp).'
          : 'no VM backend available on this host: running untrusted code in a hardened container (user namespace, strict seccomp).',
      );
      const chosen = fastest(fits);
      return finish(chosen, reasons, (c) => `slower predicted start-up (${ms(c.predicted.median)} vs ${ms(chosen.predicted.median)} median)`);
    }
    reasons.push('The workload is untrusted, so hybridbox runs it behind a separate guest kernel and a virtual machine boundary rather than sharing the host kernel.');
    const chosen = pickVm(spec, hw, reasons);
    return finish(chosen, reasons, (c) => (c.d.traits.hardwareIsolation ? vmLoss(c, chosen) : 'the workload is untrusted and a VM backend is available'));
  }

  if (spec.kernel.ownKernel) {
    const chosen = pickVm(spec, fits, reasons);
    return finish(chosen, reasons, (c) => vmLoss(c, chosen));
  }

  const chosen = fastest(fits);
  const others = fits.filter((c) => c !== chosen).map((c) => `${c.d.kind} ${ms(c.predicted.median)}`);
  reasons.push(
    `The workload is trusted, so hybridbox picks the fastest predicted start-up: ${chosen.d.kind} at ${ms(chosen.predicted.median)} median` + (others.length ? ` (vs ${others.join(', ')}).` : '.'),
  );
  return finish(chosen, reasons, (c) => `slower predicted start-up (${ms(c.predicted.median)} vs ${ms(chosen.predicted.median)} median)`);
}

function predict(d: BackendDescriptor, s: StartupStats | undefined, host: HostInfo): PredictedStartup {
  if (s && s.samples >= MIN_SAMPLES) return { median: s.median, p95: s.p95, source: 'measured', samples: s.samples };
  const est = !host.kvm.usable && d.traits.defaultStartupMsTcg ? d.traits.defaultStartupMsTcg : d.traits.defaultStartupMs;
  return { ...est, source: 'default' };
}

/** Why this workload cannot run on a backend the host supports, or null. */
function rejection(spec: WorkloadSpec, host: HostInfo, load: HostLoad, d: BackendDescriptor, predicted: PredictedStartup): string | null {
  if (spec.kernel.ownKernel && !d.traits.ownKernel) return "the workload needs its own kernel, and this backend shares the host's kernel";
  const want = spec.resources.memoryMiB;
  const available = mib(host.memAvailableBytes);
  if (want !== undefined && want + load.committedMemoryMiB > available) {
    return `the workload asks for ${want} MiB of memory; with the ${load.committedMemoryMiB} MiB already promised to running sandboxes that makes ${want + load.committedMemoryMiB} MiB, more than the ${available} MiB this host has available`;
  }
  if (spec.startupBudgetMs !== undefined && spec.startupBudgetMs < predicted.p95) {
    return `its predicted start-up p95 of ${ms(predicted.p95)} (${predictionSource(predicted)}) is over the start-up budget of ${ms(spec.startupBudgetMs)}`;
  }
  return null;
}

/** Among VM-class candidates: a minimal machine unless a full one is needed, then the fastest. */
function pickVm(spec: WorkloadSpec, cs: Candidate[], reasons: string[]): Candidate {
  const full = needsFullMachine(spec);
  const [chosen] = [...cs].sort(
    (a, b) => Number(a.d.traits.fullMachine !== full) - Number(b.d.traits.fullMachine !== full) || a.predicted.median - b.predicted.median || ORDER[a.d.kind] - ORDER[b.d.kind],
  );
  const alt = cs.find((c) => c !== chosen && c.d.traits.fullMachine !== chosen!.d.traits.fullMachine);
  if (alt && !chosen!.d.traits.fullMachine) {
    reasons.push(
      `${chosen!.d.kind} is preferred over ${alt.d.kind}: the workload does not need a full machine model (PCI, firmware tables), and a minimal machine emulates fewer devices and boots with less to set up.`,
    );
  }
  return chosen!;
}

function vmLoss(c: Candidate, chosen: Candidate): string {
  if (c.d.traits.fullMachine && !chosen.d.traits.fullMachine) return `the workload does not need a full machine model, so the minimal ${chosen.d.kind} is preferred`;
  return `slower predicted start-up (${ms(c.predicted.median)} vs ${ms(chosen.predicted.median)} median)`;
}
