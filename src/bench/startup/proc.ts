// Process helpers of the startup benchmark: a spawn timed to its first output, its exit and
// its pipes closing; helper commands (qemu-img, virsh, podman load) whose failure is an error.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { HybridboxError } from '../../errors.js';
import { lastLine, spawnChild } from '../../util/exec.js';
import { withDeadline } from '../../util/proc.js';
import type { Measurement } from './types.js';

/** One iteration that takes longer than this is a hang, not a measurement. */
export const ITERATION_TIMEOUT_MS = 120_000;

export class BenchRunError extends HybridboxError {}

/** What a failure message quotes when the command printed nothing. */
export const NO_OUTPUT = '(no output)';

export function findOnPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

export interface TimedSpawn {
  /** ms since the spawn: first stdout byte (null: none), process exit, pipes closed. */
  firstOutputMs: number | null;
  exitMs: number;
  closeMs: number;
  code: number | null;
  signal: string | null;
  stderr: string;
}

/** Spawns a command and times it; stdout is drained (only its first byte matters), the end of stderr kept. */
export async function timedSpawn(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<TimedSpawn> {
  let firstOutputMs: number | null = null;
  const c = spawnChild(file, args, {
    env: opts.env,
    stdout: () => void (firstOutputMs ??= performance.now() - c.startedAt),
    timeoutMs: ITERATION_TIMEOUT_MS,
    killSignal: 'SIGKILL',
  });
  const r = await c.done.catch((e: Error) => {
    throw new BenchRunError(`cannot start ${file}: ${e.message}`);
  });
  return { firstOutputMs, exitMs: r.exitMs, closeMs: r.closeMs, code: r.code, signal: r.signal, stderr: r.stderr };
}

/** Throws unless the timed command exited 0. */
export function mustSucceed(r: TimedSpawn, what: string): TimedSpawn {
  if (r.code !== 0) throw new BenchRunError(`${what} ended with ${r.signal ?? `exit code ${r.code}`}: ${lastLine(r.stderr, NO_OUTPUT)}`);
  return r;
}

/** A helper command: stdout kept, never throws for a non-zero exit. */
export async function tool(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const r = await spawnChild(file, args, { env: opts.env, stdout: 'keep', timeoutMs: opts.timeoutMs ?? ITERATION_TIMEOUT_MS, killSignal: 'SIGKILL' }).done.catch((e: Error) => {
    throw new BenchRunError(`cannot start ${file}: ${e.message}`);
  });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

export async function mustTool(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await tool(file, args, opts);
  if (r.code !== 0) throw new BenchRunError(`${file} ${args.slice(0, 3).join(' ')} failed (exit ${r.code}): ${lastLine(r.stderr || r.stdout, NO_OUTPUT)}`);
  return r.stdout;
}

/** Rejects after `ms` with a message naming what did not happen; the timer never keeps the process alive. */
export function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return withDeadline(p, ms, () => new BenchRunError(`${what} did not happen within ${ms} ms`));
}

/** Kills a child that is still running and waits for it to be gone. */
export async function killChild(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  c.kill('SIGKILL');
  await new Promise((r) => c.once('close', r));
}

/**
 * Phase durations from the moments (ms since the iteration started) at which each phase
 * ended, in order. A phase whose end was not observed merges into the next one; clock
 * granularity (record timestamps are whole ms, file times coarser) never makes one negative.
 */
export function phaseDurations(ends: [string, number | null | undefined][]): Record<string, number> {
  const out: Record<string, number> = {};
  let prev = 0;
  for (const [name, at] of ends) {
    if (at === null || at === undefined || !Number.isFinite(at)) continue;
    const end = Math.max(prev, at);
    out[name] = Math.round((end - prev) * 100) / 100;
    prev = end;
  }
  return out;
}

/** A measurement from a timed spawn whose only phases are first output and exit. */
export function spawnMeasurement(r: TimedSpawn): Measurement {
  return {
    totalMs: r.closeMs,
    firstOutputMs: r.firstOutputMs,
    phases: phaseDurations([
      ['firstOutput', r.firstOutputMs],
      ['exit', r.closeMs],
    ]),
  };
}
