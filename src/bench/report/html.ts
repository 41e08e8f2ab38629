// The report as one self-contained HTML page: inline CSS, inline SVG charts, no script and
// nothing fetched, so it opens offline and can be mailed or archived as one file.
import type { BackendKind } from '../../spec/schema.js';
import { median } from '../stats.js';
import type { BenchResult, DensityResult, HostDescription, IsolationResult, ServiceBenchResult, StartupResult } from '../../measurements/index.js';
import { BACKEND_COLOURS, type Chart } from './charts.js';
import { BENCH_COMMAND, type ReportData } from './data.js';
import { BACKEND_NOUN, fmtBytes, fmtDate, fmtMs, fmtPct, list } from './format.js';
import { faultContained, securityCell, securityColumns } from './summary.js';
import { containmentCells, containmentRows } from '../isolation/containment.js';

const esc = (s: unknown): string => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** `code` spans for text in backticks (the summaries name commands that way). */
const prose = (s: string): string => esc(s).replace(/`([^`]+)`/g, '<code>$1</code>');

const CSS = `
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; min-height: 100vh; box-sizing: border-box; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 1px solid #e3e6ea; }
h3 { font-size: 16px; margin: 22px 0 6px; }
.meta { color: #5b6472; font-size: 13px; margin: 2px 0 10px; }
.summary { background: #eef4fb; border-left: 4px solid #4c78a8; padding: 10px 16px 10px 30px; margin: 16px 0; }
.summary li { margin: 4px 0; }
.missing { background: #fff8e5; border-left: 4px solid #e0a800; padding: 8px 14px; }
.note { color: #5b6472; font-size: 13px; }
figure.chart { margin: 14px 0 18px; }
figure.chart svg { display: block; max-width: 100%; height: auto; }
figure.chart .title { font-weight: 600; margin-bottom: 4px; }
figure.chart figcaption { color: #5b6472; font-size: 13px; margin-top: 4px; }
.row { display: flex; flex-wrap: wrap; gap: 12px 28px; }
.row figure.chart { flex: 1 1 400px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 12px; }
th, td { border: 1px solid #dde1e6; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.nowrap { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { width: 140px; }
table.matrix td { min-width: 110px; }
td.safe { background: #d8f0d8; }
td.unsafe { background: #f7d4d2; }
td.unknown { background: #eceef1; color: #5b6472; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: baseline; }
ul.faults { list-style: none; padding-left: 0; }
ul.faults li { margin: 6px 0; padding: 6px 10px; border-radius: 4px; }
ul.faults li.ok { background: #eaf6ea; }
ul.faults li.bad { background: #fbe7e6; }
code { background: #f0f2f5; padding: 0 4px; border-radius: 3px; font-size: 90%; }
footer { margin-top: 40px; color: #5b6472; font-size: 12px; }
`;

function table(head: string[], rows: string[][], cls = ''): string {
  return `<table${cls ? ` class="${cls}"` : ''}><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows.map((r) => `<tr>${r.join('')}</tr>`).join('')}</tbody></table>`;
}
const td = (v: unknown): string => `<td>${esc(v)}</td>`;
const num = (v: string): string => `<td class="num">${esc(v)}</td>`;
const backendCell = (b: string): string => `<td class="nowrap"><span class="swatch" style="background:${BACKEND_COLOURS[b] ?? '#9d9d9d'}"></span>${esc(b)}</td>`;

function figure(chart: Chart, svgs: Map<string, string>): string {
  const svg = svgs.get(chart.name);
  if (!svg) return '';
  return `<figure class="chart" data-chart="${esc(chart.name)}"><div class="title">${esc(chart.title)}</div>${svg}<figcaption>${esc(chart.caption)}</figcaption></figure>`;
}

function missing(kind: keyof typeof BENCH_COMMAND): string {
  return `<p class="missing">Not measured yet — run <code>${BENCH_COMMAND[kind]}</code>, then <code>hybridbox report</code> again.</p>`;
}

/** When, how long, and on which host a result was measured (said plainly when it is not this host). */
function provenance(r: BenchResult, here: HostDescription): string {
  const other =
    r.host.key !== here.key
      ? ` <strong>Measured on another host</strong>: ${esc(r.host.hostname)} (${esc(r.host.cpuModel)}, ${r.host.cores} cores, ${esc(r.host.kernel)}, ${r.host.accel.toUpperCase()}).`
      : '';
  return `<p class="meta">Measured ${esc(fmtDate(r.startedAtMs))}, took ${esc(fmtMs(r.durationMs))}.${other}</p>`;
}

function findings(r: BenchResult): string {
  return r.summary.length ? `<ul>${r.summary.map((s) => `<li>${prose(s)}</li>`).join('')}</ul>` : '';
}

function hostSection(h: HostDescription): string {
  const versions = Object.entries(h.versions)
    .filter(([, v]) => v)
    .map(([k, v]) => (v!.toLowerCase().startsWith(k) ? v! : `${k} ${v}`))
    .join(', ');
  const rows: [string, string][] = [
    ['host', h.hostname],
    ['CPU', `${h.cpuModel} (${h.cores} cores)`],
    ['memory', fmtBytes(h.memoryBytes)],
    ['kernel', h.kernel],
    ['VM acceleration', h.accel === 'kvm' ? 'KVM (hardware virtualisation)' : 'TCG (software emulation: no usable KVM, VMs are much slower than with it)'],
    ['cgroups', h.cgroup],
    ['versions', versions],
  ];
  return `<section id="host"><h2>The host</h2><table class="kv"><tbody>${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('')}</tbody></table><p class="note">Host key ${esc(h.key)}: results with the same key were measured on comparable machines.</p></section>`;
}

function startupSection(r: StartupResult | null, charts: Chart[], svgs: Map<string, string>, here: HostDescription): string {
  if (!r) return `<section id="startup"><h2>Start-up</h2>${missing('startup')}</section>`;
  const rows = r.scenarios.map((s) =>
    s.skipped
      ? [td(s.name), td(s.kind), `<td colspan="7" class="note">skipped: ${esc(s.skipped)}</td>`]
      : [
          td(s.name),
          td(s.kind),
          num(String(s.stats.n)),
          num(fmtMs(s.stats.medianMs)),
          num(`${fmtMs(s.stats.medianCiMs[0])} – ${fmtMs(s.stats.medianCiMs[1])}`),
          num(fmtMs(s.stats.p95Ms)),
          num(`${fmtMs(s.stats.minMs)} – ${fmtMs(s.stats.maxMs)}`),
          num(fmtMs(s.firstOutputStats?.medianMs ?? null)),
          td(s.stats.noisy ? 'noisy' : ''),
        ],
  );
  const ratios = r.ratios.length
    ? table(
        ['ratio', 'value', 'target', ''],
        r.ratios.map((x) => [
          td(`${x.name}${x.basis === 'firstOutput' ? ' (time to first output)' : ''}`),
          num(`${x.value.toFixed(2)}x`),
          num(x.target ? `≤ ${x.target.max}x` : '-'),
          td(x.target ? (x.target.met ? 'met' : 'missed') : ''),
        ]),
      )
    : '';
  return `<section id="startup"><h2>Start-up</h2>${provenance(r, here)}${findings(r)}${charts.map((c) => figure(c, svgs)).join('')}
<h3>Numbers</h3>${table(['scenario', 'kind', 'runs', 'median', '95% CI of median', 'p95', 'min – max', 'first output', ''], rows)}${ratios}
<p class="note">${r.scenarios.map((s) => `<strong>${esc(s.name)}</strong>: ${esc(s.description)}`).join('; ')}</p></section>`;
}

function securityMatrix(r: IsolationResult): string {
  if (!r.security.length) return '<p class="note">No security probes in this result.</p>';
  const cols = securityColumns(r.security);
  const rows = r.security.map((row) => [
    td(row.probe),
    ...cols.map((c) => {
      const v = securityCell(row, c);
      if (!v) return '<td class="unknown">–</td>';
      const cls = v.safe === true ? 'safe' : v.safe === false ? 'unsafe' : 'unknown';
      return `<td class="${cls}">${esc(v.value)}</td>`;
    }),
  ]);
  return `${table(['probe', ...cols], rows, 'matrix')}<p class="note"><span class="swatch" style="background:#d8f0d8"></span>the safer outcome <span class="swatch" style="background:#f7d4d2"></span>the less safe one <span class="swatch" style="background:#eceef1"></span>neither, or not probed</p>`;
}

function faultList(r: IsolationResult): string {
  if (!r.fault.length) return '<p class="note">No faults injected in this result.</p>';
  const items = r.fault.map((f) => {
    const ok = faultContained(f);
    const survivors = f.survivors.map((s) => `${esc(s.backend)} ${esc(s.name)} ${s.keptRunning ? 'kept running' : '<strong>stopped</strong>'}`).join(', ');
    return `<li class="${ok ? 'ok' : 'bad'}">${ok ? '✔' : '✘'} <strong>${esc(f.fault)}</strong> in a ${esc(f.in)}: ${ok ? 'stayed inside it' : 'reached beyond it'}. Host ${f.hostUp ? 'up' : '<strong>down</strong>'}${survivors ? `; ${survivors}` : ''}.${f.detail ? ` <span class="note">${esc(f.detail)}</span>` : ''}</li>`;
  });
  return `<ul class="faults">${items.join('')}</ul>`;
}

function isolationSection(r: IsolationResult | null, charts: Chart[], svgs: Map<string, string>, here: HostDescription): string {
  if (!r) return `<section id="isolation"><h2>Isolation</h2>${missing('isolation')}</section>`;
  const overshoot = r.performance.some((p) => p.hostSleepOvershootMs);
  const perfRows = r.performance.map((p) => {
    const victim = p.victimScore.length ? median(p.victimScore) : null;
    return [
      backendCell(p.backend),
      td(p.neighbour),
      num(victim === null ? '-' : victim.toPrecision(4)),
      num(fmtPct(p.degradationPct)),
      td(p.contained === null ? '-' : p.contained ? 'yes' : 'no'),
      td(p.containment),
      num(fmtMs(p.hostProbeMs?.medianMs ?? null)),
      ...(overshoot ? [num(fmtMs(p.hostSleepOvershootMs?.p95Ms ?? null))] : []),
    ];
  });
  const perf = r.performance.length
    ? `${charts.map((c) => figure(c, svgs)).join('')}${table(['backend', 'neighbour', 'victim score (median)', 'lost', 'contained', 'how we know', 'host probe (median)', ...(overshoot ? ['host 10 ms sleep overshoot (p95)'] : [])], perfRows)}`
    : '<p class="note">No performance cases in this result.</p>';
  const [limitHeader, ...limitRows] = containmentCells(containmentRows(r));
  const limits = limitRows.length
    ? `<h3>Disk and network limits: the same nominal cap on every backend</h3><p class="note">Each neighbour without and with its limit; held: within 1.25x of the limit, and the victim lost at most 10%.</p>${table(
        limitHeader!,
        limitRows.map((row) => row.map((c) => td(c))),
      )}`
    : '';
  return `<section id="isolation"><h2>Isolation</h2>${provenance(r, here)}${findings(r)}
<h3>Security: what a workload can see and do</h3>${securityMatrix(r)}
<h3>Performance: a noisy neighbour</h3>${perf}${limits}
<h3>Faults: does a crash stay inside?</h3>${faultList(r)}</section>`;
}

function densitySection(r: DensityResult | null, charts: Chart[], svgs: Map<string, string>, here: HostDescription): string {
  if (!r) return `<section id="density"><h2>Density</h2>${missing('density')}</section>`;
  const rows = r.backends.map((b) => [
    backendCell(b.backend),
    num(String(b.started)),
    num(b.memoryMiB == null ? 'none' : `${b.memoryMiB} MiB`),
    num(`${b.startRatePerS.toFixed(2)}/s`),
    num(fmtMs(b.startStats?.medianMs ?? null)),
    num(fmtBytes(b.overheadBytesPerSandbox)),
    num(fmtBytes(b.hostRssBytesPerSandbox)),
    num(fmtBytes(b.cgroupBytesPerSandbox)),
    num(fmtBytes(b.hostUsedBytesPerSandbox ?? null)),
    td(b.stopReason),
  ]);
  const [overhead, ...ramps] = charts;
  return `<section id="density"><h2>Density</h2>${provenance(r, here)}${findings(r)}
${overhead ? figure(overhead, svgs) : ''}<div class="row">${ramps.map((c) => figure(c, svgs)).join('')}</div>
${table(['backend', 'started', 'memory each', 'start rate', 'one start (median)', 'overhead', 'host RSS', 'cgroup', 'host used rise', 'stopped because'], rows)}
<p class="note">Idle sandboxes (<code>sleep 3600</code>) started one after another per backend until a budget of ${esc(fmtBytes(r.memoryBudgetBytes))} of host used memory, a count or a start failure. Overhead = resident memory of the processes a sandbox adds on the host (monitor, shim, runtime, QEMU) + what its own cgroup is charged beyond the workload's private memory. "Host used rise" is MemTotal − MemAvailable over the ramp per sandbox; it counts shared pages once and includes anything else the host did meanwhile.</p></section>`;
}

function serviceSection(r: ServiceBenchResult | null, charts: Chart[], svgs: Map<string, string>, here: HostDescription): string {
  if (!r) return `<section id="service"><h2>The service</h2>${missing('service')}</section>`;
  const rows = r.throughput.map((t) => [backendCell(t.backend), num(String(t.concurrency)), num(String(t.runs)), num(`${t.runsPerSecond.toFixed(2)}/s`), num(fmtMs(t.p50Ms)), num(fmtMs(t.p99Ms))]);
  return `<section id="service"><h2>The service</h2>${provenance(r, here)}${findings(r)}
${charts.map((c) => figure(c, svgs)).join('')}
${table(['backend', 'concurrent clients', 'runs', 'throughput', 'latency p50', 'latency p99'], rows)}
<p class="note">Overhead: a trivial container run through the API against the same run through the library in one process, interleaved (${esc(fmtMs(r.overhead.apiMs.medianMs))} against ${esc(fmtMs(r.overhead.libraryMs.medianMs))} at the median).</p></section>`;
}

export interface ReportCharts {
  startup: Chart[];
  isolation: Chart[];
  density: Chart[];
  service: Chart[];
}

export function renderHtml(d: ReportData, charts: ReportCharts, svgs: Map<string, string>): string {
  const version = d.host.versions.hybridbox ? ` ${d.host.versions.hybridbox}` : '';
  const backends = new Set<BackendKind>([...(d.startup?.scenarios.map((s) => s.backend).filter((b): b is BackendKind => !!b) ?? []), ...(d.density?.backends.map((b) => b.backend) ?? [])]);
  const subject = backends.size ? list([...backends].map((b) => `${BACKEND_NOUN[b]}s`)) : 'containers and VMs';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>hybridbox report: ${esc(d.host.hostname)}</title><link rel="icon" href="data:,"><style>${CSS}</style></head>
<body><main>
<header><h1>Sandboxes compared: ${esc(subject)}</h1>
<p class="meta">Host ${esc(d.host.hostname)} (${esc(d.host.cpuModel)}, ${d.host.cores} cores, ${esc(fmtBytes(d.host.memoryBytes))}, ${d.host.accel.toUpperCase()}). Report made ${esc(fmtDate(d.generatedAtMs))} by hybridbox${esc(version)} from the newest stored results.</p></header>
<section id="summary"><ul class="summary">${d.summary.map((s) => `<li>${prose(s)}</li>`).join('')}</ul></section>
${hostSection(d.host)}
${startupSection(d.startup, charts.startup, svgs, d.host)}
${isolationSection(d.isolation, charts.isolation, svgs, d.host)}
${densitySection(d.density, charts.density, svgs, d.host)}
${serviceSection(d.service, charts.service, svgs, d.host)}
<footer>Made by <code>hybridbox report</code>. Timings on a shared machine are noisy: compare ratios measured in one run rather than absolute numbers across runs.</footer>
</main></body></html>
`;
}
