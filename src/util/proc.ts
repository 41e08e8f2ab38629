import { readFileSync } from 'node:fs';

/** Start time of a process in clock ticks since boot: with the pid, it names one process for good. */
export function processStartTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; the command name (field 2) may contain spaces, so count from its closing paren.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[19]);
  } catch {
    return null;
  }
}

/** True when `pid` is alive and is still the process that had `startTime`. */
export function isSameProcessAlive(pid: number, startTime: number | null): boolean {
  const now = processStartTime(pid);
  if (now === null) return false;
  // A zombie has exited already.
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (state.slice(state.lastIndexOf(')') + 2, state.lastIndexOf(')') + 3) === 'Z') return false;
  } catch {
    return false;
  }
  return startTime === null || now === startTime;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Blocks the thread for `ms`: for the rare synchronous wait (a lock held by another process). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Waits for `p` at most `ms`; true when it settled in time. The timer never keeps the process alive. */
export async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  try {
    return await Promise.race([
      p.then(
        () => true,
        () => true,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `p`, or a rejection with `onTimeout()` once `ms` have passed without it settling. The timer
 * never keeps the process alive; what `p` stands for is not cancelled.
 */
export function withDeadline<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
    timer.unref();
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * Checks `cond` every `intervalMs` until it holds (true) or `timeoutMs` have passed (false);
 * it is checked once more after the last wait, so a slow machine never loses the final look.
 */
export async function pollUntil(cond: () => boolean | Promise<boolean>, { timeoutMs, intervalMs = 10 }: { timeoutMs: number; intervalMs?: number }): Promise<boolean> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    // Taken before the look: the look that ends the wait starts at or after the deadline,
    // even when the condition itself is slow (a loaded host).
    const late = performance.now() >= end;
    if (await cond()) return true;
    if (late) return false;
    await sleep(intervalMs);
  }
}
