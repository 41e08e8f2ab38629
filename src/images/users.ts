import { SpecError } from '../errors.js';
import { readImageFile } from './store.js';

/** `uid[:gid]` or `name[:group]`, names looked up in the image's own /etc/passwd and /etc/group. */
export function resolveUser(user: string, layers: readonly string[]): { uid: number; gid: number } {
  const [u = '0', g] = user.split(':');
  const entry = (file: string, name: string): string[] | undefined => {
    const text = readImageFile(layers, `etc/${file}`) ?? '';
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
