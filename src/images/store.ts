import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageNotFoundError } from '../errors.js';

/** What a sandbox needs from an image's config (OCI image config's `config` object, in our names). */
export interface ImageConfig {
  cmd: string[];
  env: Record<string, string>;
  workdir: string;
  user: string;
}

export interface Image {
  /** name:tag */
  ref: string;
  /** sha256:... of the root filesystem's content listing */
  digest: string;
  /** Unpacked root filesystem, shared read-only by every sandbox of this image. */
  rootfs: string;
  config: ImageConfig;
}

interface Refs {
  [ref: string]: { digest: string; config: ImageConfig };
}

/** `busybox` → `busybox:latest`; keeps explicit tags. */
export function normalizeRef(ref: string): string {
  const slash = ref.lastIndexOf('/');
  return ref.indexOf(':', slash + 1) === -1 ? `${ref}:latest` : ref;
}

/**
 * The local image store: unpacked root filesystems keyed by digest, and tags pointing at
 * them. Writes go to a temporary name and are renamed into place, so a crash half-way
 * leaves no half-made image or tag.
 */
export class ImageStore {
  readonly dir: string;
  constructor(root: string) {
    this.dir = join(root, 'images');
  }

  private get refsFile(): string {
    return join(this.dir, 'refs.json');
  }

  private readRefs(): Refs {
    try {
      return JSON.parse(readFileSync(this.refsFile, 'utf8')) as Refs;
    } catch {
      return {};
    }
  }

  rootfsPath(digest: string): string {
    return join(this.dir, 'rootfs', digest.replace(':', '-'));
  }

  has(ref: string): boolean {
    return normalizeRef(ref) in this.readRefs();
  }

  list(): string[] {
    return Object.keys(this.readRefs()).sort();
  }

  resolve(ref: string): Image {
    const full = normalizeRef(ref);
    const entry = this.readRefs()[full];
    if (!entry || !existsSync(this.rootfsPath(entry.digest))) throw new ImageNotFoundError(ref, this.list());
    return { ref: full, digest: entry.digest, rootfs: this.rootfsPath(entry.digest), config: entry.config };
  }

  /**
   * Adds a root filesystem built by `fill(dir)` under `ref`. The digest is computed by the
   * caller-supplied `digestOf(dir)` so identical inputs map to one shared directory.
   */
  async add(ref: string, config: ImageConfig, fill: (dir: string) => Promise<void>, digestOf: (dir: string) => string): Promise<Image> {
    mkdirSync(join(this.dir, 'rootfs'), { recursive: true });
    const tmp = join(this.dir, 'rootfs', `.tmp-${process.pid}-${Date.now()}`);
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { mode: 0o755 });
    try {
      await fill(tmp);
      const digest = digestOf(tmp);
      const dest = this.rootfsPath(digest);
      if (existsSync(dest)) rmSync(tmp, { recursive: true, force: true });
      else renameSync(tmp, dest);
      this.setRef(normalizeRef(ref), { digest, config });
      return this.resolve(ref);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  private setRef(ref: string, entry: Refs[string]): void {
    const refs = this.readRefs();
    refs[ref] = entry;
    const tmp = `${this.refsFile}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(refs, null, 2) + '\n');
    renameSync(tmp, this.refsFile);
  }
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
