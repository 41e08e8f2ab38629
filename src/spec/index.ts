// The spec folder's public surface: what a workload may ask for, and the checks that
// turn CLI flags, files or API bodies into a WorkloadSpec the scheduler can trust.
export {
  BACKEND_KINDS,
  ISOLATIONS,
  NETWORKS,
  RESERVED_GUEST_PATHS,
  TRUST_LEVELS,
  WorkloadSpecSchema,
  type BackendKind,
  type Isolation,
  type NetworkMode,
  type Trust,
  type WorkloadSpec,
  type WorkloadSpecInput,
} from './schema.js';
export { validateSpec, validateForHost, type HostContext } from './validate.js';
export { specFromFlags, parseSpecText, loadSpecFile, type CliRunFlags } from './cli.js';
export { parseBytes, parseSize, parseDuration, parseCpus, parseNumber } from './units.js';
