// push: local OCI layout → registry. Order is what keeps readers safe: layers, config and VM
// disk first, the manifest once they are all complete, the VM disk pointer, the tag last.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { ImageNotFoundError } from '../errors.js';
import { listTags, readManifest, resolveTag, parseDigest, type BlobStore, type Descriptor } from '../images/oci/index.js';
import { RegistryError, TransferAbortedError } from './errors.js';
import { blobKey, normalizedRef, tagKey, vmDiskPointerKey, type TagDocument, type VmDiskPointer } from './layout.js';
import { planTransfer, silentProgress, type BlobInfo, type ProgressReporter } from './progress.js';
import type { S3Remote } from './s3.js';
import { mapLimited, runLimited } from './tasks.js';

export interface PushOptions {
  /** The local OCI image layout holding the image. */
  blobs: BlobStore;
  /** Local image, name[:tag] (tag defaults to latest). */
  ref: string;
  /** Name in the registry; defaults to `ref`. */
  remoteRef?: string;
  /** Also push this VM disk of the image (any file, e.g. its qcow2 base). */
  vmDisk?: { path: string };
  progress?: ProgressReporter;
  signal?: AbortSignal;
}

export interface PushResult {
  ref: string;
  remoteRef: string;
  registry: string;
  manifest: Descriptor;
  /** Blob bytes sent (tags and pointers, a few hundred bytes, are not counted). */
  bytesUploaded: number;
  /** Blob bytes the registry already had. */
  bytesSkipped: number;
  blobsUploaded: number;
  blobsSkipped: number;
  durationMs: number;
  vmDisk?: { digest: string; sizeBytes: number; uploaded: boolean };
}

interface PushBlob extends BlobInfo {
  contentType: string;
  /** Where the bytes are read from. */
  file: string;
}

const HEAD_CONCURRENCY = 8;

async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20, signal })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Every blob of the image as it is on disk, checked against the sizes its manifest declares. */
async function localBlobs(store: BlobStore, ref: string): Promise<{ manifest: Descriptor; blobs: PushBlob[] }> {
  const desc = await resolveTag(store, ref).catch(() => undefined);
  if (!desc)
    throw new ImageNotFoundError(
      ref,
      (await listTags(store).catch(() => [])).map((t) => t.ref),
    );
  const manifest = await readManifest(store, desc);
  const blobs: PushBlob[] = [];
  const seen = new Set<string>();
  const add = (d: Descriptor, kind: BlobInfo['kind']) => {
    if (seen.has(d.digest)) return;
    seen.add(d.digest);
    blobs.push({ digest: d.digest, kind, sizeBytes: d.size, contentType: d.mediaType, file: store.path(d.digest) });
  };
  for (const l of manifest.layers) add(l, 'layer');
  add(manifest.config, 'config');
  const manifestSize = await store.size(desc.digest);
  add({ ...desc, size: manifestSize }, 'manifest');
  await Promise.all(
    blobs.map(async (b) => {
      const size = await store.size(b.digest).catch(() => undefined);
      if (size === undefined) {
        throw new RegistryError(`local image ${ref} is incomplete: its ${b.kind} ${b.digest} is missing from ${store.layoutDir}; rebuild or re-pull the image`);
      }
      if (size !== b.sizeBytes) {
        throw new RegistryError(`local image ${ref} is corrupt: its ${b.kind} ${b.digest} has ${size} bytes, its manifest says ${b.sizeBytes}; rebuild or re-pull the image`);
      }
    }),
  );
  return { manifest: { mediaType: desc.mediaType, digest: desc.digest, size: manifestSize }, blobs };
}

export async function push(remote: S3Remote, opts: PushOptions): Promise<PushResult> {
  const t0 = performance.now();
  const progress = opts.progress ?? silentProgress;
  const { signal } = opts;
  const { prefix } = remote.config.url;
  const ref = normalizedRef(opts.ref);
  const remoteRef = normalizedRef(opts.remoteRef ?? opts.ref);
  const registry = remote.config.url.url;
  try {
    const [{ manifest, blobs }, vmDisk] = await Promise.all([localBlobs(opts.blobs, ref), opts.vmDisk ? localVmDisk(opts.vmDisk.path, signal) : undefined, remote.checkBucket(signal)]);
    const all = vmDisk ? [...blobs, vmDisk] : blobs;

    // HEAD everything first: the plan (and the dedup) is known before a byte is sent.
    const present = await mapLimited(
      all,
      HEAD_CONCURRENCY,
      async (b, s) => {
        const info = await remote.head(blobKey(prefix, b.digest), s);
        // Presence alone proves nothing (an interrupted PUT can leave a truncated object).
        return info !== undefined && info.size === b.sizeBytes && info.sha256 === parseDigest(b.digest);
      },
      signal,
    );
    const where = remoteRef === ref ? registry : `${registry} as ${remoteRef}`;
    const split = planTransfer(progress, { operation: 'push', ref, registry: where }, all, (_, i) => present[i]!);
    const { missing } = split;

    const upload = async (b: PushBlob, s?: AbortSignal) => {
      progress.start(b);
      await remote.putBlob({
        key: blobKey(prefix, b.digest),
        open: () => createReadStream(b.file, { highWaterMark: 1 << 20 }),
        sizeBytes: b.sizeBytes,
        sha256: parseDigest(b.digest),
        contentType: b.contentType,
        label: `${b.kind} ${b.digest}`,
        onBytes: (n) => progress.bytes(b, n),
        signal: s,
      });
      progress.done(b);
    };
    const manifestBlob = blobs.find((b) => b.kind === 'manifest')!;
    // Largest first: the long transfers start early and the tail stays short.
    const first = missing.filter((b) => b !== manifestBlob).sort((a, b) => b.sizeBytes - a.sizeBytes);
    await runLimited(first, remote.config.transfer.concurrency, upload, signal);
    if (missing.includes(manifestBlob)) await upload(manifestBlob, signal);

    if (vmDisk) {
      const pointer: VmDiskPointer = { digest: vmDisk.digest, size: vmDisk.sizeBytes };
      await remote.putSmall(vmDiskPointerKey(prefix, manifest.digest), Buffer.from(JSON.stringify(pointer)), 'application/json', undefined, signal);
    }
    const tag: TagDocument = { schemaVersion: 1, ref: remoteRef, manifest };
    signal?.throwIfAborted();
    await remote.putSmall(tagKey(prefix, remoteRef), Buffer.from(JSON.stringify(tag)), 'application/json', undefined, signal);

    const durationMs = Math.round(performance.now() - t0);
    const result: PushResult = {
      ref,
      remoteRef,
      registry,
      manifest,
      bytesUploaded: split.bytesMissing,
      bytesSkipped: split.bytesSkipped,
      blobsUploaded: missing.length,
      blobsSkipped: split.skipped.length,
      durationMs,
    };
    if (vmDisk) result.vmDisk = { digest: vmDisk.digest, sizeBytes: vmDisk.sizeBytes, uploaded: missing.includes(vmDisk) };
    progress.finish(split.summary(durationMs));
    return result;
  } catch (err) {
    const e = signal?.aborted
      ? new TransferAbortedError(`push of ${ref} to ${registry} was interrupted before its tag was written; run it again: complete blobs are not sent again`, { cause: err })
      : err;
    progress.finish(undefined, e);
    throw e;
  }
}

async function localVmDisk(path: string, signal?: AbortSignal): Promise<PushBlob> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'EISDIR' });
    size = st.size;
  } catch (err) {
    throw new RegistryError(`VM disk ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)}); build the image's VM disk first or fix the path`);
  }
  const digest = `sha256:${await sha256File(path, signal)}`;
  return { digest, kind: 'vm disk', sizeBytes: size, contentType: 'application/octet-stream', file: path };
}
