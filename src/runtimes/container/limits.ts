import type { HostInfo } from '../../host/types.js';
import { netRateWords, diskWords, entryField, notApplied, rateWords, resolveDeviceLimits, type LimitTarget } from '../limits.js';
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
const OCI_THROTTLE: Record<DeviceLimitField, string> = {
  deviceReadBps: 'throttleReadBpsDevice',
  deviceWriteBps: 'throttleWriteBpsDevice',
  deviceReadIops: 'throttleReadIOPSDevice',
  deviceWriteIops: 'throttleWriteIOPSDevice',
};

/**
 * The OCI blockIO throttles for a spec's disk limits, from the same resolution as the plan:
 * a limit with no disk to land on is left out (the plan says it is not applied). crun
 * writes them to blkio.throttle.* (v1) or io.max (v2).
 */
export function ociThrottles(spec: WorkloadSpec, target: LimitTarget): Record<string, { major: number; minor: number; rate: number }[]> {
  const out: Record<string, { major: number; minor: number; rate: number }[]> = {};
  for (const e of resolveDeviceLimits(spec, target)) {
    if (!e.disk) continue;
    const key = OCI_THROTTLE[e.field];
    out[key] = [...(out[key] ?? []), { major: e.disk.major, minor: e.disk.minor, rate: e.rate }];
  }
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
export function containerLimits(spec: WorkloadSpec, host: HostInfo, target: LimitTarget, caps: ContainerLimitHost = {}): LimitEnforcement[] {
  const v2 = host.cgroup.layout === 'v2';
  const r = spec.resources;
  const where = (controller: string): string => {
    const leaf = `hybridbox/${target.id ?? '<id>'}/ctr`;
    return v2 ? `/sys/fs/cgroup/${leaf}` : `${host.cgroup.v1[controller] ?? `/sys/fs/cgroup/${controller}`}/${leaf}`;
  };
  const file = (controller: string, name: string, value: string): string => `cgroup ${v2 ? 'v2' : 'v1'} ${where(controller)}/${name} = ${JSON.stringify(value)}`;
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
  for (const e of resolveDeviceLimits(spec, target)) {
    const disk = e.disk;
    const value = `${rateWords(e.field, e.rate)} on ${diskWords(disk, e.path)}`;
    if (disk === null) {
      out.push(
        notApplied(
          entryField(e),
          value,
          e.path === undefined ? "the sandbox's writable layer is on no block device (a tmpfs or network file system): name a device" : `${e.path} is not a block device`,
        ),
      );
      continue;
    }
    const dev = disk ? devNumbers(disk) : 'MAJ:MIN';
    const mechanism = v2 ? file('io', 'io.max', `${dev} ${IO_MAX_KEY[e.field]}=${e.rate}`) : file('blkio', V1_THROTTLE[e.field], `${dev} ${e.rate}`);
    out.push({ field: entryField(e), value, mechanism, ...(!v2 && (e.field === 'deviceWriteBps' || e.field === 'deviceWriteIops') ? { note: V1_BUFFERED_WRITES } : {}) });
  }
  if (r.netRateKbit !== undefined) {
    out.push({ field: 'resources.netRateKbit', value: `${netRateWords(r.netRateKbit)} each direction`, mechanism: describeShaping({ id: target.id, kind: 'veth', kbit: r.netRateKbit }) });
  }
  return out;
}
