import type { BackendKind, WorkloadSpec } from '../spec/schema.js';
import type { HostInfo } from '../host/types.js';

/**
 * What the scheduler may know about a backend: its traits, and whether this host can
 * run it. It never sees the implementation; runtimes/registry.ts pairs the two.
 */
export interface BackendDescriptor {
  kind: BackendKind;
  /** One line for humans: "Linux container (namespaces + cgroups) on crun". */
  summary: string;
  traits: {
    /** Runs its own kernel (a guest), instead of sharing the host's. */
    ownKernel: boolean;
    /** Isolated by hardware virtualization / an emulated machine rather than kernel namespaces. */
    hardwareIsolation: boolean;
    /** Full machine model (PCI, firmware tables) rather than a minimal one. */
    fullMachine: boolean;
    /** Documented start-up estimate before this host has measurements, ms (median, p95). */
    defaultStartupMs: { median: number; p95: number };
    /** The same estimate when the host has no usable KVM (TCG emulation), for backends it matters to. */
    defaultStartupMsTcg?: { median: number; p95: number };
  };
  /** null when this host can run the backend; else why not (one line). */
  unavailableReason(host: HostInfo): string | null;
  /** What else a user should know about this backend on this host (e.g. which guest kernel). */
  hostNotes?(host: HostInfo): Record<string, unknown>;
  /**
   * How each limit the spec sets would be enforced by this backend on this host (for
   * `place`, before anything exists). The sandbox's own list, with devices and interface
   * names resolved, comes from `create` and shows in `inspect`.
   */
  limits(spec: WorkloadSpec, host: HostInfo): LimitEnforcement[];
}

/**
 * One limit of a spec and what enforces it. A limit is never silently dropped: when
 * `mechanism` is null it is not applied and `note` says why; a caveat (cgroup v1's
 * buffered writes) is a `note` beside a mechanism. Both become the sandbox's warnings.
 */
export interface LimitEnforcement {
  /** The spec field, e.g. `resources.deviceWriteBps`. */
  field: string;
  /** The value in words: `10 MiB/s on /dev/vda (254:0)`. */
  value: string;
  /** The cgroup file, QEMU option, libvirt element or qdisc that holds it; null: not applied. */
  mechanism: string | null;
  note?: string;
}

/** The warnings a list of enforcements gives: every limit not applied, every caveat. */
export function limitWarnings(limits: LimitEnforcement[]): string[] {
  return limits
    .filter((l) => l.note !== undefined || l.mechanism === null)
    .map((l) => (l.mechanism === null ? `${l.field} is not applied: ${l.note ?? 'this backend cannot enforce it'}` : `${l.field}: ${l.note}`));
}
