import type { Hybridbox } from '../../api/index.js';
import type { BackendKind } from '../../spec/schema.js';

/**
 * The scenarios of `bench startup`, in the order they run within a round (and are
 * printed): each baseline right before the backend it is compared with.
 */
export const SCENARIOS = ['host', 'crun-raw', 'podman', 'container', 'qemu-raw', 'microvm', 'virsh-raw', 'vm'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

/** Scenarios that boot a guest: seconds per run under TCG, so `--vm-runs` may cap them. */
export const VM_SCENARIOS: readonly ScenarioName[] = ['qemu-raw', 'microvm', 'virsh-raw', 'vm'];

/** One iteration of a scenario. */
export interface Measurement {
  totalMs: number;
  /** Time to the first byte of the workload's stdout; null when it printed nothing. */
  firstOutputMs: number | null;
  /** Phase durations (ms), in order; they add up to totalMs. */
  phases: Record<string, number>;
}

/** What every scenario shares: the workload, the library, a scratch directory. */
export interface BenchContext {
  hb: Hybridbox;
  /** Image reference as given (`busybox`). */
  image: string;
  /** The workload: `/bin/sh -c COMMAND` everywhere. */
  command: string;
  /** Scratch directory of this benchmark run (bundles, raw VM disks, podman's private store). */
  work: string;
  /** hbx-shim, which gives crun (and podman) the private mount namespace this host needs. */
  shim: string;
}

export interface Scenario {
  name: ScenarioName;
  kind: 'backend' | 'baseline';
  backend: BackendKind;
  description: string;
  /**
   * Makes what the runs need (bundle, image copy, VM template). Resolves with a reason when
   * this host cannot run the scenario (it is then skipped, never faked).
   */
  prepare(): Promise<string | null>;
  once(): Promise<Measurement>;
  /** Removes everything the scenario made; safe to call after a failed prepare. */
  cleanup(): Promise<void>;
}

export const workloadArgv = (command: string): string[] => ['/bin/sh', '-c', command];

/** Why this host cannot run a backend (from `hb.info()`), or null. */
export function backendUnavailable(ctx: BenchContext, kind: BackendKind): string | null {
  const a = ctx.hb.info().backends.find((b) => b.kind === kind);
  return a?.available ? null : (a?.reason ?? `the ${kind} backend is not available`);
}
