export type CgroupLayout = 'v1' | 'hybrid' | 'v2';

export interface ToolInfo {
  path: string;
  version: string;
}

/** What hybridbox knows about the machine it runs on. Probed once per process, then passed around. */
export interface HostInfo {
  arch: string;
  kernelRelease: string;
  cpuModel: string;
  cpus: number;
  /** Host CPU frequency in MHz, when the kernel reports it (guest kernels want it under TCG). */
  cpuMHz: number | null;
  memTotalBytes: number;
  memAvailableBytes: number;
  isRoot: boolean;
  kvm: { usable: boolean; reason: string };
  cgroup: {
    layout: CgroupLayout;
    /** v1 controllers with their mount points, e.g. { memory: '/sys/fs/cgroup/memory' }; empty on pure v2. */
    v1: Record<string, string>;
    /** Mount point of cgroup2, if any ('/sys/fs/cgroup' on v2, '/sys/fs/cgroup/unified' on hybrid). */
    unifiedMount: string | null;
    /** Controllers enabled on the cgroup2 hierarchy. */
    unifiedControllers: string[];
  };
  /** PID 1's name, and whether it is systemd (no systemd: hybridbox starts daemons itself). */
  init: { comm: string; systemd: boolean };
  /** Installed tools hybridbox can drive; absent when not installed. */
  tools: {
    crun?: ToolInfo;
    runc?: ToolInfo;
    tini?: ToolInfo;
    qemu?: ToolInfo;
    libvirtd?: ToolInfo;
    virsh?: ToolInfo;
  };
  features: {
    userNamespaces: boolean;
    overlayfs: boolean;
  };
}

/** What is already running, as the scheduler sees it. */
export interface HostLoad {
  running: Record<'container' | 'microvm' | 'vm', number>;
  /** Memory promised to running sandboxes by their limits, in MiB. */
  committedMemoryMiB: number;
}
