// The density benchmark: per backend, idle sandboxes are started one after another until a
// memory budget, a count or a time limit is reached (or a start fails), then measured and
// removed. Backends run one at a time, each from the memory baseline the last one left.
import type { Hybridbox } from '../../api/index.js';
import type { BackendKind } from '../../spec/schema.js';
import { sleep } from '../../util/proc.js';
import { summarize } from '../stats.js';
import type { DensityBackend } from '../../measurements/index.js';
import { hostUsedBytes, sandboxCost, scanProcesses, type SandboxCost } from './measure.js';

/**
 * How many sandboxes a backend starts when `--count` is not given. Under TCG a microVM
 * costs ~1-2 s and ~150-200 MB, a libvirt VM ~2-4 s and more: these keep a default run to a
 * few minutes. With KVM the VM caps are doubled.
 */
export const DEFAULT_COUNT_CAP: Record<BackendKind, number> = { container: 50, microvm: 8, vm: 4 };

/** Memory given to each sandbox: containers keep the default (no limit); VMs get a small guest. */
export const SANDBOX_MEMORY_MIB: Record<BackendKind, number | null> = { container: null, microvm: 64, vm: 128 };

/** How long one backend's ramp may take before it stops on its own. */
export const DEFAULT_TIME_LIMIT_MS = 180_000;

/** Idle sandboxes die on their own after this, should this process be killed before it removes them. */
const SANDBOX_TIMEOUT_MS = 20 * 60_000;

const NAME_PREFIX = 'density-';

export interface DensityOptions {
  backends: BackendKind[];
  budgetBytes: number;
  /** A count cap for every backend; the defaults above when absent. */
  count?: number;
  timeLimitMs?: number;
  image?: string;
  /** Aborting stops starting sandboxes; those started are still measured and removed. */
  signal?: AbortSignal;
  progress?: (line: string) => void;
}

const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
const MiB = 1048576;

/** Names carry the benchmark's pid: what a killed run left behind is recognisable, and removable. */
function namePrefix(backend: BackendKind, pid = process.pid): string {
  return `${NAME_PREFIX}${pid}-${backend}-`;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes the sandboxes of this run (or of a run whose process is gone); returns what could not be removed. */
export async function removeDensitySandboxes(hb: Hybridbox, which: 'mine' | 'leftovers'): Promise<string[]> {
  const failed: string[] = [];
  for (const s of await hb.sandboxes.list({ all: true })) {
    const m = /^density-(\d+)-/.exec(s.name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (which === 'mine' ? pid !== process.pid : pid === process.pid || pidAlive(pid)) continue;
    try {
      await hb.sandboxes.remove(s.id, { force: true });
    } catch (e) {
      failed.push(`${s.name}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  return failed;
}

async function rampBackend(hb: Hybridbox, backend: BackendKind, opts: DensityOptions): Promise<DensityBackend> {
  const cap = opts.count ?? DEFAULT_COUNT_CAP[backend] * (backend !== 'container' && hb.host.kvm.usable ? 2 : 1);
  const timeLimitMs = opts.timeLimitMs ?? DEFAULT_TIME_LIMIT_MS;
  const memoryMiB = SANDBOX_MEMORY_MIB[backend];
  const ids: string[] = [];
  const startMs: number[] = [];
  const baseline = hostUsedBytes();
  const ramp: DensityBackend['ramp'] = [{ count: 0, elapsedMs: 0, hostUsedBytes: baseline }];
  const t0 = performance.now();
  let stopReason = '';
  while (!stopReason) {
    const last = ramp[ramp.length - 1]!;
    const rise = last.hostUsedBytes - baseline;
    const perSandbox = ids.length ? rise / ids.length : 0;
    if (opts.signal?.aborted) stopReason = 'interrupted';
    else if (ids.length >= cap) stopReason = `count reached (${cap}${opts.count === undefined ? ', the default cap' : ''})`;
    else if (rise >= opts.budgetBytes) stopReason = `memory budget reached (host used rose ${(rise / MiB).toFixed(0)} MiB)`;
    else if (rise + perSandbox > opts.budgetBytes) stopReason = `the next sandbox would pass the memory budget (host used rose ${(rise / MiB).toFixed(0)} MiB)`;
    else if (performance.now() - t0 > timeLimitMs) stopReason = `time limit reached (${Math.round(timeLimitMs / 1000)} s)`;
    if (stopReason) break;
    const s0 = performance.now();
    try {
      const info = await hb.sandboxes.runDetached({
        name: `${namePrefix(backend)}${ids.length + 1}`,
        image: opts.image ?? 'busybox',
        command: ['sleep', '3600'],
        isolation: backend,
        resources: memoryMiB === null ? {} : { memoryMiB },
        timeoutMs: SANDBOX_TIMEOUT_MS,
      });
      ids.push(info.id);
    } catch (e) {
      stopReason = `a start failed: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}`;
      break;
    }
    const now = performance.now();
    startMs.push(now - s0);
    ramp.push({ count: ids.length, elapsedMs: Math.round(now - t0), hostUsedBytes: hostUsedBytes() });
    if (ids.length % (backend === 'container' ? 10 : 1) === 0) {
      const rise = (ramp[ramp.length - 1]!.hostUsedBytes - baseline) / MiB;
      opts.progress?.(`${backend}: ${ids.length} running, host used ${rise >= 0 ? '+' : ''}${rise.toFixed(0)} MiB since the start`);
    }
  }

  // Let the last guests settle (a VM's RSS still grows a little after its agent is up), then measure all.
  if (ids.length) await sleep(backend === 'container' ? 200 : 1500);
  const procs = scanProcesses();
  const costs: SandboxCost[] = [];
  for (const id of ids) {
    const rec = hb.sandboxes.find(id);
    if (rec?.state === 'running') costs.push(sandboxCost(procs, { id, backend, ownerPid: rec.supervisorPid }));
  }
  const rssByProcessBytes: Record<string, number> = {};
  for (const c of costs) for (const [name, b] of Object.entries(c.rssByProcess)) rssByProcessBytes[name] = (rssByProcessBytes[name] ?? 0) + b / costs.length;
  const cgroup = costs.map((c) => c.cgroupBytes).filter((b): b is number => b !== null);
  const hostRss = mean(costs.map((c) => c.hostRssBytes));
  const cgroupBytes = cgroup.length ? mean(cgroup) : null;
  const end = ramp[ramp.length - 1]!;
  return {
    backend,
    started: ids.length,
    stopReason,
    startRatePerS: end.elapsedMs > 0 ? Math.round((ids.length / (end.elapsedMs / 1000)) * 100) / 100 : 0,
    overheadBytesPerSandbox: Math.round(hostRss + (cgroupBytes ?? 0)),
    hostRssBytesPerSandbox: Math.round(hostRss),
    cgroupBytesPerSandbox: cgroupBytes === null ? null : Math.round(cgroupBytes),
    ramp,
    memoryMiB,
    hostUsedBytesPerSandbox: ids.length ? Math.round((end.hostUsedBytes - baseline) / ids.length) : 0,
    rssByProcessBytes: Object.fromEntries(Object.entries(rssByProcessBytes).map(([k, v]) => [k, Math.round(v)])),
    startStats: summarize(startMs),
  };
}

/**
 * Ramps each backend in turn and always removes every sandbox it started, also when a
 * start fails, the run is aborted or measuring throws.
 */
export async function runDensity(hb: Hybridbox, opts: DensityOptions): Promise<DensityBackend[]> {
  const leftovers = await removeDensitySandboxes(hb, 'leftovers');
  if (leftovers.length) opts.progress?.(`could not remove sandboxes of an earlier run: ${leftovers.join('; ')}`);
  const out: DensityBackend[] = [];
  for (const backend of opts.backends) {
    if (opts.signal?.aborted) break;
    opts.progress?.(`${backend}: starting idle sandboxes (${SANDBOX_MEMORY_MIB[backend] === null ? 'no memory limit' : `${SANDBOX_MEMORY_MIB[backend]} MiB guest memory`})`);
    // Cleanup runs whatever the ramp did; its own failure is reported only when the ramp succeeded.
    const ramp = await rampBackend(hb, backend, opts).then(
      (r) => ({ r }),
      (e: unknown) => ({ e }),
    );
    const n = (await hb.sandboxes.list({ all: true })).filter((s) => s.name.startsWith(namePrefix(backend))).length;
    if (n) opts.progress?.(`${backend}: removing ${n} sandbox${n === 1 ? '' : 'es'}`);
    const failed = await removeDensitySandboxes(hb, 'mine');
    if ('e' in ramp) throw ramp.e;
    if (failed.length) throw new Error(`could not remove ${failed.length} sandbox(es): ${failed.join('; ')}`);
    out.push(ramp.r);
    // A libvirt-run QEMU lingers ~1 s after it is destroyed: let the next baseline start clean.
    if (backend !== 'container') await sleep(1500);
  }
  return out;
}
