/** Prints an error as one line and sets the exit code: 125 for hybridbox's own errors. */
export function reportError(e: unknown): void {
  const err = e as { exitCode?: number; message?: string; name?: string };
  const known = typeof err?.exitCode === 'number' && typeof err.name === 'string' && err.name !== 'Error';
  const msg = (err?.message ?? String(e)).split('\n')[0];
  process.stderr.write(`hybridbox: ${msg}\n`);
  if (!known && process.env.HYBRIDBOX_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
  process.exitCode = known ? err.exitCode! : 125;
}
