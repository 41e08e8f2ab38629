import { SpecError } from '../errors.js';
import { resolveUser, type Image } from '../images/index.js';

export { resolveUser };
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
  // Docker's rule: a command given at run time replaces CMD and keeps ENTRYPOINT.
  const argv = [...image.config.entrypoint, ...(spec.command ?? image.config.cmd)];
  if (argv.length === 0) throw new SpecError('command', '', `image ${image.ref} has no CMD or ENTRYPOINT; give the command to run after the image name`);
  return {
    argv,
    env: { PATH: DEFAULT_PATH, ...image.config.env, HOSTNAME: hostname, ...spec.env },
    workdir: spec.workdir !== '/' ? spec.workdir : image.config.workdir || '/',
    ...resolveUser(spec.user === '0:0' && image.config.user ? image.config.user : spec.user, image.layers),
  };
}
