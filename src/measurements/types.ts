// The shapes every benchmark writes and the report reads. A result is one JSON document,
// stored in the state database (measurements/results.ts) with the host it was measured on, so runs
// on different hosts and days can be compared.
import type { BackendKind } from '../spec/schema.js';

/** Summary of one set of timings (milliseconds). */
export interface Stats {
  n: number;
  minMs: number;
  medianMs: number;
  meanMs: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
  /** 95% bootstrap confidence interval of the median. */
  medianCiMs: [number, number];
  /** The spread is too wide to trust small differences: (p95 - min) / median above a threshold, or a CI wider than 20% of the median. */
  noisy: boolean;
}

/** What a result was measured on: enough to tell whether two results are comparable. */
export interface HostDescription {
  /** Short hash of CPU model, cores, memory, kernel, accel and cgroup layout: results with the same key compare. */
  key: string;
  hostname: string;
  cpuModel: string;
  cores: number;
  memoryBytes: number;
  kernel: string;
  accel: 'kvm' | 'tcg';
  cgroup: 'v1' | 'v2' | 'hybrid';
  versions: Record<string, string | null>;
}

export type BenchKind = 'startup' | 'isolation' | 'density' | 'service';

interface BenchResultBase {
  kind: BenchKind;
  /** Set when stored. */
  id?: number;
  startedAtMs: number;
  durationMs: number;
  host: HostDescription;
  /** The options the run was given (runs, backends, image, command, ...). */
  options: Record<string, unknown>;
  /** Plain-language findings, one sentence each, for the terminal and the report. */
  summary: string[];
}

/** A scenario is a hybridbox backend or a raw baseline measured next to it. */
export interface StartupScenario {
  name: string;
  kind: 'backend' | 'baseline';
  /** The backend this scenario is, or the one it is the baseline of. */
  backend: BackendKind | null;
  description: string;
  /** Wall time of each measured run, in run order (after warm-up). */
  totalMs: number[];
  /** Time to the first byte of the workload's output, per run (null where not observable). */
  firstOutputMs: (number | null)[];
  /** Per-phase durations per run (placement, prepare, create, start, first-output, exit, teardown), where the scenario has them. */
  phasesMs: Record<string, number[]>;
  stats: Stats;
  firstOutputStats: Stats | null;
  phaseStats: Record<string, Stats>;
  /** Why the scenario could not run on this host (then the arrays are empty). */
  skipped?: string;
}

export interface StartupRatio {
  /** e.g. "container / crun-raw" */
  name: string;
  numerator: string;
  denominator: string;
  /** median(numerator) / median(denominator) */
  value: number;
  /** Which medians: of the whole run's wall time (default), or of the time to the workload's first output. */
  basis?: 'total' | 'firstOutput';
  /** A target the project has set for this ratio, and whether it was met. */
  target?: { max: number; met: boolean };
}

export interface StartupResult extends BenchResultBase {
  kind: 'startup';
  scenarios: StartupScenario[];
  ratios: StartupRatio[];
}

export interface PerformanceCase {
  backend: BackendKind;
  neighbour: 'none' | 'cpu-hog' | 'memory-bomb' | 'fork-bomb' | 'disk-writer' | 'network-flood' | 'limited-disk-writer' | 'limited-network-flood';
  /** Victim throughput (workload-specific units, higher is better) per repetition. */
  victimScore: number[];
  /** Percent lost against the same backend alone: 100 * (1 - median(case) / median(alone)). */
  degradationPct: number | null;
  /** Was the neighbour held by its limits (limit hit, OOM kill, pids cap), and how we know. */
  contained: boolean | null;
  containment: string;
  /** Host responsiveness during the stress: latency of a host probe. */
  hostProbeMs: Stats | null;
  /** A second host probe, where measured: how far a 10 ms sleep on the host overshoots. */
  hostSleepOvershootMs?: Stats | null;
  /** The neighbour's own account of what it did (counters it printed), where it has one. */
  neighbourReport?: Record<string, unknown> | null;
  /** The host's 1-minute load average at the end of the case: other load on the host shows here. */
  hostLoadAvg?: number | null;
  /**
   * For the disk writer and the UDP flood, with and without the disk or network limit: the
   * rate the neighbour reached (a limited one against its limit).
   */
  rate?: RateContainment | null;
}

export interface RateContainment {
  /** What was measured: the disk writer's own rate, or the bytes the host delivered to the victim. */
  what: string;
  unit: 'MiB/s' | 'Mbit/s';
  measured: number | null;
  /** The limit in the same unit, null for the unlimited case. */
  limit: number | null;
  /** measured / limit. */
  ratio: number | null;
}

/** One cell of the security matrix. */
export interface SecurityCell {
  value: string;
  safe: boolean | null;
}

export interface SecurityRow {
  /** Probe name, e.g. "kernel shared with host", "mount succeeds". */
  probe: string;
  /** Per backend: the observed value and whether it is the safer outcome. */
  values: Partial<Record<BackendKind | 'host', SecurityCell>>;
  /**
   * Further columns: a backend run with other settings, keyed "<backend>:<variant>"
   * (e.g. "container:untrusted"). Optional; results without it have one column per backend.
   */
  variants?: Record<string, SecurityCell>;
}

export interface FaultCase {
  fault: string;
  /** The sandbox the fault was injected into. */
  in: BackendKind;
  /** Other sandboxes running at the time, and whether each kept running. */
  survivors: { backend: BackendKind; name: string; keptRunning: boolean }[];
  hostUp: boolean;
  detail: string;
}

export interface IsolationResult extends BenchResultBase {
  kind: 'isolation';
  performance: PerformanceCase[];
  security: SecurityRow[];
  fault: FaultCase[];
  /** The raw output of the security probe per column ("host", a backend, or "<backend>:<variant>"). Optional. */
  securityProbes?: Record<string, Record<string, unknown>>;
}

export interface DensityBackend {
  backend: BackendKind;
  started: number;
  /** Why starting stopped: budget reached, count reached, a start failed (with the error). */
  stopReason: string;
  /** Sandboxes per second over the whole ramp. */
  startRatePerS: number;
  /** Host memory used per sandbox beyond the idle workload itself (RSS of QEMU, shim, runtime; cgroup usage). */
  overheadBytesPerSandbox: number;
  hostRssBytesPerSandbox: number;
  cgroupBytesPerSandbox: number | null;
  /** (count, cumulative seconds, host memory used) at each step, for the report's chart. */
  ramp: { count: number; elapsedMs: number; hostUsedBytes: number }[];
  /** Memory limit (container) or guest memory (VM) each sandbox was given; null: none set. */
  memoryMiB?: number | null;
  /** Rise of host used memory (MemTotal - MemAvailable) per sandbox over the ramp: everything, daemons and kernel included. */
  hostUsedBytesPerSandbox?: number;
  /** hostRssBytesPerSandbox by program (hbx-shim, crun, node, qemu-system-x86_64, ...), mean per sandbox. */
  rssByProcessBytes?: Record<string, number>;
  /** Time of each start (the library call until the sandbox runs). */
  startStats?: Stats;
}

export interface DensityResult extends BenchResultBase {
  kind: 'density';
  memoryBudgetBytes: number;
  backends: DensityBackend[];
}

export interface ServiceThroughput {
  backend: BackendKind;
  concurrency: number;
  runs: number;
  runsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
}

/** `bench service`: what the HTTP service adds to a run, its throughput, and the remote CLI. */
export interface ServiceBenchResult extends BenchResultBase {
  kind: 'service';
  overhead: { apiMs: Stats; libraryMs: Stats; medianOverheadMs: number };
  throughput: ServiceThroughput[];
  cli: { throughServiceMs: Stats; nodeMs: Stats; crunRawMs: Stats | null; ratioToFloor: number | null; crunSkipped: string | null };
}

export type BenchResult = StartupResult | IsolationResult | DensityResult | ServiceBenchResult;
