// pull: registry → local OCI layout. Every blob is hashed while it streams into the store and
// refused (its temp file deleted) if it does not match; the local tag is written last, so a
// pull that fails anywhere leaves no tag. Blobs that did arrive complete and verified stay in
// the store, untagged (a re-run does not fetch them again; `hybridbox image prune` removes them).
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { MEDIA_TYPES, parseDigest, tagImage, type BlobStore, type Descriptor, type ImageManifest } from '../images/oci/index.js';
import { DigestMismatchError, RegistryError, TransferAbortedError, RemoteObjectMissingError, RemoteTagNotFoundError, toRegistryError } from './errors.js';
import { MAX_DOCUMENT_BYTES, blobKey, normalizedRef, parseTagDocument, parseVmDiskPointer, tagKey, vmDiskPointerKey } from './layout.js';
import { planTransfer, silentProgress, type BlobInfo, type ProgressReporter } from './progress.js';
import { ByteCounter, type S3Remote } from './s3.js';
import { mapLimited, runLimited } from './tasks.js';

export interface PullOptions {
  /** The local OCI image layout to pull into (created if needed). */
  blobs: BlobStore;
  /** Local name[:tag] to give the image. */
  ref: string;
  /** Name in the registry; defaults to `ref`. */
  remoteRef?: string;
  /**
   * Also fetch the image's VM disk to this path (written to a temp file, verified, renamed);
   * a function is given the manifest digest, which names the disk in a local store.
   */
  vmDiskPath?: string | ((manifestDigest: string) => string);
  progress?: ProgressReporter;
  signal?: AbortSignal;
}

export interface PullResult {
  ref: string;
  remoteRef: string;
  registry: string;
  manifest: Descriptor;
  bytesDownloaded: number;
  /** Bytes already present (and verified) locally. */
  bytesSkipped: number;
  blobsDownloaded: number;
  blobsSkipped: number;
  durationMs: number;
  vmDisk?: { path: string; digest: string; sizeBytes: number; downloaded: boolean };
}

interface PullBlob extends BlobInfo {
  mediaType: string;
}

/** Downloads are written in chunks of this size (see ByteCounter). */
const WRITE_CHUNK_BYTES = 1 << 20;

/** Manifests are read whole into memory; anything larger than this is not one. */
const MAX_MANIFEST_BYTES = 4 << 20;

export async function pull(remote: S3Remote, opts: PullOptions): Promise<PullResult> {
  const t0 = performance.now();
  const progress = opts.progress ?? silentProgress;
  const { signal, blobs: store } = opts;
  const { prefix, url: registry } = remote.config.url;
  const ref = normalizedRef(opts.ref);
  const remoteRef = normalizedRef(opts.remoteRef ?? opts.ref);
  const where = remoteRef === ref ? registry : `${registry} as ${remoteRef}`;
  const missingBlob = (b: BlobInfo) => () => new RemoteObjectMissingError(`${b.kind} ${b.digest} of ${remoteRef} is missing from ${registry}; push the image again`);

  /** Streams one blob from the registry into `sink`, hashing it; a mismatch names the blob. */
  const fetchInto = async (b: BlobInfo, sink: (body: Readable) => Promise<void>, s?: AbortSignal) => {
    const key = blobKey(prefix, b.digest);
    const { body } = await remote.getStream(key, missingBlob(b), s);
    try {
      await sink(body);
    } catch (err) {
      body.destroy();
      const e = err as { code?: string; actualDigest?: string };
      if (e.code === 'ERR_DIGEST_MISMATCH' || e.code === 'ERR_EXCESS_BYTES') {
        throw new DigestMismatchError(
          `${b.kind} ${b.digest} of ${remoteRef} in ${registry} is corrupt (its content ${e.actualDigest ? `hashes to ${e.actualDigest}` : `exceeds ${b.sizeBytes} bytes`}); ` +
            `nothing of it was kept; delete s3://${remote.bucket}/${key} and push the image again`,
          b.digest,
          e.actualDigest ?? 'unknown',
        );
      }
      throw toRegistryError(err, remote.errorContext(`GET ${key}`));
    }
  };

  try {
    await Promise.all([store.init(), remote.checkBucket(signal)]);
    const tagWhere = `${registry}/${tagKey('', remoteRef)}`;
    const tagDoc = parseTagDocument((await remote.getSmall(tagKey(prefix, remoteRef), MAX_DOCUMENT_BYTES, () => new RemoteTagNotFoundError(remoteRef, registry), signal)).toString('utf8'), tagWhere);
    const manifestDesc = tagDoc.manifest;
    const manifestInfo: PullBlob = { digest: manifestDesc.digest, kind: 'manifest', sizeBytes: manifestDesc.size, mediaType: manifestDesc.mediaType };
    if (manifestDesc.size > MAX_MANIFEST_BYTES) throw new RegistryError(`${tagWhere} names a manifest of ${manifestDesc.size} bytes, too large to be one; push the image again`);

    // The manifest: from the local store if it is there intact, else fetched into memory.
    const manifestLocal = await verifiedLocally(store, manifestDesc.digest);
    let manifestBytes: Buffer;
    if (manifestLocal) {
      manifestBytes = await store.read(manifestDesc.digest);
    } else {
      manifestBytes = await remote.getSmall(blobKey(prefix, manifestDesc.digest), MAX_MANIFEST_BYTES, missingBlob(manifestInfo), signal);
      const actual = `sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`;
      if (actual !== manifestDesc.digest) {
        throw new DigestMismatchError(
          `manifest ${manifestDesc.digest} of ${remoteRef} in ${registry} is corrupt (hashes to ${actual}); delete s3://${remote.bucket}/${blobKey(prefix, manifestDesc.digest)} and push the image again`,
          manifestDesc.digest,
          actual,
        );
      }
    }
    const manifest = parseManifest(manifestBytes, manifestDesc.digest);
    // The digest matched, so these bytes are the manifest, whatever size the tag document claims.
    const manifestRef: Descriptor = { mediaType: manifestDesc.mediaType, digest: manifestDesc.digest, size: manifestBytes.length };

    const blobs: PullBlob[] = [];
    const seen = new Set<string>();
    for (const [d, kind] of [...manifest.layers.map((l) => [l, 'layer'] as const), [manifest.config, 'config'] as const]) {
      parseDigest(d.digest);
      if (seen.has(d.digest)) continue;
      seen.add(d.digest);
      blobs.push({ digest: d.digest, kind, sizeBytes: d.size, mediaType: d.mediaType });
    }

    let vmDisk: PullBlob | undefined;
    let vmDiskLocal = false;
    const vmDiskPath = typeof opts.vmDiskPath === 'function' ? opts.vmDiskPath(manifestDesc.digest) : opts.vmDiskPath;
    if (vmDiskPath !== undefined) {
      const key = vmDiskPointerKey(prefix, manifestDesc.digest);
      const pointer = parseVmDiskPointer(
        (
          await remote.getSmall(key, MAX_DOCUMENT_BYTES, () => new RemoteObjectMissingError(`${remoteRef} in ${registry} has no VM disk; push it with its VM disk, or pull without one`), signal)
        ).toString('utf8'),
        `${registry}/${key}`,
      );
      vmDisk = { digest: pointer.digest, kind: 'vm disk', sizeBytes: pointer.size, mediaType: MEDIA_TYPES.octet };
      vmDiskLocal = await fileHasDigest(vmDiskPath, pointer.digest, pointer.size, signal);
    }

    // What is already here, intact, is not fetched again.
    const local = await mapLimited(blobs, 2, (b) => verifiedLocally(store, b.digest), signal);
    const all: PullBlob[] = [...blobs, manifestInfo, ...(vmDisk ? [vmDisk] : [])];
    const isLocal = new Map<PullBlob, boolean>(blobs.map((b, i) => [b, local[i]!]));
    isLocal.set(manifestInfo, manifestLocal);
    if (vmDisk) isLocal.set(vmDisk, vmDiskLocal);
    const split = planTransfer(progress, { operation: 'pull', ref, registry: where }, all, (b) => isLocal.get(b) === true);
    const { missing } = split;

    const download = async (b: PullBlob, s?: AbortSignal) => {
      progress.start(b);
      if (b === manifestInfo) {
        // Already fetched and verified in memory; the store checks the digest once more.
        await store.putStream(Readable.from([manifestBytes]), b.mediaType, b.digest);
        progress.bytes(b, manifestBytes.length);
      } else if (b === vmDisk) {
        await fetchInto(b, (body) => writeVerifiedFile(body, vmDiskPath!, b, (n) => progress.bytes(b, n), s), s);
      } else {
        await fetchInto(
          b,
          async (body) => {
            // The store hashes (expectedDigest); the counter only reports and caps the size.
            const counter = new ByteCounter(b.sizeBytes, (n) => progress.bytes(b, n), { coalesceBytes: WRITE_CHUNK_BYTES });
            // pipe() does not pass errors on: a broken connection must fail the store's pipeline.
            body.on('error', (err) => counter.destroy(err));
            await store.putStream(body.pipe(counter), b.mediaType, b.digest).finally(() => counter.destroy());
          },
          s,
        );
      }
      progress.done(b);
    };
    const first = missing.filter((b) => b !== manifestInfo).sort((a, b) => b.sizeBytes - a.sizeBytes);
    await runLimited(first, remote.config.transfer.concurrency, download, signal);
    if (!manifestLocal) await download(manifestInfo, signal);
    signal?.throwIfAborted();
    await tagImage(store, ref, manifestRef);

    const durationMs = Math.round(performance.now() - t0);
    const result: PullResult = {
      ref,
      remoteRef,
      registry,
      manifest: manifestRef,
      bytesDownloaded: split.bytesMissing,
      bytesSkipped: split.bytesSkipped,
      blobsDownloaded: missing.length,
      blobsSkipped: split.skipped.length,
      durationMs,
    };
    if (vmDisk) result.vmDisk = { path: vmDiskPath!, digest: vmDisk.digest, sizeBytes: vmDisk.sizeBytes, downloaded: !vmDiskLocal };
    progress.finish(split.summary(durationMs));
    return result;
  } catch (err) {
    const e = signal?.aborted ? new TransferAbortedError(`pull of ${ref} from ${where} was interrupted; nothing was tagged; run it again: complete blobs are not fetched again`, { cause: err }) : err;
    progress.finish(undefined, e);
    throw e;
  }
}

function parseManifest(buf: Buffer, digest: string): ImageManifest {
  let m: ImageManifest | undefined;
  try {
    m = JSON.parse(buf.toString('utf8')) as ImageManifest;
  } catch {
    m = undefined;
  }
  if (m?.schemaVersion !== 2 || !m.config || !Array.isArray(m.layers)) {
    throw new RegistryError(`${digest} in the registry is not an OCI image manifest; only single-platform OCI images can be pulled`);
  }
  return m;
}

/** Present and intact; a present but corrupt blob is removed so the download can replace it. */
async function verifiedLocally(store: BlobStore, digest: string): Promise<boolean> {
  if (!(await store.has(digest))) return false;
  if (await store.verify(digest)) return true;
  await unlink(store.path(digest)).catch(() => undefined);
  return false;
}

async function fileHasDigest(path: string, digest: string, size: number, signal?: AbortSignal): Promise<boolean> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile() || st.size !== size) return false;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20, signal })) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}` === digest;
}

/** temp file next to `path` → verify → rename: `path` is either untouched or complete. */
async function writeVerifiedFile(body: Readable, path: string, b: BlobInfo, onBytes: (n: number) => void, signal?: AbortSignal): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const counter = new ByteCounter(b.sizeBytes, onBytes, { hash: true, coalesceBytes: WRITE_CHUNK_BYTES });
  try {
    await pipeline(body, counter, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }), { signal });
    const actual = `sha256:${counter.hex()}`;
    if (actual !== b.digest) throw Object.assign(new Error('digest mismatch'), { code: 'ERR_DIGEST_MISMATCH', actualDigest: actual });
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}
