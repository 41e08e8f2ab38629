export { BlobStore, MEDIA_TYPES, parseDigest, sha256Hex } from './blobs.js';
export type { Descriptor } from './blobs.js';
export { createLayer, applyLayer, LayerEscapeError, WHITEOUT_PREFIX, OPAQUE_WHITEOUT } from './layer.js';
export type { Layer, CreateLayerOptions, ApplyLayerOptions, LayerMarks } from './layer.js';
export {
  writeImage,
  tagImage,
  untag,
  resolveTag,
  listTags,
  readManifest,
  readConfig,
  REF_NAME_ANNOTATION,
} from './manifest.js';
export type { ImageManifest, ImageConfigBlob, ImageIndex, ImageRuntimeConfig, WriteImageOptions } from './manifest.js';
export { importArchive, exportArchive, normalizeImageName, ArchiveError } from './archive.js';
export type { ArchiveFormat, ArchiveImage, ImportOptions, ImportResult, ExportOptions, ExportResult } from './archive.js';
