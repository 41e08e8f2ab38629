#!/usr/bin/env node
// The entry point imports nothing up front: `--version` is answered from a constant that the
// bundler inlines, before any module (the command parser included) is loaded.
declare const __HYBRIDBOX_VERSION__: string | undefined;

// A closed pipe downstream (`hybridbox ps | head -1`) is not an error of ours.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

const argv = process.argv.slice(2);
// A remote CLI: `--host H` first, or HYBRIDBOX_HOST, with a verb the service serves.
const hostFlag = argv[0] === '--host' ? argv[1] : argv[0]?.startsWith('--host=') ? argv[0].slice(7) : undefined;
const rest = argv[0] === '--host' ? argv.slice(2) : hostFlag ? argv.slice(1) : argv;
const host = hostFlag ?? (rest[0] === 'judge' ? (process.env.HYBRIDBOX_HOST ?? 'unix:///run/hybridbox/api.sock') : process.env.HYBRIDBOX_HOST);
if (host && (rest[0] === 'run' || rest[0] === 'judge')) {
  const { remote } = await import('./remote.js');
  await remote(host, rest);
} else if (hostFlag) {
  process.stderr.write(`hybridbox: --host works with run and judge; ${rest[0] ?? 'no command'} runs locally only\n`);
  process.exitCode = 125;
} else if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V') && typeof __HYBRIDBOX_VERSION__ === 'string') {
  process.stdout.write(`${__HYBRIDBOX_VERSION__}\n`);
} else {
  const [{ buildProgram }, { reportError }] = await Promise.all([import('./main.js'), import('./report-error.js')]);
  await buildProgram()
    .parseAsync(process.argv)
    .catch((e: unknown) => reportError(e));
}
