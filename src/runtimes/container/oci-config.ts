import type { Image } from '../../images/index.js';
import type { WorkloadSpec } from '../../spec/schema.js';
import type { CgroupCaps } from '../cgroups.js';
import type { BlockIOThrottles } from './limits.js';
import { workloadProcess } from '../workload.js';
import { seccompProfile } from './seccomp.js';

/**
 * Where the init (tini) is bind-mounted inside every container: under the /dev tmpfs that
 * the runtime creates, so the mount target never has to be written into the root filesystem.
 */
export const INIT_PATH = '/dev/.hbx/init';

export interface OciInputs {
  id: string;
  hostname: string;
  spec: WorkloadSpec;
  image: Image;
  /** The mount point of the per-sandbox overlay (absolute). */
  rootfs: string;
  cgroupsPath: string;
  initBinary: string;
  /** Network namespace to join (bridge mode); a fresh one with only loopback otherwise. */
  netnsPath: string | null;
  /** Host uid/gid that container root maps to (user namespace), or null for none. */
  userns: { hostId: number; size: number } | null;
  cgroupCaps: CgroupCaps;
  /** The disk limits the plan applies (container/limits.ts: ociThrottles); none: no throttles. */
  blockIOThrottles?: BlockIOThrottles;
}

const DEFAULT_CAPS = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_RAW',
  'CAP_SYS_CHROOT',
  'CAP_AUDIT_WRITE',
  'CAP_SETFCAP',
];
const UNTRUSTED_CAPS = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID', 'CAP_NET_BIND_SERVICE'];

const MASKED_PATHS = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
  '/sys/kernel/debug',
];
const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

// Character devices a process may use; everything else is denied by the devices cgroup.
const ALLOWED_DEVICES: [number, number][] = [
  [1, 3],
  [1, 5],
  [1, 7],
  [1, 8],
  [1, 9],
  [5, 0],
  [5, 1],
  [5, 2],
  [136, -1],
];

/** The private tmpfs sizes when the spec sets none (resources.tmpfsMiB sets both). */
export const DEFAULT_TMP_MIB = 256;
export const DEFAULT_SHM_MIB = 64;
/** RLIMIT_NOFILE when the spec sets none. */
export const DEFAULT_OPEN_FILES = 1024;

/** process.rlimits: soft = hard, so the workload cannot raise its own. */
function rlimits(spec: WorkloadSpec): { type: string; hard: number; soft: number }[] {
  const nofile = spec.resources.openFiles ?? DEFAULT_OPEN_FILES;
  const out = [{ type: 'RLIMIT_NOFILE', hard: nofile, soft: nofile }];
  const fsize = spec.resources.fileSizeBytes;
  if (fsize !== undefined) out.push({ type: 'RLIMIT_FSIZE', hard: fsize, soft: fsize });
  return out;
}

/** Builds an OCI runtime-spec config.json for one sandbox. Pure apart from reading the image's passwd. */
export function buildOciConfig(i: OciInputs): Record<string, unknown> {
  const { spec, image } = i;
  const untrusted = spec.trust === 'untrusted';
  const proc = workloadProcess(spec, image, i.hostname);
  const caps = untrusted ? UNTRUSTED_CAPS : DEFAULT_CAPS;
  const r = spec.resources;

  const mounts: Record<string, unknown>[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', `size=${(r.tmpfsMiB ?? DEFAULT_SHM_MIB) * 1024}k`] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    // A fresh sysfs shows only the sandbox's own network devices. In a user namespace it can
    // be mounted only for a netns that namespace owns (network none: the runtime makes the
    // netns inside it); a netns made beforehand (the bridge) leaves the read-only host /sys.
    untrusted && i.netnsPath
      ? { destination: '/sys', type: 'none', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] }
      : { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
    { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', `size=${(r.tmpfsMiB ?? DEFAULT_TMP_MIB) * 1024}k`] },
    { destination: INIT_PATH, type: 'bind', source: i.initBinary, options: ['bind', 'ro', 'nosuid', 'nodev'] },
    ...spec.volumes.map((v) => ({
      destination: v.guestPath,
      type: 'bind',
      source: v.hostPath,
      options: ['rbind', 'nosuid', 'nodev', v.readOnly ? 'ro' : 'rw'],
    })),
  ];

  const namespaces: Record<string, string>[] = [
    { type: 'pid' },
    { type: 'mount' },
    { type: 'uts' },
    { type: 'ipc' },
    { type: 'cgroup' },
    i.netnsPath ? { type: 'network', path: i.netnsPath } : { type: 'network' },
  ];
  if (i.userns) namespaces.push({ type: 'user' });

  const resources: Record<string, unknown> = {
    devices: [{ allow: false, access: 'rwm' }, ...ALLOWED_DEVICES.map(([major, minor]) => ({ allow: true, type: 'c', major, ...(minor >= 0 ? { minor } : {}), access: 'rwm' }))],
  };
  if (r.memoryMiB !== undefined) {
    const bytes = r.memoryMiB * 1024 * 1024;
    // swap = limit: the workload cannot escape its memory limit by swapping.
    resources.memory = { limit: bytes, ...(i.cgroupCaps.memorySwap ? { swap: bytes } : {}) };
  }
  if (r.cpus !== undefined) resources.cpu = { quota: Math.round(r.cpus * 100_000), period: 100_000 };
  if (r.pids !== undefined) resources.pids = { limit: r.pids };
  const blockIO = { ...(r.ioWeight !== undefined && i.cgroupCaps.ioWeight ? { weight: r.ioWeight } : {}), ...i.blockIOThrottles };
  if (Object.keys(blockIO).length > 0) resources.blockIO = blockIO;

  return {
    ociVersion: '1.0.2',
    annotations: { 'org.hybridbox.sandbox': i.id },
    process: {
      terminal: false,
      user: { uid: proc.uid, gid: proc.gid },
      // tini as PID 1: forwards signals to the workload's process group and reaps zombies;
      // -p KILL ends the sandbox if the runtime that watches it dies.
      args: [INIT_PATH, '-g', '-p', 'SIGKILL', '--', ...proc.argv],
      env: Object.entries(proc.env).map(([k, v]) => `${k}=${v}`),
      cwd: proc.workdir,
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      noNewPrivileges: true,
      rlimits: rlimits(spec),
    },
    // The overlay stays mounted beneath: a read-only root leaves its upper directory empty.
    root: { path: i.rootfs, readonly: spec.readOnlyRoot },
    hostname: i.hostname,
    mounts,
    linux: {
      namespaces,
      ...(i.userns
        ? {
            uidMappings: [{ containerID: 0, hostID: i.userns.hostId, size: i.userns.size }],
            gidMappings: [{ containerID: 0, hostID: i.userns.hostId, size: i.userns.size }],
          }
        : {}),
      cgroupsPath: i.cgroupsPath,
      // Unprivileged ICMP sockets, so `ping` works without CAP_NET_RAW. A joined (bridge)
      // netns belongs to the host's user namespace and gets this from network/ instead.
      ...(i.netnsPath ? {} : { sysctl: { 'net.ipv4.ping_group_range': i.userns ? `0 ${i.userns.size - 1}` : '0 2147483647' } }),
      resources,
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
      seccomp: seccompProfile(spec.trust),
    },
  };
}
