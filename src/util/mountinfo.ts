import { readFileSync } from 'node:fs';

/** One line of /proc/<pid>/mountinfo (proc(5)), with the kernel's octal escapes undone. */
export interface MountEntry {
  /** The file system's device number, "major:minor" (st_dev of files in it). */
  majorMinor: string;
  /** The directory of the mounted filesystem that is the root of this mount. */
  root: string;
  mountPoint: string;
  /** Per-mount options: rw, nosuid, relatime, ... */
  options: string[];
  fstype: string;
  source: string;
  /** Per-superblock options; on a cgroup v1 hierarchy these name its controllers. */
  superOptions: string[];
}

/** The kernel writes space, tab, newline and backslash in paths as \040, \011, \012 and \134. */
export const unescapeMountField = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Parses mountinfo text; lines that are not mount entries are skipped. */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    // Optional fields (shared:N, master:N) come before the separator, so count from both ends.
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const [, , majorMinor, root, mountPoint, options] = line.slice(0, sep).split(' ');
    const [fstype, source, superOptions] = line.slice(sep + 3).split(' ');
    if (root === undefined || mountPoint === undefined || fstype === undefined) continue;
    out.push({
      majorMinor: majorMinor ?? '',
      root: unescapeMountField(root),
      mountPoint: unescapeMountField(mountPoint),
      options: (options ?? '').split(',').filter(Boolean),
      fstype: unescapeMountField(fstype),
      source: unescapeMountField(source ?? ''),
      superOptions: (superOptions ?? '').split(',').filter(Boolean),
    });
  }
  return out;
}

/** The mounts this process sees. */
export function readMountinfo(path = '/proc/self/mountinfo'): MountEntry[] {
  return parseMountinfo(readFileSync(path, 'utf8'));
}
