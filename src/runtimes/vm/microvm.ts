import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { HostCapabilityError, RuntimeError, TimeoutError } from '../../errors.js';
import { lastLine, spawnChild } from '../../util/exec.js';
import { packageRoot } from '../../util/paths.js';
import { isSameProcessAlive, pollUntil, within } from '../../util/proc.js';
import { QmpClient } from './qmp.js';
import { cpuQuotaCgroup } from '../cgroups.js';
import type { VmFiles } from './files.js';
import type { MachineHandle, MachineLauncher, MachineSpec } from './machine.js';
import type { DeviceLimitField } from '../../spec/schema.js';
import { QEMU_THROTTLE } from './limits.js';

export const QEMU = 'qemu-system-x86_64';
/** The virtio-serial port name the agent looks for (`hbx.agent=` on the kernel command line). */
export const AGENT_PORT = 'hbx.agent';

/**
 * A value inside a QEMU option string (`-drive file=...,format=...`): QemuOpts splits on
 * commas and reads a doubled one as a comma of the value; no other byte is special to it.
 */
export const qemuOptValue = (v: string): string => v.replaceAll(',', ',,');

// Without ACPI, microvm has 8 virtio-mmio transports on the legacy IRQs 12 down to 5,
// filled from the top in the order the devices are given. The 5th one's IRQ 8 is the
// RTC's (which stays on: off costs ~2.7 s of boot), so the driver bound to it fails
// ("genirq: Flags mismatch irq 8", measured). A device our kernel has no driver for
// (no CONFIG_HW_RANDOM) takes that transport instead; it requests no IRQ.
const LEGACY_TRANSPORTS = 8;
const RTC_TRANSPORT = 4;
const PLACEHOLDER = 'virtio-rng-device';
// What QEMU appends to the command line per device: " virtio_mmio.device=512@0xfeb00e00:12".
const CMDLINE_BYTES_PER_DEVICE = 38;

const acpiOn = (spec: Pick<MachineSpec, 'boot'>): boolean => spec.boot.flavour !== 'custom';

/** The virtio `-device` values in transport order; the placeholder holds the RTC's transport. */
function virtioDevices(spec: Pick<MachineSpec, 'boot' | 'tap' | 'mac' | 'volumes'>): string[] {
  const devices = [
    'virtio-serial-device',
    'virtio-blk-device,drive=root',
    ...(spec.tap ? [`virtio-net-device,netdev=n0,mac=${qemuOptValue(spec.mac ?? '')}`] : []),
    ...spec.volumes.map((v) => `virtio-9p-device,fsdev=${qemuOptValue(v.tag)},mount_tag=${qemuOptValue(v.tag)}`),
  ];
  if (!acpiOn(spec) && devices.length > RTC_TRANSPORT) devices.splice(RTC_TRANSPORT, 0, PLACEHOLDER);
  return devices;
}

/** How many volumes a microvm with these other devices can attach (null: more than hybridbox allows anyway). */
export function microvmMaxVolumes(spec: Pick<MachineSpec, 'boot' | 'tap'>): number | null {
  if (acpiOn(spec)) return null;
  // serial + disk (+ NIC), and the placeholder once a 5th device exists.
  return LEGACY_TRANSPORTS - 1 - (spec.tap ? 3 : 2);
}

/**
 * The bytes QEMU appends to the kernel command line: one virtio_mmio.device= per device
 * without ACPI; with ACPI on, the devices are described there and nothing is appended (measured).
 */
export function microvmCmdlineReserve(spec: Pick<MachineSpec, 'boot' | 'tap' | 'volumes'>): number {
  return acpiOn(spec) ? 0 : virtioDevices({ ...spec, mac: null }).length * CMDLINE_BYTES_PER_DEVICE;
}

/** QEMU's command line for a microvm: direct kernel boot, virtio-mmio devices, QMP. */
export function microvmArgv(spec: MachineSpec, files: VmFiles): string[] {
  // The distro kernel wants ACPI on microvm; ours boots faster without it.
  const acpi = acpiOn(spec) ? 'on' : 'off';
  const o = qemuOptValue;
  const argv = [
    QEMU,
    '-M',
    `microvm,isa-serial=on,rtc=on,acpi=${acpi}`,
    '-accel',
    spec.useKvm ? 'kvm' : 'tcg',
    ...(spec.useKvm ? ['-cpu', 'host'] : []),
    '-m',
    String(spec.memoryMiB),
    '-smp',
    String(spec.vcpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    // QEMU's own seccomp filter (as libvirt sets it): a guest that breaks into the device
    // model still cannot exec, gain privileges, or use obsolete and resource-control calls.
    '-sandbox',
    'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    // -kernel, -initrd, -append and -pidfile take their argument whole (no option parsing).
    '-kernel',
    spec.boot.kernel,
    '-initrd',
    spec.boot.initrd,
    '-append',
    spec.cmdline,
    // ttyS0: the kernel's console, kept for crash reports. The agent has its own channel.
    '-chardev',
    `file,id=con,path=${o(files.console)}`,
    '-serial',
    'chardev:con',
    // The agent's channel: a named virtio-serial port. (A virtio console drops what the host
    // does not read at once; a second UART is ~15x slower for bulk output.)
    '-chardev',
    `socket,id=agent,path=${o(files.agentSock)},server=on,wait=off`,
    '-drive',
    `id=root,file=${o(files.disk)},format=qcow2,if=none,discard=unmap${Object.entries(spec.diskThrottle ?? {})
      .map(([f, rate]) => `,${QEMU_THROTTLE[f as DeviceLimitField]}=${rate}`)
      .join('')}`,
  ];
  if (spec.tap) argv.push('-netdev', `tap,id=n0,ifname=${o(spec.tap)},script=no,downscript=no`);
  for (const v of spec.volumes) {
    argv.push('-fsdev', `local,id=${o(v.tag)},path=${o(v.hostPath)},security_model=none${v.readOnly ? ',readonly=on' : ''}`);
  }
  for (const d of virtioDevices(spec)) {
    argv.push('-device', d);
    if (d === 'virtio-serial-device') argv.push('-device', `virtserialport,chardev=agent,name=${o(AGENT_PORT)}`);
  }
  argv.push('-chardev', `socket,id=qmp,path=${o(files.qmpSock)},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control', '-pidfile', files.pid);
  return argv;
}

async function quitOverQmp(files: VmFiles): Promise<void> {
  const qmp = await QmpClient.connect(files.qmpSock, 1000);
  try {
    await qmp.execute('quit');
  } finally {
    qmp.close();
  }
}

/** The pid in a VM's pid file, if that process is still the QEMU of this sandbox. */
export function qemuPid(_id: string, files: VmFiles): number | null {
  try {
    const pid = Number(readFileSync(files.pid, 'utf8').trim());
    if (!(pid > 0) || !isSameProcessAlive(pid, null)) return null;
    // The pid may have been reused: only trust it while its command line names our directory.
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(files.dir) ? pid : null;
  } catch {
    return null;
  }
}

export const microvmLauncher: MachineLauncher = {
  async launch(spec: MachineSpec, files: VmFiles): Promise<MachineHandle> {
    for (const f of [files.agentSock, files.qmpSock, files.pid]) rmSync(f, { force: true });
    const shim = process.env.HYBRIDBOX_SHIM ?? join(packageRoot(), 'dist', 'hbx-shim');
    if (!existsSync(shim)) throw new HostCapabilityError(`${shim} is missing; run \`npm run setup\` to build it`);
    // Through the shim for its parent-death signal: QEMU never outlives its supervisor.
    const argv = microvmArgv(spec, files);
    // With --cpus, all of QEMU (vCPUs, device emulation, its share of the tap's packet
    // processing) runs under the quota, from its first instruction.
    const quota = spec.cpuQuota !== null ? ['--join-cgroup', cpuQuotaCgroup(spec.id, spec.cpuQuota)] : [];
    const { process: child, done } = spawnChild(shim, [...quota, '--pdeathsig', 'KILL', '--', ...argv]);
    let ended = false;
    const stopped = done.then(
      () => void (ended = true),
      () => void (ended = true),
    );
    // Up = QEMU has written its pid file and opened the agent socket.
    const up = (): boolean => existsSync(files.pid) && existsSync(files.agentSock);
    await pollUntil(() => up() || ended, { timeoutMs: 10_000, intervalMs: 2 });
    if (!up()) {
      if (!ended) {
        child.kill('SIGKILL');
        throw new TimeoutError(`${QEMU} did not start within 10 s; the host may be overloaded`, 10_000);
      }
      const r = await done.catch((e: Error) => {
        throw new RuntimeError(`cannot start ${QEMU}: ${e.message}`);
      });
      throw new RuntimeError(`${QEMU} exited at start (code ${r.code}): ${lastLine(r.stderr)}`);
    }
    return {
      pid: child.pid!,
      stopped,
      kill: async () => {
        // A clean `quit` over QMP first (QEMU flushes and closes its files), SIGKILL if it hangs.
        if (child.exitCode === null && child.signalCode === null) {
          await quitOverQmp(files).catch(() => undefined);
          if (!(await within(stopped, 2000))) child.kill('SIGKILL');
        }
        await stopped;
      },
    };
  },

  // Under TCG, calibrating the local APIC timer costs ~0.2 s of every boot. Our kernel on
  // microvm (ACPI off, power-off by reboot(2)) runs fine without it; the Debian kernel, and
  // ACPI power-off, hang without it (measured), so only there.
  kernelArgs: (boot, useKvm) => (boot.flavour === 'custom' && !useKvm ? ['noapictimer'] : []),

  cmdlineReserve: microvmCmdlineReserve,
  maxVolumes: microvmMaxVolumes,

  pid: qemuPid,

  async destroy(id: string, files: VmFiles): Promise<void> {
    const pid = qemuPid(id, files);
    if (pid === null) return;
    await quitOverQmp(files).catch(() => undefined);
    const gone = (): boolean => qemuPid(id, files) === null;
    if (await pollUntil(gone, { timeoutMs: 1000, intervalMs: 10 })) return;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await pollUntil(gone, { timeoutMs: 2000, intervalMs: 10 });
  },

  describe(spec: MachineSpec, files: VmFiles): Record<string, unknown> {
    return { qemuCommandLine: microvmArgv(spec, files) };
  },

  async status(id: string, files: VmFiles): Promise<Record<string, unknown> | null> {
    if (qemuPid(id, files) === null) return null;
    const qmp = await QmpClient.connect(files.qmpSock, 2000);
    try {
      const status = await qmp.execute<{ status: string; running: boolean }>('query-status');
      const memory = await qmp.execute<{ 'base-memory': number }>('query-memory-size-summary');
      return { status: status.status, running: status.running, guestMemoryBytes: memory['base-memory'] };
    } finally {
      qmp.close();
    }
  },
};
