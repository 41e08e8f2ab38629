import { existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { HostError } from '../errors.js';
import { run } from '../util/exec.js';
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

async function must(file: string, args: string[], what: string): Promise<void> {
  const r = await run(file, args);
  if (r.exitCode !== 0) throw new HostError(`${what} failed: ${(r.stderr || r.stdout).trim().split('\n').pop()}`);
}

/**
 * The image as a VM disk: an ext4 filesystem made from the unpacked root filesystem
 * (`mkfs.ext4 -d`, no loop mount), converted to a qcow2 base that every VM of this image
 * shares read-only through its own overlay. Cached by the image digest; built under a
 * temporary name and renamed, so a crash never leaves a half-made base behind.
 */
export async function ensureVmDisk(store: ImageStore, image: Image): Promise<string> {
  const dir = join(store.dir, 'disks');
  const base = join(dir, `${image.digest.replace(':', '-')}.qcow2`);
  if (existsSync(base)) return base;
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `.tmp-${process.pid}-${Date.now()}`);
  const raw = `${tmp}.raw`;
  try {
    // Room for the files plus ext4 metadata and journal, and some free space for the guest.
    const mib = Math.ceil((treeBytes(image.rootfs) * 1.3) / 1048576) + 64;
    await must('mkfs.ext4', ['-q', '-F', '-L', 'hbxroot', '-E', 'root_owner=0:0', '-O', '^has_journal', '-d', image.rootfs, raw, `${mib}M`], 'mkfs.ext4');
    await must('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, `${tmp}.qcow2`], 'qemu-img convert');
    renameSync(`${tmp}.qcow2`, base);
    return base;
  } finally {
    rmSync(raw, { force: true });
    rmSync(`${tmp}.qcow2`, { force: true });
  }
}

/** A per-VM copy-on-write disk on top of the shared base. */
export async function createOverlay(base: string, path: string): Promise<void> {
  await must('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', base, path], 'qemu-img create');
}
