// Number formats shared by the terminal tables, the HTML report and the summary sentences,
// so a figure reads the same wherever it is shown.
import type { BackendKind } from '../../spec/schema.js';
import { formatBytes } from '../../util/text.js';

export const fmtBytes = (n: number | null | undefined): string => formatBytes(n, 'rounded');

export function fmtMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '-';
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(0)} ms`;
  return `${ms.toFixed(1)} ms`;
}

/** A ratio for prose: "12x", "1.4x". */
export function fmtRatio(r: number): string {
  return r >= 10 ? `${r.toFixed(0)}x` : `${r.toFixed(1)}x`;
}

export function fmtPct(p: number | null | undefined): string {
  return p === null || p === undefined || !Number.isFinite(p) ? '-' : `${p.toFixed(0)}%`;
}

export function fmtDate(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, ' UTC');
}

/** "a container", "a microVM", "a VM": the backends as prose names them. */
export const BACKEND_NOUN: Record<BackendKind, string> = { container: 'container', microvm: 'microVM', vm: 'VM' };

/** "a, b and c". */
export function list(items: string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}

/** Plain-text columns for the terminal; numbers (cells starting with a digit or sign) right-aligned. */
export function textTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const numeric = (c: string): boolean => /^[-+]?\d/.test(c);
  return rows
    .map((r, ri) =>
      r
        .map((c, i) => (ri > 0 && numeric(c) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
