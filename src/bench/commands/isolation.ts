import { writeResultFile } from './output.js';
import type { Hybridbox } from '../../api/index.js';
import { SpecError } from '../../errors.js';
import { BACKEND_KINDS, type BackendKind } from '../../spec/schema.js';
import { PARTS, renderIsolation, runIsolationBench, type Part } from '../isolation/index.js';

function list<T extends string>(value: unknown, allowed: readonly T[], flag: string): T[] | undefined {
  if (value === undefined) return undefined;
  const items = String(value)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const i of items) if (!allowed.includes(i as T)) throw new SpecError(flag, i, `allowed: ${allowed.join(', ')} (comma-separated)`);
  if (items.length === 0) throw new SpecError(flag, value, `allowed: ${allowed.join(', ')} (comma-separated)`);
  return items as T[];
}

/** `hybridbox bench isolation`: runs the parts asked for, stores the result, prints tables (or JSON). */
export async function benchIsolation(hb: Hybridbox, opts: Record<string, unknown>): Promise<void> {
  const backends = list<BackendKind>(opts.backends, BACKEND_KINDS, '--backends');
  const parts = list<Part>(opts.parts, PARTS, '--parts');
  const asJson = opts.json === true;
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const result = await runIsolationBench(hb, { backends, parts, quick: opts.quick === true, handleSignals: true, log });
  hb.measurements.save(result);
  if (typeof opts.out === 'string') {
    log(`wrote ${writeResultFile(opts.out, result)}`);
  }
  if (asJson) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  else process.stdout.write(renderIsolation(result) + '\n');
}
