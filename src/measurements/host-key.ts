import { createHash } from 'node:crypto';
import type { HostInfo } from '../host/types.js';

/**
 * The key results of this host are stored under: a short hash of CPU model, cores, memory,
 * kernel, accel and cgroup layout. Synchronous and spawns nothing (the scheduler computes it
 * on every `place`).
 */
export function hostKey(host: HostInfo): string {
  return createHash('sha256')
    .update(JSON.stringify([host.cpuModel, host.cpus, host.memTotalBytes, host.kernelRelease, host.kvm.usable ? 'kvm' : 'tcg', host.cgroup.layout]))
    .digest('hex')
    .slice(0, 16);
}
