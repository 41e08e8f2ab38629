// The raw baselines: the same workload without hybridbox. `crun run` of the bundle hybridbox
// writes, QEMU with the command line hybridbox builds, `virsh create` of the domain XML
// hybridbox builds; each copied from a sandbox made with hb.sandboxes.create() and removed again.
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cgroupMounts, isUnified, removeCgroupTree } from '../../runtimes/cgroups.js';
import { AgentClient } from '../../runtimes/vm/agent/index.js';
import { vmFiles } from '../../runtimes/vm/files.js';
import { workloadProcess, type Process } from '../../runtimes/workload.js';
import type { BackendKind } from '../../spec/schema.js';
import { lastLine, spawnChild, TextTail } from '../../util/exec.js';
import { pollUntil } from '../../util/proc.js';
import { BenchRunError, ITERATION_TIMEOUT_MS, NO_OUTPUT, deadline, killChild, mustSucceed, mustTool, phaseDurations, spawnMeasurement, timedSpawn, tool } from './proc.js';
import { backendUnavailable, workloadArgv, type BenchContext, type Measurement, type Scenario } from './types.js';

/** Cgroup parent of everything the baselines start (crun-raw, podman), in every hierarchy; removed at the end. */
export const CGROUP_PARENT = 'hybridbox-bench';
const LIBVIRT_URI = 'qemu:///system';
/** Domain names of virsh-raw: `hbxbench-<pid>-<n>` (hybridbox's own are `hbx-<id>`). */
const RAW_DOMAIN_PREFIX = 'hbxbench';

/** The options that give a runtime the private mount namespace this host needs (see hbx-shim). */
export function shimNamespaceArgs(runtimePath: string): string[] {
  return ['--private-mounts', ...(isUnified() ? [] : ['--mask-dir', '/sys/fs/cgroup/unified']), '--ro-self', runtimePath];
}

/** Removes the shared cgroup parent unless something still uses it (then it is not ours to walk into). */
export function removeCgroupParent(): void {
  for (const m of cgroupMounts()) {
    try {
      rmdirSync(join(m.path, CGROUP_PARENT));
    } catch {
      /* absent, or in use */
    }
  }
}

/**
 * Makes one sandbox of the scenario's spec with hb.sandboxes.create(), hands its inspect() details
 * and directory to `take`, and removes it again whatever happens.
 */
async function withTemplate<T>(ctx: BenchContext, isolation: BackendKind, take: (details: Record<string, unknown>, dir: string, name: string) => Promise<T>): Promise<T> {
  const info = await ctx.hb.sandboxes.create({ image: ctx.image, command: workloadArgv(ctx.command), isolation });
  try {
    const details = (await ctx.hb.sandboxes.inspect(info.id)).backendDetails as Record<string, unknown>;
    return await take(details, join(ctx.hb.root, 'sandboxes', info.id), info.name);
  } finally {
    await ctx.hb.sandboxes.remove(info.id, { force: true });
  }
}

// ---------------------------------------------------------------------------------------
// crun-raw

export function crunRawScenario(ctx: BenchContext): Scenario {
  const crun = ctx.hb.host.tools.crun?.path ?? null;
  const bundle = join(ctx.work, 'crun-bundle');
  let config: Record<string, unknown> = {};
  let n = 0;
  const ids: string[] = [];

  /** What a run leaves when crun was killed half-way: its state directory; and the cgroup directories. */
  const cleanupOne = async (id: string): Promise<void> => {
    if (existsSync(`/run/crun/${id}`)) {
      await tool(ctx.shim, [...shimNamespaceArgs(crun!), '--', crun!, 'delete', '--force', id]);
      rmSync(`/run/crun/${id}`, { recursive: true, force: true });
    }
    const left = removeCgroupTree(join(CGROUP_PARENT, id));
    if (left.length) throw new BenchRunError(`could not remove cgroup ${left[0]} of raw container ${id}`);
  };

  return {
    name: 'crun-raw',
    kind: 'baseline',
    backend: 'container',
    description:
      "hbx-shim (private mount namespace, cgroup2 mount hidden on hybrid hosts, read-only crun) then `crun run` of the config.json hybridbox writes for the same spec, on the image's read-only root filesystem: the floor hybridbox builds on",
    async prepare() {
      if (!crun) return 'crun is not installed (apt-get install crun)';
      const why = backendUnavailable(ctx, 'container');
      if (why) return `its bundle is copied from a container sandbox, and ${why}`;
      const image = await ctx.hb.images.resolve(ctx.image);
      if (image.layers.length !== 1) return `the raw crun baseline runs the image's root filesystem read-only, which needs a one-layer image; ${image.ref} has ${image.layers.length}`;
      config = await withTemplate(ctx, 'container', async (d) => {
        if (!d.ociConfig) throw new BenchRunError('the container sandbox has no OCI config to copy');
        return structuredClone(d.ociConfig as Record<string, unknown>);
      });
      // The image's own root filesystem, read-only (hybridbox mounts a per-sandbox overlay over it).
      config.root = { path: image.layers[0]!, readonly: true };
      const linux = config.linux as { namespaces?: { type: string; path?: string }[] };
      if (linux.namespaces?.some((ns) => ns.path)) throw new BenchRunError('the sandbox config joins an existing namespace; the raw bundle needs a self-contained one');
      mkdirSync(bundle, { recursive: true });
      return null;
    },
    async once(): Promise<Measurement> {
      const id = `bench-${process.pid}-${++n}`;
      ids.push(id);
      const pidFile = join(bundle, 'pid');
      const t0Epoch = Date.now();
      const t0 = performance.now();
      (config.linux as { cgroupsPath: string }).cgroupsPath = `/${CGROUP_PARENT}/${id}`;
      writeFileSync(join(bundle, 'config.json'), JSON.stringify(config));
      const prepared = performance.now() - t0;
      // --pdeathsig: a killed benchmark takes crun with it.
      const r = await timedSpawn(ctx.shim, [...shimNamespaceArgs(crun!), '--pdeathsig', 'KILL', '--', crun!, 'run', '--bundle', bundle, '--pid-file', pidFile, id]);
      let started: number | null = null;
      try {
        started = statSync(pidFile).mtimeMs - t0Epoch;
      } catch {
        /* never started */
      }
      rmSync(pidFile, { force: true });
      await cleanupOne(id);
      ids.pop();
      const totalMs = performance.now() - t0;
      mustSucceed(r, 'crun run');
      return {
        totalMs,
        firstOutputMs: r.firstOutputMs === null ? null : prepared + r.firstOutputMs,
        phases: phaseDurations([
          ['prepare', prepared],
          ['start', started],
          ['firstOutput', r.firstOutputMs === null ? null : prepared + r.firstOutputMs],
          ['exit', prepared + r.closeMs],
          ['teardown', totalMs],
        ]),
      };
    },
    async cleanup() {
      for (const id of ids.splice(0)) await cleanupOne(id);
    },
  };
}

// ---------------------------------------------------------------------------------------
// qemu-raw and virsh-raw

/** What a raw VM replays: hybridbox's QEMU argv or domain XML, with the sandbox directory as a placeholder. */
interface VmTemplate {
  text: string[];
  dir: string;
  base: string;
  proc: Process;
}

const since = (t0: number): number => performance.now() - t0;

async function vmTemplate(ctx: BenchContext, isolation: 'microvm' | 'vm'): Promise<VmTemplate> {
  const spec = ctx.hb.placement.validate({ image: ctx.image, command: workloadArgv(ctx.command), isolation });
  const image = await ctx.hb.images.resolve(ctx.image);
  return withTemplate(ctx, isolation, async (d, dir, name) => {
    let text: string[];
    if (isolation === 'microvm') {
      const argv = d.qemuCommandLine as string[] | undefined;
      if (!Array.isArray(argv) || !argv.length) throw new BenchRunError('the microvm sandbox has no qemuCommandLine in inspect()');
      text = argv;
    } else {
      const xml = d.domainXml as string | undefined;
      if (typeof xml !== 'string' || !/<name>[^<]+<\/name>/.test(xml)) throw new BenchRunError('the vm sandbox has no domainXml with a <name> in inspect()');
      text = [xml];
    }
    // Every file the raw run uses must be inside the sandbox directory, so that rewriting it moves them all.
    const f = vmFiles(dir);
    for (const p of [f.disk, f.agentSock, f.console]) {
      if (!text.join('\n').includes(p)) throw new BenchRunError(`the ${isolation} sandbox's machine definition does not name ${p}; the benchmark cannot redirect it`);
    }
    const meta = JSON.parse(await mustTool('qemu-img', ['info', '--output=json', '-U', f.disk])) as { 'full-backing-filename'?: string; 'backing-filename'?: string };
    const base = meta['full-backing-filename'] ?? meta['backing-filename'];
    if (!base || !existsSync(base)) throw new BenchRunError(`the ${isolation} sandbox's disk ${f.disk} has no base disk to share`);
    // The session hybridbox would start: same argv, environment, directory and user.
    return { text, dir, base, proc: workloadProcess(spec, image, name) };
  });
}

/** Session 0 with its first stdout byte timed; rejects unless the workload exits 0. */
async function rawSession(agent: AgentClient, proc: Process, t0: number, marks: Record<string, number>): Promise<void> {
  const err = new TextTail();
  const x = await agent.startSession(
    0,
    proc,
    {
      onStdout: () => void (marks.firstOutput ??= since(t0)),
      onStderr: err.push,
    },
    { timeoutMs: ITERATION_TIMEOUT_MS },
  );
  marks.exit = since(t0);
  if (x.exitCode !== 0) throw new BenchRunError(`the workload ended with ${x.signal ?? `exit code ${x.exitCode}`}; stderr: ${lastLine(err.text, NO_OUTPUT)}`);
}

/** A raw VM iteration from the moments its phases ended. */
function vmMeasurement(marks: Record<string, number>): Measurement {
  return {
    totalMs: marks.teardown!,
    firstOutputMs: marks.firstOutput ?? null,
    phases: phaseDurations(['prepare', 'create', 'start', 'firstOutput', 'exit', 'teardown'].map((k) => [k, marks[k]])),
  };
}

/** A raw VM baseline: its template is made from a sandbox of `backend`, then `run` replays it. */
function rawVmScenario(ctx: BenchContext, def: Pick<Scenario, 'name' | 'backend' | 'description' | 'cleanup'> & { backend: 'microvm' | 'vm'; run: (t: VmTemplate) => Promise<Measurement> }): Scenario {
  let t: VmTemplate | null = null;
  return {
    name: def.name,
    kind: 'baseline',
    backend: def.backend,
    description: def.description,
    async prepare() {
      const why = backendUnavailable(ctx, def.backend);
      if (!why) t = await vmTemplate(ctx, def.backend);
      return why;
    },
    once: () => def.run(t!),
    cleanup: def.cleanup,
  };
}

const overlayOn = (t: VmTemplate, disk: string): Promise<string> => mustTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', t.base, disk]);

export function qemuRawScenario(ctx: BenchContext): Scenario {
  let n = 0;
  const running = new Set<ChildProcess>();
  return rawVmScenario(ctx, {
    name: 'qemu-raw',
    backend: 'microvm',
    description:
      'the same microVM without hybridbox: qemu-img create (overlay on the same base disk), hbx-shim --pdeathsig KILL then the QEMU command line hybridbox builds, the guest agent by hand (ready, session 0), until QEMU exits',
    async run(t) {
      const dir = join(ctx.work, `qemu-raw-${++n}`);
      const files = vmFiles(dir);
      const argv = t.text.map((a) => a.split(t.dir).join(dir));
      const marks: Record<string, number> = {};
      let child: ChildProcess | null = null;
      let agent: AgentClient | null = null;
      const t0 = performance.now();
      try {
        mkdirSync(dir, { mode: 0o711 });
        await overlayOn(t, files.disk);
        marks.prepare = since(t0);
        // Through the shim for its parent-death signal, as hybridbox does.
        const c = spawnChild(ctx.shim, ['--pdeathsig', 'KILL', '--', ...argv]);
        const qemu = c.process;
        child = qemu;
        running.add(qemu);
        let stderr = '';
        const exited = c.done.then(
          (r) => {
            running.delete(qemu);
            stderr = r.code !== 0 ? `${r.stderr}\n(QEMU exit ${r.signal ?? r.code})` : r.stderr;
            return since(t0);
          },
          (e: Error) => {
            running.delete(qemu);
            throw new BenchRunError(`cannot start QEMU: ${e.message}`);
          },
        );
        const early = exited.then(() => {
          throw new BenchRunError(`QEMU exited early: ${lastLine(stderr, NO_OUTPUT)}`);
        });
        early.catch(() => undefined);
        agent = await Promise.race([AgentClient.connect(files.agentSock, 10_000), early]);
        marks.create = since(t0);
        await Promise.race([agent.waitReady(ITERATION_TIMEOUT_MS), early]);
        marks.start = since(t0);
        await rawSession(agent, t.proc, t0, marks);
        await deadline(exited, 10_000, 'QEMU exit after the workload');
        if (/QEMU exit/.test(stderr)) throw new BenchRunError(`QEMU did not exit cleanly: ${lastLine(stderr, NO_OUTPUT)}`);
        rmSync(dir, { recursive: true, force: true });
        marks.teardown = since(t0);
        return vmMeasurement(marks);
      } finally {
        agent?.close();
        if (child) await killChild(child);
        rmSync(dir, { recursive: true, force: true });
      }
    },
    async cleanup() {
      for (const c of running) await killChild(c);
    },
  });
}

/** libvirt keeps these while a domain exists; a transient domain that powered off loses both. */
const domainExists = (name: string): boolean => [`/run/libvirt/qemu/${name}.pid`, `/run/libvirt/qemu/${name}.xml`].some((f) => existsSync(f));
const virsh = (args: string[]) => tool('virsh', ['-c', LIBVIRT_URI, ...args]);

async function destroyDomain(name: string): Promise<void> {
  if (!domainExists(name)) return;
  await virsh(['destroy', name]);
  if (!(await pollUntil(() => !domainExists(name), { timeoutMs: 5000, intervalMs: 25 }))) throw new BenchRunError(`domain ${name} is still there after virsh destroy`);
}

export function virshRawScenario(ctx: BenchContext): Scenario {
  let n = 0;
  const domains = new Set<string>();
  return rawVmScenario(ctx, {
    name: 'virsh-raw',
    backend: 'vm',
    description:
      'the same libvirt VM without hybridbox: qemu-img create, virsh create --paused of the domain XML hybridbox builds (own name), the guest agent by hand, virsh resume, session 0, until libvirt has dropped the domain',
    async run(t) {
      const i = ++n;
      const dir = join(ctx.work, `virsh-raw-${i}`);
      const files = vmFiles(dir);
      const name = `${RAW_DOMAIN_PREFIX}-${process.pid}-${i}`;
      const xml = t.text[0]!.split(t.dir)
        .join(dir)
        .replace(/<name>[^<]+<\/name>/, `<name>${name}</name>`);
      const marks: Record<string, number> = {};
      let agent: AgentClient | null = null;
      const t0 = performance.now();
      try {
        mkdirSync(dir, { mode: 0o711 });
        await overlayOn(t, files.disk);
        writeFileSync(files.domainXml, xml);
        marks.prepare = since(t0);
        domains.add(name);
        const created = await virsh(['create', '--paused', files.domainXml]);
        if (created.code !== 0) throw new BenchRunError(`virsh create failed: ${lastLine(created.stderr || created.stdout, NO_OUTPUT)}`);
        agent = await AgentClient.connect(files.agentSock, 10_000);
        marks.create = since(t0);
        // QEMU closes the agent socket when it exits; libvirt then drops the (transient) domain.
        const closed = agent.waitClosed(ITERATION_TIMEOUT_MS);
        closed.catch(() => undefined);
        const resumed = await virsh(['resume', name]);
        if (resumed.code !== 0) throw new BenchRunError(`virsh resume failed: ${lastLine(resumed.stderr || resumed.stdout, NO_OUTPUT)}`);
        await agent.waitReady(ITERATION_TIMEOUT_MS);
        marks.start = since(t0);
        await rawSession(agent, t.proc, t0, marks);
        await deadline(closed, 10_000, 'QEMU exit after the workload');
        if (!(await pollUntil(() => !domainExists(name), { timeoutMs: 10_000, intervalMs: 2 }))) throw new BenchRunError(`libvirt still has domain ${name} 10 s after QEMU exited`);
        domains.delete(name);
        rmSync(dir, { recursive: true, force: true });
        marks.teardown = since(t0);
        return vmMeasurement(marks);
      } finally {
        agent?.close();
        if (domains.has(name)) {
          await destroyDomain(name);
          domains.delete(name);
        }
        rmSync(dir, { recursive: true, force: true });
      }
    },
    async cleanup() {
      for (const name of domains) await destroyDomain(name);
      domains.clear();
    },
  });
}

// ---------------------------------------------------------------------------------------
// host

export function hostScenario(ctx: BenchContext): Scenario {
  return {
    name: 'host',
    kind: 'baseline',
    backend: 'container',
    description: "the workload on the host, no isolation at all: spawn of /bin/sh -c COMMAND (the host's own shell)",
    async prepare() {
      return null;
    },
    async once() {
      return spawnMeasurement(mustSucceed(await timedSpawn('/bin/sh', workloadArgv(ctx.command).slice(1)), '/bin/sh -c'));
    },
    async cleanup() {},
  };
}
