import { writeResultFile } from './output.js';
import type { Hybridbox } from '../../api/index.js';
import { HybridboxError, SpecError } from '../../errors.js';
import { BACKEND_KINDS, type BackendKind } from '../../spec/schema.js';
import { parseNumber, parseSize } from '../../spec/units.js';
import { DEFAULT_COUNT_CAP, DEFAULT_TIME_LIMIT_MS, SANDBOX_MEMORY_MIB, runDensity } from '../density/run.js';
import { densitySummary, densityTable } from '../density/summary.js';
import { describeHost } from '../host.js';
import { fmtBytes } from '../report/format.js';
import type { DensityResult } from '../../measurements/index.js';

class Interrupted extends HybridboxError {
  override readonly exitCode = 130;
}

function parseBackends(hb: Hybridbox, text: unknown): BackendKind[] {
  const available = hb
    .info()
    .backends.filter((b) => b.available)
    .map((b) => b.kind);
  if (text === undefined) return BACKEND_KINDS.filter((k) => available.includes(k));
  const asked = String(text)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const b of asked) {
    if (!(BACKEND_KINDS as readonly string[]).includes(b)) throw new SpecError('--backends', b, `allowed: a comma-separated list of ${BACKEND_KINDS.join(', ')}`);
    const why = hb.info().backends.find((x) => x.kind === b)?.reason;
    if (why) throw new HybridboxError(`--backends: ${b} is not available on this host: ${why}`);
  }
  return asked as BackendKind[];
}

/**
 * `hybridbox bench density`: how many idle sandboxes of each backend this host holds, what
 * each costs in host memory beyond its workload, and how fast they start one after another.
 */
export async function benchDensity(hb: Hybridbox, opts: Record<string, unknown>): Promise<void> {
  const backends = parseBackends(hb, opts.backends);
  const budgetBytes = opts.budget === undefined ? Math.floor(hb.host.memTotalBytes / 4) : parseSize(String(opts.budget), '--budget') * 1048576;
  let count: number | undefined;
  if (opts.count !== undefined) {
    count = parseNumber(String(opts.count), '--count', 'a whole number of sandboxes, at least 1');
    if (!Number.isInteger(count) || count < 1) throw new SpecError('--count', opts.count, 'allowed: a whole number of sandboxes, at least 1');
  }
  const progress = (line: string): void => void process.stderr.write(`density: ${line}\n`);

  // Ctrl-C stops the ramp; the sandboxes started so far are removed before the command ends.
  const abort = new AbortController();
  let signals = 0;
  const onSignal = (): void => {
    if (signals++ === 0) progress('interrupted: removing the sandboxes started so far (they are named density-<pid>-*)');
    else progress('still removing sandboxes; a later `hybridbox bench density` removes what is left');
    abort.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const startedAtMs = Date.now();
  let measured;
  try {
    measured = await runDensity(hb, { backends, budgetBytes, count, signal: abort.signal, progress });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (abort.signal.aborted) throw new Interrupted('interrupted: every sandbox it started has been removed; nothing was stored');

  const result: DensityResult = {
    kind: 'density',
    startedAtMs,
    durationMs: Date.now() - startedAtMs,
    host: await describeHost(hb.host),
    options: {
      backends,
      budgetBytes,
      count: count ?? null,
      countCaps: Object.fromEntries(backends.map((b) => [b, count ?? DEFAULT_COUNT_CAP[b]])),
      timeLimitMs: DEFAULT_TIME_LIMIT_MS,
      memoryMiB: Object.fromEntries(backends.map((b) => [b, SANDBOX_MEMORY_MIB[b]])),
      image: 'busybox',
      command: ['sleep', '3600'],
    },
    summary: densitySummary(measured, budgetBytes),
    memoryBudgetBytes: budgetBytes,
    backends: measured,
  };
  hb.measurements.save(result);
  if (typeof opts.out === 'string') {
    writeResultFile(opts.out, result);
  }
  if (opts.json) {
    process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    return;
  }
  process.stdout.write(
    `${densityTable(measured)}\n\nbudget ${fmtBytes(budgetBytes)} of host used memory per backend; overhead = host RSS of the sandbox's own processes + its cgroup's memory beyond the workload\n\n`,
  );
  for (const s of result.summary) process.stdout.write(`${s}\n`);
}
