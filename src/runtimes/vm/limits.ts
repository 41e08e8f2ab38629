import type { HostInfo } from '../../host/types.js';
import type { BackendKind, DeviceLimitField, WorkloadSpec } from '../../spec/schema.js';
import { describeShaping } from '../../network/index.js';
import { diskWords, entryField, netRateWords, notApplied, outputLimitEnforcement, rateWords, resolveDeviceLimits, shadowedNote, type LimitTarget, type ResolvedDeviceLimit } from '../limits.js';
import { formatBytes } from '../../util/text.js';
import type { LimitEnforcement } from '../descriptor.js';

/** Guest RAM when the spec sets no memory limit. */
export const DEFAULT_MEMORY_MIB = 256;
/**
 * Guest RAM on top of the workload's memory limit, for the guest kernel and the agent: the
 * workload's cgroup gets exactly the spec's limit (as in a container), and an OOM inside it
 * never starves the agent or its channel. Measured in a 96 MiB microVM: MemTotal 85 MiB (the
 * kernel keeps ~11 MiB), 16-19 MiB in use with the agent idle; 48 MiB leaves ~18 MiB spare.
 */
export const GUEST_RESERVE_MIB = 48;

/** The guest's RAM for a spec. */
export const guestMemoryMiB = (spec: WorkloadSpec): number => (spec.resources.memoryMiB === undefined ? DEFAULT_MEMORY_MIB : spec.resources.memoryMiB + GUEST_RESERVE_MIB);

/** QEMU's -drive throttling.* option for each disk limit (microvm). */
export const QEMU_THROTTLE: Record<DeviceLimitField, string> = {
  deviceReadBps: 'throttling.bps-read',
  deviceWriteBps: 'throttling.bps-write',
  deviceReadIops: 'throttling.iops-read',
  deviceWriteIops: 'throttling.iops-write',
};
/** libvirt's <iotune> child for each disk limit (q35 VM). */
export const LIBVIRT_IOTUNE: Record<DeviceLimitField, string> = {
  deviceReadBps: 'read_bytes_sec',
  deviceWriteBps: 'write_bytes_sec',
  deviceReadIops: 'read_iops_sec',
  deviceWriteIops: 'write_iops_sec',
};

/**
 * What the agent applies inside the guest, from the kernel command line (kernel-cmdline.ts):
 * the workload cgroup's pids.max and memory.max, its CPU time limit, every session's
 * rlimits, the private tmpfs sizes, a read-only root and the untrusted seccomp filter.
 */
export interface GuestLimits {
  pids?: number;
  memoryBytes?: number;
  cpuTimeMs?: number;
  fileSizeBytes?: number;
  openFiles?: number;
  tmpfsMiB?: number;
  readOnlyRoot?: boolean;
  untrusted?: boolean;
}

export const guestLimits = (spec: WorkloadSpec): GuestLimits => {
  const r = spec.resources;
  const out: GuestLimits = {};
  if (r.pids !== undefined) out.pids = r.pids;
  if (r.memoryMiB !== undefined) out.memoryBytes = r.memoryMiB * 1048576;
  if (r.cpuTimeMs !== undefined) out.cpuTimeMs = r.cpuTimeMs;
  if (r.fileSizeBytes !== undefined) out.fileSizeBytes = r.fileSizeBytes;
  if (r.openFiles !== undefined) out.openFiles = r.openFiles;
  if (r.tmpfsMiB !== undefined) out.tmpfsMiB = r.tmpfsMiB;
  if (spec.readOnlyRoot) out.readOnlyRoot = true;
  if (spec.trust === 'untrusted') out.untrusted = true;
  return out;
};

/** The guest cgroup the agent puts every session in, with the spec's limits on it; the agent stays outside (hbx-agent.c). */
export const GUEST_CGROUP = '/sys/fs/cgroup/hbx';

/**
 * How a VM sandbox enforces each limit: the machine's size and QEMU's or libvirt's own
 * controls outside the guest, the agent's cgroup inside it (pids, memory), tc on the tap.
 */
export function vmLimits(kind: Extract<BackendKind, 'microvm' | 'vm'>, spec: WorkloadSpec, _host: HostInfo, target: LimitTarget): LimitEnforcement[] {
  const r = spec.resources;
  const micro = kind === 'microvm';
  const out: LimitEnforcement[] = [];
  if (r.cpus !== undefined) {
    const vcpus = Math.max(1, Math.ceil(r.cpus));
    const quota = Math.round(r.cpus * 100_000);
    out.push({
      field: 'resources.cpus',
      value: `${r.cpus} CPUs`,
      mechanism: micro
        ? `QEMU -smp ${vcpus}, all of QEMU in the host cgroup /hybridbox/${target.id ?? '<id>'}/vm with cpu quota ${quota} per 100000 µs`
        : `libvirt <vcpu>${vcpus}</vcpu>, <cputune><quota>${quota}</quota> per vCPU and <global_quota>${quota}</global_quota> for all of QEMU, per 100000 µs</cputune>`,
    });
  }
  if (r.memoryMiB !== undefined) {
    const ram = guestMemoryMiB(spec);
    out.push({
      field: 'resources.memoryMiB',
      value: `${r.memoryMiB} MiB`,
      mechanism: `guest cgroup ${GUEST_CGROUP}/memory.max = "${r.memoryMiB * 1048576}" (set by the agent); guest RAM ${ram} MiB (${micro ? `QEMU -m ${ram}` : `libvirt <memory>${ram}</memory>`}: the limit plus ${GUEST_RESERVE_MIB} MiB for the guest kernel and agent)`,
    });
  }
  if (r.pids !== undefined) out.push({ field: 'resources.pids', value: `${r.pids} processes`, mechanism: `guest cgroup ${GUEST_CGROUP}/pids.max = "${r.pids}" (set by the agent)` });
  if (r.ioWeight !== undefined) out.push(notApplied('resources.ioWeight', `weight ${r.ioWeight}`, "a VM's disk IO is QEMU's, which has absolute caps only: use the device read/write limits"));
  for (const e of resolveDeviceLimits(spec, target)) {
    const value = `${rateWords(e.field, e.rate)} on the VM's disk${e.path ? ` (asked for ${e.path})` : ''}`;
    if (!landsOnVmDisk(e, target)) {
      out.push(notApplied(entryField(e), value, `a VM's only disk is its overlay on ${diskWords(target.disk)}; ${e.path} carries none of its IO`));
      continue;
    }
    // Of two limits on the VM's disk the lower holds, as in a container's cgroup.
    if (e.shadowedBy) {
      out.push(notApplied(entryField(e), value, shadowedNote({ ...e, shadowedBy: e.shadowedBy })));
      continue;
    }
    out.push({
      field: entryField(e),
      value,
      mechanism: micro
        ? `QEMU -drive ${QEMU_THROTTLE[e.field]}=${e.rate} (query-block: inserted.${qmpKey(e.field)})`
        : `libvirt <disk><iotune><${LIBVIRT_IOTUNE[e.field]}>${e.rate}</${LIBVIRT_IOTUNE[e.field]}></iotune>`,
    });
  }
  if (r.netRateKbit !== undefined)
    out.push({ field: 'resources.netRateKbit', value: `${netRateWords(r.netRateKbit)} each direction`, mechanism: describeShaping({ id: target.id, kind: 'tap', kbit: r.netRateKbit }) });
  out.push(...guestProcessLimits(spec));
  return out;
}

/** The limits the agent holds on the workload's processes and file systems inside the guest. */
function guestProcessLimits(spec: WorkloadSpec): LimitEnforcement[] {
  const r = spec.resources;
  const out: LimitEnforcement[] = [];
  if (r.cpuTimeMs !== undefined) {
    out.push({
      field: 'resources.cpuTimeMs',
      value: `${r.cpuTimeMs} ms of CPU time`,
      mechanism: `guest cgroup ${GUEST_CGROUP}/cpu.stat usage_usec (every session's processes), watched by the agent (hbx.cputime): ${GUEST_CGROUP}/cgroup.kill at ${r.cpuTimeMs} ms`,
    });
  }
  if (r.fileSizeBytes !== undefined) {
    out.push({
      field: 'resources.fileSizeBytes',
      value: formatBytes(r.fileSizeBytes),
      mechanism: `RLIMIT_FSIZE = ${r.fileSizeBytes} (soft = hard) on every session, set by the agent (hbx.fsize): a write past it gets SIGXFSZ`,
    });
  }
  if (r.openFiles !== undefined) {
    out.push({ field: 'resources.openFiles', value: `${r.openFiles} files`, mechanism: `RLIMIT_NOFILE = ${r.openFiles} (soft = hard) on every session, set by the agent (hbx.nofile)` });
  }
  if (r.tmpfsMiB !== undefined) {
    out.push({
      field: 'resources.tmpfsMiB',
      value: `${r.tmpfsMiB} MiB each`,
      mechanism: `tmpfs /tmp and /dev/shm (nosuid, nodev), size=${r.tmpfsMiB}m each, mounted by the agent (hbx.tmpfs): a write past it gets ENOSPC`,
    });
  }
  if (spec.readOnlyRoot) {
    out.push({
      field: 'readOnlyRoot',
      value: 'true',
      mechanism: "the VM's root disk remounted read-only by the agent once it has set the guest up (hbx.rootro; writes get EROFS); /tmp and /dev/shm are private tmpfs",
    });
  }
  out.push(...outputLimitEnforcement(spec));
  return out;
}

/**
 * The VM's only disk is its overlay file, whatever the guest caches: a limit with no device,
 * or one naming the disk that holds the overlay, caps it; a limit on another host disk
 * carries none of its IO. (Before the sandbox exists the overlay's disk is unknown.)
 */
function landsOnVmDisk(e: ResolvedDeviceLimit, target: LimitTarget): boolean {
  if (e.path === undefined || target.disk === undefined) return true;
  return !!e.disk && !!target.disk && e.disk.major === target.disk.major && e.disk.minor === target.disk.minor;
}

/** The root disk's caps for a VM: exactly the limits its plan (vmLimits) marks applied. */
export function vmDiskThrottle(spec: WorkloadSpec, target: LimitTarget): Partial<Record<DeviceLimitField, number>> {
  const out: Partial<Record<DeviceLimitField, number>> = {};
  for (const e of resolveDeviceLimits(spec, target)) if (landsOnVmDisk(e, target) && !e.shadowedBy) out[e.field] = e.rate;
  return out;
}

/** The key QMP's query-block reports a throttle under. */
export const qmpKey = (f: DeviceLimitField): string => ({ deviceReadBps: 'bps_rd', deviceWriteBps: 'bps_wr', deviceReadIops: 'iops_rd', deviceWriteIops: 'iops_wr' })[f];
