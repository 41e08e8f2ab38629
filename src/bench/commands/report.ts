import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Hybridbox } from '../../api/index.js';
import { densityCharts, isolationCharts, renderCharts, serviceCharts, startupCharts } from '../report/charts.js';
import { loadReportData } from '../report/data.js';
import { fmtBytes } from '../report/format.js';
import { renderHtml, type ReportCharts } from '../report/html.js';
import { terminalReport } from '../report/terminal.js';

/** Writes a file so that a reader never sees it half-written: a temporary beside it, then rename. */
function writeAtomic(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, text);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * `hybridbox report`: one self-contained HTML file of the newest stored results (charts
 * rendered to inline SVG here), and the same numbers as tables on the terminal.
 */
export async function report(hb: Hybridbox, opts: Record<string, unknown>): Promise<void> {
  const data = await loadReportData(hb);
  const charts: ReportCharts = {
    startup: data.startup ? startupCharts(data.startup) : [],
    isolation: data.isolation ? isolationCharts(data.isolation) : [],
    density: data.density ? densityCharts(data.density) : [],
    service: data.service ? serviceCharts(data.service) : [],
  };
  const svgs = await renderCharts([...charts.startup, ...charts.isolation, ...charts.density, ...charts.service]);
  const html = renderHtml(data, charts, svgs);
  const out = resolve(typeof opts.out === 'string' ? opts.out : 'hybridbox-report.html');
  writeAtomic(out, html);
  if (opts.json) {
    process.stdout.write(JSON.stringify({ ...data, reportFile: out, charts: [...svgs.keys()] }, null, 2) + '\n');
    return;
  }
  process.stdout.write(`${terminalReport(data)}\n\nwrote ${out} (${fmtBytes(Buffer.byteLength(html))}, ${svgs.size} chart${svgs.size === 1 ? '' : 's'})\n`);
}
