import type { HostInfo } from '../../host/types.js';

export interface GuestParams {
  hostname: string;
  /** Address with prefix for eth0 (`10.89.0.5/24`), or null for no NIC. */
  ip: string | null;
  /** 9p volumes: mount tag, guest path, read-only. */
  volumes: { tag: string; guestPath: string; readOnly: boolean }[];
  /** The agent's port inside the guest. */
  agentPort: string;
  /** Load the initramfs's modules first (a distro kernel without built-in virtio). */
  loadModules: boolean;
  /** Machine-specific extras (MachineLauncher.kernelArgs). */
  extra: string[];
}

/**
 * The guest kernel command line. Under TCG the options that skip slow or flaky calibration
 * matter (measured here: without tsc_early_khz ~40% of microvm boots hung at TSC
 * calibration; cryptomgr.notests saves ~0.4 s on Debian kernels). `panic=-1` with
 * `reboot=t` and QEMU's -no-reboot turns a guest panic, and the agent's power-off, into
 * QEMU exiting.
 */
export function kernelCmdline(host: HostInfo, useKvm: boolean, p: GuestParams): string {
  const args = ['console=ttyS0', 'reboot=t', 'panic=-1', 'quiet', 'loglevel=1', 'i8042.noaux', 'i8042.nokbd', 'cryptomgr.notests', 'no_timer_check', 'tsc=reliable'];
  if (!useKvm && host.cpuMHz) args.push(`tsc_early_khz=${Math.round(host.cpuMHz * 1000)}`);
  args.push(...p.extra);
  // rootrw: the disk is the VM's own qcow2 overlay, its writable layer (the base stays shared).
  args.push(`hbx.hostname=${p.hostname}`, `hbx.agent=${p.agentPort}`, 'hbx.rootrw=1');
  if (p.ip) args.push(`hbx.ip=${p.ip}`);
  for (const v of p.volumes) args.push(`hbx.vol=${v.tag}:${v.guestPath}:${v.readOnly ? 'ro' : 'rw'}`);
  if (p.loadModules) args.push('hbx.modules=1');
  return args.join(' ');
}
