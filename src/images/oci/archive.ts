// Image import and export as single files, for interop with other tools:
//
// - OCI archive: a tar (plain or gzip) of an OCI image layout (oci-layout, index.json,
//   blobs/sha256/...), as `skopeo copy ... oci-archive:`, `buildah push`, `podman save
//   --format oci-archive` write it.
// - docker-archive: `docker save` / `podman save` format (manifest.json with Config,
//   RepoTags and Layers, which are uncompressed tars).
//
// Import reads the archive once, streaming every file into a staging blob store inside the
// layout (hashed while copied, never held in memory), checks every digest the archive
// claims, then links the blobs an image needs into the store and writes the tags last. A bad
// archive leaves no tag and no blob in the store; the staging area is always removed.

import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { link, mkdtemp, open, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable, pipeline as streamPipeline } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Header, Parser, type ReadEntry } from 'tar';
import { HybridboxError, ImageNotFoundError } from '../../errors.js';
import { BlobStore, MEDIA_TYPES, sha256Hex, type Descriptor } from './blobs.js';
import { REF_NAME_ANNOTATION, checkRef, listTags, readConfig, readManifest, resolveTag, tagImage, type ImageConfigBlob, type ImageIndex, type ImageManifest } from './manifest.js';

/** An archive that cannot be read, is not an image archive, or does not match its own digests. */
export class ArchiveError extends HybridboxError {}

export type ArchiveFormat = 'oci' | 'docker';

export interface ArchiveImage {
  ref: string;
  /** The OCI image manifest in the store (after import) or in the archive (after export). */
  manifest: Descriptor;
}

export interface ImportOptions {
  /** Name for the image, replacing the archive's own names; required when the archive has none. */
  ref?: string;
}

export interface ImportResult {
  format: ArchiveFormat;
  images: ArchiveImage[];
}

export interface ExportOptions {
  /** `oci` (default): an OCI image layout in a tar. `docker`: `docker load` format. */
  format?: ArchiveFormat;
}

export interface ExportResult {
  format: ArchiveFormat;
  images: ArchiveImage[];
  /** Size of the archive written. */
  bytes: number;
}

const DOCKER_TYPES = {
  manifest: 'application/vnd.docker.distribution.manifest.v2+json',
  list: 'application/vnd.docker.distribution.manifest.list.v2+json',
  config: 'application/vnd.docker.container.image.v1+json',
  layerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  layerTar: 'application/vnd.docker.image.rootfs.diff.tar',
} as const;

const INDEX_TYPES = new Set<string>([MEDIA_TYPES.index, DOCKER_TYPES.list]);
const MANIFEST_TYPES = new Set<string>([MEDIA_TYPES.manifest, DOCKER_TYPES.manifest]);
const CONFIG_TYPES = new Set<string>([MEDIA_TYPES.config, DOCKER_TYPES.config]);
/** Layer media types applyLayer can unpack, and the OCI type each is stored as. */
const LAYER_TYPES: Record<string, string> = {
  [MEDIA_TYPES.layerGzip]: MEDIA_TYPES.layerGzip,
  [MEDIA_TYPES.layerTar]: MEDIA_TYPES.layerTar,
  [DOCKER_TYPES.layerGzip]: MEDIA_TYPES.layerGzip,
  [DOCKER_TYPES.layerTar]: MEDIA_TYPES.layerTar,
};

/** containerd and `docker save` (25+) put the full image name here; ref.name then holds only the tag. */
const CONTAINERD_NAME_ANNOTATION = 'io.containerd.image.name';
const BLOCK = 512;
/** Manifests, configs and index files are read into memory; nothing legitimate comes close. */
const MAX_METADATA_BYTES = 16 << 20;
const BLOB_PATH_RE = /^blobs\/sha256\/([a-f0-9]{64})$/;

type Platform = { os?: string; architecture?: string; variant?: string };
type PlatformDescriptor = Descriptor & { platform?: Platform };

// ---------------------------------------------------------------------------
// names

/**
 * An image name from an archive (or typed by the user) as a local ref. Docker Hub's implicit
 * prefixes and podman's `localhost/` are dropped, so the same image saved by docker, podman
 * or skopeo gets the same local name, and a missing tag becomes `latest`:
 * `docker.io/library/busybox` → `busybox:latest`, `docker.io/me/app:1` → `me/app:1`,
 * `localhost/app:1` → `app:1`. Other registries stay part of the name (`quay.io/x/y:2`).
 */
export function normalizeImageName(name: string): string {
  let n = name.trim();
  for (const prefix of ['docker.io/library/', 'index.docker.io/library/', 'docker.io/', 'index.docker.io/', 'localhost/']) {
    if (n.startsWith(prefix)) {
      n = n.slice(prefix.length);
      break;
    }
  }
  const slash = n.lastIndexOf('/');
  return n.includes('@') || n.indexOf(':', slash + 1) !== -1 ? n : `${n}:latest`;
}

/**
 * The image name a descriptor in index.json carries. A bare ref.name such as `latest` or
 * `v1.0` is a tag in the OCI layout convention (umoci, containerd, the image-spec's own
 * examples), not a name, so it names nothing on its own.
 */
function annotatedName(d: Descriptor): string | undefined {
  const full = d.annotations?.[CONTAINERD_NAME_ANNOTATION];
  if (full) return full;
  const ref = d.annotations?.[REF_NAME_ANNOTATION];
  return ref && /[:/@]/.test(ref) ? ref : undefined;
}

function validRef(ref: string): boolean {
  try {
    checkRef(ref);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// small helpers

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function readHead(path: string, bytes: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await handle.read(buf, 0, bytes, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

const MAGIC: [string, number[]][] = [
  ['gzip', [0x1f, 0x8b]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['bzip2', [0x42, 0x5a, 0x68]],
];

function compressionOf(head: Buffer): string | undefined {
  return MAGIC.find(([, bytes]) => bytes.every((b, i) => head[i] === b))?.[0];
}

function looksLikeTar(head: Buffer): boolean {
  if (head.length < BLOCK) return false;
  try {
    const h = new Header(head.subarray(0, BLOCK));
    return h.nullBlock || h.cksumValid;
  } catch {
    return false;
  }
}

/** A file's content, or its gunzipped content; an error in either stream ends the iteration. */
function readBlob(path: string, gunzip: boolean): AsyncIterable<Buffer> {
  return gunzip ? streamPipeline(createReadStream(path), createGunzip(), () => {}) : createReadStream(path);
}

/** sha256 and length of a file's content, or of its gunzipped content; streamed. */
async function contentDigest(path: string, gunzip: boolean): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of readBlob(path, gunzip)) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

/** The hex of a well-formed sha256 digest; anything else is the archive's fault. */
function digestHex(fail: (msg: string) => ArchiveError, digest: unknown, what: string): string {
  if (typeof digest !== 'string') throw fail(`${what} has no digest`);
  const m = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/.exec(digest);
  if (!m) throw fail(`${what} has an invalid digest ${JSON.stringify(digest)}`);
  if (m[1] !== 'sha256') throw fail(`${what} uses digest algorithm ${m[1]}; only sha256 is supported`);
  if (!/^[a-f0-9]{64}$/.test(m[2]!)) throw fail(`${what} has an invalid digest ${JSON.stringify(digest)}`);
  return m[2]!;
}

// ---------------------------------------------------------------------------
// reading an archive into a staging store

interface Staged {
  digest: string;
  size: number;
}

/** What an archive held: each regular file staged by content, plus its links. */
class ArchiveContents {
  readonly files = new Map<string, Staged>();
  /** Symbolic and hard links, already resolved to archive-relative paths. */
  readonly links = new Map<string, string>();

  constructor(
    readonly file: string,
    readonly stage: BlobStore,
  ) {}

  fail = (msg: string): ArchiveError => new ArchiveError(`archive ${this.file}: ${msg}`);

  find(path: string): Staged | undefined {
    let p = path;
    for (let hops = 0; hops < 32; hops++) {
      const staged = this.files.get(p);
      if (staged) return staged;
      const next = this.links.get(p);
      if (next === undefined) return undefined;
      p = next;
    }
    throw this.fail(`links starting at "${path}" form a loop`);
  }

  has(path: string): boolean {
    return this.find(path) !== undefined;
  }

  async parse<T>(staged: Staged, what: string): Promise<T> {
    if (staged.size > MAX_METADATA_BYTES) throw this.fail(`${what} is ${staged.size} bytes, too large for image metadata`);
    const text = await readFile(this.stage.path(staged.digest), 'utf8');
    try {
      return JSON.parse(text) as T;
    } catch {
      throw this.fail(`${what} is not valid JSON`);
    }
  }

  async json<T>(path: string): Promise<T> {
    const staged = this.find(path);
    if (!staged) throw this.fail(`${path} is missing`);
    return this.parse<T>(staged, path);
  }

  /** The staged blob a descriptor names, after checking the archive's claims about it. */
  blob(d: Descriptor, what: string): Staged {
    const hex = digestHex(this.fail, d.digest, what);
    const staged = this.find(`blobs/sha256/${hex}`);
    if (!staged) throw this.fail(`${what} ${d.digest} is missing from the archive`);
    if (staged.digest !== d.digest) throw this.fail(`${what} ${d.digest} is corrupt: its content hashes to ${staged.digest}`);
    if (staged.size !== d.size) throw this.fail(`${what} ${d.digest} is ${staged.size} bytes but its descriptor says ${d.size}`);
    return staged;
  }
}

/** An entry's path relative to the archive root; anything that could point outside it is refused. */
function entryPath(fail: (msg: string) => ArchiveError, raw: string): string {
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (raw.startsWith('/') || parts.includes('..')) throw fail(`entry "${raw}" points outside the archive; refusing it`);
  return parts.join('/');
}

/** A symlink's target resolved against the link's directory; it must stay inside the archive. */
function linkTarget(fail: (msg: string) => ArchiveError, path: string, target: string): string {
  if (target.startsWith('/')) throw fail(`link "${path}" points outside the archive (${target}); refusing it`);
  const parts = path.split('/').slice(0, -1);
  for (const p of target.split('/')) {
    if (p === '' || p === '.') continue;
    if (p !== '..') parts.push(p);
    else if (parts.pop() === undefined) throw fail(`link "${path}" points outside the archive (${target}); refusing it`);
  }
  return parts.join('/');
}

/**
 * Reads the whole archive once. Regular files are streamed into `stage` (so a layer of any
 * size passes through a bounded buffer); `blobs/sha256/<hex>` files are checked against their
 * name as soon as they are copied.
 */
async function stageArchive(file: string, stage: BlobStore): Promise<ArchiveContents> {
  const contents = new ArchiveContents(file, stage);
  const { fail } = contents;
  let head: Buffer;
  try {
    head = await readHead(file, BLOCK);
  } catch (err) {
    throw new ArchiveError(`cannot read archive ${file}: ${errorMessage(err)}`, { cause: err });
  }
  if (head.length === 0) throw fail('is empty, not a tar archive');
  const compression = compressionOf(head);
  if (compression !== undefined && compression !== 'gzip') {
    throw fail(`is ${compression}-compressed; only plain or gzip-compressed tar archives can be imported (decompress it first)`);
  }
  if (compression === undefined && !looksLikeTar(head)) throw fail('is not a tar archive');

  const seen = new Set<string>();
  const copying = new Set<ReadEntry>();
  const onEntry = (entry: ReadEntry): Promise<void> | undefined => {
    const path = entryPath(fail, entry.path);
    if (entry.type === 'Directory' || path === '') return void entry.resume();
    if (seen.has(path)) throw fail(`entry "${path}" appears twice`);
    seen.add(path);
    switch (entry.type) {
      case 'File':
      case 'OldFile':
      case 'ContiguousFile':
        copying.add(entry);
        return stage
          .putStream(Readable.from(entry))
          .then(({ digest, size }) => {
            const named = BLOB_PATH_RE.exec(path);
            if (named && digest !== `sha256:${named[1]}`) throw fail(`blob ${path} is corrupt: its content hashes to ${digest}`);
            contents.files.set(path, { digest, size });
          })
          .finally(() => copying.delete(entry));
      case 'SymbolicLink':
        contents.links.set(path, linkTarget(fail, path, entry.linkpath ?? ''));
        return void entry.resume();
      case 'Link':
        contents.links.set(path, entryPath(fail, entry.linkpath ?? ''));
        return void entry.resume();
      default:
        // Devices and FIFOs are never part of an image archive; nothing refers to them.
        return void entry.resume();
    }
  };

  await new Promise<void>((resolve, reject) => {
    let failed = false;
    const pending = new Set<Promise<void>>();
    const input = createReadStream(file);
    const gunzip = compression === 'gzip' ? createGunzip() : undefined;
    const parser = new Parser({ strict: true, brotli: false, zstd: false });
    const abort = (err: unknown) => {
      if (failed) return;
      failed = true;
      input.destroy();
      gunzip?.destroy();
      // Copies in flight are ended and awaited, so none writes into the staging area after it is removed.
      for (const entry of copying) entry.destroy();
      const error = err instanceof HybridboxError ? err : new ArchiveError(fail(errorMessage(err)).message, { cause: err });
      void Promise.allSettled([...pending]).then(() => reject(error));
    };
    parser.on('entry', (entry: ReadEntry) => {
      if (failed) return void entry.resume();
      try {
        const copy = onEntry(entry);
        if (copy) {
          const tracked: Promise<void> = copy.catch(abort).finally(() => pending.delete(tracked));
          pending.add(tracked);
        }
      } catch (err) {
        entry.resume();
        abort(err);
      }
    });
    parser.on('error', (err: Error) => abort(fail(`is not a valid tar archive (${err.message})`)));
    gunzip?.on('error', (err) => abort(fail(`is not a valid gzip stream (${err.message})`)));
    input.on('error', (err) => abort(new ArchiveError(`cannot read archive ${file}: ${err.message}`, { cause: err })));
    parser.on('end', () => {
      void Promise.all([...pending]).then(() => {
        if (!failed) resolve();
      });
    });
    const source: NodeJS.ReadableStream = gunzip ? input.pipe(gunzip) : input;
    source.pipe(parser as unknown as NodeJS.WritableStream);
  });
  return contents;
}

// ---------------------------------------------------------------------------
// finding the images in what was staged

interface FoundImage {
  names: string[];
  /** The OCI image manifest as it will be in the store. */
  manifest: Descriptor;
  /** Staged blobs the image needs (config, layers and, when kept as is, the manifest). */
  blobs: string[];
  /** A manifest written by the import (converted from docker media types); absent when kept byte for byte. */
  manifestBytes?: Buffer;
}

function checkConfig(a: ArchiveContents, config: ImageConfigBlob, what: string): string[] {
  const diffIds = config?.rootfs?.diff_ids;
  if (!Array.isArray(diffIds)) throw a.fail(`${what} is not an image config (no rootfs.diff_ids)`);
  const os = config.os ?? 'linux';
  const arch = config.architecture ?? 'amd64';
  if (os !== 'linux' || arch !== 'amd64') throw a.fail(`${what} is a ${os}/${arch} image; only linux/amd64 images can be imported`);
  for (const id of diffIds) digestHex(a.fail, id, `${what} rootfs.diff_ids entry`);
  return diffIds;
}

/** An OCI manifest for a config and layers: how docker-typed images are stored. */
function convertedImage(config: Staged, layers: Descriptor[]): Pick<FoundImage, 'manifest' | 'blobs' | 'manifestBytes'> {
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.manifest,
    config: { mediaType: MEDIA_TYPES.config, digest: config.digest, size: config.size },
    layers,
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  return {
    manifest: { mediaType: MEDIA_TYPES.manifest, digest: `sha256:${sha256Hex(manifestBytes)}`, size: manifestBytes.length },
    blobs: [config.digest, ...layers.map((l) => l.digest)],
    manifestBytes,
  };
}

function describePlatform(d: PlatformDescriptor): string {
  const p = d.platform;
  return p ? [p.os, p.architecture, p.variant].filter(Boolean).join('/') : 'unspecified';
}

/** The linux/amd64 entry of an index, or its only entry that names no platform. */
function selectPlatform(a: ArchiveContents, descs: PlatformDescriptor[], where: string): PlatformDescriptor {
  const distinct = [...new Map(descs.map((d) => [d.digest, d])).values()];
  const amd64 = distinct.find((d) => d.platform?.os === 'linux' && d.platform.architecture === 'amd64');
  if (amd64) return amd64;
  const unspecified = distinct.filter((d) => !d.platform);
  if (unspecified.length === 1) return unspecified[0]!;
  if (unspecified.length > 1) throw a.fail(`${where} lists ${unspecified.length} different images under one name without saying which platform each is for`);
  const platforms = [...new Set(distinct.map(describePlatform))].join(', ');
  throw a.fail(`${where} has no linux/amd64 image (it has ${platforms || 'none'}); only linux/amd64 images can be imported`);
}

async function ociImage(a: ArchiveContents, d: PlatformDescriptor, where: string, depth = 0): Promise<Omit<FoundImage, 'names'>> {
  if (INDEX_TYPES.has(d.mediaType)) {
    if (depth >= 4) throw a.fail(`image indexes are nested more than 4 deep at ${d.digest}`);
    const index = await a.parse<ImageIndex>(a.blob(d, 'image index'), `image index ${d.digest}`);
    if (!Array.isArray(index.manifests)) throw a.fail(`image index ${d.digest} has no manifests list`);
    const picked = selectPlatform(a, index.manifests, `image index ${d.digest}`);
    return ociImage(a, picked, `image index ${d.digest}`, depth + 1);
  }
  if (!MANIFEST_TYPES.has(d.mediaType)) {
    throw a.fail(`${where} points at ${d.digest} of media type "${d.mediaType}", which is neither an image manifest nor an index`);
  }
  const staged = a.blob(d, 'manifest');
  const m = await a.parse<ImageManifest>(staged, `manifest ${d.digest}`);
  if (m.schemaVersion !== 2 || !m.config || !Array.isArray(m.layers)) throw a.fail(`manifest ${d.digest} is not a schema 2 image manifest`);
  if (m.mediaType !== undefined && m.mediaType !== d.mediaType) {
    throw a.fail(`manifest ${d.digest} says it is "${m.mediaType}" but ${where} says "${d.mediaType}"`);
  }
  if (!CONFIG_TYPES.has(m.config.mediaType)) throw a.fail(`config ${m.config.digest} has unsupported media type "${m.config.mediaType}"`);
  const config = a.blob(m.config, 'config');
  const diffIds = checkConfig(a, await a.parse<ImageConfigBlob>(config, `config ${m.config.digest}`), `config ${m.config.digest}`);
  if (diffIds.length !== m.layers.length) {
    throw a.fail(`config ${m.config.digest} lists ${diffIds.length} layers but manifest ${d.digest} has ${m.layers.length}`);
  }
  const layers = m.layers.map((l): Descriptor => {
    const mediaType = LAYER_TYPES[l.mediaType];
    if (!mediaType) {
      const hint = l.mediaType.endsWith('+zstd') ? ' (zstd layers cannot be unpacked here; save the image with gzip layers)' : '';
      throw a.fail(`layer ${l.digest} has unsupported media type "${l.mediaType}"${hint}`);
    }
    a.blob(l, 'layer');
    return { mediaType, digest: l.digest, size: l.size };
  });
  const asIs = d.mediaType === MEDIA_TYPES.manifest && m.config.mediaType === MEDIA_TYPES.config && layers.every((l, i) => l.mediaType === m.layers[i]!.mediaType);
  if (!asIs) return convertedImage(config, layers);
  // Already OCI: kept byte for byte, so the manifest digest stays what other tools show.
  return {
    manifest: { mediaType: MEDIA_TYPES.manifest, digest: d.digest, size: d.size },
    blobs: [staged.digest, config.digest, ...layers.map((l) => l.digest)],
  };
}

async function ociImages(a: ArchiveContents): Promise<FoundImage[]> {
  if (a.has('oci-layout')) {
    const version = (await a.json<{ imageLayoutVersion?: unknown }>('oci-layout'))?.imageLayoutVersion;
    if (typeof version !== 'string' || !version.startsWith('1.')) throw a.fail(`oci-layout has unsupported imageLayoutVersion ${JSON.stringify(version)}`);
  }
  if (!a.has('index.json')) throw a.fail('has an oci-layout file but no index.json');
  const index = await a.json<ImageIndex>('index.json');
  if (!Array.isArray(index?.manifests)) throw a.fail('index.json has no manifests list');
  // One image per name; entries under one name (or none) are the platforms of one image.
  const byName = new Map<string, PlatformDescriptor[]>();
  for (const d of index.manifests) {
    const name = annotatedName(d) ?? '';
    byName.set(name, [...(byName.get(name) ?? []), d]);
  }
  const found: FoundImage[] = [];
  for (const [name, descs] of byName) {
    const image = await ociImage(a, selectPlatform(a, descs, 'index.json'), 'index.json');
    const same = found.find((f) => f.manifest.digest === image.manifest.digest);
    if (same) same.names.push(...(name ? [name] : []));
    else found.push({ ...image, names: name ? [name] : [] });
  }
  return found;
}

interface DockerManifestEntry {
  Config?: unknown;
  RepoTags?: unknown;
  Layers?: unknown;
}

async function dockerLayer(a: ArchiveContents, path: string, diffId: string): Promise<Descriptor> {
  const staged = a.find(entryPath(a.fail, path));
  if (!staged) throw a.fail(`layer ${path} named in manifest.json is missing`);
  const blobPath = a.stage.path(staged.digest);
  const compression = compressionOf(await readHead(blobPath, 8));
  if (compression === 'gzip') {
    // Rare (docker save writes plain tars), but docker load accepts it: check the content, keep the bytes.
    let actual: string;
    try {
      actual = (await contentDigest(blobPath, true)).digest;
    } catch (err) {
      throw a.fail(`layer ${path} is not a valid gzip stream (${errorMessage(err)})`);
    }
    if (actual !== diffId) throw a.fail(`layer ${path} is corrupt: it unpacks to ${actual}, but the config says ${diffId}`);
    return { mediaType: MEDIA_TYPES.layerGzip, digest: staged.digest, size: staged.size };
  }
  if (compression !== undefined) throw a.fail(`layer ${path} is ${compression}-compressed, which is not supported`);
  if (staged.digest !== diffId) throw a.fail(`layer ${path} is corrupt: its content hashes to ${staged.digest}, but the config says ${diffId}`);
  return { mediaType: MEDIA_TYPES.layerTar, digest: staged.digest, size: staged.size };
}

/** Names from the legacy `repositories` file: {"name": {"tag": "<layer id>"}}. */
async function repositoriesNames(a: ArchiveContents): Promise<string[]> {
  if (!a.has('repositories')) return [];
  const repos = await a.json<Record<string, Record<string, unknown>>>('repositories');
  if (!repos || typeof repos !== 'object') return [];
  return Object.entries(repos).flatMap(([name, tags]) => Object.keys(tags ?? {}).map((tag) => `${name}:${tag}`));
}

async function dockerImages(a: ArchiveContents): Promise<FoundImage[]> {
  const entries = await a.json<DockerManifestEntry[]>('manifest.json');
  if (!Array.isArray(entries) || entries.length === 0) throw a.fail('manifest.json lists no images');
  const found: FoundImage[] = [];
  for (const [i, e] of entries.entries()) {
    const layerPaths = e?.Layers;
    if (typeof e?.Config !== 'string' || !Array.isArray(layerPaths) || !layerPaths.every((l) => typeof l === 'string')) {
      throw a.fail(`manifest.json entry ${i + 1} has no Config or Layers`);
    }
    const configPath = entryPath(a.fail, e.Config);
    const config = a.find(configPath);
    if (!config) throw a.fail(`config ${e.Config} named in manifest.json is missing`);
    // docker names the config file after its digest (`<hex>.json`, or `blobs/sha256/<hex>` since 25).
    const claimed = /^(?:blobs\/sha256\/)?([a-f0-9]{64})(?:\.json)?$/.exec(configPath);
    if (claimed && config.digest !== `sha256:${claimed[1]}`) throw a.fail(`config ${e.Config} is corrupt: its content hashes to ${config.digest}`);
    const diffIds = checkConfig(a, await a.parse<ImageConfigBlob>(config, `config ${e.Config}`), `config ${e.Config}`);
    if (diffIds.length !== layerPaths.length) {
      throw a.fail(`config ${e.Config} lists ${diffIds.length} layers but manifest.json entry ${i + 1} has ${layerPaths.length}`);
    }
    const layers: Descriptor[] = [];
    for (const [j, p] of (layerPaths as string[]).entries()) layers.push(await dockerLayer(a, p, diffIds[j]!));
    const names = Array.isArray(e.RepoTags) ? e.RepoTags.filter((t): t is string => typeof t === 'string') : [];
    found.push({ ...convertedImage(config, layers), names });
  }
  if (found.length === 1 && found[0]!.names.length === 0) found[0]!.names = await repositoriesNames(a);
  return found;
}

// ---------------------------------------------------------------------------
// import

/** Links a staged blob into the store (same filesystem: no copy); an existing blob is left alone. */
async function adopt(stage: BlobStore, store: BlobStore, digest: string): Promise<void> {
  try {
    await link(stage.path(digest), store.path(digest));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

/**
 * Imports every image of an OCI archive or docker-archive into `blobs` and tags it. Images
 * are stored as OCI: an OCI manifest is kept byte for byte (same digest as in the archive); a
 * docker manifest or docker-archive entry gets an OCI manifest over the unchanged config and
 * layer blobs (docker-archive's uncompressed layers stay uncompressed).
 */
export async function importArchive(blobs: BlobStore, file: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const override = opts.ref === undefined ? undefined : normalizeImageName(opts.ref);
  if (override !== undefined && !validRef(override)) {
    throw new ArchiveError(`tag: "${opts.ref}" is not a valid image name; use name[:tag], e.g. myapp:1.0`);
  }
  await blobs.init();
  // Staged inside the layout so that adopting a blob is a link(), never a second copy.
  const stageDir = await mkdtemp(join(blobs.layoutDir, `.import-${process.pid}-`));
  try {
    const a = await stageArchive(file, new BlobStore(stageDir));
    let format: ArchiveFormat;
    let found: FoundImage[];
    if (a.has('index.json') || a.has('oci-layout')) [format, found] = ['oci', await ociImages(a)];
    else if (a.has('manifest.json')) [format, found] = ['docker', await dockerImages(a)];
    else throw a.fail('is neither an OCI archive (no index.json) nor a docker-archive (no manifest.json)');
    if (found.length === 0) throw a.fail('holds no images');

    if (override !== undefined) {
      if (found.length > 1) throw a.fail(`holds ${found.length} images; a single --tag can name only one (import without --tag to keep the archive's names)`);
      found[0]!.names = [override];
    }
    for (const image of found) {
      image.names = [...new Set(image.names.map(normalizeImageName))];
      const bad = image.names.find((n) => !validRef(n));
      if (bad !== undefined) throw a.fail(`names its image "${bad}", which is not a valid image name; pass one with --tag NAME[:TAG]`);
      if (image.names.length === 0) throw a.fail('does not name its image; pass a name with --tag NAME[:TAG]');
    }

    // Every blob first; tags only once all of them are in.
    for (const image of found) {
      for (const digest of image.blobs) await adopt(a.stage, blobs, digest);
      if (image.manifestBytes) await blobs.putBytes(image.manifestBytes, MEDIA_TYPES.manifest);
    }
    const images: ArchiveImage[] = [];
    for (const image of found) {
      for (const ref of image.names) {
        await tagImage(blobs, ref, image.manifest);
        images.push({ ref, manifest: image.manifest });
      }
    }
    return { format, images };
  } finally {
    await rm(stageDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// export

type ArchiveEntry =
  | { path: string; data: Buffer }
  | { path: string; dir: true }
  /** A blob from the store, checked against `digest` while it is copied; `gunzip` stores it decompressed. */
  | { path: string; blob: string; size: number; digest: string; gunzip?: boolean };

interface ExportImage extends ArchiveImage {
  parsed: ImageManifest;
}

const corruptBlob = (digest: string, why: string): ArchiveError => new ArchiveError(`blob ${digest} in the image store is corrupt (${why}); no archive was written`);

function tarHeader(path: string, type: 'File' | 'Directory', size: number): Buffer {
  const buf = Buffer.alloc(BLOCK);
  // Fixed owner, mode and time: the same images always give the same archive.
  new Header({ path, type, size, mode: type === 'File' ? 0o644 : 0o755, uid: 0, gid: 0, mtime: new Date(0), uname: '', gname: '' }).encode(buf, 0);
  return buf;
}

const tarPadding = (size: number): Buffer => Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);

async function* tarStream(store: BlobStore, entries: ArchiveEntry[]): AsyncGenerator<Buffer> {
  for (const e of entries) {
    if ('dir' in e) {
      yield tarHeader(`${e.path}/`, 'Directory', 0);
    } else if ('data' in e) {
      yield tarHeader(e.path, 'File', e.data.length);
      yield e.data;
      yield tarPadding(e.data.length);
    } else {
      yield tarHeader(e.path, 'File', e.size);
      const hash = createHash('sha256');
      let size = 0;
      try {
        for await (const chunk of readBlob(store.path(e.blob), e.gunzip ?? false)) {
          size += chunk.length;
          // The header promised e.size bytes: more would corrupt every entry after this one.
          if (size > e.size) break;
          hash.update(chunk);
          yield chunk;
        }
      } catch (err) {
        throw corruptBlob(e.blob, errorMessage(err));
      }
      if (size !== e.size || `sha256:${hash.digest('hex')}` !== e.digest) throw corruptBlob(e.blob, `it does not match ${e.digest}`);
      yield tarPadding(e.size);
    }
  }
  yield Buffer.alloc(2 * BLOCK);
}

async function exportImages(store: BlobStore, refs: string[]): Promise<ExportImage[]> {
  const images: ExportImage[] = [];
  for (const ref of refs) {
    const found = (await resolveTag(store, ref)) ?? (await resolveTag(store, normalizeImageName(ref)));
    if (!found)
      throw new ImageNotFoundError(
        ref,
        (await listTags(store)).map((t) => t.ref),
      );
    const name = found.annotations![REF_NAME_ANNOTATION]!;
    if (images.some((i) => i.ref === name)) continue;
    const manifest: Descriptor = { mediaType: found.mediaType, digest: found.digest, size: found.size };
    let parsed: ImageManifest;
    try {
      parsed = await readManifest(store, manifest);
    } catch (err) {
      throw new ArchiveError(`image ${name}: ${errorMessage(err)}`, { cause: err });
    }
    for (const d of [parsed.config, ...parsed.layers]) {
      if (!(await store.has(d.digest))) throw new ArchiveError(`image ${name}: blob ${d.digest} is missing from the image store; import or build the image again`);
    }
    images.push({ ref: name, manifest, parsed });
  }
  return images;
}

function ociEntries(images: ExportImage[]): ArchiveEntry[] {
  const index: ImageIndex = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.index,
    manifests: images.map((i) => ({ ...i.manifest, annotations: { [REF_NAME_ANNOTATION]: i.ref } })),
  };
  const blobs = new Map<string, number>();
  for (const i of images) for (const d of [i.manifest, i.parsed.config, ...i.parsed.layers]) blobs.set(d.digest, d.size);
  return [
    { path: 'oci-layout', data: Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })) },
    { path: 'index.json', data: Buffer.from(JSON.stringify(index)) },
    { path: 'blobs', dir: true },
    { path: 'blobs/sha256', dir: true },
    ...[...blobs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([digest, size]) => ({ path: `blobs/sha256/${digest.slice('sha256:'.length)}`, blob: digest, size, digest })),
  ];
}

/** docker-archive: config as `<hex>.json`, every layer as an uncompressed `<diff_id hex>.tar`. */
async function dockerEntries(store: BlobStore, images: ExportImage[]): Promise<ArchiveEntry[]> {
  const files: ArchiveEntry[] = [];
  const written = new Set<string>();
  const manifest: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];
  const byManifest = new Map<string, ExportImage[]>();
  for (const i of images) byManifest.set(i.manifest.digest, [...(byManifest.get(i.manifest.digest) ?? []), i]);
  for (const group of byManifest.values()) {
    const image = group[0]!;
    const config = await readConfig(store, image.parsed);
    const configPath = `${image.parsed.config.digest.slice('sha256:'.length)}.json`;
    const layerPaths: string[] = [];
    for (const [i, layer] of image.parsed.layers.entries()) {
      const diffId = config.rootfs.diff_ids[i];
      if (!diffId) throw new ArchiveError(`image ${image.ref}: its config lists fewer layers than its manifest`);
      const path = `${diffId.slice('sha256:'.length)}.tar`;
      layerPaths.push(path);
      if (written.has(path)) continue;
      written.add(path);
      if (layer.mediaType === MEDIA_TYPES.layerTar) {
        files.push({ path, blob: layer.digest, size: layer.size, digest: diffId });
      } else if (layer.mediaType === MEDIA_TYPES.layerGzip) {
        // The tar header needs the uncompressed size before the data: one extra read to learn it.
        let content: { digest: string; size: number };
        try {
          content = await contentDigest(store.path(layer.digest), true);
        } catch (err) {
          throw corruptBlob(layer.digest, errorMessage(err));
        }
        if (content.digest !== diffId) throw corruptBlob(layer.digest, `it unpacks to ${content.digest}, not ${diffId}`);
        files.push({ path, blob: layer.digest, size: content.size, digest: diffId, gunzip: true });
      } else {
        throw new ArchiveError(`image ${image.ref}: layer ${layer.digest} has media type "${layer.mediaType}", which docker-archive cannot hold`);
      }
    }
    if (!written.has(configPath)) {
      written.add(configPath);
      files.push({ path: configPath, blob: image.parsed.config.digest, size: image.parsed.config.size, digest: image.parsed.config.digest });
    }
    manifest.push({ Config: configPath, RepoTags: group.map((i) => normalizeImageName(i.ref)), Layers: layerPaths });
  }
  return [{ path: 'manifest.json', data: Buffer.from(JSON.stringify(manifest)) }, ...files];
}

/**
 * Writes the images `refs` name to `file` as one archive that skopeo, podman and docker
 * load. The archive is written under a temporary name beside `file` and renamed into place,
 * so a failure leaves nothing behind (and never a truncated `file`).
 */
export async function exportArchive(blobs: BlobStore, refs: string[], file: string, opts: ExportOptions = {}): Promise<ExportResult> {
  const format = opts.format ?? 'oci';
  if (format !== 'oci' && format !== 'docker') throw new ArchiveError(`format: "${String(format)}" is not valid; use oci or docker`);
  if (refs.length === 0) throw new ArchiveError('export: name at least one image');
  const images = await exportImages(blobs, refs);
  const entries = format === 'oci' ? ociEntries(images) : await dockerEntries(blobs, images);
  const tmp = join(dirname(file), `.${basename(file)}.${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
  try {
    await pipeline(Readable.from(tarStream(blobs, entries)), createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
    const handle = await open(tmp, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    if (err instanceof HybridboxError) throw err;
    throw new ArchiveError(`cannot write archive ${file}: ${errorMessage(err)}`, { cause: err });
  }
  return { format, images: images.map(({ ref, manifest }) => ({ ref, manifest })), bytes: (await stat(file)).size };
}
