// The library API of hybridbox. The CLI is a thin layer over exactly this.
export { Hybridbox } from './api/index.js';
export type * from './api/index.js';
export * from './errors.js';
export { SandboxfileError, BuildError } from './images/build/index.js';
export { ArchiveError } from './images/oci/archive.js';
export * from './registry/errors.js';
export { AgentError, AgentTimeoutError, AgentClosedError } from './runtimes/vm/agent/client.js';
export { TIMEOUT_EXIT_CODE, TIMEOUT_GRACE_MS } from './runtimes/backend.js';
export type { WorkloadSpec, WorkloadSpecInput, BackendKind, Isolation, Trust, NetworkMode } from './spec/schema.js';
export type { Placement } from './scheduler/index.js';
export type { HostInfo } from './host/types.js';
export type { Measurements, BenchResult, StartupResult, IsolationResult, DensityResult, HostDescription } from './measurements/index.js';
export { BOX_DIR, describeRuntime, ensureRuntimeImages, listRuntimes, resolveRuntime, runtimeDefinitions, runtimeImageRef } from './languages/index.js';
export type { RuntimeDefinition, RuntimeInfo, RuntimeImageResult } from './languages/index.js';
