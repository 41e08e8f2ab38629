import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, writeFile, link, unlink, stat, access } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export const MEDIA_TYPES = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  /** Uncompressed layer: its digest is its diff_id (what docker-archive layers are). */
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  index: 'application/vnd.oci.image.index.v1+json',
  octet: 'application/octet-stream',
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

const DIGEST_RE = /^sha256:([a-f0-9]{64})$/;

/** Throws unless `digest` is a well-formed sha256 digest; this is what keeps digests from naming paths outside blobs/. */
export function parseDigest(digest: string): string {
  const m = DIGEST_RE.exec(digest);
  if (!m) throw new Error(`invalid digest: ${JSON.stringify(digest)}`);
  return m[1]!;
}

export function sha256Hex(buf: Buffer | string): string {
  return createHash('sha256').update(buf).digest('hex');
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

export class BlobStore {
  constructor(readonly layoutDir: string) {}

  get blobsDir(): string {
    return join(this.layoutDir, 'blobs', 'sha256');
  }

  get indexPath(): string {
    return join(this.layoutDir, 'index.json');
  }

  async init(): Promise<void> {
    await mkdir(this.blobsDir, { recursive: true });
    // 'wx' so that re-initialising an existing layout never clobbers its tags.
    await writeIfMissing(join(this.layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    await writeIfMissing(this.indexPath, JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.index, manifests: [] }));
  }

  path(digest: string): string {
    return join(this.blobsDir, parseDigest(digest));
  }

  has(digest: string): Promise<boolean> {
    return exists(this.path(digest));
  }

  async putBytes(buf: Buffer | string, mediaType: string = MEDIA_TYPES.octet): Promise<Descriptor> {
    return this.putStream(Readable.from([Buffer.from(buf)]), mediaType);
  }

  async putFile(file: string, mediaType: string = MEDIA_TYPES.octet): Promise<Descriptor> {
    return this.putStream(createReadStream(file), mediaType);
  }

  /**
   * Hashes while copying so a blob is read exactly once, however large. With `expectedDigest`
   * (content from elsewhere, e.g. a registry) a stream that hashes to anything else is refused:
   * the temp file is deleted and the error has `code: 'ERR_DIGEST_MISMATCH'`.
   */
  async putStream(input: NodeJS.ReadableStream | Readable, mediaType: string = MEDIA_TYPES.octet, expectedDigest?: string): Promise<Descriptor> {
    if (expectedDigest !== undefined) parseDigest(expectedDigest);
    await mkdir(this.blobsDir, { recursive: true });
    // The temp file lives inside the layout so the final link() stays on one filesystem.
    const tmp = join(this.layoutDir, `.tmp-${process.pid}-${randomBytes(8).toString('hex')}`);
    const hash = createHash('sha256');
    let size = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        size += chunk.length;
        cb(null, chunk);
      },
    });
    try {
      await pipeline(input, tap, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
      const digest = `sha256:${hash.digest('hex')}`;
      if (expectedDigest !== undefined && digest !== expectedDigest) {
        throw Object.assign(new Error(`blob content does not match its digest: expected ${expectedDigest}, got ${digest} (${size} bytes); nothing was stored`), {
          code: 'ERR_DIGEST_MISMATCH',
          expectedDigest,
          actualDigest: digest,
          size,
        });
      }
      try {
        // link() rather than rename(): it fails with EEXIST instead of replacing, so an
        // existing (possibly in-use) blob is never overwritten, even by a concurrent writer.
        await link(tmp, this.path(digest));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      return { mediaType, digest, size };
    } finally {
      await unlink(tmp).catch(() => {});
    }
  }

  async read(digest: string): Promise<Buffer> {
    const buf = await readFile(this.path(digest));
    // Small metadata blobs are re-hashed on every read: a corrupt manifest must not be trusted.
    if (`sha256:${sha256Hex(buf)}` !== digest) throw new Error(`blob ${digest} is corrupt`);
    return buf;
  }

  async readJson<T = unknown>(digest: string): Promise<T> {
    return JSON.parse((await this.read(digest)).toString('utf8')) as T;
  }

  async size(digest: string): Promise<number> {
    return (await stat(this.path(digest))).size;
  }

  async verify(digest: string): Promise<boolean> {
    const hash = createHash('sha256');
    try {
      await pipeline(createReadStream(this.path(digest)), async function* (src) {
        for await (const chunk of src) hash.update(chunk as Buffer);
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    return `sha256:${hash.digest('hex')}` === digest;
  }
}

async function writeIfMissing(p: string, content: string): Promise<void> {
  try {
    await writeFile(p, content, { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}
