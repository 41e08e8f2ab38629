import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HostCapabilityError } from '../../errors.js';
import { cacheDir } from '../../util/paths.js';

/** What a VM boots: written by the set-up step (scripts/setup.sh) after building both. */
export interface GuestBoot {
  /** ELF vmlinux with a PVH entry: QEMU boots it directly on microvm, pc and q35. */
  kernel: string;
  initrd: string;
  /** 'custom' = built from kernels/hybridbox-guest.config; 'debian' = the distro fallback (modules in the initrd). */
  flavour: 'custom' | 'debian';
  kernelRelease: string;
}

export function guestBootFile(): string {
  return join(cacheDir(), 'guest-boot.json');
}

let cached: GuestBoot | null | undefined;

/** The guest kernel and initramfs, or null when the set-up step has not built them. */
export function findGuestBoot(): GuestBoot | null {
  if (cached !== undefined) return cached;
  try {
    const b = JSON.parse(readFileSync(guestBootFile(), 'utf8')) as GuestBoot;
    cached = existsSync(b.kernel) && existsSync(b.initrd) ? b : null;
  } catch {
    cached = null;
  }
  return cached;
}

export function requireGuestBoot(): GuestBoot {
  const b = findGuestBoot();
  if (!b) throw new HostCapabilityError(`no guest kernel: ${guestBootFile()} is missing or stale; run \`npm run setup\` to build the kernel and initramfs`);
  return b;
}
