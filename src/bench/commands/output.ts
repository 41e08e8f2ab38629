// Where a benchmark's result goes besides the state database: `--out DIR` keeps a JSON copy.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { BenchResult } from '../../measurements/index.js';

/** Writes `<kind>-<start time>.json` into `dir`; returns its path. */
export function writeResultFile(dir: string, result: BenchResult): string {
  const d = resolve(dir);
  mkdirSync(d, { recursive: true });
  const file = join(d, `${result.kind}-${new Date(result.startedAtMs).toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  return file;
}
