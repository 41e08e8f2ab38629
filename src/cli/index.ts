#!/usr/bin/env node
import { VERSION } from './version.js';

// `--version` is answered before the command parser loads: scripts call it in loops.
const argv = process.argv.slice(2);
if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
  process.stdout.write(`${VERSION}\n`);
} else {
  const [{ buildProgram }, { reportError }] = await Promise.all([import('./main.js'), import('./report-error.js')]);
  await buildProgram()
    .parseAsync(process.argv)
    .catch((e: unknown) => reportError(e));
}
