// The terminal view of a startup result: the wall-time and first-output tables, the phases,
// what was skipped, the ratios and the findings.
import { textTable } from '../report/format.js';
import type { StartupResult, StartupScenario, Stats } from '../../measurements/index.js';

const n1 = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '-');

function statsTable(title: string, rows: [StartupScenario, Stats][]): string {
  return textTable([
    [title, 'n', 'min', 'median [95% CI]', 'p95', 'p99', 'max', 'noisy'],
    ...rows.map(([s, st]) => [
      s.name,
      String(st.n),
      n1(st.minMs),
      `${n1(st.medianMs)} [${n1(st.medianCiMs[0])}-${n1(st.medianCiMs[1])}]`,
      n1(st.p95Ms),
      n1(st.p99Ms),
      n1(st.maxMs),
      st.noisy ? 'noisy' : '',
    ]),
  ]);
}

export function formatStartup(r: StartupResult): string {
  const o = r.options as { runs: number; warmup: number; vmRuns: number; workload: string; image: string };
  const h = r.host;
  const ran = r.scenarios.filter((s) => !s.skipped && s.stats.n > 0);
  const vmCapped = o.vmRuns < o.runs && ran.some((s) => s.backend !== 'container');
  const lines = [
    `bench startup: \`${o.workload}\` in ${o.image}; ${o.runs} runs${vmCapped ? ` (VM scenarios ${o.vmRuns})` : ''} after ${o.warmup} warm-up, interleaved; times in ms`,
    `host: ${h.cpuModel}, ${h.cores} cores, kernel ${h.kernel}, ${h.accel === 'kvm' ? 'KVM' : 'no KVM (VMs under TCG)'}, cgroup ${h.cgroup}`,
    '',
  ];
  if (ran.length) {
    lines.push(
      statsTable(
        'wall time',
        ran.map((s) => [s, s.stats]),
      ),
    );
    const out = ran.filter((s) => s.firstOutputStats).map((s): [StartupScenario, Stats] => [s, s.firstOutputStats!]);
    if (out.length) lines.push('', statsTable('first output', out));
    lines.push('', 'phases (medians, ms)');
    for (const s of ran) {
      lines.push(
        `  ${s.name.padEnd(10)} ${Object.entries(s.phaseStats)
          .map(([k, st]) => `${k} ${n1(st.medianMs)}`)
          .join(' · ')}`,
      );
    }
  }
  const skipped = r.scenarios.filter((s) => s.skipped);
  if (skipped.length) lines.push('', 'skipped', ...skipped.map((s) => `  ${s.name}: ${s.skipped}`));
  if (r.ratios.length) {
    lines.push(
      '',
      textTable([
        ['ratio of medians', 'value', 'target'],
        ...r.ratios.map((x) => [x.name, x.value.toFixed(2), x.target ? `${x.target.max === 1 ? '< 1' : `<= ${x.target.max}`} ${x.target.met ? 'met' : 'MISSED'}` : '-']),
      ]),
    );
  }
  if (r.summary.length) lines.push('', ...r.summary.map((s) => `* ${s}`));
  return lines.join('\n') + '\n';
}
