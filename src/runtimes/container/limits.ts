import { readFileSync } from 'node:fs';
import type { HostInfo } from '../../host/types.js';
import { netRateWords, diskWords, entryField, notApplied, outputLimitEnforcement, rateWords, resolveDeviceLimits, shadowedNote, type LimitTarget } from '../limits.js';
import { formatBytes } from '../../util/text.js';
import { devNumbers } from '../../host/blockdev.js';
import type { DeviceLimitField, WorkloadSpec } from '../../spec/schema.js';
import type { LimitEnforcement } from '../descriptor.js';
import { describeShaping } from '../../network/index.js';

const V1_THROTTLE: Record<DeviceLimitField, string> = {
  deviceReadBps: 'blkio.throttle.read_bps_device',
  deviceWriteBps: 'blkio.throttle.write_bps_device',
  deviceReadIops: 'blkio.throttle.read_iops_device',
  deviceWriteIops: 'blkio.throttle.write_iops_device',
};
/** The io.max keys (cgroup v2). */
export const IO_MAX_KEY: Record<DeviceLimitField, string> = { deviceReadBps: 'rbps', deviceWriteBps: 'wbps', deviceReadIops: 'riops', deviceWriteIops: 'wiops' };

/** The OCI runtime spec's linux.resources.blockIO list for each disk limit. */
const OCI_THROTTLE = {
  deviceReadBps: 'throttleReadBpsDevice',
  deviceWriteBps: 'throttleWriteBpsDevice',
  deviceReadIops: 'throttleReadIOPSDevice',
  deviceWriteIops: 'throttleWriteIOPSDevice',
} as const satisfies Record<DeviceLimitField, string>;

/** linux.resources.blockIO's throttle lists: crun writes them to blkio.throttle.* (v1) or io.max (v2). */
export type BlockIOThrottles = Partial<Record<(typeof OCI_THROTTLE)[DeviceLimitField], { major: number; minor: number; rate: number }[]>>;

/** A disk limit's line in the plan, and what the runtime is told to write for it (null: nothing). */
export interface ContainerDiskLimit {
  enforcement: LimitEnforcement;
  throttle: { field: DeviceLimitField; major: number; minor: number; rate: number } | null;
}

/** The OCI throttles of a plan's disk limits: exactly the ones it marks applied. */
export function ociThrottles(disk: ContainerDiskLimit[]): BlockIOThrottles {
  const out: BlockIOThrottles = {};
  for (const { throttle: t } of disk) if (t) (out[OCI_THROTTLE[t.field]] ??= []).push({ major: t.major, minor: t.minor, rate: t.rate });
  return out;
}

/** cgroup v1 does not charge writeback to the cgroup that dirtied the pages. */
export const V1_BUFFERED_WRITES =
  "cgroup v1 throttles reads and direct or synchronous writes only: buffered writes reach the disk later through the kernel's flusher threads, which are not charged to the sandbox's cgroup, so they escape this cap (cgroup v2 charges writeback to the writer)";

export interface ContainerLimitHost {
  /** Whether an IO weight can be applied; undefined: not known until the sandbox's cgroup exists. */
  ioWeight?: boolean;
}

/**
 * How a container enforces each limit of its spec: the cgroup files the runtime writes in
 * the sandbox's cgroup (`/hybridbox/<id>/ctr`), and tc on its veth for the network.
 */
export function containerLimits(
  spec: WorkloadSpec,
  host: HostInfo,
  target: LimitTarget,
  caps: ContainerLimitHost = {},
  disk: ContainerDiskLimit[] = containerDiskLimits(spec, host, target),
): LimitEnforcement[] {
  const v2 = host.cgroup.layout === 'v2';
  const r = spec.resources;
  const file = cgroupFile(host, target);
  const out: LimitEnforcement[] = [];
  if (r.cpus !== undefined) {
    const quota = String(Math.round(r.cpus * 100_000));
    out.push({
      field: 'resources.cpus',
      value: `${r.cpus} CPUs`,
      mechanism: v2 ? file('cpu', 'cpu.max', `${quota} 100000`) : `${file('cpu', 'cpu.cfs_quota_us', quota)}, cpu.cfs_period_us = "100000"`,
    });
  }
  if (r.memoryMiB !== undefined) {
    const bytes = String(r.memoryMiB * 1048576);
    out.push({
      field: 'resources.memoryMiB',
      value: `${r.memoryMiB} MiB`,
      mechanism: v2
        ? `${file('memory', 'memory.max', bytes)}, memory.swap.max = "0"`
        : `${file('memory', 'memory.limit_in_bytes', bytes)} (and memory.memsw.limit_in_bytes where swap accounting is on)`,
    });
  }
  if (r.pids !== undefined) out.push({ field: 'resources.pids', value: `${r.pids} processes`, mechanism: file('pids', 'pids.max', String(r.pids)) });
  if (r.ioWeight !== undefined) {
    const value = `weight ${r.ioWeight}`;
    if (caps.ioWeight === false) {
      out.push(
        notApplied(
          'resources.ioWeight',
          value,
          v2
            ? 'the kernel has no io.weight here: the runtime needs io.max (blk-throttling) and io.weight (iocost) or io.bfq.weight (BFQ)'
            : 'cgroup v1 without BFQ: blkio.weight exists only with the BFQ IO scheduler',
        ),
      );
    } else {
      out.push({
        field: 'resources.ioWeight',
        value,
        // A weight shares a disk only while it is contended.
        mechanism: `${file('blkio', v2 ? 'io.weight (or io.bfq.weight)' : 'blkio.weight (or blkio.bfq.weight)', String(r.ioWeight))}${caps.ioWeight === undefined ? ', where the kernel supports it (checked when the sandbox is made)' : ''}`,
      });
    }
  }
  out.push(...disk.map((d) => d.enforcement));
  if (r.netRateKbit !== undefined) {
    out.push({ field: 'resources.netRateKbit', value: `${netRateWords(r.netRateKbit)} each direction`, mechanism: describeShaping({ id: target.id, kind: 'veth', kbit: r.netRateKbit }) });
  }
  out.push(...processLimits(spec, host, target));
  return out;
}

/** The limits on the workload's processes and file systems (not cgroup controllers). */
function processLimits(spec: WorkloadSpec, host: HostInfo, target: LimitTarget): LimitEnforcement[] {
  const r = spec.resources;
  const out: LimitEnforcement[] = [];
  if (r.cpuTimeMs !== undefined) {
    const v2 = host.cgroup.layout === 'v2';
    const dir = `hybridbox/${target.id ?? '<id>'}`;
    const counter = v2 ? `cgroup v2 /sys/fs/cgroup/${dir}/cpu.stat usage_usec` : `cgroup v1 ${host.cgroup.v1.cpuacct}/${dir}/cpuacct.usage`;
    if (!v2 && host.cgroup.v1.cpuacct === undefined) out.push(notApplied('resources.cpuTimeMs', `${r.cpuTimeMs} ms of CPU time`, 'this cgroup v1 host has no cpuacct controller to count it with'));
    else
      out.push({
        field: 'resources.cpuTimeMs',
        value: `${r.cpuTimeMs} ms of CPU time`,
        mechanism: `${counter} (every process of the sandbox), watched by hybridbox (the foreground run, or hbx-shim for a detached one): SIGKILL at ${r.cpuTimeMs} ms`,
      });
  }
  if (r.fileSizeBytes !== undefined) {
    out.push({
      field: 'resources.fileSizeBytes',
      value: formatBytes(r.fileSizeBytes),
      mechanism: `OCI process.rlimits RLIMIT_FSIZE = ${r.fileSizeBytes} (soft = hard), for every process: a write past it gets SIGXFSZ`,
    });
  }
  if (r.openFiles !== undefined) {
    const ceiling = openFilesCeiling();
    out.push(
      r.openFiles > ceiling.max
        ? notApplied('resources.openFiles', `${r.openFiles} files`, ceiling.why)
        : { field: 'resources.openFiles', value: `${r.openFiles} files`, mechanism: `OCI process.rlimits RLIMIT_NOFILE = ${r.openFiles} (soft = hard)` },
    );
  }
  if (r.tmpfsMiB !== undefined) {
    out.push({
      field: 'resources.tmpfsMiB',
      value: `${r.tmpfsMiB} MiB each`,
      mechanism: `tmpfs /tmp (nosuid, nodev) and /dev/shm (nosuid, nodev, noexec), size=${r.tmpfsMiB * 1024}k each: a write past it gets ENOSPC (the pages count against the memory limit too)`,
    });
  }
  if (spec.readOnlyRoot) {
    out.push({
      field: 'readOnlyRoot',
      value: 'true',
      mechanism: 'OCI root.readonly: the overlay root mounted read-only (writes get EROFS, its upper directory stays empty); /tmp and /dev/shm are private tmpfs',
    });
  }
  out.push(...outputLimitEnforcement(spec));
  return out;
}

const CAP_SYS_RESOURCE = 24;

/**
 * The most open files a container can be given: the runtime sets its limits once it has
 * dropped its capabilities, so it can go no higher than the hard limit it starts with.
 * hbx-shim raises that first (`--nofile`), as far as the kernel allows (fs.nr_open), when
 * hybridbox holds CAP_SYS_RESOURCE; without it the limit hybridbox runs under is the ceiling.
 */
export function openFilesCeiling(): { max: number; why: string } {
  try {
    const caps = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'}`);
    if ((caps >> BigInt(CAP_SYS_RESOURCE)) & 1n) {
      const max = Number(readFileSync('/proc/sys/fs/nr_open', 'utf8').trim());
      return { max, why: `the kernel allows at most ${max} open files per process (fs.nr_open)` };
    }
    const hard = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1];
    const max = hard === undefined || hard === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(hard);
    return { max, why: `hybridbox runs with a hard limit of ${max} open files and without CAP_SYS_RESOURCE to raise it (ulimit -Hn), and a container cannot go above it` };
  } catch {
    return { max: Number.MAX_SAFE_INTEGER, why: '' };
  }
}

/** How the plan names a file in the sandbox's cgroup (`/hybridbox/<id>/ctr`) and the value written to it. */
function cgroupFile(host: HostInfo, target: LimitTarget): (controller: string, name: string, value: string) => string {
  const v2 = host.cgroup.layout === 'v2';
  const leaf = `hybridbox/${target.id ?? '<id>'}/ctr`;
  const where = (controller: string): string => (v2 ? `/sys/fs/cgroup/${leaf}` : `${host.cgroup.v1[controller] ?? `/sys/fs/cgroup/${controller}`}/${leaf}`);
  return (controller, name, value) => `cgroup ${v2 ? 'v2' : 'v1'} ${where(controller)}/${name} = ${JSON.stringify(value)}`;
}

/**
 * Each disk limit's plan line and its OCI throttle, from one resolution of the disks, so
 * `inspect` shows exactly what crun is given: a limit with no disk to land on, or one a
 * lower rate on the same disk overrides, is listed as not applied and given to nobody.
 */
export function containerDiskLimits(spec: WorkloadSpec, host: HostInfo, target: LimitTarget): ContainerDiskLimit[] {
  const v2 = host.cgroup.layout === 'v2';
  const file = cgroupFile(host, target);
  return resolveDeviceLimits(spec, target).map((e): ContainerDiskLimit => {
    const disk = e.disk;
    const value = `${rateWords(e.field, e.rate)} on ${diskWords(disk, e.path)}`;
    if (disk === null) {
      const why = e.path === undefined ? "the sandbox's writable layer is on no block device (a tmpfs or network file system): name a device" : `${e.path} is not a block device`;
      return { enforcement: notApplied(entryField(e), value, why), throttle: null };
    }
    if (e.shadowedBy) return { enforcement: notApplied(entryField(e), value, shadowedNote({ ...e, shadowedBy: e.shadowedBy })), throttle: null };
    const dev = disk ? devNumbers(disk) : 'MAJ:MIN';
    const mechanism = v2 ? file('io', 'io.max', `${dev} ${IO_MAX_KEY[e.field]}=${e.rate}`) : file('blkio', V1_THROTTLE[e.field], `${dev} ${e.rate}`);
    const note = !v2 && (e.field === 'deviceWriteBps' || e.field === 'deviceWriteIops') ? { note: V1_BUFFERED_WRITES } : {};
    // Before the sandbox exists (`place`) the disk is not known: a plan, nothing to write yet.
    return { enforcement: { field: entryField(e), value, mechanism, ...note }, throttle: disk ? { field: e.field, major: disk.major, minor: disk.minor, rate: e.rate } : null };
  });
}
