// The podman baseline: `podman run --rm` of the same image, imported into a private podman
// store under the benchmark's scratch directory (the host's own store is never touched).
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { removeCgroupTree } from '../../runtimes/cgroups.js';
import { CGROUP_PARENT, shimNamespaceArgs } from './raw.js';
import { BenchRunError, findOnPath, mustSucceed, mustTool, spawnMeasurement, timedSpawn } from './proc.js';
import { workloadArgv, type BenchContext, type Scenario } from './types.js';

export function podmanScenario(ctx: BenchContext): Scenario {
  const dir = join(ctx.work, 'podman');
  // Big temporary files of `podman load` go to $TMPDIR (else /var/tmp).
  const env = { ...process.env, TMPDIR: join(dir, 'tmp') };
  const store = [
    '--root',
    join(dir, 'root'),
    '--runroot',
    join(dir, 'run'),
    '--tmpdir',
    join(dir, 'libpod'),
    '--storage-driver',
    'overlay',
    '--cgroup-manager',
    'cgroupfs',
    '--events-backend',
    'none',
  ];
  /** argv up to podman's own subcommand: through the shim when podman drives crun. */
  let prefix: string[] = [];
  let ref = '';
  return {
    name: 'podman',
    kind: 'baseline',
    backend: 'container',
    description:
      'podman run --rm --network none of the same image (exported by hybridbox, `podman load`ed into a private store), crun inside the same private mount namespace as hybridbox (runc where crun is missing), the ulimits this host allows',
    async prepare() {
      const podman = findOnPath('podman');
      if (!podman) return 'podman is not installed (apt-get install podman)';
      if (!ctx.hb.host.isRoot) return 'the podman baseline needs root, as the container sandboxes it is compared with do';
      const { crun, runc } = ctx.hb.host.tools;
      if (!crun && !runc) return 'neither crun nor runc is installed (apt-get install crun)';
      for (const d of ['tmp', 'root', 'run', 'libpod']) mkdirSync(join(dir, d), { recursive: true, mode: 0o700 });
      const archive = join(dir, 'image.tar');
      await ctx.hb.images.export([ctx.image], archive, { format: 'docker' });
      const out = await mustTool(podman, [...store, 'load', '-q', '-i', archive], { env });
      const loaded = /Loaded image(?:\(s\))?: *(\S+)/.exec(out);
      if (!loaded) throw new BenchRunError(`podman load did not name the image it loaded: ${out.trim() || '(no output)'}`);
      ref = loaded[1]!.split(',')[0]!;
      rmSync(archive, { force: true });
      // crun refuses this kind of host outside the shim's private mount namespace (see hbx-shim); runc does not.
      prefix = crun ? [ctx.shim, ...shimNamespaceArgs(crun.path), '--pdeathsig', 'KILL', '--', podman, ...store, '--runtime', crun.path] : [podman, ...store, '--runtime', runc!.path];
      return null;
    },
    async once() {
      const args = [
        ...prefix.slice(1),
        'run',
        '--rm',
        '--network',
        'none',
        '--cgroup-parent',
        `/${CGROUP_PARENT}/podman`,
        '--ulimit',
        'nofile=1024:1024',
        '--ulimit',
        'nproc=4096:4096',
        ref,
        ...workloadArgv(ctx.command),
      ];
      return spawnMeasurement(mustSucceed(await timedSpawn(prefix[0]!, args, { env }), 'podman run'));
    },
    async cleanup() {
      removeCgroupTree(join(CGROUP_PARENT, 'podman'));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
