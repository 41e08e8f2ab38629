#!/usr/bin/env node
// The ESM entry point (dist/cli.js). It imports nothing up front but the routing function:
// `--version` is answered from a constant that the bundler inlines, before any module (the
// command parser included) is loaded. The installed command is dist/hybridbox.cjs
// (launcher.ts), which sends remote calls to the client without loading this at all.
declare const __HYBRIDBOX_VERSION__: string | undefined;
import { exitOnClosedStdout, routeOf } from './route.js';

exitOnClosedStdout();

const argv = process.argv.slice(2);
const route = routeOf(argv, process.env);
if (route.remote) {
  const { remote } = await import('./remote.js');
  await remote(route.host, route.argv);
} else if (route.error) {
  process.stderr.write(`hybridbox: ${route.error}\n`);
  process.exitCode = 125;
} else if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V') && typeof __HYBRIDBOX_VERSION__ === 'string') {
  process.stdout.write(`${__HYBRIDBOX_VERSION__}\n`);
} else {
  const [{ buildProgram }, { reportError }] = await Promise.all([import('./main.js'), import('./report-error.js')]);
  await buildProgram()
    .parseAsync(process.argv)
    .catch((e: unknown) => reportError(e));
}
