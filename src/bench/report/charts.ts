// The report's charts: Vega-Lite specs built from stored results, rendered to SVG in Node
// (vega's headless renderer), so the HTML file needs no script and no network to show them.
import type { TopLevelSpec } from 'vega-lite';
import { processLabel } from '../density/summary.js';
import type { DensityResult, IsolationResult, ServiceBenchResult, StartupResult } from '../../measurements/index.js';

export interface Chart {
  /** Stable name: the figure's data-chart attribute (the test looks charts up by it). */
  name: string;
  title: string;
  /** What the reader should take from it, under the chart. */
  caption: string;
  spec: TopLevelSpec;
}

const MiB = 1048576;
const WIDTH = 620;

/** One colour per backend everywhere in the report (the HTML tables use the same). */
export const BACKEND_COLOURS: Record<string, string> = { container: '#4c78a8', microvm: '#f58518', vm: '#54a24b', host: '#9d755d', none: '#9d9d9d' };
const backendScale = (domain: string[]) => ({ domain, range: domain.map((d) => BACKEND_COLOURS[d] ?? '#9d9d9d') });

const CONFIG = {
  background: 'white',
  font: 'sans-serif',
  view: { stroke: '#ddd' },
  axis: { labelFontSize: 11, titleFontSize: 11, titleFontWeight: 'normal' as const },
  legend: { labelFontSize: 11, titleFontSize: 11, orient: 'bottom' as const },
};

/** A chart with the report's common settings; `spec` is the rest of a Vega-Lite spec (and may override the width). */
function chart(name: string, title: string, caption: string, spec: Record<string, unknown>): Chart {
  return { name, title, caption, spec: { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', config: CONFIG, width: WIDTH, ...spec } as TopLevelSpec };
}

/** Phases in the order they happen; unknown ones follow in name order. */
const PHASE_ORDER = ['placement', 'prepare', 'create', 'start', 'boot', 'first-output', 'run', 'exit', 'teardown'];

export function startupCharts(r: StartupResult): Chart[] {
  const ran = r.scenarios.filter((s) => !s.skipped && s.totalMs.length > 0);
  if (!ran.length) return [];
  const order = ran.map((s) => s.name);
  const samples = ran.flatMap((s) => s.totalMs.map((ms) => ({ scenario: s.name, backend: s.backend ?? 'none', kind: s.kind, ms: Math.max(ms, 0.01) })));
  const values = samples.map((s) => s.ms);
  const log = Math.max(...values) / Math.max(Math.min(...values), 0.01) > 20;
  const colourDomain = [...new Set(samples.map((s) => s.backend))];
  const x = { field: 'ms', type: 'quantitative' as const, title: `start-up, ms${log ? ' (log scale)' : ''}`, scale: log ? { type: 'log' as const } : { zero: true } };
  const y = { field: 'scenario', type: 'nominal' as const, sort: order, title: null };
  const charts: Chart[] = [
    chart('startup-distribution', 'Start-up time per backend and baseline', 'Box: quartiles, whiskers: min-max, ticks: every measured run. Lighter rows are raw baselines measured in the same run.', {
      height: { step: 26 },
      data: { values: samples },
      encoding: {
        y,
        color: { field: 'backend', type: 'nominal', scale: backendScale(colourDomain), title: 'backend' },
        opacity: { field: 'kind', type: 'nominal', scale: { domain: ['backend', 'baseline'], range: [0.9, 0.45] }, title: 'scenario' },
      },
      layer: [
        { mark: { type: 'boxplot', extent: 'min-max', size: 16 }, encoding: { x } },
        { mark: { type: 'tick', color: '#333', opacity: 0.35, thickness: 1, size: 12 }, encoding: { x, color: { value: '#333' } } },
      ],
    }),
  ];
  const phases = ran.flatMap((s) =>
    Object.entries(s.phaseStats ?? {})
      .filter(([, st]) => st && st.n > 0 && Number.isFinite(st.medianMs))
      .map(([phase, st]) => ({ scenario: s.name, phase, ms: st.medianMs })),
  );
  if (phases.length) {
    const names = [...new Set(phases.map((p) => p.phase))].sort((a, b) => {
      const ia = PHASE_ORDER.indexOf(a);
      const ib = PHASE_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    const withOrder = phases.map((p) => ({ ...p, order: names.indexOf(p.phase) }));
    charts.push(
      chart('startup-phases', 'Where the start-up time goes', 'Median of each phase, stacked in the order the phases happen.', {
        height: { step: 26 },
        data: { values: withOrder },
        mark: { type: 'bar', size: 18 },
        encoding: {
          y: { field: 'scenario', type: 'nominal', sort: order.filter((n) => phases.some((p) => p.scenario === n)), title: null },
          x: { field: 'ms', type: 'quantitative', stack: 'zero', title: 'median, ms' },
          color: { field: 'phase', type: 'nominal', sort: names, scale: { scheme: 'tableau10' }, title: 'phase' },
          order: { field: 'order', type: 'quantitative' },
        },
      }),
    );
  }
  return charts;
}

export function isolationCharts(r: IsolationResult): Chart[] {
  const rows = r.performance
    .filter((p) => p.neighbour !== 'none' && p.degradationPct !== null && Number.isFinite(p.degradationPct))
    .map((p) => ({ neighbour: p.neighbour, backend: p.backend, pct: Math.round(p.degradationPct! * 10) / 10, contained: p.contained === false ? 'not contained' : '' }));
  if (!rows.length) return [];
  const backends = [...new Set(rows.map((p) => p.backend))];
  const y = { field: 'neighbour', type: 'nominal' as const, title: null, sort: [...new Set(rows.map((p) => p.neighbour))] };
  const yOffset = { field: 'backend', type: 'nominal' as const, sort: backends };
  return [
    chart(
      'isolation-degradation',
      'Throughput lost next to a noisy neighbour',
      'Rows: the noisy neighbour next to the victim. Bars: percent of the victim workload\'s throughput lost against the same backend running alone (lower is better); "not contained" marks a neighbour its limits did not hold.',
      {
        height: { step: 16 },
        data: { values: rows },
        encoding: { y, yOffset },
        layer: [
          {
            mark: { type: 'bar' },
            encoding: {
              x: { field: 'pct', type: 'quantitative', title: 'throughput lost, %', scale: { domainMin: Math.min(0, ...rows.map((p) => p.pct)) } },
              color: { field: 'backend', type: 'nominal', scale: backendScale(backends), title: 'backend' },
            },
          },
          {
            mark: { type: 'text', align: 'left', dx: 4, fontSize: 10 },
            encoding: { x: { field: 'pct', type: 'quantitative' }, text: { field: 'label' } },
            transform: [{ calculate: "format(datum.pct, '.0f') + '%' + (datum.contained ? ' · ' + datum.contained : '')", as: 'label' }],
          },
        ],
      },
    ),
  ];
}

export function densityCharts(r: DensityResult): Chart[] {
  const measured = r.backends.filter((b) => b.started > 0);
  if (!measured.length) return [];
  const order = measured.map((b) => b.backend);
  const parts = measured.flatMap((b) => {
    const byProcess = Object.entries(b.rssByProcessBytes ?? {}).filter(([, v]) => v > 0);
    const rows = byProcess.length ? byProcess.sort((x, y) => y[1] - x[1]).map(([name, v]) => ({ part: processLabel(name), v })) : [{ part: 'processes (RSS)', v: b.hostRssBytesPerSandbox }];
    if (b.cgroupBytesPerSandbox) rows.push({ part: 'cgroup, beyond the workload', v: b.cgroupBytesPerSandbox });
    return rows.map(({ part, v }, order) => ({ backend: b.backend, part, order, mib: Math.round((v / MiB) * 100) / 100 }));
  });
  const totals = measured.map((b) => ({ backend: b.backend, mib: b.overheadBytesPerSandbox / MiB, label: `${(b.overheadBytesPerSandbox / MiB).toFixed(1)} MiB` }));
  const ramp = measured.flatMap((b) =>
    b.ramp.map((p) => ({ backend: b.backend, count: p.count, seconds: p.elapsedMs / 1000, riseMiB: Math.round(((p.hostUsedBytes - b.ramp[0]!.hostUsedBytes) / MiB) * 10) / 10 })),
  );
  const colour = { field: 'backend', type: 'nominal' as const, scale: backendScale(order), title: 'backend' };
  const line = (name: string, title: string, caption: string, xf: string, xt: string, yf: string, yt: string): Chart =>
    chart(name, title, caption, {
      width: WIDTH / 2 - 30,
      height: 220,
      data: { values: ramp },
      mark: { type: 'line', point: true, strokeWidth: 2 },
      encoding: { x: { field: xf, type: 'quantitative', title: xt }, y: { field: yf, type: 'quantitative', title: yt }, color: colour },
    });
  return [
    chart(
      'density-overhead',
      'Host memory per idle sandbox, beyond its workload',
      'Resident memory of the processes each sandbox adds on the host (monitor, shim, runtime, QEMU), by program, plus what its cgroup is charged beyond the workload.',
      {
        height: { step: 30 },
        layer: [
          {
            data: { values: parts },
            mark: { type: 'bar', size: 20 },
            encoding: {
              y: { field: 'backend', type: 'nominal', sort: order, title: null },
              x: { field: 'mib', type: 'quantitative', stack: 'zero', title: 'MiB per sandbox' },
              color: { field: 'part', type: 'nominal', scale: { scheme: 'set2' }, title: 'part', legend: { labelLimit: 320 } },
              order: { field: 'order', type: 'quantitative' },
            },
          },
          {
            data: { values: totals },
            mark: { type: 'text', align: 'left', dx: 4, fontSize: 11 },
            encoding: { y: { field: 'backend', type: 'nominal', sort: order }, x: { field: 'mib', type: 'quantitative' }, text: { field: 'label' } },
          },
        ],
      },
    ),
    line(
      'density-ramp-memory',
      'Host memory as sandboxes pile up',
      'Rise of host used memory (MemTotal − MemAvailable) after each start.',
      'count',
      'sandboxes running',
      'riseMiB',
      'host used, MiB above start',
    ),
    line('density-ramp-time', 'Sandboxes started over time', 'Started one after another; the slope is the start rate.', 'seconds', 'seconds since the first start', 'count', 'sandboxes running'),
  ];
}

export function serviceCharts(r: ServiceBenchResult): Chart[] {
  if (!r.throughput.length) return [];
  const order = [...new Set(r.throughput.map((t) => t.backend))];
  const values = r.throughput.map((t) => ({ backend: t.backend, concurrency: String(t.concurrency), rps: Math.round(t.runsPerSecond * 100) / 100, label: t.runsPerSecond.toFixed(1) }));
  return [
    chart(
      'service-throughput',
      'Runs per second through `hybridbox serve`',
      'Trivial runs (echo ok) submitted by that many concurrent clients; each run is a fresh sandbox, removed at its end. The service admits runs by CPU slots, so more clients past the slots wait rather than thrash.',
      {
        width: WIDTH / 2,
        height: 220,
        data: { values },
        encoding: {
          x: { field: 'concurrency', type: 'nominal', title: 'concurrent clients', sort: null },
          xOffset: { field: 'backend', sort: order },
          y: { field: 'rps', type: 'quantitative', title: 'runs per second' },
          color: { field: 'backend', type: 'nominal', scale: backendScale(order), title: 'backend' },
        },
        layer: [{ mark: { type: 'bar' } }, { mark: { type: 'text', dy: -6, fontSize: 10 }, encoding: { text: { field: 'label' } } }],
      },
    ),
  ];
}

/** Gives every id inside an SVG a prefix, so several inline SVGs in one page cannot share ids. */
function scopeIds(svg: string, prefix: string): string {
  const ids = new Set([...svg.matchAll(/\bid="([^"]+)"/g)].map((m) => m[1]!));
  if (!ids.size) return svg;
  return svg.replace(/\b(id="|url\(#|href="#)([^")]+)/g, (all, head: string, id: string) => (ids.has(id) ? `${head}${prefix}-${id}` : all));
}

/** Renders Vega-Lite specs to SVG strings. vega and vega-lite load only here, when a report is made. */
export async function renderCharts(charts: Chart[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (!charts.length) return out;
  const [vega, vl] = await Promise.all([import('vega'), import('vega-lite')]);
  for (const c of charts) {
    const view = new vega.View(vega.parse(vl.compile(c.spec).spec), { renderer: 'none' });
    try {
      out.set(c.name, scopeIds(await view.toSVG(), c.name));
    } finally {
      view.finalize();
    }
  }
  return out;
}
