import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readMountinfo } from '../util/mountinfo.js';

/**
 * Sandbox cgroups live at /hybridbox/<id>/ctr in every hierarchy. The runtime creates and
 * removes the leaf `ctr`; the parent /hybridbox/<id> outlives it, and because memory
 * accounting and OOM events are hierarchical, the parent still holds the peak memory and
 * the OOM-kill count after the runtime has removed the leaf.
 */
export const CGROUP_PARENT = '/hybridbox';
export const leafPath = (id: string): string => `${CGROUP_PARENT}/${id}/ctr`;
const sandboxPath = (id: string): string => `${CGROUP_PARENT}/${id}`;

export interface CgroupMount {
  path: string;
  type: 'cgroup' | 'cgroup2';
  /** v1 controllers (or name=...) on this hierarchy; empty for cgroup2. */
  controllers: string[];
}

let mountsCache: CgroupMount[] | undefined;

export function cgroupMounts(): CgroupMount[] {
  if (mountsCache) return mountsCache;
  const out: CgroupMount[] = [];
  for (const m of readMountinfo()) {
    if (m.fstype !== 'cgroup' && m.fstype !== 'cgroup2') continue;
    const controllers = m.fstype === 'cgroup' ? m.superOptions.filter((o) => !['rw', 'ro', 'relatime', 'nosuid', 'nodev', 'noexec'].includes(o) && !o.startsWith('release_agent')) : [];
    out.push({ path: m.mountPoint, type: m.fstype, controllers });
  }
  return (mountsCache = out);
}

/** True when the runtime will see cgroup v2 only (pure v2 host). On hybrid hosts the shim hides cgroup2. */
export function isUnified(): boolean {
  return cgroupMounts().some((m) => m.type === 'cgroup2' && m.path === '/sys/fs/cgroup');
}

function controllerDir(controller: string): string | null {
  const mounts = cgroupMounts();
  if (isUnified()) return '/sys/fs/cgroup';
  const m = mounts.find((x) => x.type === 'cgroup' && x.controllers.includes(controller));
  return m ? m.path : null;
}

function readNumber(path: string): number | null {
  try {
    const n = Number(readFileSync(path, 'utf8').trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

function readKeyed(path: string, key: string): number | null {
  try {
    for (const line of readFileSync(path, 'utf8').split('\n')) {
      const [k, v] = line.split(/\s+/);
      if (k === key) return Number(v);
    }
  } catch {
    /* absent */
  }
  return null;
}

export interface CgroupCaps {
  /** cgroup v2 only: limits go into config.json for the runtime to apply on the leaf. */
  unified: boolean;
  ioWeight: boolean;
  memorySwap: boolean;
}

/**
 * Which optional limits this host's kernel can enforce (the runtime fails if asked for a
 * missing file). `ioWeight` is only worked out when `probeIoFor` names the sandbox that asks
 * for one (it is false otherwise): on cgroup v2 the io controller's files exist only in
 * child cgroups, and only for what the kernel has built, while the root's cgroup.controllers
 * lists `io` either way (see v2IoWeight).
 */
export function cgroupCaps(probeIoFor?: string): CgroupCaps {
  if (isUnified()) {
    const ctl = readFileSync('/sys/fs/cgroup/cgroup.controllers', 'utf8');
    const has = (c: string): boolean => ctl.split(/\s+/).includes(c);
    return { unified: true, ioWeight: probeIoFor !== undefined && has('io') && v2IoWeight(probeIoFor), memorySwap: has('memory') };
  }
  const blkio = controllerDir('blkio');
  const mem = controllerDir('memory');
  return {
    unified: false,
    ioWeight: probeIoFor !== undefined && !!blkio && (existsSync(join(blkio, 'blkio.weight')) || existsSync(join(blkio, 'blkio.bfq.weight'))),
    memorySwap: !!mem && existsSync(join(mem, 'memory.memsw.limit_in_bytes')),
  };
}

/**
 * Whether an IO weight can be set in this sandbox's cgroup on cgroup v2. crun (1.8) opens
 * io.max for any blockIO setting, the weight included, and then writes io.bfq.weight or
 * io.weight: io.max comes with blk-throttling, io.weight with iocost, io.bfq.weight with BFQ.
 * A kernel with the io controller but without those fails every start that asks for a
 * weight. The files are looked up where the runtime will write them: the sandbox's own
 * cgroup, made here with io enabled on the way down, as the runtime would enable it.
 */
function v2IoWeight(id: string): boolean {
  ensureSandboxCgroup(id);
  let dir = '/sys/fs/cgroup';
  for (const part of [CGROUP_PARENT.slice(1), id]) {
    try {
      writeFileSync(join(dir, 'cgroup.subtree_control'), '+io');
    } catch {
      return false;
    }
    dir = join(dir, part);
  }
  return existsSync(join(dir, 'io.max')) && (existsSync(join(dir, 'io.weight')) || existsSync(join(dir, 'io.bfq.weight')));
}

/** The host-wide count of OOM kills (/proc/vmstat), for the v1 OOM test in readUsage. */
export function hostOomKills(): number {
  try {
    const m = /^oom_kill (\d+)$/m.exec(readFileSync('/proc/vmstat', 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

export interface CgroupUsage {
  peakMemoryBytes: number | null;
  /** v2: the parent's hierarchical OOM-kill count. v1: see readUsage. */
  oomKilled: boolean;
  cpuTimeMs: number | null;
}

/**
 * Reads the sandbox's hierarchical counters from its parent cgroup, after the runtime has
 * removed the leaf. cgroup v2 propagates OOM events to ancestors, so the parent's count is
 * exact. cgroup v1 counts an OOM kill only in the victim's own (removed) leaf; there the
 * verdict is: killed by SIGKILL, the group's peak usage reached its limit, and the host's
 * OOM-kill count rose during the run.
 */
export function readUsage(id: string, v1?: { killedBySigkill: boolean; limitBytes: number | null; hostOomKillsAtStart: number | null }): CgroupUsage {
  const p = sandboxPath(id);
  if (isUnified()) {
    const dir = join('/sys/fs/cgroup', p);
    return {
      peakMemoryBytes: readNumber(join(dir, 'memory.peak')),
      oomKilled: (readKeyed(join(dir, 'memory.events'), 'oom_kill') ?? 0) > 0,
      cpuTimeMs: readCpuTimeMs(id),
    };
  }
  const mem = controllerDir('memory');
  const peak = mem ? readNumber(join(mem, p, 'memory.max_usage_in_bytes')) : null;
  const atLimit = peak !== null && v1?.limitBytes != null && peak >= v1.limitBytes - 256 * 1024;
  const hostOom = v1?.hostOomKillsAtStart != null && hostOomKills() > v1.hostOomKillsAtStart;
  return {
    peakMemoryBytes: peak,
    oomKilled: !!v1?.killedBySigkill && atLimit && hostOom,
    cpuTimeMs: readCpuTimeMs(id),
  };
}

/**
 * The file that counts the whole sandbox's CPU time (hierarchical: every process, the leaf's
 * included): v2 cpu.stat (`usage_usec`), v1 cpuacct.usage (ns). null: no such controller.
 */
export function cpuUsageFile(id: string): string | null {
  if (isUnified()) return join('/sys/fs/cgroup', sandboxPath(id), 'cpu.stat');
  const acct = controllerDir('cpuacct');
  return acct ? join(acct, sandboxPath(id), 'cpuacct.usage') : null;
}

/** The sandbox's CPU time so far, ms (what cpuUsageFile counts); null when it cannot be read. */
export function readCpuTimeMs(id: string): number | null {
  const file = cpuUsageFile(id);
  if (file === null) return null;
  if (isUnified()) {
    const usec = readKeyed(file, 'usage_usec');
    return usec === null ? null : Math.round(usec / 1000);
  }
  const ns = readNumber(file);
  return ns === null ? null : Math.round(ns / 1e6);
}

/** Pids in the sandbox's cgroup, read from one hierarchy that every runtime populates. */
export function sandboxPids(id: string): number[] {
  const base = isUnified() ? '/sys/fs/cgroup' : (controllerDir('pids') ?? controllerDir('memory'));
  if (!base) return [];
  const pids: number[] = [];
  const walk = (dir: string): void => {
    try {
      for (const l of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n')) if (l) pids.push(Number(l));
      for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) walk(join(dir, e.name));
    } catch {
      /* gone */
    }
  };
  walk(join(base, sandboxPath(id)));
  return pids;
}

/** Removes a cgroup directory (relative to each hierarchy's root) and its children in every hierarchy, deepest first. Returns what could not be removed. */
export function removeCgroupTree(rel: string): string[] {
  const left: string[] = [];
  for (const m of cgroupMounts()) {
    const top = join(m.path, rel);
    if (!existsSync(top)) continue;
    const dirs: string[] = [];
    const walk = (d: string): void => {
      dirs.push(d);
      try {
        for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
      } catch {
        /* gone */
      }
    };
    walk(top);
    for (const d of dirs.reverse()) {
      try {
        rmdirSync(d);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT') left.push(`${d} (${code})`);
      }
    }
  }
  return left;
}

/**
 * Creates /hybridbox/<id> in every hierarchy the runtime will use, before it starts. With the
 * sandbox's own directory in place, the shared parent is never empty while a start is under
 * way, so removeCgroups may drop an empty parent without racing a concurrent start.
 */
export function ensureSandboxCgroup(id: string): void {
  for (const m of cgroupMounts()) {
    // On hybrid hosts the runtime never sees cgroup2 (the shim hides it).
    if (m.type === 'cgroup2' && !isUnified()) continue;
    const dir = join(m.path, sandboxPath(id));
    for (let attempt = 0; ; attempt++) {
      try {
        mkdirSync(dir, { recursive: true });
        break;
      } catch (e) {
        // The parent vanished between two steps of the recursive mkdir: a teardown removed it.
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 5) throw e;
      }
    }
  }
}

/**
 * A CPU quota for a process that is not a container (a microVM's QEMU, all its threads):
 * /hybridbox/<id>/vm in the cpu hierarchy, at `cpus` CPUs per 100 ms period. Returns its
 * cgroup.procs, for the process to join before it execs (hbx-shim --join-cgroup); removed
 * with the sandbox's other cgroups (removeCgroups).
 */
export function cpuQuotaCgroup(id: string, cpus: number): string {
  const base = controllerDir('cpu');
  if (!base) throw new Error('no cpu cgroup controller on this host');
  ensureSandboxCgroup(id);
  const dir = join(base, sandboxPath(id), 'vm');
  mkdirSync(dir, { recursive: true });
  const quota = Math.round(cpus * 100_000);
  if (isUnified()) {
    // The controller must be enabled on every level above the leaf.
    for (const d of [base, join(base, CGROUP_PARENT), join(base, sandboxPath(id))]) writeFileSync(join(d, 'cgroup.subtree_control'), '+cpu');
    writeFileSync(join(dir, 'cpu.max'), `${quota} 100000`);
  } else {
    writeFileSync(join(dir, 'cpu.cfs_period_us'), '100000');
    writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(quota));
  }
  return join(dir, 'cgroup.procs');
}

/**
 * Removes the sandbox's cgroups in every hierarchy, and the shared /hybridbox parent when it
 * is left empty, so an idle host carries no trace of hybridbox (see ensureSandboxCgroup).
 */
export function removeCgroups(id: string): string[] {
  const left = removeCgroupTree(sandboxPath(id));
  for (const m of cgroupMounts()) {
    try {
      rmdirSync(join(m.path, CGROUP_PARENT));
    } catch {
      /* absent, or other sandboxes are in it */
    }
  }
  return left;
}
