// Startup-latency benchmark: `npm run bench:startup` is `hybridbox bench startup` (the
// harness lives in src/bench/startup.ts), so both take the same options, print the same
// tables and store the same result for `hybridbox report` and the scheduler. See
// benchmarks/README.md.
//
//   node dist/benchmarks/startup.js [--runs N] [--warmup N] [--vm-runs N] [--backends a,b] [--image REF] [--command CMD] [--json] [--out DIR]
import { buildProgram } from '../src/cli/main.js';
import { reportError } from '../src/cli/report-error.js';

const program = buildProgram();
await program.parseAsync([process.argv[0]!, 'hybridbox', 'bench', 'startup', ...process.argv.slice(2)]).catch((e: unknown) => reportError(e));
