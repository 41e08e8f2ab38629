import { readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readMountinfo } from './mountinfo.js';
import { isSameProcessAlive } from './proc.js';

/** Paths mounted at or below `dir`: a tree with any must never be removed recursively. */
export function mountsUnder(dir: string): string[] {
  const prefix = resolve(dir);
  return readMountinfo()
    .map((m) => m.mountPoint)
    .filter((p) => p === prefix || p.startsWith(`${prefix}/`));
}

/** Removes a tree, unless something is still mounted inside it (then it is left alone). */
export function discardTree(dir: string): boolean {
  if (mountsUnder(dir).length > 0) return false;
  rmSync(dir, { recursive: true, force: true });
  return true;
}

// Temporary entries carry their writer's pid: `.stage-<pid>-…`, `.tmp-<pid>-…`, `x.tmp-<pid>-…`.
const TEMP_RE = /^\.[a-z]+-(\d+)-|\.tmp-(\d+)-/;

/**
 * Removes the temporary files and directories in `dirs` whose writer has died (a kill -9
 * half-way through a build, an import, a pull). Entries of live processes are left alone.
 */
export function sweepStaleTemps(dirs: string[]): number {
  let removed = 0;
  for (const dir of dirs) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      const m = name.startsWith('.') ? TEMP_RE.exec(name) : null;
      const pid = Number(m?.[1] ?? m?.[2]);
      if (!m || !pid || isSameProcessAlive(pid, null)) continue;
      if (discardTree(join(dir, name))) removed++;
    }
  }
  return removed;
}
