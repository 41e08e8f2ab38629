import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SpecError } from '../errors.js';
import type { Image } from '../images/index.js';
import type { WorkloadSpec } from '../spec/schema.js';

/**
 * What runs inside a sandbox, whatever the backend: the spec's choices with the image's
 * defaults filled in. A container gets it as an OCI `process`, a VM as the agent's session.
 */
export interface Process {
  argv: string[];
  env: Record<string, string>;
  workdir: string;
  uid: number;
  gid: number;
}

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function workloadProcess(spec: WorkloadSpec, image: Image, hostname: string): Process {
  return {
    argv: spec.command ?? image.config.cmd,
    env: { PATH: DEFAULT_PATH, ...image.config.env, HOSTNAME: hostname, ...spec.env },
    workdir: spec.workdir !== '/' ? spec.workdir : image.config.workdir || '/',
    ...resolveUser(spec.user === '0:0' && image.config.user ? image.config.user : spec.user, image.rootfs),
  };
}

/** `uid[:gid]` or `name[:group]`, names looked up in the image's own /etc/passwd and /etc/group. */
export function resolveUser(user: string, rootfs: string): { uid: number; gid: number } {
  const [u = '0', g] = user.split(':');
  const entry = (file: string, name: string): string[] | undefined => {
    let text = '';
    try {
      text = readFileSync(join(rootfs, 'etc', file), 'utf8');
    } catch {
      /* no such file in the image */
    }
    return text
      .split('\n')
      .map((l) => l.split(':'))
      .find((parts) => parts[0] === name);
  };
  const lookup = (file: 'passwd' | 'group', name: string): number => {
    if (/^\d+$/.test(name)) return Number(name);
    const e = entry(file, name);
    if (!e) throw new SpecError('user', user, `allowed: a numeric uid[:gid], or a ${file === 'passwd' ? 'user' : 'group'} listed in the image's /etc/${file}`);
    return Number(e[2]);
  };
  const uid = lookup('passwd', u);
  // A name without a group takes the user's primary group, as login does.
  const gid = g !== undefined ? lookup('group', g) : /^\d+$/.test(u) ? uid : Number(entry('passwd', u)?.[3] ?? uid);
  return { uid, gid };
}
