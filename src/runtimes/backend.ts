import type { BackendDescriptor, LimitEnforcement } from './descriptor.js';
import type { Image } from '../images/index.js';
import type { WorkloadSpec } from '../spec/schema.js';
import type { SandboxRecord } from '../store/index.js';

/** Where a running workload's output goes when the caller is attached. */
export interface OutputSink {
  onStdout(chunk: Buffer): void;
  onStderr(chunk: Buffer): void;
}

/** Signals a caller can send to a workload (a foreground CLI forwards INT, TERM and HUP). */
export type WorkloadSignal = 'INT' | 'TERM' | 'HUP' | 'KILL';

/**
 * The time-limit promise every backend keeps, attached or detached: `spec.timeoutMs` counts
 * from the workload's start (for a VM: from the moment the agent started it, not from boot).
 * When it runs out the workload gets SIGTERM, then SIGKILL after TIMEOUT_GRACE_MS; the status
 * says `timedOut: true` and `exitCode: TIMEOUT_EXIT_CODE` (124, as timeout(1) reports), with
 * `signal` naming the signal that ended it, if one did. A timed-out sandbox is never `crash`ed.
 */
export const TIMEOUT_EXIT_CODE = 124;
export const TIMEOUT_GRACE_MS = 2000;

/** How a workload ended, as far as the backend can tell. */
export interface ExitStatus {
  /** When the sandbox's first process existed (epoch ms), if the backend can tell. */
  startedAtMs: number | null;
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  /** The whole sandbox's peak memory (its cgroup's, or the guest workload cgroup's). */
  peakMemoryBytes: number | null;
  /** The whole sandbox's CPU time, as its cgroup accounts it (every process). */
  cpuTimeMs: number | null;
  /** The spec's `resources.cpuTimeMs` ran out and the backend killed the workload (SIGKILL). */
  cpuTimeLimitExceeded: boolean;
  /** The spec's time limit ran out and the backend stopped the workload (see TIMEOUT_EXIT_CODE). */
  timedOut: boolean;
  /** Set when the sandbox died without its workload ending (a guest kernel panic): why. */
  crash?: string;
}

export interface AttachedRun {
  /** Resolves when the workload has exited and the backend has collected its status. */
  exited: Promise<ExitStatus>;
}

/** How to run this hybridbox's own CLI from a monitor process. */
export interface SelfInvocation {
  argv: string[];
  env: Record<string, string>;
}

export interface AttachOptions {
  sink: OutputSink;
  /** The workload's standard input, passed through with its EOF; absent or null: /dev/null. */
  stdin?: NodeJS.ReadableStream | null;
}

export interface ExecOptions {
  env?: Record<string, string>;
  workdir?: string;
  user?: string;
  sink: OutputSink;
  stdin?: NodeJS.ReadableStream | null;
  /** When it aborts, the command gets SIGTERM, then SIGKILL after TIMEOUT_GRACE_MS. */
  signal?: AbortSignal;
}

export interface CreatedSandbox {
  runtime: Record<string, unknown>;
  limits: LimitEnforcement[];
  warnings: string[];
}

/** Everything a backend gets to create a sandbox. */
export interface CreateContext {
  id: string;
  name: string;
  spec: WorkloadSpec;
  image: Image;
  /** Directory owned by this sandbox; removed by the caller after `destroy`. */
  dir: string;
}

/**
 * One interface for every kind of sandbox (after Incus's instance drivers): the API layer
 * and the CLI hold a Backend and never ask which one. Backend-specific details live in the
 * record's `runtime` object, which only the backend reads.
 */
export interface Backend {
  readonly descriptor: BackendDescriptor;
  /**
   * Prepares the sandbox (nothing runs yet). Returns the details to store in `runtime`, how
   * each limit is enforced, and what of the spec this host cannot honour (said to the user,
   * not silently dropped: limitWarnings(limits) is part of `warnings`).
   */
  create(ctx: CreateContext): Promise<CreatedSandbox>;
  /**
   * Starts the workload with output streamed to `opts.sink`; the sandbox dies with this
   * process (for every backend, libvirt's too). Enforces `spec.timeoutMs` (see TIMEOUT_EXIT_CODE).
   */
  runAttached(rec: SandboxRecord, opts: AttachOptions): Promise<AttachedRun>;
  /**
   * Starts the workload under a monitor that outlives this process; output goes to logs.
   * `self` says how to run hybridbox's own CLI (for the monitor's `internal` commands).
   * Resolves with the monitor's pid: it owns the sandbox until its end is recorded.
   */
  startDetached(rec: SandboxRecord, self: SelfInvocation): Promise<{ monitorPid: number }>;
  /**
   * For backends whose detached monitor is hybridbox itself (`hybridbox internal monitor
   * ID`): run the sandbox to its end, output to the logs, status to the exit record.
   */
  monitor?(rec: SandboxRecord): Promise<void>;
  /** Runs another command inside a running sandbox; resolves with its exit code. */
  exec(rec: SandboxRecord, argv: string[], opts: ExecOptions): Promise<number>;
  /** Sends a signal to the workload (KILL ends the whole sandbox). A no-op once it has ended. */
  signal(rec: SandboxRecord, signal: WorkloadSignal): Promise<void>;
  /** Whether any process of the sandbox is alive, checked against the host, not the database. */
  isAlive(rec: SandboxRecord): Promise<boolean>;
  /** For a detached sandbox that has exited: its status, or null if it never recorded one. */
  collectExit(rec: SandboxRecord): Promise<ExitStatus | null>;
  /** Paths of the stdout and stderr logs of a detached sandbox. */
  logPaths(rec: SandboxRecord): { stdout: string; stderr: string };
  /**
   * What the workload changed in its root filesystem, as a directory of changed files in
   * overlayfs upper form (deletions as 0/0 devices, opaque directories by xattr), and the
   * paths in it that the backend made itself (mount points) rather than the workload.
   * Backends that cannot tell leave this out; image builds need it.
   */
  filesystemChanges?(rec: SandboxRecord): { dir: string; madeByBackend: string[] };
  /** Releases what a run holds (processes, cgroups, network). Idempotent; safe after a crash. */
  teardown(rec: { id: string; runtime: Record<string, unknown> }): Promise<void>;
  /** Backend-specific details for `inspect` (for containers: the OCI config). */
  describe(rec: SandboxRecord): Promise<Record<string, unknown>>;
}
