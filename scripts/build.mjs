// Bundles the CLI and the library with esbuild: one ESM file per entry plus shared chunks
// that load on demand, so `hybridbox --version` reads little more than commander.
import { build } from 'esbuild';
import { readFileSync, rmSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
rmSync('dist/chunks', { recursive: true, force: true });
mkdirSync('dist', { recursive: true });
await build({
  entryPoints: {
    cli: 'src/cli/index.ts',
    index: 'src/index.ts',
    client: 'src/client/index.ts',
    'benchmarks/startup': 'benchmarks/startup.ts',
    'benchmarks/registry': 'benchmarks/registry.ts',
  },
  outdir: 'dist',
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // Loaded from node_modules at run time: yaml, which only `-f` needs. better-sqlite3's
  // JavaScript is bundled; its native addon is loaded by path (store/db.ts).
  external: ['yaml'],
  define: { __HYBRIDBOX_VERSION__: JSON.stringify(pkg.version) },
  // Some bundled CommonJS dependencies call require(): give ESM output one.
  banner: { js: "import { createRequire as __hbxCreateRequire } from 'node:module'; const require = __hbxCreateRequire(import.meta.url);" },
  minify: true,
  sourcemap: 'linked',
  logLevel: 'warning',
});
// The installed command: one CommonJS file that serves remote calls without the ESM loader
// (src/cli/launcher.ts) and hands everything else to dist/cli.js.
await build({
  entryPoints: ['src/cli/launcher.ts'],
  outfile: 'dist/hybridbox.cjs',
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  banner: { js: '#!/usr/bin/env node' },
  minify: true,
  sourcemap: 'linked',
  logLevel: 'warning',
});
execFileSync('chmod', ['+x', 'dist/cli.js', 'dist/hybridbox.cjs']);
execFileSync('bash', ['src/runtimes/container/shim/build.sh', 'dist/hbx-shim'], { stdio: 'inherit' });
execFileSync('sh', ['src/bench/probe/build.sh', 'dist/hbx-probe'], { stdio: 'inherit' });
