// Language runtimes: definitions (one small file each under definitions/), their images
// (debian:bookworm plus packages, built by the image layer's Debian recipe) and what a caller
// such as the HTTP service is told about them. Sits beside the CLI, above the API.
export { BOX_DIR, type RuntimeDefinition, type RuntimeInfo } from './types.js';
export { checkDefinitions, resolveRuntime, runtimeDefinitions, runtimeImageRef } from './registry.js';
export { describeRuntime, ensureRuntimeImages, listRuntimes, upstreamVersion, type RuntimeImageResult } from './images.js';
