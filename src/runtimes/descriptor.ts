import type { BackendKind } from '../spec/schema.js';
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
}
