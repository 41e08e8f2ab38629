import { chmodSync, copyFileSync, lstatSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HostCapabilityError } from '../../errors.js';
import { run } from '../../util/exec.js';
import { createLayer } from '../oci/index.js';
import type { ImageStore } from '../store.js';

const BUSYBOX = '/bin/busybox';
/** Every entry's mtime, in seconds: fixed, so the same busybox gives the same digest anywhere. */
export const BASE_EPOCH = Date.UTC(2024, 0, 1) / 1000;

/** Builds the `busybox` base image from the host's busybox-static: one layer, reproducible. */
export async function buildBusyboxImage(store: ImageStore, ref = 'busybox:latest'): Promise<string> {
  try {
    lstatSync(BUSYBOX);
  } catch {
    throw new HostCapabilityError(`${BUSYBOX} is missing; install it with \`apt-get install busybox-static\``);
  }
  const { stdout } = await run(BUSYBOX, ['--list-full']);
  const applets = stdout.split('\n').filter(Boolean);
  const root = mkdtempSync(join(store.dir, `.busybox-${process.pid}-`));
  try {
    chmodSync(root, 0o755);
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'root', 'home', 'var/tmp', 'run', 'mnt']) {
      mkdirSync(join(root, d), { recursive: true, mode: 0o755 });
    }
    chmodSync(join(root, 'tmp'), 0o1777);
    chmodSync(join(root, 'var/tmp'), 0o1777);
    chmodSync(join(root, 'root'), 0o700);
    copyFileSync(BUSYBOX, join(root, 'bin/busybox'));
    chmodSync(join(root, 'bin/busybox'), 0o755);
    for (const a of applets) {
      if (a === 'bin/busybox') continue;
      const depth = a.split('/').length - 1;
      try {
        symlinkSync(`${'../'.repeat(depth)}bin/busybox`, join(root, a));
      } catch {
        /* an applet listed under two names */
      }
    }
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
    writeFileSync(join(root, 'etc/hosts'), '127.0.0.1 localhost\n');
    writeFileSync(join(root, 'etc/hostname'), 'sandbox\n');
    const layer = await createLayer(root, { store: store.blobs, mtime: BASE_EPOCH });
    const manifest = await store.commit(
      [ref],
      [layer],
      {
        cmd: ['/bin/sh'],
        entrypoint: [],
        env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
        workdir: '/',
        user: '',
        labels: {},
      },
      { created: new Date(BASE_EPOCH * 1000).toISOString() },
    );
    return manifest.digest;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
