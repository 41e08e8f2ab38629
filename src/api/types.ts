// The public option and result types of the library API. Every option has its unit in its
// name and its default in `@default`; every result says everything about what happened.
import type { LimitEnforcement } from '../runtimes/descriptor.js';
import type { HostInfo } from '../host/types.js';
import type { RegistryConfigFile } from '../registry/index.js';
import type { BackendOptions } from '../runtimes/registry.js';
import type { WorkloadSignal } from '../runtimes/backend.js';
import type { Placement } from '../scheduler/index.js';
import type { SandboxRecord } from '../store/index.js';

export type { WorkloadSignal };

export interface HybridboxOptions extends BackendOptions {
  /**
   * State directory.
   * @default process.env.HYBRIDBOX_ROOT ?? '/var/lib/hybridbox'
   */
  root?: string;
  /** Host description; probed (and cached by the binaries' mtimes) when absent. */
  host?: HostInfo;
}

export interface RunOptions {
  /** Called with each chunk of the workload's output as it arrives. */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Called once the sandbox exists and its workload is starting: the place to learn its id (to `kill` it). */
  onCreated?: (sandbox: SandboxInfo) => void;
  /** The workload's standard input, passed through with its EOF. @default null (/dev/null) */
  stdin?: NodeJS.ReadableStream | null;
  /**
   * How much of each stream the result keeps; the rest is counted, not kept (the workload
   * runs on: to stop it at a cap, set the spec's `outputLimitBytes`).
   * @default 1048576 (1 MiB)
   */
  maxBufferBytes?: number;
  /** Remove the sandbox once it has ended (like `--rm`). @default false */
  remove?: boolean;
  /**
   * Called with the result as soon as the workload has ended, before the sandbox is removed
   * or its end recorded: a caller can answer its own caller while the teardown goes on. The
   * call itself still resolves only once that is done. Not called for an aborted run.
   */
  onEnded?: (result: RunResult) => void;
  /**
   * Stops the workload when aborted (SIGTERM, then SIGKILL after the grace period); the call
   * then rejects with an AbortedError whose `result` is the RunResult.
   */
  signal?: AbortSignal;
  /** Overrides the spec's `timeoutMs` (counted from the workload's start, on every backend). */
  timeoutMs?: number;
}

/** Everything about one finished run, in one object (after execa's result). */
export interface RunResult {
  id: string;
  name: string;
  backend: string;
  placement: Placement;
  /** The workload's exit code; 124 when its time limit ran out (see `timedOut`), 128+N when signal N ended it. */
  exitCode: number | null;
  /** The signal that ended the workload (`SIGKILL`, ...), else null. */
  signal: string | null;
  /** The time limit ran out and hybridbox stopped the workload. */
  timedOut: boolean;
  oomKilled: boolean;
  /** The caller's AbortSignal stopped it. */
  aborted: boolean;
  /** From the call until the result was ready (the workload's end known; a `remove` teardown comes after). */
  durationMs: number;
  /** From the call until the sandbox's first process existed. */
  startupMs: number | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Peak memory of the whole sandbox: every process (its cgroup; a VM's guest workload cgroup). */
  peakMemoryBytes: number | null;
  /** CPU time of the whole sandbox, every process, as cgroup accounting counts it (a VM's guest workload cgroup). */
  cpuTimeMs: number | null;
  /** `resources.cpuTimeMs` ran out: the workload was killed (SIGKILL); `cpuTimeMs` says how far it got. */
  cpuTimeLimitExceeded: boolean;
  /** The workload died of SIGXFSZ: a write went past `resources.fileSizeBytes`. */
  fileSizeLimitExceeded: boolean;
  /** A stream passed the spec's `outputLimitBytes`: the sandbox was killed, the output up to the cap is kept. */
  outputLimitExceeded: boolean;
  /** Which stream passed it first, else null. */
  outputLimitStream: 'stdout' | 'stderr' | null;
  /** Each limit and what enforced it (see SandboxInfo.limits). */
  limits: LimitEnforcement[];
  /** Parts of the spec this host could not honour. */
  warnings: string[];
  /** Why the sandbox died without its workload ending (a guest kernel panic), else null. */
  crash: string | null;
}

export interface ExecOptions {
  /** Added to the sandbox's environment. Keys must be valid variable names. */
  env?: Record<string, string>;
  /** @default the workload's working directory */
  workdir?: string;
  /** UID[:GID] or a user name of the image. @default the workload's user */
  user?: string;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** @default null (/dev/null) */
  stdin?: NodeJS.ReadableStream | null;
  /** @default 1048576 (1 MiB) */
  maxBufferBytes?: number;
  /** The command's own time limit: SIGTERM, then SIGKILL after the grace period. @default none */
  timeoutMs?: number;
  /** Stops the command when aborted; the call then rejects with an AbortedError carrying the ExecResult. */
  signal?: AbortSignal;
}

/** Everything about one finished `exec`, with the same fields as a RunResult where they apply. */
export interface ExecResult {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  aborted: boolean;
  durationMs: number;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

export interface StopOptions {
  /** How long the workload has between SIGTERM and SIGKILL. @default 10000 */
  graceMs?: number;
}

export interface RemoveOptions {
  /** Stop a running sandbox first (SIGKILL). @default false */
  force?: boolean;
}

export interface ListOptions {
  /** Include ended and created sandboxes. @default false (running only) */
  all?: boolean;
}

export interface LogsOptions {
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
  /** Keep reading until the sandbox has ended. @default false */
  follow?: boolean;
  signal?: AbortSignal;
}

export interface RemoveImageOptions {
  /** Untag even while sandboxes use the image (they keep their copy until removed). @default false */
  force?: boolean;
}

/** How ensureDebian found an image: already in the store, imported from the cache, or bootstrapped. */
export interface EnsureImageResult {
  ref: string;
  digest: string;
  source: 'present' | 'cache' | 'built';
}

export interface RegistryTransferOptions {
  /** s3://bucket/prefix. @default the registry config's `url`, else the embedded registry */
  registry?: string;
  /** Name in the registry when it differs from the local one. @default the local name */
  remoteRef?: string;
  /** Move the image's VM disk (ext4/qcow2) too, so a VM starts without making it. @default false */
  withVmDisk?: boolean;
  /** Settings that take precedence over the environment and the config file (docs/registry.md). */
  registryConfig?: RegistryConfigFile;
  /** `auto`: bars on a terminal, else lines; `quiet`: the summary only; `none`. @default 'auto' */
  progress?: 'auto' | 'quiet' | 'none';
  signal?: AbortSignal;
}

/** What callers see of a sandbox: its record without the backend's private details. */
export type SandboxInfo = Omit<SandboxRecord, 'spec' | 'placement' | 'runtime' | 'ownerPid' | 'ownerStartTime'> & {
  command: string[] | null;
  ip: string | null;
  /** The process that supervises the sandbox (its CLI, or its detached monitor), while it runs. */
  supervisorPid: number | null;
  /** Each limit of the spec and what enforces it on this sandbox's backend (cgroup file, QEMU option, libvirt element, qdisc). */
  limits: LimitEnforcement[];
};
