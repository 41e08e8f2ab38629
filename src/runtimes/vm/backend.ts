import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { RuntimeError, SpecError } from '../../errors.js';
import type { HostInfo } from '../../host/types.js';
import { createOverlay, ensureVmDisk, type ImageStore } from '../../images/index.js';
import { macFor, type BridgeNetwork } from '../../network/index.js';
import type { WorkloadSpec } from '../../spec/index.js';
import type { SandboxRecord, StateStore } from '../../store/index.js';
import { connectUnix } from '../../util/net.js';
import { sleep } from '../../util/proc.js';
import type { AttachOptions, AttachedRun, Backend, CreateContext, ExecOptions, ExitStatus, SelfInvocation, WorkloadSignal } from '../backend.js';
import type { BackendDescriptor } from '../descriptor.js';
import { workloadProcess, type Process, resolveUser } from '../workload.js';
import { encodeFrame, FrameDecoder } from './agent/index.js';
import { requireGuestBoot } from './boot.js';
import { vmFiles } from './files.js';
import { kernelCmdline } from './kernel-cmdline.js';
import type { MachineLauncher, MachineSpec } from './machine.js';
import { AGENT_PORT } from './microvm.js';
import { supervise, toExitStatus, type VmExit } from './supervisor.js';

/** Records how the VM ended; a sandbox removed meanwhile (`rm -f`) has no directory left to write to. */
function writeExit(path: string, x: VmExit): void {
  try {
    writeFileSync(path, JSON.stringify(x) + '\n');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** What a VM backend keeps in a sandbox record's `runtime` object. */
interface VmRuntime {
  dir: string;
  /** For names in `exec --user`, looked up in the image's /etc/passwd. */
  imageLayers: string[];
  machine: MachineSpec;
  proc: Process;
  ip: string | null;
}

const DEFAULT_MEMORY_MIB = 256;

/**
 * Sandboxes as virtual machines with their own kernel. The two VM backends (QEMU microvm,
 * libvirt VM) differ only in their MachineLauncher; the guest agent, sessions, logs, exec
 * and crash handling are this one class.
 */
export class VmBackend implements Backend {
  constructor(
    readonly descriptor: BackendDescriptor,
    private readonly launcher: MachineLauncher,
    private readonly host: HostInfo,
    private readonly store: StateStore,
    private readonly network: BridgeNetwork,
    private readonly images: ImageStore,
  ) {}

  private rt(rec: { runtime: Record<string, unknown> }): VmRuntime {
    return rec.runtime as unknown as VmRuntime;
  }

  private bootTimeoutMs(): number {
    // Under TCG a boot takes seconds, not a fraction of one.
    return this.host.kvm.usable ? 30_000 : 120_000;
  }

  async create(ctx: CreateContext): Promise<{ runtime: Record<string, unknown>; warnings: string[] }> {
    const { spec } = ctx;
    const files = vmFiles(ctx.dir);
    const boot = requireGuestBoot();
    const warnings: string[] = [];
    if (spec.resources.pids !== undefined) warnings.push('resources.pids applies to a container; a VM has its own kernel and process table');
    if (spec.resources.ioWeight !== undefined) warnings.push('resources.ioWeight is not applied to VM sandboxes yet');
    spec.volumes.forEach((v, i) => {
      // The guest reads volumes from its kernel command line: no spaces, no colons.
      if (/[\s:]/.test(v.guestPath)) throw new SpecError(`volumes[${i}].guestPath`, v.guestPath, 'allowed for VM sandboxes: a path without spaces or ":"');
    });
    mkdirSync(ctx.dir, { recursive: true, mode: 0o711 });
    let ip: string | null = null;
    let tap: string | null = null;
    try {
      const base = await ensureVmDisk(this.images, ctx.image);
      await createOverlay(base, files.disk);
      if (spec.network === 'bridge') {
        ip = this.network.allocate(ctx.id);
        tap = await this.network.attachTap(ctx.id);
      }
      const useKvm = this.host.kvm.usable;
      const volumes = spec.volumes.map((v, i) => ({ tag: `v${i}`, ...v }));
      const machine: MachineSpec = {
        id: ctx.id,
        name: ctx.name,
        memoryMiB: spec.resources.memoryMiB ?? DEFAULT_MEMORY_MIB,
        vcpus: Math.max(1, Math.ceil(spec.resources.cpus ?? 1)),
        cpuQuota: spec.resources.cpus ?? null,
        boot,
        useKvm,
        tap,
        mac: tap ? macFor(ctx.id) : null,
        volumes,
        cmdline: kernelCmdline(this.host, useKvm, {
          hostname: ctx.name,
          ip: ip ? `${ip}/${this.network.subnet.prefix}` : null,
          volumes,
          agentPort: AGENT_PORT,
          loadModules: boot.flavour === 'debian',
          extra: this.launcher.kernelArgs?.(boot, useKvm) ?? [],
        }),
      };
      const rt: VmRuntime = { dir: ctx.dir, imageLayers: ctx.image.layers, machine, proc: workloadProcess(spec, ctx.image, ctx.name), ip };
      return { runtime: rt as unknown as Record<string, unknown>, warnings };
    } catch (e) {
      await this.network.detach(ctx.id);
      this.store.releaseLeases(ctx.id);
      rmSync(ctx.dir, { recursive: true, force: true });
      throw e;
    }
  }

  async runAttached(rec: SandboxRecord, { sink }: AttachOptions): Promise<AttachedRun> {
    const rt = this.rt(rec);
    const exited = supervise(this.launcher, rt.machine, vmFiles(rt.dir), rt.proc, sink, { bootTimeoutMs: this.bootTimeoutMs(), timeoutMs: (rec.spec as WorkloadSpec).timeoutMs }).then((x) => {
      writeExit(vmFiles(rt.dir).exit, x);
      return toExitStatus(x);
    });
    return { exited };
  }

  async monitor(rec: SandboxRecord): Promise<void> {
    const rt = this.rt(rec);
    const files = vmFiles(rt.dir);
    const out = createWriteStream(files.stdout, { flags: 'a' });
    const err = createWriteStream(files.stderr, { flags: 'a' });
    const x = await supervise(this.launcher, rt.machine, files, rt.proc, { onStdout: (c) => out.write(c), onStderr: (c) => err.write(c) }, {
      bootTimeoutMs: this.bootTimeoutMs(),
      timeoutMs: (rec.spec as WorkloadSpec).timeoutMs,
    });
    await Promise.all([new Promise((r) => out.end(r)), new Promise((r) => err.end(r))]);
    writeExit(files.exit, x);
  }

  async startDetached(rec: SandboxRecord, monitor: SelfInvocation): Promise<{ monitorPid: number }> {
    const files = vmFiles(this.rt(rec).dir);
    const [cmd, ...args] = [...monitor.argv, 'internal', 'monitor', rec.id];
    const child = spawn(cmd!, args, { stdio: 'ignore', detached: true, env: { ...process.env, ...monitor.env } });
    child.unref();
    // Started = the agent is up; failed = the monitor recorded an end first.
    const deadline = Date.now() + this.bootTimeoutMs() + 15_000;
    while (Date.now() < deadline) {
      if (existsSync(files.ready)) return { monitorPid: child.pid! };
      if (existsSync(files.exit)) {
        const x = JSON.parse(readFileSync(files.exit, 'utf8')) as VmExit;
        if (x.crash) throw new RuntimeError(`sandbox ${rec.id} did not start: ${x.crash}`);
        return { monitorPid: child.pid! };
      }
      await sleep(10);
    }
    throw new RuntimeError(`sandbox ${rec.id} did not start in time`);
  }

  async exec(rec: SandboxRecord, argv: string[], opts: ExecOptions): Promise<number> {
    const rt = this.rt(rec);
    const proc: Process = {
      ...rt.proc,
      argv,
      env: { ...rt.proc.env, ...(opts.env ?? {}) },
      workdir: opts.workdir ?? rt.proc.workdir,
      ...(opts.user ? resolveUser(opts.user, rt.imageLayers) : {}),
    };
    const sock = await connectUnix(vmFiles(rt.dir).ctlSock).catch((e: Error) => {
      throw new RuntimeError(`cannot reach the VM's supervisor: ${e.message}`);
    });
    return new Promise<number>((resolve, reject) => {
      const decoder = new FrameDecoder();
      let done = false;
      sock.on('data', (chunk: Buffer) => {
        for (const f of decoder.push(chunk)) {
          if (f.type === 'O') opts.sink.onStdout(f.payload);
          else if (f.type === 'E') opts.sink.onStderr(f.payload);
          else if (f.type === 'X') {
            done = true;
            const x = JSON.parse(f.payload.toString('utf8')) as { exitCode: number | null; signal: string | null };
            resolve(x.exitCode ?? 128 + 9);
          } else if (f.type === 'F') {
            done = true;
            reject(new RuntimeError(`exec failed: ${(JSON.parse(f.payload.toString('utf8')) as { message: string }).message}`));
          }
        }
      });
      sock.on('close', () => {
        if (!done) reject(new RuntimeError('the VM stopped while the command ran'));
      });
      sock.write(encodeFrame('S', 0, Buffer.from(JSON.stringify(proc))));
    });
  }

  async signal(rec: SandboxRecord, signal: WorkloadSignal): Promise<void> {
    const files = vmFiles(this.rt(rec).dir);
    if (signal === 'KILL') return this.launcher.destroy(rec.id, files);
    // A clean end: the workload gets SIGTERM through the agent, and the guest powers off.
    const s = await connectUnix(files.ctlSock).catch(() => null);
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.once('close', () => resolve());
      s.once('error', () => resolve());
      s.end(encodeFrame('K', 0, Buffer.from(JSON.stringify({ signal: 'SIGTERM' }))));
    });
  }

  async isAlive(rec: SandboxRecord): Promise<boolean> {
    return this.launcher.pid(rec.id, vmFiles(this.rt(rec).dir)) !== null;
  }

  async collectExit(rec: SandboxRecord): Promise<ExitStatus | null> {
    try {
      return toExitStatus(JSON.parse(readFileSync(vmFiles(this.rt(rec).dir).exit, 'utf8')) as VmExit);
    } catch {
      return null;
    }
  }

  logPaths(rec: SandboxRecord): { stdout: string; stderr: string } {
    const f = vmFiles(this.rt(rec).dir);
    return { stdout: f.stdout, stderr: f.stderr };
  }

  async teardown(rec: { id: string; runtime: Record<string, unknown> }): Promise<void> {
    const rt = this.rt(rec);
    if (rt.dir) await this.launcher.destroy(rec.id, vmFiles(rt.dir));
    const complete = rt.machine !== undefined;
    if (!complete || rt.machine.tap) await this.network.detach(rec.id);
    if (!complete || rt.ip) this.store.releaseLeases(rec.id);
  }

  async describe(rec: SandboxRecord): Promise<Record<string, unknown>> {
    const rt = this.rt(rec);
    const files = vmFiles(rt.dir);
    const live = await this.launcher.status(rec.id, files).catch((e: Error) => ({ error: e.message }));
    return { ip: rt.ip, kernel: rt.machine.boot, cmdline: rt.machine.cmdline, machine: live, ...this.launcher.describe(rt.machine, files) };
  }
}

