import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { readMountinfo } from '../util/mountinfo.js';

/** A whole block device, as disk limits name it: the kernel throttles disks, not partitions. */
export interface BlockDevice {
  /** Its node under /dev, when one exists (e.g. /dev/vda). */
  path: string | null;
  major: number;
  minor: number;
}

const majorOf = (dev: number): number => Number((BigInt(dev) >> 8n) & 0xfffn);
const minorOf = (dev: number): number => Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & 0xfff00n));

export function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}

/**
 * The whole disk behind a device number: blk-throttle and io.max refuse a partition's
 * numbers (ENODEV), so a partition is walked up to its disk in sysfs.
 */
function wholeDisk(major: number, minor: number): BlockDevice | null {
  const sys = `/sys/dev/block/${major}:${minor}`;
  if (!existsSync(sys)) return null;
  let dir = realpathSync(sys);
  if (existsSync(`${dir}/partition`)) dir = dirname(dir);
  const [ma, mi] = readFileSync(`${dir}/dev`, 'utf8').trim().split(':').map(Number);
  const node = `/dev/${basename(dir)}`;
  return { path: isBlockDevice(node) ? node : null, major: ma!, minor: mi! };
}

/** The disk that a block device node (`/dev/vda1`) belongs to. */
export function diskOfNode(path: string): BlockDevice | null {
  try {
    const st = statSync(path);
    if (!st.isBlockDevice()) return null;
    return wholeDisk(majorOf(st.rdev), minorOf(st.rdev));
  } catch {
    return null;
  }
}

/**
 * The disk that holds `path`'s file system, or null when none does (tmpfs, overlayfs, a
 * network file system). File systems with anonymous device numbers (btrfs, a nested
 * overlay) are looked up through their mount's source device.
 */
export function diskBehind(path: string): BlockDevice | null {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch {
    return null;
  }
  const major = majorOf(st.dev);
  const minor = minorOf(st.dev);
  if (major !== 0) return wholeDisk(major, minor);
  const m = readMountinfo().find((e) => e.majorMinor === `${major}:${minor}`);
  return m?.source.startsWith('/dev/') ? diskOfNode(m.source) : null;
}

/** "254:0", as cgroup files and tc want a device. */
export const devNumbers = (d: BlockDevice): string => `${d.major}:${d.minor}`;
