import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as fs from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { MEDIA_TYPES, type BlobStore, type Descriptor } from './blobs.js';

export interface Layer {
  descriptor: Descriptor;
  /** sha256 of the uncompressed tar: what the image config lists in rootfs.diff_ids. */
  diffId: string;
}

export interface CreateLayerOptions {
  store: BlobStore;
  /** Unpacked rootfs of the parent layer; when set, only the difference is archived. */
  base?: string;
  /**
   * `rootDir` is an overlayfs upper directory: its 0/0 character devices are deletions and
   * the directories listed here (paths relative to rootDir) were marked opaque. Both become
   * OCI whiteouts. Exclusive with `base`.
   */
  overlayUpper?: { opaqueDirs: ReadonlySet<string> };
  /** Paths (relative to rootDir) left out when they are an empty file or directory: mount points a runtime made. */
  exclude?: ReadonlySet<string>;
  /** Seconds since the epoch stamped on every entry; fixed so rebuilds are byte-identical. */
  mtime?: number;
}

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';

// ---------------------------------------------------------------------------
// tar writing. Hand-rolled rather than node-tar's Pack because Pack's `portable`
// mode drops uid/gid, and without it Pack emits uname/gname and host timestamps.

interface TarHeader {
  path: string;
  type: '0' | '1' | '2' | '5' | 'x';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkpath?: string;
}

const BLOCK = 512;
const MAX_OCTAL_7 = 0o7777777;
const MAX_OCTAL_11 = 0o77777777777;

function octal(value: number, width: number): string {
  // width-1 digits plus a NUL terminator: the form every tar reader accepts.
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

function encodeHeader(h: TarHeader): Buffer {
  const buf = Buffer.alloc(BLOCK);
  const put = (offset: number, len: number, s: string) => buf.write(s, offset, len, 'utf8');
  put(0, 100, h.path);
  put(100, 8, octal(h.mode & 0o7777, 8));
  put(108, 8, octal(h.uid > MAX_OCTAL_7 ? 0 : h.uid, 8));
  put(116, 8, octal(h.gid > MAX_OCTAL_7 ? 0 : h.gid, 8));
  put(124, 12, octal(h.size > MAX_OCTAL_11 ? 0 : h.size, 12));
  put(136, 12, octal(Math.min(h.mtime, MAX_OCTAL_11), 12));
  put(148, 8, '        ');
  put(156, 1, h.type);
  put(157, 100, h.linkpath ?? '');
  put(257, 6, 'ustar\0');
  put(263, 2, '00');
  // uname/gname stay empty: ids are authoritative and host user names would leak in.
  put(329, 8, octal(0, 8));
  put(337, 8, octal(0, 8));
  let sum = 0;
  for (const b of buf) sum += b;
  put(148, 8, sum.toString(8).padStart(6, '0') + '\0 ');
  return buf;
}

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  // The length prefix counts its own digits, so settle it by iteration.
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

const isAscii = (s: string) => /^[\x20-\x7e]*$/.test(s);

function padding(size: number): Buffer {
  const rem = size % BLOCK;
  return Buffer.alloc(rem === 0 ? 0 : BLOCK - rem);
}

/** Header blocks for one entry, preceded by a pax header when ustar cannot hold a field. */
function headerBlocks(h: TarHeader): Buffer[] {
  const records: string[] = [];
  if (Buffer.byteLength(h.path) > 100 || !isAscii(h.path)) records.push(paxRecord('path', h.path));
  if (h.linkpath !== undefined && (Buffer.byteLength(h.linkpath) > 100 || !isAscii(h.linkpath))) records.push(paxRecord('linkpath', h.linkpath));
  if (h.uid > MAX_OCTAL_7) records.push(paxRecord('uid', String(h.uid)));
  if (h.gid > MAX_OCTAL_7) records.push(paxRecord('gid', String(h.gid)));
  if (h.size > MAX_OCTAL_11) records.push(paxRecord('size', String(h.size)));
  const out: Buffer[] = [];
  if (records.length > 0) {
    const body = Buffer.from(records.join(''), 'utf8');
    out.push(encodeHeader({ path: 'PaxHeader', type: 'x', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: h.mtime }), body, padding(body.length));
  }
  // Truncated names in the ustar header are harmless: pax-aware readers use the record.
  out.push(encodeHeader({ ...h, path: truncateUtf8(h.path, 100), linkpath: h.linkpath && truncateUtf8(h.linkpath, 100) }));
  return out;
}

/** An ASCII stand-in for fields that a pax record carries in full. */
function truncateUtf8(s: string, bytes: number): string {
  return isAscii(s) && s.length <= bytes ? s : s.replace(/[^\x20-\x7e]/g, '_').slice(0, bytes);
}

// ---------------------------------------------------------------------------
// tree walking / diffing

const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function hashFile(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(p)) h.update(chunk as Buffer);
  return h.digest('hex');
}

type Kind = 'file' | 'dir' | 'symlink' | 'other';
function kindOf(st: Stats): Kind {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  return 'other';
}

async function unchanged(newPath: string, n: Stats, basePath: string, b: Stats): Promise<boolean> {
  const kind = kindOf(n);
  if (kind !== kindOf(b) || n.uid !== b.uid || n.gid !== b.gid) return false;
  switch (kind) {
    case 'dir':
      return (n.mode & 0o7777) === (b.mode & 0o7777);
    case 'symlink':
      return (await readlink(newPath)) === (await readlink(basePath));
    case 'file':
      if ((n.mode & 0o7777) !== (b.mode & 0o7777) || n.size !== b.size) return false;
      // mtime is deliberately ignored: a rebuild that rewrites identical bytes is not a change.
      return (await hashFile(newPath)) === (await hashFile(basePath));
    default:
      return true;
  }
}

const isOverlayWhiteout = (st: Stats): boolean => st.isCharacterDevice() && st.rdev === 0;

async function* tarEntries(root: string, opts: CreateLayerOptions): AsyncGenerator<Buffer> {
  const { base, overlayUpper: upper, exclude } = opts;
  const mtime = opts.mtime ?? 0;
  // Hard links are only emitted against a path already written in this same layer;
  // otherwise the link would dangle when the layer is applied on its own.
  const inodes = new Map<string, string>();

  async function* emit(rel: string, abs: string, st: Stats): AsyncGenerator<Buffer> {
    const common = { mode: st.mode, uid: st.uid, gid: st.gid, mtime };
    if (st.isDirectory()) {
      yield* headerBlocks({ ...common, path: `${rel}/`, type: '5', size: 0 });
    } else if (st.isSymbolicLink()) {
      yield* headerBlocks({ ...common, path: rel, type: '2', size: 0, linkpath: await readlink(abs) });
    } else if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? inodes.get(key) : undefined;
      if (first !== undefined) {
        yield* headerBlocks({ ...common, path: rel, type: '1', size: 0, linkpath: first });
        return;
      }
      if (st.nlink > 1) inodes.set(key, rel);
      yield* headerBlocks({ ...common, path: rel, type: '0', size: st.size });
      let written = 0;
      for await (const chunk of createReadStream(abs)) {
        written += (chunk as Buffer).length;
        if (written > st.size) break;
        yield chunk as Buffer;
      }
      // The header already promised st.size bytes; a file that changed underneath us would corrupt the stream.
      if (written !== st.size) throw new Error(`${abs} changed size while being archived`);
      yield padding(st.size);
    }
    // Sockets, FIFOs and device nodes are not image content; they are skipped.
  }

  async function* walk(relDir: string, newDir: string, baseDir: string | null): AsyncGenerator<Buffer> {
    const names = new Set(await readdir(newDir));
    const baseNames = baseDir ? await readdir(baseDir).catch(() => [] as string[]) : [];
    type Item = { key: string; name: string; deleted: boolean };
    const items: Item[] = [];
    for (const name of names) {
      const deleted = upper !== undefined && isOverlayWhiteout(await lstat(join(newDir, name)));
      items.push({ key: deleted ? WHITEOUT_PREFIX + name : name, name, deleted });
    }
    for (const name of baseNames) if (!names.has(name)) items.push({ key: WHITEOUT_PREFIX + name, name, deleted: true });
    if (upper?.opaqueDirs.has(relDir)) items.push({ key: OPAQUE_WHITEOUT, name: '', deleted: true });
    items.sort((a, b) => byteOrder(a.key, b.key));

    for (const item of items) {
      const rel = relDir ? `${relDir}/${item.name}` : item.name;
      if (item.deleted) {
        const wh = relDir ? `${relDir}/${item.key}` : item.key;
        yield* headerBlocks({ path: wh, type: '0', mode: 0o644, uid: 0, gid: 0, size: 0, mtime });
        continue;
      }
      const abs = join(newDir, item.name);
      const st = await lstat(abs);
      if (exclude?.has(rel) && (st.isDirectory() ? (await readdir(abs)).length === 0 : st.size === 0)) continue;
      const baseAbs = baseDir ? join(baseDir, item.name) : null;
      const bst = baseAbs ? await lstatOrNull(baseAbs) : null;
      const same = bst && baseAbs ? await unchanged(abs, st, baseAbs, bst) : false;
      if (!same) yield* emit(rel, abs, st);
      if (st.isDirectory()) {
        // Only descend into the base when it is still a directory there; a file-to-dir
        // change means every child is new.
        yield* walk(rel, abs, bst?.isDirectory() ? baseAbs : null);
      }
    }
  }

  yield* walk('', root, base ?? null);
  yield Buffer.alloc(BLOCK * 2);
}

/** Archives `rootDir` (or its difference from `base`) as a reproducible gzip layer in the store. */
export async function createLayer(rootDir: string, opts: CreateLayerOptions): Promise<Layer> {
  const diff = createHash('sha256');
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      diff.update(chunk);
      cb(null, chunk);
    },
  });
  const gz = createGzip({ level: 6 });
  const packed = pipeline(Readable.from(tarEntries(rootDir, opts)), tap, gz);
  const [, descriptor] = await Promise.all([packed, opts.store.putStream(gz, MEDIA_TYPES.layerGzip)]);
  return { descriptor, diffId: `sha256:${diff.digest('hex')}` };
}

// ---------------------------------------------------------------------------
// applying

export class LayerEscapeError extends Error {
  constructor(entryPath: string, why: string) {
    super(`refusing layer entry ${JSON.stringify(entryPath)}: ${why}`);
    this.name = 'LayerEscapeError';
  }
}

/** Splits an archive path into safe components, or throws if it could leave the target. */
function safeComponents(raw: string): string[] {
  // umoci writes the layer's root directory itself as "/": it names the target, not a path outside it.
  if (/^\/+$/.test(raw)) return [];
  if (raw.startsWith('/')) throw new LayerEscapeError(raw, 'absolute path');
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new LayerEscapeError(raw, 'contains ".."');
  return parts;
}

function lstatSyncOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Makes sure every parent of `parts` is a real directory inside `target`.
 * A symlinked parent is refused outright: following it is how a layer writes outside the rootfs.
 */
function ensureParents(target: string, parts: string[], raw: string): string {
  let dir = target;
  for (const part of parts.slice(0, -1)) {
    dir = join(dir, part);
    const st = lstatSyncOrNull(dir);
    if (!st) fs.mkdirSync(dir, { mode: 0o755 });
    else if (st.isSymbolicLink()) throw new LayerEscapeError(raw, `parent ${part} is a symlink`);
    else if (!st.isDirectory()) throw new LayerEscapeError(raw, `parent ${part} is not a directory`);
  }
  return dir;
}

const isRoot = process.getuid?.() === 0;

function own(p: string, entry: ReadEntry): void {
  // Unprivileged unpacking cannot chown; ids are kept only when we can honour them.
  if (isRoot && entry.uid !== undefined && entry.gid !== undefined) fs.lchownSync(p, entry.uid, entry.gid);
}

function removeExisting(p: string, keepDir: boolean): void {
  const st = lstatSyncOrNull(p);
  if (!st || (keepDir && st.isDirectory())) return;
  fs.rmSync(p, { recursive: true, force: true });
}

/** Whiteouts met while unpacking a layer on its own, as paths relative to the target. */
export interface LayerMarks {
  deleted: string[];
  opaqueDirs: string[];
}

export interface ApplyLayerOptions {
  /**
   * `apply` (default) deletes what whiteouts name in `targetDir`: flattening layers into one
   * tree. `record` leaves them out and returns them, for a layer unpacked into its own
   * directory (an overlayfs lower layer, where they become 0/0 devices and opaque xattrs).
   */
  whiteouts?: 'apply' | 'record';
}

/**
 * Unpacks a (gzip or plain) tar layer onto `targetDir`, applying OCI whiteouts.
 * The first unsafe entry rejects the promise and stops extraction; entries before it stay applied.
 */
export function applyLayer(blobPath: string, targetDir: string, opts: ApplyLayerOptions = {}): Promise<LayerMarks> {
  fs.mkdirSync(targetDir, { recursive: true });
  // Paths this layer itself created: an opaque marker hides only lower layers, not these.
  const created = new Set<string>();
  const marks: LayerMarks = { deleted: [], opaqueDirs: [] };
  const record = opts.whiteouts === 'record';

  return new Promise<LayerMarks>((resolve, reject) => {
    let failed = false;
    const input = createReadStream(blobPath);
    // The default ratio cap (1000) sits below gzip's own ceiling (~1032:1), so it rejects
    // legitimate layers holding large zero-filled files such as preallocated disk images.
    const parser = new Parser({ strict: true, maxDecompressionRatio: Infinity });
    const fail = (err: unknown) => {
      if (failed) return;
      failed = true;
      input.destroy();
      reject(err);
    };

    parser.on('entry', (entry: ReadEntry) => {
      if (failed) return entry.resume();
      try {
        applyEntry(entry);
      } catch (err) {
        entry.resume();
        fail(err);
      }
    });
    // umoci 0.4 ends a layer right after the last file's data, without its padding and the
    // end-of-archive blocks. That is the one truncation accepted: only if no data is missing.
    let shortTail: ReadEntry | undefined;
    parser.on('error', (err: Error & { code?: string; entry?: ReadEntry }) => {
      if (err.code === 'TAR_BAD_ARCHIVE' && err.entry && shortTail === undefined) shortTail = err.entry;
      else fail(err);
    });
    input.on('error', fail);
    parser.on('end', () => {
      if (shortTail && shortTail.remain > 0) fail(new Error(`layer ${blobPath} is truncated inside ${JSON.stringify(shortTail.path)}`));
      if (!failed) resolve(marks);
    });
    input.pipe(parser as unknown as NodeJS.WritableStream);

    function applyEntry(entry: ReadEntry): void {
      const raw = entry.path;
      const parts = safeComponents(raw);
      if (parts.length === 0) return void entry.resume();
      const rel = parts.join('/');
      const parent = ensureParents(targetDir, parts, raw);
      const name = parts[parts.length - 1]!;
      const dest = join(parent, name);

      if (name === OPAQUE_WHITEOUT) {
        const parentRel = parts.slice(0, -1).join('/');
        if (record) {
          marks.opaqueDirs.push(parentRel);
          return void entry.resume();
        }
        for (const child of fs.readdirSync(parent)) {
          const childRel = parentRel ? `${parentRel}/${child}` : child;
          if (!created.has(childRel)) fs.rmSync(join(parent, child), { recursive: true, force: true });
        }
        return void entry.resume();
      }
      if (name.startsWith(WHITEOUT_PREFIX)) {
        const victim = name.slice(WHITEOUT_PREFIX.length);
        if (victim === '' || victim === '.' || victim === '..') throw new LayerEscapeError(raw, 'bad whiteout');
        if (record) {
          marks.deleted.push(parts.slice(0, -1).concat(victim).join('/'));
          return void entry.resume();
        }
        fs.rmSync(join(parent, victim), { recursive: true, force: true });
        return void entry.resume();
      }

      const mode = (entry.mode ?? 0o644) & 0o7777;
      switch (entry.type) {
        case 'Directory': {
          removeExisting(dest, true);
          if (!lstatSyncOrNull(dest)) fs.mkdirSync(dest, { mode: 0o700 });
          own(dest, entry);
          fs.chmodSync(dest, mode);
          entry.resume();
          break;
        }
        case 'File':
        case 'OldFile':
        case 'ContiguousFile': {
          removeExisting(dest, false);
          // 'wx' plus the parent check above means the write can never land behind a symlink.
          const fd = fs.openSync(dest, 'wx', 0o600);
          entry.on('data', (chunk: Buffer) => {
            if (failed) return;
            try {
              fs.writeSync(fd, chunk);
            } catch (err) {
              fail(err);
            }
          });
          entry.on('end', () => {
            try {
              if (isRoot && entry.uid !== undefined && entry.gid !== undefined) fs.fchownSync(fd, entry.uid, entry.gid);
              // fchmod after chown: chown clears setuid/setgid bits.
              fs.fchmodSync(fd, mode);
              if (entry.mtime) fs.futimesSync(fd, entry.mtime, entry.mtime);
            } catch (err) {
              fail(err);
            } finally {
              fs.closeSync(fd);
            }
          });
          break;
        }
        case 'SymbolicLink': {
          removeExisting(dest, false);
          // The link target is stored verbatim; it is never followed while unpacking.
          fs.symlinkSync(entry.linkpath ?? '', dest);
          own(dest, entry);
          entry.resume();
          break;
        }
        case 'Link': {
          const linkParts = safeComponents(entry.linkpath ?? '');
          if (linkParts.length === 0) throw new LayerEscapeError(raw, 'empty hard link target');
          const srcParent = ensureParents(targetDir, linkParts, raw);
          const src = join(srcParent, linkParts[linkParts.length - 1]!);
          const sst = lstatSyncOrNull(src);
          if (!sst || sst.isDirectory()) throw new LayerEscapeError(raw, 'hard link target missing or a directory');
          removeExisting(dest, false);
          fs.linkSync(src, dest);
          entry.resume();
          break;
        }
        default:
          // Devices and FIFOs cannot be created portably from Node; they are skipped.
          entry.resume();
          return;
      }
      created.add(rel);
    }
  });
}
