// The registry's layout under its prefix (s3://bucket/prefix/...):
//
//   blobs/sha256/<hex>          every blob: layers, image configs, manifests, VM disks.
//                               Content-addressed; written only under its own sha256, with
//                               metadata `sha256=<hex>` (x-amz-meta-sha256); never overwritten
//                               once complete. An object whose size or metadata is wrong (an
//                               interrupted upload) counts as absent and is uploaded again.
//   tags/<name>/<tag>           a small JSON document: { schemaVersion, ref, manifest: Descriptor }.
//                               Written last by a push, so a tag never names missing blobs.
//   vmdisks/<manifest-hex>      a small JSON pointer { digest, size } to the VM disk blob of
//                               the image whose manifest has that sha256.
//
// Readers trust nothing they fetch: every blob is hashed while it streams, and the tag and
// pointer documents are checked for shape before their digests are used.
import { parseDigest, type Descriptor } from '../images/oci/index.js';
import { checkRef } from '../images/store.js';
import { RegistryConfigError, RegistryRequestError } from './errors.js';

export function blobKey(prefix: string, digest: string): string {
  return join(prefix, `blobs/sha256/${parseDigest(digest)}`);
}

/** `name:tag` (normalised: a missing tag is `latest`) → `tags/<name>/<tag>`. */
export function tagKey(prefix: string, ref: string): string {
  const full = normalizedRef(ref);
  const i = full.lastIndexOf(':');
  return join(prefix, `tags/${full.slice(0, i)}/${full.slice(i + 1)}`);
}

export function vmDiskPointerKey(prefix: string, manifestDigest: string): string {
  return join(prefix, `vmdisks/${parseDigest(manifestDigest)}`);
}

export function normalizedRef(ref: string): string {
  try {
    return checkRef(ref, 'image');
  } catch (err) {
    throw new RegistryConfigError((err as Error).message);
  }
}

function join(prefix: string, rest: string): string {
  return prefix ? `${prefix}/${rest}` : rest;
}

export interface TagDocument {
  schemaVersion: 1;
  ref: string;
  manifest: Descriptor;
}

export interface VmDiskPointer {
  digest: string;
  size: number;
}

/** Small JSON documents (tags, pointers) larger than this are refused unread. */
export const MAX_DOCUMENT_BYTES = 1 << 20;

function bad(what: string, where: string): RegistryRequestError {
  return new RegistryRequestError(`${where} is not a valid ${what} document; push the image again to rewrite it`);
}

function checkDescriptorLike(d: unknown): d is { digest: string; size: number } {
  if (!d || typeof d !== 'object') return false;
  const { digest, size } = d as Record<string, unknown>;
  if (typeof digest !== 'string' || typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) return false;
  try {
    parseDigest(digest);
    return true;
  } catch {
    return false;
  }
}

function parseJson(text: string, what: string, where: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw bad(what, where);
  }
}

export function parseTagDocument(text: string, where: string): TagDocument {
  const d = parseJson(text, 'tag', where) as Partial<TagDocument> | null;
  if (d?.schemaVersion !== 1 || typeof d.ref !== 'string' || !checkDescriptorLike(d.manifest) || typeof d.manifest.mediaType !== 'string') {
    throw bad('tag', where);
  }
  return { schemaVersion: 1, ref: d.ref, manifest: { mediaType: d.manifest.mediaType, digest: d.manifest.digest, size: d.manifest.size } };
}

export function parseVmDiskPointer(text: string, where: string): VmDiskPointer {
  const doc = parseJson(text, 'VM disk pointer', where);
  if (!checkDescriptorLike(doc)) throw bad('VM disk pointer', where);
  return { digest: doc.digest, size: doc.size };
}
