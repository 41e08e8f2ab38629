// The installed command (dist/hybridbox.cjs). Built as one CommonJS file on purpose: a remote
// call (`--host`, HYBRIDBOX_HOST) is a short-lived process whose cost is mostly Node's own
// start, and skipping the ESM loader and its chunk graph saves about a tenth of that path on
// a small host (measured: docs/SERVICE.md). Every other command loads the ESM CLI.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { remote } from './remote.js';
import { exitOnClosedStdout, routeOf } from './route.js';

const route = routeOf(process.argv.slice(2), process.env);
if (route.remote) {
  exitOnClosedStdout();
  // Everything is written (stdout and stderr are synchronous for files, pipes and terminals
  // on Linux): exit now rather than wait for the connection's teardown.
  void remote(route.host, route.argv).then(() => process.exit());
} else {
  void import(pathToFileURL(join(__dirname, 'cli.js')).href);
}
