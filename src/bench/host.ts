import { hostname } from 'node:os';
import type { HostInfo } from '../host/types.js';
import { run } from '../util/exec.js';
import { hostKey } from '../measurements/index.js';
import type { HostDescription } from '../measurements/index.js';

declare const __HYBRIDBOX_VERSION__: string | undefined;

async function firstLine(file: string, args: string[]): Promise<string | null> {
  try {
    const r = await run(file, args, { timeoutMs: 5000 });
    return r.exitCode === 0 ? (r.stdout.split('\n')[0] ?? '').trim() || null : null;
  } catch {
    return null;
  }
}

/** The host a result was measured on, with the versions of everything that shapes the numbers. */
export async function describeHost(host: HostInfo): Promise<HostDescription> {
  const accel = host.kvm.usable ? 'kvm' : 'tcg';
  const cgroup = host.cgroup.layout;
  return {
    key: hostKey(host),
    hostname: hostname(),
    cpuModel: host.cpuModel,
    cores: host.cpus,
    memoryBytes: host.memTotalBytes,
    kernel: host.kernelRelease,
    accel,
    cgroup,
    versions: {
      hybridbox: typeof __HYBRIDBOX_VERSION__ === 'string' ? __HYBRIDBOX_VERSION__ : null,
      node: process.versions.node,
      crun: host.tools.crun?.version ?? null,
      runc: host.tools.runc?.version ?? null,
      qemu: host.tools.qemu?.version ?? null,
      libvirt: host.tools.libvirtd?.version ?? null,
      podman: await firstLine('podman', ['--version']),
    },
  };
}
