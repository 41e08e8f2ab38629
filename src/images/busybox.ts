import { run } from '../util/exec.js';
import { chmodSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, utimesSync, writeFileSync, copyFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { HostError } from '../errors.js';
import { type Image, type ImageStore, sha256 } from './store.js';

const BUSYBOX = '/bin/busybox';
// A fixed timestamp makes the tree, and so its digest, the same on every machine.
const EPOCH = new Date('2024-01-01T00:00:00Z');

/**
 * Digest of a directory tree: every entry's path, type, mode, and content or link target,
 * in sorted order. The same files give the same digest wherever and whenever built.
 */
export function treeDigest(dir: string): string {
  const lines: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = lstatSync(p);
      const rel = relative(dir, p);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) lines.push(`l ${rel} ${readlinkSync(p)}`);
      else if (st.isDirectory()) {
        lines.push(`d ${rel} ${mode}`);
        walk(p);
      } else lines.push(`f ${rel} ${mode} ${sha256(readFileSync(p))}`);
    }
  };
  walk(dir);
  return `sha256:${sha256(lines.join('\n'))}`;
}

/** Builds the `busybox` base image from the host's busybox-static. */
export async function buildBusyboxImage(store: ImageStore, ref = 'busybox:latest'): Promise<Image> {
  try {
    lstatSync(BUSYBOX);
  } catch {
    throw new HostError(`${BUSYBOX} is missing; install it with \`apt-get install busybox-static\``);
  }
  const { stdout } = await run(BUSYBOX, ['--list-full']);
  const applets = stdout.split('\n').filter(Boolean);
  return store.add(
    ref,
    { cmd: ['/bin/sh'], env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' }, workdir: '/', user: '0:0' },
    async (root) => {
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
        const target = join(root, a);
        const depth = a.split('/').length - 1;
        try {
          symlinkSync(`${'../'.repeat(depth)}bin/busybox`, target);
        } catch {
          /* duplicate applet path */
        }
      }
      writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
      writeFileSync(join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
      writeFileSync(join(root, 'etc/hosts'), '127.0.0.1 localhost\n');
      writeFileSync(join(root, 'etc/hostname'), 'sandbox\n');
      touchTree(root);
    },
    treeDigest,
  );
}

function touchTree(dir: string): void {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (st.isDirectory()) touchTree(p);
    if (!st.isSymbolicLink()) utimesSync(p, EPOCH, EPOCH);
  }
  utimesSync(dir, EPOCH, EPOCH);
}
