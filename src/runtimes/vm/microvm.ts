import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { HostCapabilityError, RuntimeError, TimeoutError } from '../../errors.js';
import { packageRoot } from '../../util/paths.js';
import { isSameProcessAlive, sleep, within } from '../../util/proc.js';
import { QmpClient } from './qmp.js';
import type { VmFiles } from './files.js';
import type { MachineHandle, MachineLauncher, MachineSpec } from './machine.js';

export const QEMU = 'qemu-system-x86_64';
/** The virtio-serial port name the agent looks for (`hbx.agent=` on the kernel command line). */
export const AGENT_PORT = 'hbx.agent';

/** QEMU's command line for a microvm: direct kernel boot, virtio-mmio devices, QMP. */
export function microvmArgv(spec: MachineSpec, files: VmFiles): string[] {
  // The distro kernel wants ACPI on microvm; ours boots faster without it.
  const acpi = spec.boot.flavour === 'custom' ? 'off' : 'on';
  const argv = [
    QEMU,
    '-M', `microvm,isa-serial=on,rtc=on,acpi=${acpi}`,
    '-accel', spec.useKvm ? 'kvm' : 'tcg',
    ...(spec.useKvm ? ['-cpu', 'host'] : []),
    '-m', String(spec.memoryMiB),
    '-smp', String(spec.vcpus),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    // QEMU's own seccomp filter (as libvirt sets it): a guest that breaks into the device
    // model still cannot exec, gain privileges, or use obsolete and resource-control calls.
    '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    '-kernel', spec.boot.kernel,
    '-initrd', spec.boot.initrd,
    '-append', spec.cmdline,
    // ttyS0: the kernel's console, kept for crash reports. The agent has its own channel.
    '-chardev', `file,id=con,path=${files.console}`,
    '-serial', 'chardev:con',
    // The agent's channel: a named virtio-serial port. (A virtio console drops what the host
    // does not read at once; a second UART is ~15x slower for bulk output.)
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent,path=${files.agentSock},server=on,wait=off`,
    '-device', `virtserialport,chardev=agent,name=${AGENT_PORT}`,
    '-drive', `id=root,file=${files.disk},format=qcow2,if=none,discard=unmap`,
    '-device', 'virtio-blk-device,drive=root',
  ];
  if (spec.tap) {
    argv.push('-netdev', `tap,id=n0,ifname=${spec.tap},script=no,downscript=no`, '-device', `virtio-net-device,netdev=n0,mac=${spec.mac}`);
  }
  for (const v of spec.volumes) {
    argv.push(
      '-fsdev', `local,id=${v.tag},path=${v.hostPath},security_model=none${v.readOnly ? ',readonly=on' : ''}`,
      '-device', `virtio-9p-device,fsdev=${v.tag},mount_tag=${v.tag}`,
    );
  }
  argv.push('-qmp', `unix:${files.qmpSock},server=on,wait=off`, '-pidfile', files.pid);
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
export function qemuPid(id: string, files: VmFiles): number | null {
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
    const child = spawn(shim, ['--pdeathsig', 'KILL', '--', ...argv], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => {
      if (stderr.length < 8192) stderr += c.toString();
    });
    const stopped = new Promise<void>((resolve) => child.on('close', () => resolve()));
    const failed = new Promise<never>((_, reject) => {
      child.on('error', (e) => reject(new RuntimeError(`cannot start ${QEMU}: ${e.message}`)));
      child.on('close', (code) => reject(new RuntimeError(`${QEMU} exited at start (code ${code}): ${stderr.trim().split('\n').pop() ?? ''}`)));
    });
    failed.catch(() => undefined);
    // Up = QEMU has written its pid file and opened the agent socket.
    const deadline = Date.now() + 10_000;
    while (!(existsSync(files.pid) && existsSync(files.agentSock))) {
      await Promise.race([sleep(2), failed]);
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new TimeoutError(`${QEMU} did not start within 10 s; the host may be overloaded`, 10_000);
      }
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

  pid: qemuPid,

  async destroy(id: string, files: VmFiles): Promise<void> {
    const pid = qemuPid(id, files);
    if (pid === null) return;
    await quitOverQmp(files).catch(() => undefined);
    for (let i = 0; i < 100 && qemuPid(id, files) !== null; i++) await sleep(10);
    if (qemuPid(id, files) === null) return;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    for (let i = 0; i < 200 && qemuPid(id, files) !== null; i++) await sleep(10);
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
