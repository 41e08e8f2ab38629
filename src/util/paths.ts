import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

let cached: string | undefined;

/**
 * The package's root directory, found from this module's location, so the same code works
 * bundled (dist/cli.js) and from source under the test loader (src/...).
 */
export function packageRoot(): string {
  if (cached) return cached;
  // Not fileURLToPath: node:url costs a few ms to load on every CLI call.
  let dir = dirname(decodeURIComponent(new URL(import.meta.url).pathname));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'hybridbox') return (cached = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the hybridbox package root');
    dir = up;
  }
}

/**
 * The tools hybridbox drives (ip, mkfs.ext4, libvirtd, runc) live in sbin directories, which
 * some environments leave out of PATH. Added once, at the end, so a user's own order wins.
 */
export function ensureSbinOnPath(): void {
  const parts = (process.env.PATH ?? '').split(':').filter(Boolean);
  const missing = ['/usr/local/sbin', '/usr/sbin', '/sbin'].filter((d) => !parts.includes(d));
  if (missing.length) process.env.PATH = [...parts, ...missing].join(':');
}

/** Default state directory; tests point HYBRIDBOX_ROOT at a temporary one. */
export function stateRoot(): string {
  return process.env.HYBRIDBOX_ROOT ?? '/var/lib/hybridbox';
}

/**
 * Where slow-to-build artefacts live, outside any clone (kernels, initramfs, base and runtime
 * images, downloaded .debs), keyed by their inputs.
 */
export function cacheDir(): string {
  return process.env.HYBRIDBOX_CACHE ?? '/var/cache/hybridbox';
}
