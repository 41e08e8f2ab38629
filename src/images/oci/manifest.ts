import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { MEDIA_TYPES, parseDigest, type BlobStore, type Descriptor } from './blobs.js';
import type { Layer } from './layer.js';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

export interface ImageRuntimeConfig {
  Cmd?: string[];
  Entrypoint?: string[];
  Env?: string[];
  WorkingDir?: string;
  User?: string;
  Labels?: Record<string, string>;
}

export interface ImageConfigBlob {
  created?: string;
  architecture: string;
  os: string;
  config: ImageRuntimeConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType: typeof MEDIA_TYPES.manifest;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export interface WriteImageOptions {
  layers: Layer[];
  config: ImageRuntimeConfig;
  /** RFC 3339; defaults to the epoch so identical inputs give identical image digests. */
  created?: string;
}

export async function writeImage(store: BlobStore, opts: WriteImageOptions): Promise<Descriptor> {
  const runtime: ImageRuntimeConfig = {};
  // Absent keys are dropped rather than written as null: some tools reject null arrays.
  for (const key of ['Cmd', 'Entrypoint', 'Env', 'WorkingDir', 'User', 'Labels'] as const) {
    if (opts.config[key] !== undefined) (runtime as Record<string, unknown>)[key] = opts.config[key];
  }
  const config: ImageConfigBlob = {
    created: opts.created ?? new Date(0).toISOString(),
    architecture: 'amd64',
    os: 'linux',
    config: runtime,
    rootfs: { type: 'layers', diff_ids: opts.layers.map((l) => l.diffId) },
  };
  const configDesc = await store.putBytes(JSON.stringify(config), MEDIA_TYPES.config);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.manifest,
    config: configDesc,
    layers: opts.layers.map((l) => ({ mediaType: l.descriptor.mediaType, digest: l.descriptor.digest, size: l.descriptor.size })),
  };
  return store.putBytes(JSON.stringify(manifest), MEDIA_TYPES.manifest);
}

export async function readManifest(store: BlobStore, ref: Descriptor | string): Promise<ImageManifest> {
  const digest = typeof ref === 'string' ? ref : ref.digest;
  const m = await store.readJson<ImageManifest>(digest);
  if (m.schemaVersion !== 2 || !m.config || !Array.isArray(m.layers)) throw new Error(`${digest} is not an OCI image manifest`);
  return m;
}

export async function readConfig(store: BlobStore, manifest: ImageManifest): Promise<ImageConfigBlob> {
  return store.readJson<ImageConfigBlob>(manifest.config.digest);
}

// OCI ref.name grammar (image-layout spec, "annotations").
const REF_RE = /^[A-Za-z0-9]+(?:(?:[-._:@+]|--|\/)[A-Za-z0-9]+)*$/;

export function checkRef(ref: string): void {
  if (!REF_RE.test(ref)) throw new Error(`invalid OCI ref name: ${JSON.stringify(ref)}`);
}

async function readIndex(store: BlobStore): Promise<ImageIndex> {
  return JSON.parse(await readFile(store.indexPath, 'utf8')) as ImageIndex;
}

// index.json is read-modify-written; without this, two tags in one process could lose one.
const indexLocks = new Map<string, Promise<unknown>>();

async function updateIndex(store: BlobStore, mutate: (index: ImageIndex) => void): Promise<void> {
  const key = store.indexPath;
  const prev = indexLocks.get(key) ?? Promise.resolve();
  const run = prev
    .catch(() => {})
    .then(async () => {
      const index = await readIndex(store);
      mutate(index);
      const tmp = join(store.layoutDir, `.index-${process.pid}-${randomBytes(6).toString('hex')}.json`);
      try {
        await writeFile(tmp, JSON.stringify(index));
        // rename() is atomic: readers see the old index or the new one, never a torn write.
        await rename(tmp, key);
      } catch (err) {
        await unlink(tmp).catch(() => {});
        throw err;
      }
    });
  indexLocks.set(key, run);
  try {
    await run;
  } finally {
    if (indexLocks.get(key) === run) indexLocks.delete(key);
  }
}

const refOf = (d: Descriptor) => d.annotations?.[REF_NAME_ANNOTATION];

export async function tagImage(store: BlobStore, ref: string, manifest: Descriptor): Promise<void> {
  checkRef(ref);
  parseDigest(manifest.digest);
  // Tagging a manifest that is not in the store would leave index.json pointing at nothing.
  if (!(await store.has(manifest.digest))) throw new Error(`manifest ${manifest.digest} is not in the store`);
  await updateIndex(store, (index) => {
    index.manifests = index.manifests.filter((d) => refOf(d) !== ref);
    index.manifests.push({
      mediaType: manifest.mediaType,
      digest: manifest.digest,
      size: manifest.size,
      annotations: { [REF_NAME_ANNOTATION]: ref },
    });
  });
}

/** Returns whether the tag existed. Blobs are left in place; garbage collection is separate. */
export async function untag(store: BlobStore, ref: string): Promise<boolean> {
  let found = false;
  await updateIndex(store, (index) => {
    const before = index.manifests.length;
    index.manifests = index.manifests.filter((d) => refOf(d) !== ref);
    found = index.manifests.length !== before;
  });
  return found;
}

export async function resolveTag(store: BlobStore, ref: string): Promise<Descriptor | undefined> {
  const index = await readIndex(store);
  return index.manifests.find((d) => refOf(d) === ref);
}

export async function listTags(store: BlobStore): Promise<{ ref: string; descriptor: Descriptor }[]> {
  const index = await readIndex(store);
  return index.manifests.flatMap((d) => {
    const ref = refOf(d);
    return ref === undefined ? [] : [{ ref, descriptor: d }];
  });
}
