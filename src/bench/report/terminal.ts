// The report's numbers as compact plain-text tables, for the terminal.
import { densityTable } from '../density/summary.js';
import { median } from '../stats.js';
import type { SecurityCell } from '../../measurements/index.js';
import type { ReportData } from './data.js';
import { BENCH_COMMAND } from './data.js';
import { fmtDate, fmtMs, fmtPct, textTable } from './format.js';
import { faultContained, securityCell, securityColumns } from './summary.js';

function heading(title: string, r: { startedAtMs: number; host: { hostname: string } } | null, here: string): string {
  const when = r ? `  (${fmtDate(r.startedAtMs)}${r.host.hostname !== here ? `, on ${r.host.hostname}` : ''})` : '';
  return `== ${title}${when}`;
}

export function terminalReport(d: ReportData): string {
  const out: string[] = [];
  const here = d.host.hostname;
  out.push(...d.summary.map((s) => `* ${s}`), '');

  out.push(heading('start-up', d.startup, here));
  if (!d.startup) out.push(`not measured yet: run \`${BENCH_COMMAND.startup}\``);
  else {
    out.push(
      textTable([
        ['scenario', 'kind', 'runs', 'median', 'p95', 'min', 'max', ''],
        ...d.startup.scenarios.map((s) =>
          s.skipped
            ? [s.name, s.kind, '-', '-', '-', '-', '-', `skipped: ${s.skipped}`]
            : [s.name, s.kind, String(s.stats.n), fmtMs(s.stats.medianMs), fmtMs(s.stats.p95Ms), fmtMs(s.stats.minMs), fmtMs(s.stats.maxMs), s.stats.noisy ? 'noisy' : ''],
        ),
      ]),
    );
    if (d.startup.ratios.length) {
      out.push(
        '',
        textTable([['ratio', 'value', 'target'], ...d.startup.ratios.map((r) => [r.name, `${r.value.toFixed(2)}x`, r.target ? `<= ${r.target.max}x ${r.target.met ? 'met' : 'MISSED'}` : '-'])]),
      );
    }
  }
  out.push('');

  out.push(heading('isolation', d.isolation, here));
  if (!d.isolation) out.push(`not measured yet: run \`${BENCH_COMMAND.isolation}\``);
  else {
    const r = d.isolation;
    if (r.security.length) {
      const cols = securityColumns(r.security);
      const cell = (v: SecurityCell | undefined): string => (v ? `${v.safe === true ? '+' : v.safe === false ? '!' : ' '} ${v.value.length > 28 ? `${v.value.slice(0, 27)}…` : v.value}` : '-');
      out.push(textTable([['security probe', ...cols], ...r.security.map((row) => [row.probe, ...cols.map((c) => cell(securityCell(row, c)))])]), '(+ the safer outcome, ! the less safe one)', '');
    }
    if (r.performance.length) {
      out.push(
        textTable([
          ['backend', 'neighbour', 'victim (median)', 'lost', 'contained'],
          ...r.performance.map((p) => [
            p.backend,
            p.neighbour,
            p.victimScore.length ? median(p.victimScore).toPrecision(4) : '-',
            fmtPct(p.degradationPct),
            p.contained === null ? '-' : p.contained ? 'yes' : 'NO',
          ]),
        ]),
        '',
      );
    }
    if (r.fault.length) {
      out.push(
        textTable([
          ['fault', 'in', 'host', 'others', 'verdict'],
          ...r.fault.map((f) => [
            f.fault,
            f.in,
            f.hostUp ? 'up' : 'DOWN',
            `${f.survivors.filter((s) => s.keptRunning).length}/${f.survivors.length} kept running`,
            faultContained(f) ? 'contained' : 'ESCAPED',
          ]),
        ]),
      );
    }
  }
  out.push('');

  out.push(heading('density', d.density, here));
  if (!d.density) out.push(`not measured yet: run \`${BENCH_COMMAND.density}\``);
  else out.push(densityTable(d.density.backends));
  out.push('');

  out.push(heading('service', d.service, here));
  if (!d.service) out.push(`not measured yet: run \`${BENCH_COMMAND.service}\``);
  else out.push(...d.service.summary);
  return out.join('\n');
}
