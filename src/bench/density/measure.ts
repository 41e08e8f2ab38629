// What one idle sandbox costs the host, read from /proc and the cgroup filesystem: the
// resident memory of the processes that exist only because of it (monitor, shim, runtime,
// QEMU) and the memory the kernel charges to a cgroup of its own.
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { cgroupMounts, isUnified, sandboxPids } from '../../runtimes/cgroups.js';
import type { BackendKind } from '../../spec/schema.js';

/** Host memory in use: MemTotal - MemAvailable (page cache the kernel can drop does not count). */
export function hostUsedBytes(): number {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? NaN);
  return (kib('MemTotal') - kib('MemAvailable')) * 1024;
}

export interface ProcInfo {
  pid: number;
  ppid: number;
  name: string;
  cmdline: string;
  rssBytes: number;
  anonBytes: number;
}

/** Every process on the host with its parent, name and resident memory (one pass over /proc). */
export function scanProcesses(): Map<number, ProcInfo> {
  const out = new Map<number, ProcInfo>();
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const field = (key: string): string | undefined => new RegExp(`^${key}:\\s+(.*)$`, 'm').exec(status)?.[1];
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      // The program's file name says more than `comm` (15 characters, or "node" for every monitor).
      const argv0 = cmdline.split(' ')[0] ?? '';
      out.set(pid, {
        pid,
        ppid: Number(field('PPid') ?? 0),
        name: argv0 ? basename(argv0) : (field('Name') ?? '?'),
        cmdline,
        rssBytes: parseInt(field('VmRSS') ?? '0', 10) * 1024,
        anonBytes: parseInt(field('RssAnon') ?? '0', 10) * 1024,
      });
    } catch {
      /* exited meanwhile, or a kernel thread without a status we can read */
    }
  }
  return out;
}

/** Where the memory controller's hierarchy is mounted. */
function memoryMount(): string | null {
  if (isUnified()) return '/sys/fs/cgroup';
  return cgroupMounts().find((m) => m.type === 'cgroup' && m.controllers.includes('memory'))?.path ?? null;
}

/** The cgroup directory of a process in the memory hierarchy (absolute), or null. */
function memoryCgroupOf(pid: number): string | null {
  let lines: string[];
  try {
    lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n');
  } catch {
    return null;
  }
  const rel = isUnified() ? lines.find((l) => l.startsWith('0::'))?.slice(3) : lines.map((l) => l.split(':')).find((f) => f[1]?.split(',').includes('memory'))?.[2];
  const mount = memoryMount();
  return mount && rel ? join(mount, rel) : null;
}

const toNumber = (text: string | null): number | null => {
  const n = text === null ? NaN : Number(text.trim());
  return Number.isFinite(n) ? n : null;
};

/** Memory charged to a cgroup: everything, and the kernel's own part (slab, stacks, page tables, sockets). */
function cgroupMemory(dir: string): { usage: number | null; kernel: number | null } {
  const read = (file: string): string | null => {
    try {
      return readFileSync(join(dir, file), 'utf8');
    } catch {
      return null; // gone
    }
  };
  if (!isUnified()) return { usage: toNumber(read('memory.usage_in_bytes')), kernel: toNumber(read('memory.kmem.usage_in_bytes')) };
  const stat = Object.fromEntries((read('memory.stat') ?? '').split('\n').map((l) => l.split(' ') as [string, string]));
  const kernel = stat.kernel !== undefined ? Number(stat.kernel) : ['kernel_stack', 'pagetables', 'percpu', 'sock', 'slab'].reduce((s, k) => s + Number(stat[k] ?? 0), 0);
  return { usage: toNumber(read('memory.current')), kernel };
}

export interface SandboxCost {
  /** Resident memory of the host-side processes (not the workload): monitor, shim, runtime, QEMU. */
  hostRssBytes: number;
  /** The same by program name (hbx-shim, crun, node, qemu-system-x86_64, ...). */
  rssByProcess: Record<string, number>;
  /** Memory charged to the sandbox's own cgroup that no RSS above shows; null without such a cgroup. */
  cgroupBytes: number | null;
  /** The pids counted (for diagnostics). */
  pids: number[];
}

/**
 * What one running sandbox costs the host beyond its workload.
 *
 * Its host-side processes are its owner (the detached monitor: hbx-shim for a container,
 * `hybridbox internal monitor` for a VM) with all its descendants, and every process whose
 * command line names the sandbox id (a libvirt-run QEMU is libvirtd's child, not the
 * monitor's). A container's workload processes (those in its cgroup) are left out.
 *
 * The cgroup part: for a container, the usage of /hybridbox/<id> less the workload's
 * private (anonymous) memory: kernel memory for its namespaces and page tables, and page
 * cache of its files. For a VM the whole guest is in QEMU's RSS already; a libvirt VM's
 * machine cgroup adds the kernel memory charged to it; a microVM's QEMU has no cgroup of
 * its own (null).
 */
export function sandboxCost(procs: Map<number, ProcInfo>, sandbox: { id: string; backend: BackendKind; ownerPid: number | null }): SandboxCost {
  const children = new Map<number, number[]>();
  for (const p of procs.values()) {
    const list = children.get(p.ppid);
    if (list) list.push(p.pid);
    else children.set(p.ppid, [p.pid]);
  }
  const mine = new Set<number>();
  const addTree = (pid: number): void => {
    if (mine.has(pid) || !procs.has(pid)) return;
    mine.add(pid);
    for (const c of children.get(pid) ?? []) addTree(c);
  };
  if (sandbox.ownerPid !== null && sandbox.ownerPid !== process.pid) addTree(sandbox.ownerPid);
  for (const p of procs.values()) if (p.pid !== process.pid && p.cmdline.includes(sandbox.id)) addTree(p.pid);

  const workload = sandbox.backend === 'container' ? new Set(sandboxPids(sandbox.id)) : new Set<number>();
  const rssByProcess: Record<string, number> = {};
  let hostRssBytes = 0;
  for (const pid of mine) {
    if (workload.has(pid)) continue;
    const p = procs.get(pid)!;
    hostRssBytes += p.rssBytes;
    rssByProcess[p.name] = (rssByProcess[p.name] ?? 0) + p.rssBytes;
  }

  let cgroupBytes: number | null = null;
  if (sandbox.backend === 'container') {
    const mount = memoryMount();
    const usage = mount ? cgroupMemory(join(mount, 'hybridbox', sandbox.id)).usage : null;
    if (usage !== null) {
      const anon = [...workload].reduce((s, pid) => s + (procs.get(pid)?.anonBytes ?? 0), 0);
      cgroupBytes = Math.max(0, usage - anon);
    }
  } else {
    // A VM's cgroup counts only when it is the machine's own (libvirt's), not the one it inherited.
    const qemu = [...mine].find((pid) => procs.get(pid)!.name.startsWith('qemu-system'));
    const own = qemu === undefined ? null : memoryCgroupOf(qemu);
    const parent = qemu === undefined ? null : memoryCgroupOf(procs.get(qemu)!.ppid);
    if (own && parent && own !== parent && !own.endsWith('/')) cgroupBytes = cgroupMemory(own).kernel;
  }
  return { hostRssBytes, rssByProcess, cgroupBytes, pids: [...mine].filter((p) => !workload.has(p)).sort((a, b) => a - b) };
}
