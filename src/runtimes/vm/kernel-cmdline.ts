import { RuntimeError, SpecError } from '../../errors.js';
import type { HostInfo } from '../../host/types.js';
import type { GuestLimits } from './limits.js';

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
  /** What the agent applies inside the guest before the workload starts (vm/limits.ts). */
  limits?: GuestLimits;
}

/**
 * x86's COMMAND_LINE_SIZE, the terminating NUL included. The kernel copies the boot
 * loader's command line into a buffer of this size and cuts off the rest without a word,
 * so a line that does not fit loses its last parameters (volumes, QEMU's device list).
 */
export const COMMAND_LINE_SIZE = 2048;
/** The agent's own table of volumes (MAX_VOLS in guest-images/agent/hbx-agent.c). */
export const MAX_GUEST_VOLUMES = 16;

// Bytes that mean nothing to the kernel's parser or the agent's: `"` toggles quoting (and a
// lone one swallows every later parameter, QEMU's virtio-mmio device list included), spaces
// split, `:` separates hbx.vol's fields, and the kernel's isspace() also takes byte 0xA0,
// a common UTF-8 continuation byte. Everything else travels as %XX and the agent decodes it.
const PLAIN = /^[A-Za-z0-9._~/-]$/;

/** Percent-encodes a value for an `hbx.*` parameter (UTF-8 bytes outside [A-Za-z0-9._~/-]). */
export function encodeParamValue(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += byte < 0x80 && PLAIN.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function base(host: HostInfo, useKvm: boolean, p: GuestParams): string[] {
  const args = ['console=ttyS0', 'reboot=t', 'panic=-1', 'quiet', 'loglevel=1', 'i8042.noaux', 'i8042.nokbd', 'cryptomgr.notests', 'no_timer_check', 'tsc=reliable'];
  if (!useKvm && host.cpuMHz) args.push(`tsc_early_khz=${Math.round(host.cpuMHz * 1000)}`);
  args.push(...p.extra);
  // rootrw: the disk is the VM's own qcow2 overlay, its writable layer (the base stays shared).
  args.push(`hbx.hostname=${encodeParamValue(p.hostname)}`, `hbx.agent=${encodeParamValue(p.agentPort)}`, 'hbx.rootrw=1');
  if (p.ip) args.push(`hbx.ip=${encodeParamValue(p.ip)}`);
  if (p.loadModules) args.push('hbx.modules=1');
  const l = p.limits ?? {};
  if (l.pids !== undefined) args.push(`hbx.pids=${l.pids}`);
  if (l.memoryBytes !== undefined) args.push(`hbx.mem=${l.memoryBytes}`);
  if (l.cpuTimeMs !== undefined) args.push(`hbx.cputime=${l.cpuTimeMs}`);
  if (l.fileSizeBytes !== undefined) args.push(`hbx.fsize=${l.fileSizeBytes}`);
  if (l.openFiles !== undefined) args.push(`hbx.nofile=${l.openFiles}`);
  if (l.tmpfsMiB !== undefined) args.push(`hbx.tmpfs=${l.tmpfsMiB}`);
  if (l.readOnlyRoot) args.push('hbx.rootro=1');
  if (l.untrusted) args.push('hbx.untrusted=1');
  return args;
}

const volumeParam = (v: GuestParams['volumes'][number]): string => `hbx.vol=${encodeParamValue(v.tag)}:${encodeParamValue(v.guestPath)}:${v.readOnly ? 'ro' : 'rw'}`;

/**
 * The guest kernel command line. Under TCG the options that skip slow or flaky calibration
 * matter (measured here: without tsc_early_khz ~40% of microvm boots hung at TSC
 * calibration; cryptomgr.notests saves ~0.4 s on Debian kernels). `panic=-1` with
 * `reboot=t` and QEMU's -no-reboot turns a guest panic, and the agent's power-off, into
 * QEMU exiting.
 */
export function kernelCmdline(host: HostInfo, useKvm: boolean, p: GuestParams): string {
  return [...base(host, useKvm, p), ...p.volumes.map(volumeParam)].join(' ');
}

/**
 * kernelCmdline, refused with a SpecError naming the volume that does not fit when the
 * line plus `reservedBytes` (what the machine type appends, e.g. microvm's virtio-mmio
 * device list) would exceed COMMAND_LINE_SIZE, or when there are more volumes than the
 * agent mounts. `field(i)` names volume i as the spec does.
 */
export function fittedKernelCmdline(host: HostInfo, useKvm: boolean, p: GuestParams, reservedBytes: number, field = (i: number) => `volumes[${i}].guestPath`): string {
  if (p.volumes.length > MAX_GUEST_VOLUMES) {
    throw new SpecError('volumes', `${p.volumes.length} volumes`, `allowed for VM sandboxes: at most ${MAX_GUEST_VOLUMES} volumes`);
  }
  const limit = COMMAND_LINE_SIZE - 1 - reservedBytes;
  let line = base(host, useKvm, p).join(' ');
  // Only the volumes' guest paths are open-ended: everything else has a short bound.
  if (line.length > limit) throw new RuntimeError(`the guest kernel command line needs ${line.length + reservedBytes} bytes before any volume; the limit is ${COMMAND_LINE_SIZE - 1}`);
  p.volumes.forEach((v, i) => {
    line += ` ${volumeParam(v)}`;
    if (line.length > limit) {
      throw new SpecError(
        field(i),
        v.guestPath,
        `allowed for VM sandboxes: guest paths that fit the guest kernel's command line of ${COMMAND_LINE_SIZE - 1} bytes; up to this volume it needs ${line.length + reservedBytes} ` +
          '(each byte other than letters, digits and . _ ~ / - counts 3 once encoded)',
      );
    }
  });
  return line;
}
