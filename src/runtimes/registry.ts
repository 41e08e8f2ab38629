import type { HostInfo } from '../host/types.js';
import type { BridgeNetwork } from '../network/index.js';
import type { BackendKind } from '../spec/schema.js';
import type { StateStore } from '../store/index.js';
import type { Backend } from './backend.js';
import { ContainerBackend, containerDescriptor, type OciRuntimeName } from './container/backend.js';
import type { BackendDescriptor } from './descriptor.js';
import type { ImageStore } from '../images/index.js';
import { VmBackend } from './vm/backend.js';
import { libvirtDescriptor, microvmDescriptor } from './vm/descriptors.js';
import { libvirtLauncher } from './vm/libvirt.js';
import { microvmLauncher } from './vm/microvm.js';

/** Every backend this version of hybridbox implements. The scheduler sees only these descriptors. */
export const DESCRIPTORS: BackendDescriptor[] = [containerDescriptor, microvmDescriptor, libvirtDescriptor];

export interface BackendAvailability {
  kind: BackendKind;
  summary: string;
  available: boolean;
  reason: string | null;
  [note: string]: unknown;
}

export interface BackendOptions {
  ociRuntime?: OciRuntimeName;
}

/**
 * Builds backends lazily: a CLI call that only needs the container backend never pays
 * for probing or loading the others.
 */
export class BackendRegistry {
  private readonly cache = new Map<BackendKind, Backend>();
  constructor(
    private readonly host: HostInfo,
    private readonly store: StateStore,
    private readonly network: BridgeNetwork,
    private readonly images: ImageStore,
    private readonly options: BackendOptions = {},
  ) {}

  get(kind: BackendKind): Backend {
    let b = this.cache.get(kind);
    if (!b) {
      switch (kind) {
        case 'container':
          b = new ContainerBackend(this.host, this.store, this.network, this.options.ociRuntime);
          break;
        case 'microvm':
          b = new VmBackend(microvmDescriptor, microvmLauncher, this.host, this.store, this.network, this.images);
          break;
        case 'vm':
          b = new VmBackend(libvirtDescriptor, libvirtLauncher, this.host, this.store, this.network, this.images);
          break;
      }
      this.cache.set(kind, b);
    }
    return b;
  }

  descriptors(): BackendDescriptor[] {
    return DESCRIPTORS;
  }

  /** Each backend as this host sees it: available or why not, and what else to know. */
  availability(): BackendAvailability[] {
    return DESCRIPTORS.map((d) => {
      const reason = d.unavailableReason(this.host);
      return { kind: d.kind, summary: d.summary, available: reason === null, reason, ...(d.hostNotes?.(this.host) ?? {}) };
    });
  }

  /**
   * Releases whatever any backend holds for a sandbox id that has no record any more (a
   * crash between steps): which backend made it is unknown, and every teardown is idempotent.
   */
  async teardownOrphan(id: string, dir: string): Promise<void> {
    for (const d of DESCRIPTORS) {
      if (d.unavailableReason(this.host) === null) await this.get(d.kind).teardown({ id, runtime: { dir } });
    }
  }
}
