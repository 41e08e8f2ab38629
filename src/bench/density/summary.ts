import { BACKEND_NOUN, fmtBytes, fmtRatio, textTable } from '../report/format.js';
import type { DensityBackend } from '../../measurements/index.js';

/** Host programs as the reader knows them: every VM's monitor is a node process of hybridbox's own. */
const PROCESS_LABELS: Record<string, string> = { node: 'hybridbox monitor (node)', 'qemu-system-x86_64': 'QEMU', 'hbx-shim': 'hbx-shim (monitor)' };
export const processLabel = (name: string): string => PROCESS_LABELS[name] ?? name;

/** The biggest contributors to a sandbox's RSS, "QEMU 118 MiB + node 57 MiB". */
function breakdown(b: DensityBackend): string {
  const parts = Object.entries(b.rssByProcessBytes ?? {})
    .filter(([, v]) => v > 0)
    .sort((x, y) => y[1] - x[1])
    .slice(0, 3)
    .map(([k, v]) => `${processLabel(k)} ${fmtBytes(v)}`);
  if (b.cgroupBytesPerSandbox) parts.push(`cgroup ${fmtBytes(b.cgroupBytesPerSandbox)}`);
  return parts.join(' + ');
}

/** Plain-language findings of a density run, one sentence each. */
export function densitySummary(backends: DensityBackend[], budgetBytes: number): string[] {
  const out: string[] = [];
  const measured = backends.filter((b) => b.started > 0);
  for (const b of backends) {
    if (b.started === 0) {
      out.push(`No ${BACKEND_NOUN[b.backend]} could be started: ${b.stopReason}.`);
      continue;
    }
    out.push(
      `${b.started} idle ${BACKEND_NOUN[b.backend]}s started at ${b.startRatePerS.toFixed(b.startRatePerS >= 10 ? 0 : 2)}/s; ` +
        `each cost ${fmtBytes(b.overheadBytesPerSandbox)} beyond its workload (${breakdown(b)}), ` +
        `and host used memory rose ${fmtBytes(b.hostUsedBytesPerSandbox ?? null)} per sandbox; stopped: ${b.stopReason}.`,
    );
  }
  const ctr = measured.find((b) => b.backend === 'container');
  for (const vm of measured.filter((b) => b.backend !== 'container')) {
    if (!ctr || ctr.overheadBytesPerSandbox <= 0 || ctr.startRatePerS <= 0) break;
    out.push(
      `A ${BACKEND_NOUN[vm.backend]} cost ${fmtRatio(vm.overheadBytesPerSandbox / ctr.overheadBytesPerSandbox)} the memory of a container ` +
        `(${fmtBytes(vm.overheadBytesPerSandbox)} against ${fmtBytes(ctr.overheadBytesPerSandbox)}) and started ${fmtRatio(ctr.startRatePerS / vm.startRatePerS)} slower.`,
    );
  }
  const fits = measured.filter((b) => b.overheadBytesPerSandbox > 0).map((b) => `~${Math.floor(budgetBytes / b.overheadBytesPerSandbox)} ${BACKEND_NOUN[b.backend]}s`);
  if (fits.length) out.push(`At these costs a ${fmtBytes(budgetBytes)} budget holds ${fits.join(', ')} (extrapolated from the per-sandbox overhead).`);
  return out;
}

/** The terminal table of a density result. */
export function densityTable(backends: DensityBackend[]): string {
  return textTable([
    ['backend', 'started', 'starts/s', 'overhead', 'host RSS', 'cgroup', 'host used/sb', 'stopped because'],
    ...backends.map((b) => [
      b.backend,
      String(b.started),
      b.startRatePerS.toFixed(2),
      fmtBytes(b.overheadBytesPerSandbox),
      fmtBytes(b.hostRssBytesPerSandbox),
      fmtBytes(b.cgroupBytesPerSandbox),
      fmtBytes(b.hostUsedBytesPerSandbox ?? null),
      b.stopReason,
    ]),
  ]);
}
