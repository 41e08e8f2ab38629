import type { DeviceLimitField } from '../../spec/schema.js';
import type { GuestBoot } from './boot.js';
import type { VmFiles } from './files.js';

/** How one VM is to be built: everything the launchers need, decided at create time. */
export interface MachineSpec {
  id: string;
  name: string;
  memoryMiB: number;
  vcpus: number;
  /** CPU quota in CPUs for the VM's host threads, if the spec asked for one. */
  cpuQuota: number | null;
  boot: GuestBoot;
  cmdline: string;
  useKvm: boolean;
  tap: string | null;
  /** The tap's rate each way (`--net-rate`), kept so a launcher that resets the tap can shape it again. */
  netRateKbit?: number | null;
  mac: string | null;
  volumes: { tag: string; hostPath: string; guestPath: string; readOnly: boolean }[];
  /** Caps on the root disk (bytes or operations per second), from the spec's disk limits (vm/limits.ts). */
  diskThrottle?: Partial<Record<DeviceLimitField, number>>;
}

/** What decides a machine's devices: known before anything is created. */
export type MachineLayout = Pick<MachineSpec, 'boot' | 'tap' | 'volumes'>;

/** A running machine, whoever started it (QEMU directly, or libvirtd). */
export interface MachineHandle {
  /** QEMU's pid on this host. */
  pid: number;
  /** For machines launched paused: let the guest run (after the agent's channel is connected). */
  resume?(): Promise<void>;
  /** Resolves when the machine has stopped. */
  stopped: Promise<void>;
  kill(): Promise<void>;
}

/**
 * The one thing that differs between the microVM and the libvirt VM backends: how the
 * machine is described and started. Everything else (agent, sessions, logs, exec, crash
 * detection) is shared by VmBackend.
 */
export interface MachineLauncher {
  /** Starts the machine paused or early enough that the agent's first frame is not missed. */
  launch(spec: MachineSpec, files: VmFiles): Promise<MachineHandle>;
  /** Kernel arguments this machine type wants on top of the common ones. */
  kernelArgs?(boot: GuestBoot, useKvm: boolean): string[];
  /** Bytes the machine itself appends to the kernel command line (microvm lists its virtio-mmio devices there). */
  cmdlineReserve?(layout: MachineLayout): number;
  /** How many volumes fit next to the machine's other devices; null or absent: no limit of its own. */
  maxVolumes?(layout: Pick<MachineLayout, 'boot' | 'tap'>): number | null;
  /** QEMU's pid for this sandbox, or null when it is not running. */
  pid(id: string, files: VmFiles): number | null;
  /** Ends a machine by its files (pid file, domain name) when no handle is at hand. Idempotent. */
  destroy(id: string, files: VmFiles): Promise<void>;
  /** The QEMU command line or domain XML, for `inspect`. */
  describe(spec: MachineSpec, files: VmFiles): Record<string, unknown>;
  /** The live machine's state as its hypervisor reports it (QMP, virsh), or null when stopped. */
  status(id: string, files: VmFiles): Promise<Record<string, unknown> | null>;
}
