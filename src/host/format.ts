import type { HostInfo } from './types.js';

const GiB = 1024 ** 3;
const gib = (bytes: number): string => `${(bytes / GiB).toFixed(1)} GiB`;
const yesNo = (b: boolean): string => (b ? 'yes' : 'no');

/** `hybridbox info`: one labelled row per fact, the label column aligned. */
export function formatHostInfo(info: HostInfo): string {
  const { cgroup } = info;
  const v1 = Object.keys(cgroup.v1).sort().join(' ');
  const unified = cgroup.unifiedMount ? `cgroup2 at ${cgroup.unifiedMount}: ${cgroup.unifiedControllers.join(' ') || 'no controllers'}` : '';
  const tool = (name: keyof HostInfo['tools']): string => {
    const t = info.tools[name];
    return t ? `${t.version} (${t.path})` : 'not installed';
  };
  const rows: [string, string][] = [
    ['KVM', `${yesNo(info.kvm.usable)}: ${info.kvm.reason}`],
    ['cgroups', [cgroup.layout, v1 && `v1: ${v1}`, unified].filter(Boolean).join('; ')],
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
