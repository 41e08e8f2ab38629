import { existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { runChecked } from '../util/exec.js';
import { applyLayer } from './oci/index.js';
import type { Image, ImageStore } from './store.js';

/** Bytes used by a directory tree (files and symlinks), for sizing its disk. */
function treeBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    total += st.isDirectory() ? 4096 + treeBytes(p) : Math.max(st.size, 0) + 256;
  }
  return total;
}

/**
 * The image as a VM disk: its layers flattened into one tree, made into an ext4 filesystem
 * (`mkfs.ext4 -d`, no loop mount) and converted to a qcow2 base that every VM of this image
 * shares read-only through its own overlay. Cached by the manifest digest; built under a
 * temporary name and renamed, so a crash never leaves a half-made base behind.
 */
export async function ensureVmDisk(store: ImageStore, image: Image): Promise<string> {
  const base = store.vmDiskPath(image.digest);
  if (existsSync(base)) return base;
  mkdirSync(store.disksDir, { recursive: true });
  const tmp = join(store.disksDir, `.tmp-${process.pid}-${Date.now()}`);
  const raw = `${tmp}.raw`;
  const tree = `${tmp}.tree`;
  try {
    const { manifest } = await store.inspect(image.digest);
    mkdirSync(tree, { mode: 0o755 });
    for (const layer of manifest.layers) await applyLayer(store.blobs.path(layer.digest), tree);
    // Room for the files plus ext4 metadata, and some free space for the guest.
    const mib = Math.ceil((treeBytes(tree) * 1.3) / 1048576) + 64;
    await runChecked('mkfs.ext4', ['-q', '-F', '-L', 'hbxroot', '-E', 'root_owner=0:0', '-O', '^has_journal', '-d', tree, raw, `${mib}M`], 'mkfs.ext4');
    await runChecked('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, `${tmp}.qcow2`], 'qemu-img convert');
    renameSync(`${tmp}.qcow2`, base);
    return base;
  } finally {
    rmSync(tree, { recursive: true, force: true });
    rmSync(raw, { force: true });
    rmSync(`${tmp}.qcow2`, { force: true });
  }
}

/** A per-VM copy-on-write disk on top of the shared base. */
export async function createOverlay(base: string, path: string): Promise<void> {
  await runChecked('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', base, path], 'qemu-img create');
}
