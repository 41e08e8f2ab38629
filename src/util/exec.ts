import { HostCapabilityError } from '../errors.js';

export interface RunOutcome {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  failed: boolean;
}

/**
 * Runs a command to completion through execa, loaded on first use: it is a large module,
 * and the hot path of a container start (no bridge network, no clean-up of a crashed
 * runtime) never needs it. Never throws for a non-zero exit: callers read `exitCode`.
 */
export async function run(file: string, args: readonly string[], options: { input?: string; timeoutMs?: number } = {}): Promise<RunOutcome> {
  const { execa } = await import('execa');
  const r = await execa(file, args, { reject: false, input: options.input, timeout: options.timeoutMs, encoding: 'utf8', stripFinalNewline: true });
  return { exitCode: r.exitCode, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), failed: r.failed };
}

/**
 * Runs a command that must succeed; a failure becomes one line: what failed and its last
 * words (a HostCapabilityError unless the caller makes its own).
 */
export async function runChecked(file: string, args: readonly string[], what: string, makeError: (msg: string) => Error = (m) => new HostCapabilityError(m)): Promise<RunOutcome> {
  const r = await run(file, args);
  if (r.exitCode !== 0) throw makeError(`${what} failed: ${(r.stderr || r.stdout || `exit ${r.exitCode}`).trim().split('\n').pop()}`);
  return r;
}
