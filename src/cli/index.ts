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
if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V') && typeof __HYBRIDBOX_VERSION__ === 'string') {
  process.stdout.write(`${__HYBRIDBOX_VERSION__}\n`);
} else {
  const [{ buildProgram }, { reportError }] = await Promise.all([import('./main.js'), import('./report-error.js')]);
  await buildProgram()
    .parseAsync(process.argv)
    .catch((e: unknown) => reportError(e));
}
