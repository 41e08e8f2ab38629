// The S3 image registry: push and pull OCI images between the local image layout and a
// bucket (docs/registry.md). Nothing here loads the AWS SDK or s3rver until a registry is
// opened, so importing this module costs the CLI nothing.
export {
  parseRegistryUrl,
  resolveRegistryConfig,
  configFilePath,
  DEFAULT_REGISTRY_URL,
  DEFAULT_TRANSFER,
} from './config.js';
export type {
  RegistryUrl,
  RegistryConfig,
  RegistryConfigFile,
  RegistryCredentials,
  TransferSettings,
  EmbeddedServerSettings,
  ResolveOptions,
} from './config.js';
export { openRegistry } from './registry.js';
export type { Registry } from './registry.js';
export type { PushOptions, PushResult } from './push.js';
export type { PullOptions, PullResult } from './pull.js';
export {
  createProgressReporter,
  LineProgress,
  TtyProgress,
  silentProgress,
  summaryLine,
} from './progress.js';
export type { ProgressReporter, ProgressOptions, BlobInfo, BlobKind, TransferPlan, TransferSummary } from './progress.js';
export {
  RegistryError,
  RegistryConfigError,
  RegistryAuthError,
  BucketNotFoundError,
  EndpointUnreachableError,
  RemoteTagNotFoundError,
  RemoteObjectMissingError,
  DigestMismatchError,
  TransferAbortedError,
  RegistryRequestError,
} from './errors.js';
export { blobKey, tagKey, vmDiskPointerKey } from './layout.js';
