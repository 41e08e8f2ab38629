// The plain-language findings at the top of the report, built from whatever is stored.
import type { BackendKind } from '../../spec/schema.js';
import type { FaultCase, SecurityCell, SecurityRow } from '../../measurements/index.js';
import type { ReportData } from './data.js';
import { BACKEND_NOUN, fmtBytes, fmtMs, fmtRatio, list } from './format.js';

const VM_KINDS: BackendKind[] = ['microvm', 'vm'];

// Acronyms (QEMU, OOM) keep their capitals: only a capitalised ordinary word is lowered.
const lowerFirst = (s: string): string => (/^[A-Z][a-z]/.test(s) ? s.charAt(0).toLowerCase() + s.slice(1) : s);
const upperFirst = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1);
const article = (noun: string): string => (/^[aeiou]/i.test(noun) ? `an ${noun}` : `a ${noun}`);
const Article = (noun: string): string => upperFirst(article(noun));

/**
 * The security matrix's columns: the host (the reference), then each backend followed by its
 * variants ("container", "container:untrusted", "microvm", ...).
 */
export function securityColumns(rows: SecurityRow[]): string[] {
  const backends = [...new Set(rows.flatMap((r) => Object.keys(r.values).filter((k) => k !== 'host')))];
  const variants = [...new Set(rows.flatMap((r) => Object.keys(r.variants ?? {})))];
  const hasHost = rows.some((r) => r.values.host);
  return [...(hasHost ? ['host'] : []), ...backends.flatMap((b) => [b, ...variants.filter((v) => v.startsWith(`${b}:`))]), ...variants.filter((v) => !backends.some((b) => v.startsWith(`${b}:`)))];
}

export const securityCell = (row: SecurityRow, col: string): SecurityCell | undefined => (row.values as Record<string, SecurityCell | undefined>)[col] ?? row.variants?.[col];

/** "the container", "the container (untrusted)", "the bare host". */
function columnNoun(col: string): string {
  if (col === 'host') return 'the bare host';
  const [b, variant] = col.split(':') as [string, string | undefined];
  return `the ${BACKEND_NOUN[b as BackendKind] ?? b}${variant ? ` (${variant})` : ''}`;
}

/** A fault stayed inside its sandbox: the host and every other sandbox kept running. */
export const faultContained = (f: FaultCase): boolean => f.hostUp && f.survivors.every((s) => s.keptRunning);

/** ", and kept a kernel panic to itself" / ", but a fork bomb in it also stopped the host". */
function faultClause(faults: FaultCase[]): string {
  if (!faults.length) return '';
  const kept = faults.filter(faultContained).map((f) => article(lowerFirst(f.fault)));
  const leaked = faults.filter((f) => !faultContained(f));
  const parts: string[] = [];
  if (kept.length) parts.push(`kept ${list(kept)} to itself`);
  for (const f of leaked) {
    const hit = [...(f.hostUp ? [] : ['the host']), ...f.survivors.filter((s) => !s.keptRunning).map((s) => `${BACKEND_NOUN[s.backend]} ${s.name}`)];
    parts.push(`let ${article(lowerFirst(f.fault))} also stop ${list(hit)}`);
  }
  return `, and ${list(parts)}`;
}

export function headline(d: Pick<ReportData, 'host' | 'startup' | 'isolation' | 'density'>): string[] {
  const out: string[] = [];
  const medians = new Map<BackendKind, number>();
  for (const s of d.startup?.scenarios ?? []) {
    if (s.kind === 'backend' && s.backend && !s.skipped && s.stats.n > 0 && !medians.has(s.backend)) medians.set(s.backend, s.stats.medianMs);
  }
  const faults = d.isolation?.fault ?? [];
  const faultsIn = (b: BackendKind): FaultCase[] => faults.filter((f) => f.in === b);
  const said = new Set<BackendKind>();

  // Start-up and fault isolation of each VM kind, against a container.
  const ctr = medians.get('container');
  for (const vm of VM_KINDS) {
    const m = medians.get(vm);
    if (m === undefined) continue;
    said.add(vm);
    const noun = BACKEND_NOUN[vm];
    const speed = ctr && ctr > 0 ? `started ${fmtRatio(m / ctr)} slower than a container here (median ${fmtMs(m)} against ${fmtMs(ctr)})` : `started in ${fmtMs(m)} here (median)`;
    out.push(`${Article(noun)} ${speed}${faultClause(faultsIn(vm))}.`);
  }
  if (ctr !== undefined && !said.size) out.push(`A container started in ${fmtMs(ctr)} here (median).`);
  for (const b of ['container', ...VM_KINDS] as BackendKind[]) {
    if (said.has(b) || !faultsIn(b).length) continue;
    out.push(`${Article(BACKEND_NOUN[b])}${faultClause(faultsIn(b)).replace(/^, and/, '')}.`);
  }
  if (d.host.accel === 'tcg' && [...medians.keys()].some((b) => b !== 'container')) {
    out.push("VMs ran under QEMU's TCG software emulation here (no usable KVM), which slows their boot; with KVM they start several times faster.");
  }
  const targets = (d.startup?.ratios ?? []).filter((r) => r.target);
  if (targets.length) {
    const met = targets.filter((r) => r.target!.met).length;
    out.push(`Start-up targets: ${met} of ${targets.length} met (${targets.map((r) => `${r.name} ${r.value.toFixed(2)}x, at most ${r.target!.max}x${r.target!.met ? '' : ': missed'}`).join('; ')}).`);
  }

  // Security probes: on how many each backend was on the safer side.
  const security = d.isolation?.security ?? [];
  if (security.length) {
    const counts = securityColumns(security).map((c) => {
      const judged = security.filter((r) => typeof securityCell(r, c)?.safe === 'boolean');
      const safe = judged.filter((r) => securityCell(r, c)!.safe).length;
      return `${columnNoun(c)} in ${safe} of ${judged.length}`;
    });
    out.push(`Security probes: on the safer side were ${list(counts)}.`);
  }

  // Performance isolation: the worst loss per backend.
  const perf = (d.isolation?.performance ?? []).filter((p) => p.neighbour !== 'none' && p.degradationPct !== null && Number.isFinite(p.degradationPct));
  const worst = new Map<BackendKind, { pct: number; neighbour: string }>();
  for (const p of perf) if ((worst.get(p.backend)?.pct ?? -Infinity) < p.degradationPct!) worst.set(p.backend, { pct: p.degradationPct!, neighbour: p.neighbour });
  if (worst.size) {
    const parts = [...worst].map(
      ([b, w], i) =>
        `${i === 0 ? Article(BACKEND_NOUN[b]) : article(BACKEND_NOUN[b])}'s${i === 0 ? ' workload lost' : ''} up to ${Math.max(0, w.pct).toFixed(0)}%${i === 0 ? ' of its throughput' : ''} (${w.neighbour})`,
    );
    out.push(`Next to a noisy neighbour, ${lowerFirst(list(parts))}.`);
  }
  const loose = (d.isolation?.performance ?? []).filter((p) => p.contained === false);
  if (loose.length) out.push(`Not held by its limits: ${list(loose.map((p) => `a ${p.neighbour} in ${article(BACKEND_NOUN[p.backend])}`))}.`);

  // Density.
  const dens = (d.density?.backends ?? []).filter((b) => b.started > 0);
  if (dens.length) {
    const base = dens.find((b) => b.backend === 'container');
    const costs = dens.map((b, i) => {
      const ratio = base && b !== base && base.overheadBytesPerSandbox > 0 ? ` (${fmtRatio(b.overheadBytesPerSandbox / base.overheadBytesPerSandbox)})` : '';
      return i === 0
        ? `an idle ${BACKEND_NOUN[b.backend]} cost ${fmtBytes(b.overheadBytesPerSandbox)} of host memory beyond its workload`
        : `${article(BACKEND_NOUN[b.backend])} ${fmtBytes(b.overheadBytesPerSandbox)}${ratio}`;
    });
    const rates = dens.map((b) => `${b.startRatePerS.toFixed(b.startRatePerS >= 10 ? 0 : 1)}/s`);
    out.push(`${upperFirst(list(costs))}; started one after another, they came up at ${list(rates)}.`);
  }
  if (!out.length) out.push('Nothing measured yet: run `hybridbox bench startup`, `hybridbox bench isolation` and `hybridbox bench density`, then `hybridbox report` again.');
  return out;
}
