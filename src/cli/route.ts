// Which way a command line goes: to a running service (the remote client) or to the local CLI.
// Kept apart and free of imports: both entry points use it before loading anything.

export type Route = { remote: true; host: string; argv: string[] } | { remote: false; error?: string };

/** `--host H` first, or HYBRIDBOX_HOST, with a verb the service serves (run, judge). */
export function routeOf(argv: string[], env: NodeJS.ProcessEnv): Route {
  const hostFlag = argv[0] === '--host' ? argv[1] : argv[0]?.startsWith('--host=') ? argv[0].slice(7) : undefined;
  const rest = argv[0] === '--host' ? argv.slice(2) : hostFlag ? argv.slice(1) : argv;
  const host = hostFlag ?? (rest[0] === 'judge' ? (env.HYBRIDBOX_HOST ?? 'unix:///run/hybridbox/api.sock') : env.HYBRIDBOX_HOST);
  if (host && (rest[0] === 'run' || rest[0] === 'judge')) return { remote: true, host, argv: rest };
  if (hostFlag) return { remote: false, error: `--host works with run and judge; ${rest[0] ?? 'no command'} runs locally only` };
  return { remote: false };
}

/** A closed pipe downstream (`hybridbox ps | head -1`) is not an error of ours. */
export function exitOnClosedStdout(): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
}
