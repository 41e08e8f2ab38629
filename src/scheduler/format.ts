import type { Placement } from './place.js';

/** The terminal view of a placement: the choice, why, what it will cost, and what lost. */
export function formatPlacement(p: Placement): string {
  const { median, p95, source } = p.predictedStartupMs;
  return [
    `backend: ${p.backend}`,
    ...p.reasons.map((r) => `  • ${r}`),
    `predicted start-up: ${Math.round(median)} ms median, ${Math.round(p95)} ms p95 (${source === 'measured' ? 'measured on this host' : 'default estimate'})`,
    ...(p.rejected.length ? ['not chosen:', ...p.rejected.map((r) => `  - ${r.backend}: ${r.reason}`)] : []),
  ].join('\n');
}
