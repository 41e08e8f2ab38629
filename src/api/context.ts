// What the API's services share: one state root, its database, the image store, the
// backends. Internal to src/api: callers reach these only through the services.
import { join } from 'node:path';
import type { HostInfo } from '../host/types.js';
import type { ImageStore } from '../images/index.js';
import type { Measurements } from '../measurements/index.js';
import type { Backend } from '../runtimes/backend.js';
import type { BackendRegistry } from '../runtimes/registry.js';
import type { SandboxRecord, StateStore } from '../store/index.js';
import { processStartTime } from '../util/proc.js';

export interface Core {
  readonly root: string;
  readonly host: HostInfo;
  readonly store: StateStore;
  readonly images: ImageStore;
  readonly backends: BackendRegistry;
  readonly measurements: Measurements;
}

export function backendOf(core: Core, rec: { backend: SandboxRecord['backend'] }): Backend {
  return core.backends.get(rec.backend);
}

export function sandboxDir(core: Core, id: string): string {
  return join(core.root, 'sandboxes', id);
}

/** This process as a record's owner: pid plus start time, so a reused pid is not mistaken for it. */
export function thisProcessAsOwner(): { ownerPid: number; ownerStartTime: number | null } {
  return { ownerPid: process.pid, ownerStartTime: processStartTime(process.pid) };
}
