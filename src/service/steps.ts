// One sandboxed step of a request (a run, a compile, a judge test): the workload spec built
// from the request with the service's untrusted defaults, and the verdict read from the
// library's RunResult. Every step is a fresh sandbox, removed at its end.
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import type { Hybridbox, RunResult } from '../api/index.js';
import type { WorkloadSpecInput } from '../spec/index.js';
import type { Limits, Step, Verdict } from './schemas.js';

/** Where a request's files are, inside every sandbox of the request. */
export const BOX = '/box';

/** What the service uses of a language runtime (languages/). */
export interface LanguageRuntime {
  name: string;
  image: string;
  fileName: string;
  compile: string[] | null;
  run: string[];
}

/** The limits every step gets when the request leaves one out. */
export const DEFAULT_LIMITS = { wallTimeMs: 10_000, memoryMiB: 256, pids: 128, cpus: 1, outputBytes: 1024 * 1024 } as const;

export type EffectiveLimits = Limits & typeof DEFAULT_LIMITS;

/** A limits object without its unset fields, so that laying it over another keeps the other's values. */
export const definedOnly = (l: Limits): Limits => Object.fromEntries(Object.entries(l).filter(([, v]) => v !== undefined)) as Limits;

export function withDefaults(...layers: Limits[]): EffectiveLimits {
  return Object.assign({}, DEFAULT_LIMITS, ...layers.map(definedOnly));
}

/** Writes a request's files into its box directory (a fresh directory the service owns). */
export function writeBox(dir: string, files: { path: string; content: string; encoding: 'utf8' | 'base64'; executable: boolean }[]): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  // Writable by the sandbox's (mapped) root for a compile step; its parent stays the service's alone.
  chmodSync(dir, 0o777);
  for (const f of files) {
    const p = join(dir, f.path);
    mkdirSync(dirname(p), { recursive: true, mode: 0o755 });
    // 'wx': the box is fresh, so an existing path is a duplicate in the request, never followed.
    writeFileSync(p, Buffer.from(f.content, f.encoding), { flag: 'wx', mode: f.executable ? 0o755 : 0o644 });
  }
}

export interface StepInput {
  name: string;
  image: string;
  command: string[];
  env: Record<string, string>;
  stdin: string;
  limits: EffectiveLimits;
  isolation: WorkloadSpecInput['isolation'];
  trust: WorkloadSpecInput['trust'];
  box: { hostDir: string; writable: boolean } | null;
  /** Further read-only directories (a checker's view of a test's data). */
  mounts?: { hostDir: string; guestPath: string }[];
}

/** The library spec of a step: no network, and nothing of the service's environment. */
export function stepSpec(s: StepInput): WorkloadSpecInput {
  const l = s.limits;
  return {
    name: s.name,
    image: s.image,
    command: s.command,
    // Only what the caller gave: the service's own variables never reach a workload.
    env: s.env,
    workdir: s.box ? BOX : '/',
    network: 'none',
    isolation: s.isolation,
    trust: s.trust,
    timeoutMs: l.wallTimeMs,
    // Untrusted steps get a read-only image root (with private /tmp and /dev/shm): nothing a
    // step writes outside /box outlives it, and nothing of one request reaches the next.
    readOnlyRoot: s.trust !== 'trusted',
    outputLimitBytes: l.outputBytes,
    resources: {
      memoryMiB: l.memoryMiB,
      pids: l.pids,
      cpus: l.cpus,
      // The extra time lets a step run past its CPU limit before it is stopped; it is still judged by cpuTimeMs.
      ...(l.cpuTimeMs !== undefined ? { cpuTimeMs: l.cpuTimeMs + (l.extraTimeMs ?? 0) } : {}),
      ...(l.fileSizeBytes !== undefined ? { fileSizeBytes: l.fileSizeBytes } : {}),
      ...(l.openFiles !== undefined ? { openFiles: l.openFiles } : {}),
      ...(l.tmpfsMiB !== undefined ? { tmpfsMiB: l.tmpfsMiB } : {}),
    },
    volumes: [
      ...(s.box ? [{ hostPath: s.box.hostDir, guestPath: BOX, readOnly: !s.box.writable }] : []),
      ...(s.mounts ?? []).map((m) => ({ hostPath: m.hostDir, guestPath: m.guestPath, readOnly: true })),
    ],
  };
}

export interface StepEvents {
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  onStarted?: (sandboxId: string, backend: string) => void;
  /** The step's end, judged, as soon as the workload has ended (its sandbox is removed after). */
  onEnded?: (step: Step) => void;
}

/** Runs one step to its end and judges how it ended. Never throws for the workload's own failures. */
export async function runStep(hb: Hybridbox, s: StepInput, ev: StepEvents = {}): Promise<{ step: Step; result: RunResult }> {
  const t0 = performance.now();
  const judged = (result: RunResult): Step => {
    const { verdict, message } = verdictOf(result, s.limits);
    return {
      verdict,
      message,
      exitCode: result.exitCode,
      signal: result.signal,
      cpuMs: result.cpuTimeMs,
      wallMs: Math.round(performance.now() - t0),
      peakMemoryBytes: result.peakMemoryBytes,
      stdout: result.stdout,
      stderr: result.stderr,
      stdoutTruncated: result.stdoutTruncated,
      stderrTruncated: result.stderrTruncated,
      backend: result.backend,
      sandboxId: result.id,
    };
  };
  let step = null as Step | null;
  const result = await hb.sandboxes.run(stepSpec(s), {
    // No input is /dev/null, which spares the backend a pipe to feed and close.
    stdin: s.stdin ? Readable.from([Buffer.from(s.stdin)]) : null,
    maxBufferBytes: s.limits.outputBytes,
    remove: true,
    ...(ev.onStdout ? { onStdout: ev.onStdout } : {}),
    ...(ev.onStderr ? { onStderr: ev.onStderr } : {}),
    onCreated: (sb) => ev.onStarted?.(sb.id, sb.backend),
    onEnded: (r) => {
      step = judged(r);
      ev.onEnded?.(step);
    },
  });
  return { result, step: step ?? judged(result) };
}

/**
 * How a step ended, in a judge's words. The order matters: the kernel's OOM kill or a limit
 * that stopped the workload explains its signal, so limits come before runtime-error.
 */
export function verdictOf(r: RunResult, l: EffectiveLimits): { verdict: Verdict; message: string | null } {
  if (r.crash) return { verdict: 'internal-error', message: r.crash };
  if (r.oomKilled) return { verdict: 'memory-limit', message: `killed by the kernel at the memory limit (${l.memoryMiB} MiB)` };
  if (r.cpuTimeLimitExceeded || (l.cpuTimeMs !== undefined && r.cpuTimeMs !== null && r.cpuTimeMs > l.cpuTimeMs)) {
    return { verdict: 'time-limit', message: `used ${r.cpuTimeMs ?? 'more than the limit of'} ms of CPU time, the limit is ${l.cpuTimeMs} ms` };
  }
  if (r.outputLimitExceeded) return { verdict: 'output-limit', message: `wrote more than ${l.outputBytes} bytes to ${r.outputLimitStream ?? 'its output'}` };
  if (r.timedOut) return { verdict: 'wall-time-limit', message: `still running after ${l.wallTimeMs} ms of wall time` };
  // 153 = 128 + SIGXFSZ: how a shell reports a child that the file size limit killed.
  if (r.fileSizeLimitExceeded || r.signal === 'SIGXFSZ' || (l.fileSizeBytes !== undefined && r.exitCode === 153))
    return { verdict: 'file-size-limit', message: `wrote a file past the limit of ${l.fileSizeBytes ?? '?'} bytes` };
  if (r.signal) return { verdict: 'runtime-error', message: `killed by ${r.signal}` };
  if (r.exitCode !== 0) return { verdict: 'runtime-error', message: `exited with code ${r.exitCode}` };
  return { verdict: 'accepted', message: null };
}
