import { MIN_SAMPLES, predictionSource, type Placement } from './place.js';

const ms = (n: number): string => `${Math.round(n)} ms`;

/** The terminal view of a placement: the choice, why, what it will cost, and what lost. */
export function formatPlacement(p: Placement): string {
  const { median, p95 } = p.predictedStartupMs;
  const byBackend = p.predictedStartupByBackend ?? [];
  const width = Math.max(0, ...byBackend.map((b) => b.backend.length));
  const cells = byBackend.map((b) => `${ms(b.median)} median, ${ms(b.p95)} p95`);
  const cellWidth = Math.max(0, ...cells.map((c) => c.length));
  const unmeasured = byBackend.some((b) => b.source !== 'measured');
  return [
    `backend: ${p.backend}`,
    ...p.reasons.map((r) => `  • ${r}`),
    `predicted start-up: ${Math.round(median)} ms median, ${Math.round(p95)} ms p95 (${predictionSource(p.predictedStartupMs, { runs: true })})`,
    ...(byBackend.length > 1
      ? [
          `predicted start-up by backend (to the workload's first output)${unmeasured ? `; default estimates until \`hybridbox bench startup\` has measured this host (${MIN_SAMPLES}+ runs)` : ''}:`,
          ...byBackend.map((b, i) => `  ${b.backend.padEnd(width)}  ${cells[i]!.padEnd(cellWidth)}  (${predictionSource(b, { runs: true })})`),
        ]
      : []),
    ...(p.rejected.length ? ['not chosen:', ...p.rejected.map((r) => `  - ${r.backend}: ${r.reason}`)] : []),
    ...(p.limits?.length ? [`limits on ${p.backend}:`, ...p.limits.map((l) => `  ${l.field} ${l.value}: ${l.mechanism ?? 'NOT APPLIED'}${l.note ? ` (${l.note})` : ''}`)] : []),
  ].join('\n');
}
