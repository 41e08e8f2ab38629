// Compact terminal tables of an isolation result.
import { median } from '../stats.js';
import type { IsolationResult, PerformanceCase, SecurityCell } from '../../measurements/index.js';
import { containmentCells, containmentRows } from './containment.js';

const mark = (safe: boolean | null): string => (safe === true ? '✔' : safe === false ? '✘' : ' ');

function table(header: string[], rows: string[][], widths?: number[]): string {
  const w = header.map((h, i) => widths?.[i] ?? Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => {
        const width = w[i]!;
        const text = c.length > width ? `${c.slice(0, width - 1)}…` : c;
        return text.padEnd(width);
      })
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export function renderIsolation(r: IsolationResult): string {
  const out: string[] = [];

  if (r.performance.length) {
    const bs = [...new Set(r.performance.map((c) => c.backend))];
    const ns = [...new Set(r.performance.map((c) => c.neighbour))];
    /** One row per neighbour, one column per backend. */
    const grid = (cellOf: (c: PerformanceCase) => string) =>
      table(
        ['neighbour', ...bs],
        ns.map((n) => [
          n,
          ...bs.map((b) => {
            const c = r.performance.find((x) => x.backend === b && x.neighbour === n);
            return c ? cellOf(c) : '';
          }),
        ]),
      );
    out.push('Performance isolation: victim throughput lost next to each neighbour (✔ held by its limits, ✘ not held, blank: no limit applies)');
    out.push(
      grid((c) => {
        if (c.neighbour === 'none') return c.victimScore.length ? `${median(c.victimScore).toFixed(1)} Mops/s` : 'no score';
        return `${c.degradationPct === null ? '?' : `${c.degradationPct.toFixed(1)}%`} ${mark(c.contained)}`;
      }),
    );
    out.push('');
    out.push('Host responsiveness during each case: /bin/true spawn on the host, median / p95 ms (10 ms sleep overshoot p95)');
    out.push(
      grid((c) => {
        if (!c.hostProbeMs) return '';
        const o = c.hostSleepOvershootMs ? ` (${c.hostSleepOvershootMs.p95Ms.toFixed(1)})` : '';
        return `${c.hostProbeMs.medianMs.toFixed(1)} / ${c.hostProbeMs.p95Ms.toFixed(1)}${o}`;
      }),
    );
    out.push('');
    const limited = containmentRows(r);
    if (limited.length) {
      const [header, ...rows] = containmentCells(limited);
      out.push("Disk and network limits: the neighbour's rate without and with its limit, and what the victim lost (✔ within 1.25x of the limit / victim lost <= 10%)");
      out.push(table(header!, rows));
      out.push('');
    }
    out.push('Containment evidence:');
    for (const c of r.performance) if (c.neighbour !== 'none') out.push(`  ${c.backend} ${c.neighbour}: ${mark(c.contained)} ${c.containment}`);
    out.push('');
  }

  if (r.security.length) {
    // Each backend, followed by its variants ("container", "container:untrusted", "microvm", ...).
    const backendCols = [...new Set(r.security.flatMap((row) => Object.keys(row.values).filter((k) => k !== 'host')))];
    const variantCols = [...new Set(r.security.flatMap((row) => Object.keys(row.variants ?? {})))];
    const cols = ['host', ...backendCols.flatMap((b) => [b, ...variantCols.filter((v) => v.startsWith(`${b}:`))]), ...variantCols.filter((v) => !backendCols.some((b) => v.startsWith(`${b}:`)))];
    const cell = (row: (typeof r.security)[number], k: string): SecurityCell | undefined => (row.values as Record<string, SecurityCell | undefined>)[k] ?? row.variants?.[k];
    out.push('Security isolation (✔ the outcome gives no reach into the host, ✘ it does; the host column is the reference)');
    out.push(
      table(
        ['probe', ...cols],
        r.security.map((row) => [
          row.probe,
          ...cols.map((k) => {
            const c = cell(row, k);
            return c ? `${k === 'host' ? '' : `${mark(c.safe)} `}${c.value}` : '';
          }),
        ]),
        [34, ...cols.map(() => 30)],
      ),
    );
    for (const probe of ['host syscalls reachable', 'device model on the host']) {
      const row = r.security.find((x) => x.probe === probe);
      if (!row) continue;
      for (const k of cols.slice(1)) {
        const c = cell(row, k);
        if (c && c.value.length > 30) out.push(`  ${probe}, ${k}: ${c.value}`);
      }
    }
    out.push('');
  }

  if (r.fault.length) {
    out.push('Fault isolation (bystanders: one sandbox of each backend, running alongside)');
    out.push(
      table(
        ['fault', 'in', 'bystanders kept running', 'host up', 'detail'],
        r.fault.map((f) => [f.fault, f.in, f.survivors.map((s) => `${s.backend} ${s.keptRunning ? '✔' : '✘'}`).join(' '), f.hostUp ? '✔' : '✘', f.detail]),
        [30, 9, 30, 7, 100],
      ),
    );
    out.push('');
  }
  if (r.summary.length) out.push('Summary:', ...r.summary.map((s) => `  - ${s}`));
  return out.join('\n');
}
