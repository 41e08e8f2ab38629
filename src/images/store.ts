import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';
import { HybridboxError, ImageNotFoundError, ImageStoreBusyError } from '../errors.js';
import { runChecked } from '../util/exec.js';
import { sweepStaleTemps } from '../util/fs.js';
import { isSameProcessAlive, processStartTime, sleepSync } from '../util/proc.js';
import { splitKeyValue } from '../util/text.js';
import {
  BlobStore,
  MEDIA_TYPES,
  REF_NAME_ANNOTATION,
  applyLayer,
  parseDigest,
  readConfig,
  readManifest,
  tagImage,
  untag,
  writeImage,
  type Descriptor,
  type ImageConfigBlob,
  type ImageIndex,
  type ImageManifest,
  type ImageRuntimeConfig,
  type Layer,
} from './oci/index.js';
import { exportArchive, importArchive, type ArchiveFormat, type ExportResult, type ImportResult } from './oci/archive.js';

/** What a sandbox needs from an image's config (the OCI config's `config` object, in our names). */
export interface ImageConfig {
  cmd: string[];
  entrypoint: string[];
  env: Record<string, string>;
  workdir: string;
  user: string;
  labels: Record<string, string>;
}

export interface Image {
  /** name:tag */
  ref: string;
  /** sha256:... of the image manifest: what names this exact image everywhere. */
  digest: string;
  /** Unpacked layer directories, lowest first: the overlayfs lower layers, shared by every sandbox. */
  layers: string[];
  config: ImageConfig;
}

export interface ImageDetails {
  ref: string;
  digest: string;
  manifest: ImageManifest;
  config: ImageConfigBlob;
  /** Compressed bytes of config and layers: what a push or pull moves. */
  sizeBytes: number;
}

export interface PruneResult {
  blobs: number;
  layers: number;
  disks: number;
  bytesFreed: number;
}

/** `busybox` → `busybox:latest`; keeps explicit tags. */
export function normalizeRef(ref: string): string {
  const slash = ref.lastIndexOf('/');
  return ref.indexOf(':', slash + 1) === -1 ? `${ref}:latest` : ref;
}

// The OCI ref.name grammar, restricted to what a user types as name[:tag].
const REF_RE = /^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/** Checks a user-given image reference; returns it normalized to name:tag. */
export function checkRef(ref: string, field = 'tag'): string {
  const full = normalizeRef(ref);
  if (!REF_RE.test(full)) {
    throw new HybridboxError(`${field}: "${ref}" is not a valid image name; use lowercase name[:tag], e.g. myapp:1.0 (letters, digits, . _ - in the name, / between path parts)`);
  }
  return full;
}

export function toImageConfig(c: ImageRuntimeConfig): ImageConfig {
  const env: Record<string, string> = {};
  for (const kv of c.Env ?? []) {
    const pair = splitKeyValue(kv);
    if (pair) env[pair[0]] = pair[1];
  }
  return {
    cmd: c.Cmd ?? [],
    entrypoint: c.Entrypoint ?? [],
    env,
    workdir: c.WorkingDir || '/',
    user: c.User || '',
    labels: c.Labels ?? {},
  };
}

export function toRuntimeConfig(c: ImageConfig): ImageRuntimeConfig {
  const out: ImageRuntimeConfig = { Env: Object.entries(c.env).map(([k, v]) => `${k}=${v}`) };
  if (c.cmd.length) out.Cmd = c.cmd;
  if (c.entrypoint.length) out.Entrypoint = c.entrypoint;
  if (c.workdir && c.workdir !== '/') out.WorkingDir = c.workdir;
  if (c.user) out.User = c.user;
  if (Object.keys(c.labels).length) out.Labels = c.labels;
  return out;
}

/**
 * The entry at `rel` as the image shows it: the topmost layer that has the path wins, and a
 * whiteout (0/0 character device) there means the image deleted it (undefined).
 */
export function statInImage(layers: readonly string[], rel: string): { path: string; stat: Stats } | undefined {
  for (let i = layers.length - 1; i >= 0; i--) {
    const path = join(layers[i]!, rel);
    let stat: Stats;
    try {
      stat = lstatSync(path);
    } catch {
      continue;
    }
    return stat.isCharacterDevice() && stat.rdev === 0 ? undefined : { path, stat };
  }
  return undefined;
}

/** A file's text as the image shows it (see statInImage). */
export function readImageFile(layers: readonly string[], rel: string): string | undefined {
  const entry = statInImage(layers, rel);
  return entry?.stat.isFile() ? readFileSync(entry.path, 'utf8') : undefined;
}

export function imagePathExists(layers: readonly string[], rel: string): boolean {
  return layers.some((l) => existsSync(join(l, rel)));
}

const hex = (digest: string): string => parseDigest(digest);

/**
 * The local image store, in OCI image layout (`oci/`: oci-layout, index.json, blobs), plus
 * what is derived from it and cached by content: each layer unpacked once under
 * `layers/<diff-id>` (shared as overlayfs lower directories) and VM disks under
 * `disks/<manifest>`. Everything is written under a temporary name and renamed into place,
 * and tags are written last, so a crash half-way leaves no half-made image or tag.
 */
export class ImageStore {
  readonly dir: string;
  readonly blobs: BlobStore;

  constructor(root: string) {
    this.dir = join(root, 'images');
    this.blobs = new BlobStore(join(this.dir, 'oci'));
    mkdirSync(this.blobs.blobsDir, { recursive: true });
    for (const [file, body] of [
      ['oci-layout', { imageLayoutVersion: '1.0.0' }],
      ['index.json', { schemaVersion: 2, mediaType: MEDIA_TYPES.index, manifests: [] }],
    ] as const) {
      try {
        writeFileSync(join(this.blobs.layoutDir, file), JSON.stringify(body), { flag: 'wx' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
  }

  get layersDir(): string {
    return join(this.dir, 'layers');
  }

  get disksDir(): string {
    return join(this.dir, 'disks');
  }

  private index(): ImageIndex {
    return JSON.parse(readFileSync(this.blobs.indexPath, 'utf8')) as ImageIndex;
  }

  private tags(): Map<string, Descriptor> {
    const out = new Map<string, Descriptor>();
    for (const d of this.index().manifests) {
      const ref = d.annotations?.[REF_NAME_ANNOTATION];
      if (ref !== undefined) out.set(ref, d);
    }
    return out;
  }

  /** The manifest digest a tag (or a digest given as `sha256:...`) names, if present. */
  digestOf(ref: string): string | undefined {
    if (ref.startsWith('sha256:')) return existsSync(this.blobs.path(ref)) ? ref : undefined;
    return this.tags().get(normalizeRef(ref))?.digest;
  }

  has(ref: string): boolean {
    return this.digestOf(ref) !== undefined;
  }

  list(): string[] {
    return [...this.tags().keys()].sort();
  }

  /** Tags and the manifest each names, sorted by tag. */
  entries(): { ref: string; digest: string }[] {
    return [...this.tags()].map(([ref, d]) => ({ ref, digest: d.digest })).sort((a, b) => a.ref.localeCompare(b.ref));
  }

  private must(ref: string): string {
    const digest = this.digestOf(ref);
    if (!digest) throw new ImageNotFoundError(ref, this.list());
    return digest;
  }

  async inspect(ref: string): Promise<ImageDetails> {
    const digest = this.must(ref);
    const manifest = await readManifest(this.blobs, digest);
    const config = await readConfig(this.blobs, manifest);
    const sizeBytes = manifest.config.size + manifest.layers.reduce((n, l) => n + l.size, 0);
    return { ref: ref.startsWith('sha256:') ? ref : normalizeRef(ref), digest, manifest, config, sizeBytes };
  }

  /** The image, with every layer unpacked (once, shared by all later users). */
  async resolve(ref: string): Promise<Image> {
    const { ref: full, digest, manifest, config } = await this.inspect(ref);
    const layers: string[] = [];
    for (const [i, desc] of manifest.layers.entries()) {
      const diffId = config.rootfs.diff_ids[i];
      if (!diffId) throw new HybridboxError(`image ${full}: its config lists ${config.rootfs.diff_ids.length} layers but the manifest has ${manifest.layers.length}; re-import or rebuild it`);
      layers.push(await this.unpackLayer(desc, diffId));
    }
    return { ref: full, digest, layers, config: toImageConfig(config.config) };
  }

  /**
   * One layer on its own in overlayfs form: OCI whiteouts become 0/0 character devices and
   * opaque markers the `trusted.overlay.opaque` xattr, which is how overlayfs reads deletions
   * in a lower directory.
   */
  private async unpackLayer(desc: Descriptor, diffId: string): Promise<string> {
    const dest = join(this.layersDir, hex(diffId));
    if (existsSync(dest)) return dest;
    mkdirSync(this.layersDir, { recursive: true });
    const tmp = join(this.layersDir, `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      mkdirSync(tmp, { mode: 0o755 });
      const marks = await applyLayer(this.blobs.path(desc.digest), tmp, { whiteouts: 'record' });
      for (const rel of marks.deleted) {
        const p = join(tmp, rel);
        mkdirSync(dirname(p), { recursive: true });
        rmSync(p, { recursive: true, force: true });
        await runChecked('mknod', [p, 'c', '0', '0'], 'mknod (layer whiteout)');
      }
      for (const rel of marks.opaqueDirs) {
        const p = join(tmp, rel);
        mkdirSync(p, { recursive: true });
        await runChecked('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', p], 'setfattr (opaque directory)');
      }
      try {
        renameSync(tmp, dest);
      } catch (e) {
        // Another process unpacked the same layer first: theirs is identical.
        if (!existsSync(dest)) throw e;
      }
      return dest;
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }

  /** Writes config and manifest for `layers` and then, last, the tags. */
  async commit(refs: string[], layers: Layer[], config: ImageConfig, opts: { created?: string } = {}): Promise<Descriptor> {
    const manifest = await writeImage(this.blobs, { layers, config: toRuntimeConfig(config), created: opts.created });
    for (const ref of refs) await tagImage(this.blobs, checkRef(ref), manifest);
    return manifest;
  }

  async tag(source: string, target: string): Promise<void> {
    const digest = this.must(source);
    const full = checkRef(target, 'target');
    await tagImage(this.blobs, full, { mediaType: MEDIA_TYPES.manifest, digest, size: await this.blobs.size(digest) });
  }

  /** Removes a tag; the blobs stay until `prune`, which keeps anything a sandbox still uses. */
  async untag(ref: string): Promise<string> {
    const full = normalizeRef(ref);
    const digest = this.must(full);
    await untag(this.blobs, full);
    return digest;
  }

  /** Imports an OCI archive or a `docker save`/`podman save` tarball; tags last, guarded from prune. */
  async import(file: string, opts: { ref?: string } = {}): Promise<ImportResult> {
    const end = this.guardFromPrune();
    try {
      return await importArchive(this.blobs, file, opts.ref ? { ref: checkRef(opts.ref) } : {});
    } finally {
      end();
    }
  }

  /** Writes images to one archive file (OCI by default, or the docker-archive format). */
  async export(refs: string[], file: string, opts: { format?: ArchiveFormat } = {}): Promise<ExportResult> {
    for (const r of refs) this.must(r);
    return exportArchive(
      this.blobs,
      refs.map((r) => normalizeRef(r)),
      file,
      opts,
    );
  }

  vmDiskPath(digest: string): string {
    return join(this.disksDir, `${hex(digest)}.qcow2`);
  }

  /**
   * Deletes blobs, unpacked layers and VM disks that no tag and no sandbox (`inUse()`:
   * manifest digests, read once prune holds the store) reaches. A writer in progress (a
   * build, import, pull, or a sandbox between resolving its image and recording it) holds
   * data nothing reaches yet: prune and the writers exclude each other (guardFromPrune).
   */
  async prune(inUse: () => Iterable<string>): Promise<PruneResult> {
    const lock = this.announce('prune');
    try {
      const busy = this.holders('hold');
      if (busy.length) throw new ImageStoreBusyError(`image prune: a build, import, pull or sandbox start is using the image store (pid ${busy.join(', ')}); run prune again when it has finished`);
      if (this.holders('prune').some((pid) => pid !== process.pid)) throw new ImageStoreBusyError('image prune: another prune is running; wait for it');
      return await this.pruneHeld(inUse());
    } finally {
      rmSync(lock, { force: true });
    }
  }

  private async pruneHeld(inUse: Iterable<string>): Promise<PruneResult> {
    this.sweep();
    const keepManifests = new Set([...this.tags().values()].map((d) => d.digest));
    for (const d of inUse) if (d && existsSync(this.blobs.path(d))) keepManifests.add(d);
    const keepBlobs = new Set<string>(keepManifests);
    const keepLayers = new Set<string>();
    for (const m of keepManifests) {
      const manifest = await readManifest(this.blobs, m);
      keepBlobs.add(manifest.config.digest);
      for (const l of manifest.layers) keepBlobs.add(l.digest);
      for (const id of (await readConfig(this.blobs, manifest)).rootfs.diff_ids) keepLayers.add(hex(id));
    }
    const result: PruneResult = { blobs: 0, layers: 0, disks: 0, bytesFreed: 0 };
    const drop = (p: string, kind: 'blobs' | 'layers' | 'disks'): void => {
      const st = statSync(p);
      result.bytesFreed += st.isDirectory() ? 0 : st.size;
      rmSync(p, { recursive: true, force: true });
      result[kind]++;
    };
    for (const name of readdirSync(this.blobs.blobsDir)) if (!keepBlobs.has(`sha256:${name}`)) drop(join(this.blobs.blobsDir, name), 'blobs');
    for (const name of listDir(this.layersDir)) if (!keepLayers.has(name)) drop(join(this.layersDir, name), 'layers');
    for (const name of listDir(this.disksDir)) {
      if (!name.endsWith('.qcow2') || !keepManifests.has(`sha256:${name.slice(0, -'.qcow2'.length)}`)) drop(join(this.disksDir, name), 'disks');
    }
    // Build-cache entries whose layer is gone can never hit again.
    const cacheDir = join(this.dir, 'build-cache');
    for (const name of listDir(cacheDir)) {
      try {
        const entry = JSON.parse(readFileSync(join(cacheDir, name), 'utf8')) as Layer;
        if (existsSync(this.blobs.path(entry.descriptor.digest))) continue;
      } catch {
        /* unreadable: drop it */
      }
      rmSync(join(cacheDir, name), { force: true });
    }
    return result;
  }

  /**
   * Holds the store against `prune` until the returned function is called (or this process
   * dies). Both sides announce themselves with a marker file first and only then look for
   * the other side, so of a writer and a prune that start together at least one sees the
   * other: never both go on (a writer waits for a running prune; a prune refuses to start).
   */
  guardFromPrune(opts: { sweep?: boolean } = {}): () => void {
    // Writers sweep what killed writers left; a sandbox start writes nothing and skips it (it runs on every start).
    if (opts.sweep !== false) this.sweep();
    const deadline = Date.now() + 120_000;
    for (;;) {
      const marker = this.announce('hold');
      if (this.holders('prune').length === 0) return () => rmSync(marker, { force: true });
      rmSync(marker, { force: true });
      if (Date.now() > deadline) throw new ImageStoreBusyError('the image store is being pruned for over 2 minutes; try again when `hybridbox image prune` has finished');
      sleepSync(20);
    }
  }

  private announce(kind: 'hold' | 'prune'): string {
    const dir = join(this.dir, 'locks');
    mkdirSync(dir, { recursive: true });
    const marker = join(dir, `${kind}-${process.pid}-${processStartTime(process.pid) ?? 0}-${randomBytes(4).toString('hex')}`);
    writeFileSync(marker, '');
    return marker;
  }

  /** Live processes holding markers of `kind`; markers of dead processes are removed. */
  private holders(kind: 'hold' | 'prune'): number[] {
    const dir = join(this.dir, 'locks');
    const live: number[] = [];
    for (const name of listDir(dir)) {
      const [k, pid, start] = name.split('-');
      if (k !== kind) continue;
      if (isSameProcessAlive(Number(pid), Number(start) || null)) live.push(Number(pid));
      else rmSync(join(dir, name), { force: true });
    }
    return live;
  }

  /** Temporary files of writers that died half-way (kill -9, a crash) are removed. */
  private sweep(): void {
    sweepStaleTemps([this.dir, this.blobs.layoutDir, this.layersDir, this.disksDir]);
  }
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
