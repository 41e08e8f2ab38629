import { mkdirSync } from 'node:fs';
import { ImageInUseError, ImageNotFoundError } from '../errors.js';
import { buildBusyboxImage, checkRef, ensureVmDisk, normalizeRef, type Image, type ImageDetails, type ImageStore, type PruneResult } from '../images/index.js';
import type { BuildOptions, BuildResult, StepRunner } from '../images/build/index.js';
import type { ExportResult, ImportResult } from '../images/oci/index.js';
import type { ProgressReporter, PullResult, PushResult, Registry } from '../registry/index.js';
import type { Core } from './context.js';
import type { EnsureImageResult, RegistryTransferOptions, RemoveImageOptions } from './types.js';

/** Base images made on this host from local packages (no registry is needed). */
const BASE_IMAGES: Record<string, (store: ImageStore) => Promise<unknown>> = {
  'busybox:latest': (store) => buildBusyboxImage(store),
  'debian:bookworm': async (store) => (await import('../images/bases/debian.js')).buildDebianImage(store),
};

/**
 * Images: the local store's tags, builds, import/export, prune and the S3 registry. The
 * guards live here, not in the caller: an image a sandbox uses keeps its last tag unless
 * forced, and prune never removes what a sandbox record or a writer in progress holds.
 */
export class ImageService {
  constructor(
    private readonly core: Core,
    /** How a build's RUN steps run: as container sandboxes of this hybridbox. */
    private readonly steps: StepRunner,
  ) {}

  private get store(): ImageStore {
    return this.core.images;
  }

  /** Tags, sorted. */
  list(): string[] {
    return this.store.list();
  }

  /** Tags and the manifest digest each names, sorted by tag. */
  entries(): { ref: string; digest: string }[] {
    return this.store.entries();
  }

  has(ref: string): boolean {
    return this.store.has(ref);
  }

  /** The manifest digest a tag (or `sha256:...`) names, if present. */
  digestOf(ref: string): string | undefined {
    return this.store.digestOf(ref);
  }

  inspect(ref: string): Promise<ImageDetails> {
    return this.store.inspect(ref);
  }

  /** The image with every layer unpacked (once, shared by all later users): what a sandbox mounts. */
  resolve(ref: string): Promise<Image> {
    return this.store.resolve(ref);
  }

  /** Adds a tag to an image. */
  tag(source: string, target: string): Promise<void> {
    return this.store.tag(source, target);
  }

  /** Makes a base image hybridbox knows how to build locally; false for any other name. */
  async ensureBase(ref = 'busybox:latest'): Promise<boolean> {
    const full = normalizeRef(ref);
    if (this.store.has(full)) return true;
    const make = BASE_IMAGES[full];
    if (!make) return false;
    await make(this.store);
    return true;
  }

  /**
   * Makes `ref` as debian:bookworm plus `packages` (mmdebstrap --include, no recommends),
   * through the same recipe and archive cache as the base. An image already stored under
   * `ref` is kept when it was made with this package list; a changed list builds anew.
   */
  async ensureDebian(ref: string, packages: readonly string[], opts: { log?: (line: string) => void } = {}): Promise<EnsureImageResult> {
    const full = checkRef(ref, 'image');
    const { buildDebianImage, normalizePackages, PACKAGES_LABEL } = await import('../images/bases/debian.js');
    const include = normalizePackages(packages);
    const digest = this.store.digestOf(full);
    if (digest) {
      const { config } = await this.store.inspect(digest);
      if ((config.config.Labels?.[PACKAGES_LABEL] ?? '') === include.join(',')) return { ref: full, digest, source: 'present' };
    }
    return { ref: full, ...(await buildDebianImage(this.store, full, { include, log: opts.log })) };
  }

  /** Manifest digests that sandboxes (in any state) were made from: never pruned. */
  private inUse(): Map<string, string[]> {
    const used = new Map<string, string[]>();
    for (const r of this.core.store.list()) if (r.imageDigest) used.set(r.imageDigest, [...(used.get(r.imageDigest) ?? []), r.name]);
    return used;
  }

  /** Removes a tag; refuses while a sandbox uses the image unless `force` (its data stays until prune). */
  async remove(ref: string, opts: RemoveImageOptions = {}): Promise<string> {
    const digest = this.store.digestOf(ref);
    if (!digest) throw new ImageNotFoundError(ref, this.store.list());
    const users = this.inUse().get(digest);
    // Another tag still naming the image keeps it reachable: only the last one is guarded.
    const lastTag = this.store.entries().filter((e) => e.digest === digest).length <= 1;
    if (users && lastTag && !opts.force) throw new ImageInUseError(normalizeRef(ref), users);
    return this.store.untag(ref);
  }

  /** Deletes image data no tag and no sandbox reaches; refuses while a writer is at work. */
  prune(): Promise<PruneResult> {
    return this.store.prune(() => this.inUse().keys());
  }

  /**
   * Builds an image from a Sandboxfile. RUN steps run as container sandboxes of this
   * hybridbox (network off unless asked), whose filesystem changes become the layers.
   */
  build(opts: Omit<BuildOptions, 'ensureBase'>): Promise<BuildResult> {
    return import('../images/build/index.js').then(({ buildImage }) => buildImage(this.store, this.steps, { ...opts, ensureBase: (ref) => this.ensureBase(ref) }));
  }

  /** Imports an OCI archive or a `docker save`/`podman save` tarball; tags last. */
  import(file: string, opts: { ref?: string } = {}): Promise<ImportResult> {
    return this.store.import(file, opts);
  }

  /** Writes images to one archive file (OCI by default, or the docker-archive format). */
  export(refs: string[], file: string, opts: { format?: 'oci' | 'docker' } = {}): Promise<ExportResult> {
    return this.store.export(refs, file, opts);
  }

  /**
   * Pushes an image (and with `withVmDisk` its VM disk) to an S3 registry: blobs first,
   * skipping those already there, the tag last. No registry configured: the embedded one.
   */
  async push(ref: string, opts: RegistryTransferOptions = {}): Promise<PushResult> {
    const digest = this.store.digestOf(ref);
    if (!digest) throw new ImageNotFoundError(ref, this.store.list());
    const vmDisk = opts.withVmDisk ? { path: await ensureVmDisk(this.store, await this.store.resolve(ref)) } : undefined;
    return this.withRegistry(opts, (reg, progress) => reg.push({ blobs: this.store.blobs, ref: normalizeRef(ref), remoteRef: opts.remoteRef, vmDisk, progress, signal: opts.signal }));
  }

  /** Pulls an image from an S3 registry, verifying every blob while it streams; the tag last. */
  async pull(ref: string, opts: RegistryTransferOptions = {}): Promise<PullResult> {
    const checked = checkRef(ref, 'image');
    const release = this.store.guardFromPrune();
    try {
      if (opts.withVmDisk) mkdirSync(this.store.disksDir, { recursive: true });
      return await this.withRegistry(opts, (reg, progress) =>
        reg.pull({
          blobs: this.store.blobs,
          ref: checked,
          remoteRef: opts.remoteRef,
          vmDiskPath: opts.withVmDisk ? (digest) => this.store.vmDiskPath(digest) : undefined,
          progress,
          signal: opts.signal,
        }),
      );
    } finally {
      release();
    }
  }

  private async withRegistry<T>(opts: RegistryTransferOptions, fn: (reg: Registry, progress: ProgressReporter) => Promise<T>): Promise<T> {
    const { resolveRegistryConfig, openRegistry, createProgressReporter, silentProgress } = await import('../registry/index.js');
    const config = resolveRegistryConfig(process.env, this.core.root, { url: opts.registry, overrides: opts.registryConfig });
    const reg = await openRegistry(config);
    try {
      return await fn(reg, opts.progress === 'none' ? silentProgress : createProgressReporter({ quiet: opts.progress === 'quiet' }));
    } finally {
      await reg.close();
    }
  }
}
