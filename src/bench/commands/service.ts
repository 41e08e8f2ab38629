import type { Hybridbox } from '../../api/index.js';
import { SpecError } from '../../errors.js';
import { runServiceBench } from '../service/index.js';
import { writeResultFile } from './output.js';

/** `hybridbox bench service`: runs, stores (for `report`) and prints the result. */
export async function benchService(hb: Hybridbox, opts: Record<string, unknown>): Promise<void> {
  const runs = opts.runs === undefined ? 30 : Number(opts.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new SpecError('--runs', opts.runs, 'allowed: a whole number >= 1');
  const result = await runServiceBench(hb, { runs, log: (l) => process.stderr.write(`${l}\n`) });
  hb.measurements.save(result);
  if (typeof opts.out === 'string') process.stderr.write(`wrote ${writeResultFile(opts.out, result)}\n`);
  if (opts.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else for (const s of result.summary) process.stdout.write(`${s}\n`);
}
