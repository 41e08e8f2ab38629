export { ImageStore, normalizeRef, checkRef, readImageFile, imagePathExists, toImageConfig, toRuntimeConfig } from './store.js';
export type { Image, ImageConfig, ImageDetails, PruneResult } from './store.js';
export { buildBusyboxImage, BASE_EPOCH } from './bases/busybox.js';
export { ensureVmDisk, createOverlay } from './vmdisk.js';
export { resolveUser } from './users.js';
