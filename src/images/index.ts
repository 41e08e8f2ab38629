export { ImageStore, normalizeRef } from './store.js';
export type { Image, ImageConfig } from './store.js';
export { buildBusyboxImage, treeDigest } from './busybox.js';
export { ensureVmDisk, createOverlay } from './vmdisk.js';
