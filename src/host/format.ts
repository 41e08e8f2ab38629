import type { HostInfo } from './types.js';

const GiB = 1024 ** 3;
const gib = (bytes: number): string => `${(bytes / GiB).toFixed(1)} GiB`;
const yesNo = (b: boolean): string => (b ? 'yes' : 'no');

/** The cgroup layout by name first, then where its controllers are. */
function formatCgroups(cg: HostInfo['cgroup']): string {
  const v1 = Object.keys(cg.v1).sort().join(' ') || 'none';
  const v2 = (mount: string | null) => `cgroup2 at ${mount}, controllers ${cg.unifiedControllers.join(' ') || 'none'}`;
  switch (cg.layout) {
    case 'v2':
      return `v2 (unified hierarchy only): ${v2(cg.unifiedMount)}`;
    case 'hybrid':
      return `hybrid (v1 controllers ${v1}; ${v2(cg.unifiedMount)}, hidden from the container runtime)`;
    case 'v1':
      return `v1 (controllers ${v1})`;
  }
}

/** `hybridbox info`: one labelled row per fact, the label column aligned. */
export function formatHostInfo(info: HostInfo): string {
  const tool = (name: keyof HostInfo['tools']): string => {
    const t = info.tools[name];
    return t ? `${t.version} (${t.path})` : 'not installed';
  };
  const rows: [string, string][] = [
    ['KVM', `${yesNo(info.kvm.usable)}: ${info.kvm.reason}`],
    ['cgroups', formatCgroups(info.cgroup)],
    ['crun', tool('crun')],
    ['runc', tool('runc')],
    ['tini', tool('tini')],
    ['qemu', tool('qemu')],
    ['libvirtd', tool('libvirtd')],
    ['virsh', tool('virsh')],
    ['CPUs', `${info.cpus} x ${info.cpuModel}${info.cpuMHz ? ` @ ${info.cpuMHz} MHz` : ''}`],
    ['memory', `${gib(info.memTotalBytes)} total, ${gib(info.memAvailableBytes)} available`],
    ['kernel', `${info.kernelRelease} (${info.arch})`],
    ['init', `${info.init.comm}${info.init.systemd ? '' : ' (not systemd: hybridbox starts its daemons itself)'}`],
    ['features', `user namespaces ${yesNo(info.features.userNamespaces)}, overlayfs ${yesNo(info.features.overlayfs)}, root ${yesNo(info.isRoot)}`],
  ];
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  return rows.map(([k, v]) => k.padEnd(width) + v).join('\n');
}
