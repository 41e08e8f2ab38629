// The library API's public surface: the facade, its services' types, and the option and result types.
export { Hybridbox } from './hybridbox.js';
export type { SandboxService } from './sandboxes.js';
export type { ImageService } from './images.js';
export type { PlacementService } from './placement.js';
export type * from './types.js';
