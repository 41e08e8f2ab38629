// The library API of hybridbox. The CLI is a thin layer over exactly this.
export { Hybridbox } from './api/hybridbox.js';
export type { HybridboxOptions, RegistryTransferOptions, RunOptions, RunResult, ExecResult, SandboxInfo } from './api/hybridbox.js';
export * from './errors.js';
export type { WorkloadSpec, WorkloadSpecInput, BackendKind, Isolation, Trust, NetworkMode } from './spec/schema.js';
export type { Placement } from './scheduler/index.js';
export type { HostInfo } from './host/types.js';
