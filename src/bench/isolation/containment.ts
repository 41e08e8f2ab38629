import type { IsolationResult, PerformanceCase } from '../../measurements/index.js';
import { RATE_TOLERANCE } from './context.js';

/** What the targets ask of a limited neighbour's victim: at most this much lost. */
export const VICTIM_LOSS_TARGET_PCT = 10;

/**
 * One stress (disk writer, UDP flood) on one backend, without and with its limit: the rate
 * the neighbour reached and what the victim lost each time. The table of the closing
 * notes and the report.
 */
export interface ContainmentRow {
  backend: PerformanceCase['backend'];
  stress: 'disk-writer' | 'network-flood';
  unit: 'MiB/s' | 'Mbit/s';
  limit: number | null;
  rateBefore: number | null;
  rateAfter: number | null;
  ratio: number | null;
  lossBeforePct: number | null;
  lossAfterPct: number | null;
  /** The limited neighbour stayed within RATE_TOLERANCE of its limit. */
  rateHeld: boolean | null;
  /** The victim lost at most VICTIM_LOSS_TARGET_PCT next to the limited neighbour. */
  victimHeld: boolean | null;
}

export function containmentRows(r: IsolationResult): ContainmentRow[] {
  const rows: ContainmentRow[] = [];
  for (const backend of [...new Set(r.performance.map((c) => c.backend))]) {
    for (const stress of ['disk-writer', 'network-flood'] as const) {
      const before = r.performance.find((c) => c.backend === backend && c.neighbour === stress);
      const after = r.performance.find((c) => c.backend === backend && c.neighbour === `limited-${stress}`);
      if (!before && !after) continue;
      const ratio = after?.rate?.ratio ?? null;
      const lossAfter = after?.degradationPct ?? null;
      rows.push({
        backend,
        stress,
        unit: (after ?? before)?.rate?.unit ?? (stress === 'disk-writer' ? 'MiB/s' : 'Mbit/s'),
        limit: after?.rate?.limit ?? null,
        rateBefore: before?.rate?.measured ?? null,
        rateAfter: after?.rate?.measured ?? null,
        ratio,
        lossBeforePct: before?.degradationPct ?? null,
        lossAfterPct: lossAfter,
        rateHeld: ratio === null ? null : ratio <= RATE_TOLERANCE,
        victimHeld: lossAfter === null ? null : lossAfter <= VICTIM_LOSS_TARGET_PCT,
      });
    }
  }
  return rows;
}

const f = (x: number | null, d = 1): string => (x === null ? '-' : x.toFixed(d));
const mark = (ok: boolean | null): string => (ok === null ? '?' : ok ? '✔' : '✘');

/** The table as text cells: header first. */
export function containmentCells(rows: ContainmentRow[]): string[][] {
  return [
    ['backend', 'neighbour', 'rate unlimited', 'limit', 'rate limited', 'x limit', 'victim lost unlimited', 'victim lost limited'],
    ...rows.map((c) => [
      c.backend,
      c.stress,
      `${f(c.rateBefore)} ${c.unit}`,
      c.limit === null ? '-' : `${c.limit} ${c.unit}`,
      `${f(c.rateAfter)} ${c.unit}`,
      `${f(c.ratio, 2)} ${mark(c.rateHeld)}`,
      c.lossBeforePct === null ? '-' : `${c.lossBeforePct.toFixed(1)}%`,
      c.lossAfterPct === null ? '-' : `${c.lossAfterPct.toFixed(1)}% ${mark(c.victimHeld)}`,
    ]),
  ];
}

/** One line on the targets: within RATE_TOLERANCE x of the limit, victim loss <= 10%. */
export function containmentSummary(rows: ContainmentRow[]): string | null {
  const limited = rows.filter((c) => c.limit !== null);
  if (!limited.length) return null;
  const worstRatio = Math.max(...limited.map((c) => c.ratio ?? 0));
  const worstLoss = Math.max(...limited.map((c) => c.lossAfterPct ?? 0));
  const missed = limited.filter((c) => c.rateHeld === false || c.victimHeld === false).map((c) => `${c.backend} ${c.stress}`);
  return (
    `Limited neighbours reached at most ${worstRatio.toFixed(2)}x their limit (target <= ${RATE_TOLERANCE}x), and their victims lost at most ${worstLoss.toFixed(1)}% (target <= ${VICTIM_LOSS_TARGET_PCT}%)` +
    (missed.length ? `; missed by: ${missed.join(', ')}.` : '; every target met.')
  );
}
