// Who may read what under the state root. Specs (with their env values), logs, exit records,
// VM files and image metadata are the owner's alone. Other users get one thing only: passage
// (--x, never a listing) along the path a sandbox with a user namespace walks as an unmapped
// uid to reach its rootfs mount point: the root, sandboxes/, the container's own directory.
// Everything else is 0700/0600, whatever the umask of the process that made it.
import { chmodSync, closeSync, lstatSync, mkdirSync, openSync, readdirSync, statSync, type Stats } from 'node:fs';
import { join } from 'node:path';

/** Mode of the directories on a user-namespace sandbox's path to its rootfs. */
export const TRAVERSE_MODE = 0o711;

/** Directories hybridbox fills later: made private up front, so that no later `mkdir -p` picks their mode. */
const PRIVATE_DIRS = ['images', 'cache'];

/** Entries of a container's directory that must keep their mode: the rootfs mount point and a pre-overlay/ upper (the sandbox's "/"). */
const SANDBOX_KEEP = new Set(['rootfs', 'upper']);

/**
 * Makes (or repairs) a state root: the root and sandboxes/ traversable only, every other entry
 * of the root private, and in each sandbox directory the files private. Roots made before this
 * had state.db, logs and config.json (with env values) at 0644: those are narrowed here, except
 * a container's pre-overlay/ upper directory, which is its running "/" (0755).
 * The user's registry.json is left alone: it is refused until its owner fixes it (registry/).
 */
export function preparePrivateRoot(root: string): void {
  mkdirSync(root, { recursive: true, mode: 0o700 });
  setMode(root, TRAVERSE_MODE);
  const sandboxes = join(root, 'sandboxes');
  mkdirSync(sandboxes, { recursive: true, mode: 0o700 });
  setMode(sandboxes, TRAVERSE_MODE);
  for (const d of PRIVATE_DIRS) mkdirSync(join(root, d), { recursive: true, mode: 0o700 });
  // Walking every sandbox costs ~60 us each on every CLI call; only a root made before modes
  // were kept private needs it, and its state.db (0644 then, 0600 since) tells. The database
  // is narrowed last, so that an interrupted repair is done again.
  const db = lstatOrNull(join(root, 'state.db'));
  if (db && db.mode & 0o077) for (const id of readdirSync(sandboxes)) prepareSandboxDir(join(sandboxes, id));
  for (const name of readdirSync(root)) {
    if (name === 'sandboxes' || name === 'registry.json') continue;
    narrow(join(root, name));
  }
}

/**
 * A sandbox directory keeps its execute bits (a container's must be traversable, and one being
 * created right now may not have its rootfs yet), loses read and write for others, and holds
 * only private entries. A VM's directory (it has a disk) is never entered by anyone else.
 */
function prepareSandboxDir(dir: string): void {
  const st = lstatOrNull(dir);
  if (!st?.isDirectory()) return;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  const perm = st.mode & 0o7777;
  const want = names.includes('disk.qcow2') ? perm & 0o700 : perm & ~0o066;
  if (want !== perm) chmodIfPresent(dir, want);
  for (const name of names) if (!SANDBOX_KEEP.has(name)) narrow(join(dir, name));
}

/** Removes group and other bits from a file or directory (not its contents; symlinks are left). */
function narrow(path: string): void {
  const st = lstatOrNull(path);
  if (!st || st.isSymbolicLink()) return;
  const perm = st.mode & 0o7777;
  if (perm & 0o077) chmodIfPresent(path, perm & 0o700);
}

function setMode(path: string, mode: number): void {
  if ((statSync(path).mode & 0o7777) !== mode) chmodSync(path, mode);
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

// Another process may remove a sandbox while this one walks the root.
function chmodIfPresent(path: string, mode: number): void {
  try {
    chmodSync(path, mode);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** Creates a file that only its owner can read, whatever the umask; an existing one is narrowed. */
export function ensurePrivateFile(path: string): void {
  closeSync(openSync(path, 'a', 0o600));
  narrow(path);
}
