import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { BootTimeoutError, RuntimeError, SpecError } from '../../errors.js';
import type { HostInfo } from '../../host/types.js';
import { createOverlay, ensureVmDisk, type ImageStore } from '../../images/index.js';
import { macFor, type BridgeNetwork } from '../../network/index.js';
import type { WorkloadSpec } from '../../spec/index.js';
import type { SandboxRecord, StateStore } from '../../store/index.js';
import { connectUnix } from '../../util/net.js';
import { spawnChild } from '../../util/exec.js';
import { pollUntil } from '../../util/proc.js';
import {
  TIMEOUT_GRACE_MS,
  type AttachOptions,
  type AttachedRun,
  type Backend,
  type CreateContext,
  type CreatedSandbox,
  type ExecOptions,
  type ExitStatus,
  type SelfInvocation,
  type WorkloadSignal,
} from '../backend.js';
import { limitWarnings, type BackendDescriptor } from '../descriptor.js';
import { diskBehind } from '../../host/blockdev.js';
import { removeCgroups } from '../cgroups.js';
import { guestLimits, guestMemoryMiB, vmDiskThrottle, vmLimits } from './limits.js';
import { workloadProcess, type Process, resolveUser } from '../workload.js';
import { decodeJsonPayload, encodeFrame, FrameDecoder, MAX_PAYLOAD } from './agent/index.js';
import { requireGuestBoot } from './boot.js';
import { vmFiles, writeJsonAtomic } from './files.js';
import { fittedKernelCmdline } from './kernel-cmdline.js';
import type { MachineLauncher, MachineSpec } from './machine.js';
import { AGENT_PORT } from './microvm.js';
import { RunControl, supervise, toExitStatus, type VmExit } from './supervisor.js';

/** Records how the VM ended; a sandbox removed meanwhile (`rm -f`) has no directory left to write to. */
export function writeExit(path: string, x: VmExit): void {
  try {
    writeJsonAtomic(path, x);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** Overrides the boot limit (tests, hosts slower than this one); inherited by detached monitors. */
export const BOOT_TIMEOUT_ENV = 'HYBRIDBOX_VM_BOOT_TIMEOUT_MS';

/** How long a guest may take to report ready. */
export function bootTimeoutMs(kvm: boolean, env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[BOOT_TIMEOUT_ENV];
  if (raw !== undefined && raw !== '') {
    const ms = Number(raw);
    if (!Number.isInteger(ms) || ms <= 0) throw new SpecError(BOOT_TIMEOUT_ENV, raw, 'allowed: a positive whole number of milliseconds');
    return ms;
  }
  // Under TCG a boot takes seconds, not a fraction of one.
  return kvm ? 30_000 : 120_000;
}

const SIGNALS: Record<WorkloadSignal, string> = { INT: 'SIGINT', TERM: 'SIGTERM', HUP: 'SIGHUP', KILL: 'SIGKILL' };

/** What a VM backend keeps in a sandbox record's `runtime` object. */
interface VmRuntime {
  dir: string;
  /** For names in `exec --user`, looked up in the image's /etc/passwd. */
  imageLayers: string[];
  machine: MachineSpec;
  proc: Process;
  ip: string | null;
}

/**
 * The workload goes to the agent as one JSON frame (argv, env, workdir), which carries any
 * string but NUL (refused by validateSpec) and has a size limit: a workload over it is
 * refused here rather than after a boot. The field named is the larger of the two parts.
 */
function checkSessionFits(proc: Process): void {
  const bytes = Buffer.byteLength(JSON.stringify(proc));
  if (bytes <= MAX_PAYLOAD) return;
  const argvBytes = Buffer.byteLength(JSON.stringify(proc.argv));
  const envBytes = Buffer.byteLength(JSON.stringify(proc.env));
  const [field, value] = argvBytes >= envBytes ? ['command', `${proc.argv.length} arguments`] : ['env', `${Object.keys(proc.env).length} variables`];
  throw new SpecError(field, value, `allowed for VM sandboxes: a command and environment that fit in ${MAX_PAYLOAD} bytes of JSON together (these need ${bytes}); pass large data through a volume`);
}

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

  /** Runs supervised by this process (foreground, or this monitor), by sandbox id: signals go straight to them. */
  private readonly controls = new Map<string, RunControl>();

  private rt(rec: { runtime: Record<string, unknown> }): VmRuntime {
    return rec.runtime as unknown as VmRuntime;
  }

  private bootTimeoutMs(): number {
    return bootTimeoutMs(this.host.kvm.usable);
  }

  /** Supervises the VM in this process, reachable by signal() while it runs. */
  private async superviseHere(rec: SandboxRecord, sink: AttachOptions['sink'], stdin: NodeJS.ReadableStream | null): Promise<VmExit> {
    const rt = this.rt(rec);
    const control = new RunControl();
    this.controls.set(rec.id, control);
    try {
      return await supervise(this.launcher, rt.machine, vmFiles(rt.dir), rt.proc, sink, {
        bootTimeoutMs: this.bootTimeoutMs(),
        timeoutMs: (rec.spec as WorkloadSpec).timeoutMs,
        stdin,
        control,
      });
    } finally {
      this.controls.delete(rec.id);
    }
  }

  async create(ctx: CreateContext): Promise<CreatedSandbox> {
    const { spec } = ctx;
    this.bootTimeoutMs(); // a bad override fails here, before anything exists
    const files = vmFiles(ctx.dir);
    const boot = requireGuestBoot();
    // Refused before anything exists: what the guest's kernel command line, the agent's
    // session frame or the machine's device slots cannot carry.
    const useKvm = this.host.kvm.usable;
    const bridged = spec.network === 'bridge';
    const volumes = spec.volumes.map((v, i) => ({ tag: `v${i}`, ...v }));
    const maxVolumes = this.launcher.maxVolumes?.({ boot, tap: bridged ? 'tap' : null }) ?? null;
    if (maxVolumes !== null && volumes.length > maxVolumes) {
      throw new SpecError(
        'volumes',
        `${volumes.length} volumes`,
        `allowed for ${this.descriptor.kind} sandboxes${bridged ? ' with a bridge network' : ''}: at most ${maxVolumes} volumes (the machine's free virtio-mmio slots)`,
      );
    }
    const proc = workloadProcess(spec, ctx.image, ctx.name);
    checkSessionFits(proc);
    const guest = (ip: string | null) => ({
      hostname: ctx.name,
      ip,
      volumes,
      agentPort: AGENT_PORT,
      loadModules: boot.flavour === 'debian',
      extra: this.launcher.kernelArgs?.(boot, useKvm) ?? [],
      limits: guestLimits(spec),
    });
    const reserve = this.launcher.cmdlineReserve?.({ boot, tap: bridged ? 'tap' : null, volumes }) ?? 0;
    // With the longest address the lease could give, so that the real line fits too.
    fittedKernelCmdline(this.host, useKvm, guest(bridged ? '255.255.255.255/32' : null), reserve);
    // Nobody but root enters a VM's directory (QEMU runs as root): logs, disk and sockets stay private.
    mkdirSync(ctx.dir, { recursive: true, mode: 0o700 });
    let ip: string | null = null;
    let tap: string | null = null;
    try {
      const base = await ensureVmDisk(this.images, ctx.image);
      await createOverlay(base, files.disk);
      if (spec.network === 'bridge') {
        ip = this.network.allocate(ctx.id);
        tap = await this.network.attachTap(ctx.id, spec.resources.netRateKbit);
      }
      const target = { id: ctx.id, disk: diskBehind(ctx.dir) };
      const machine: MachineSpec = {
        id: ctx.id,
        name: ctx.name,
        memoryMiB: guestMemoryMiB(spec),
        vcpus: Math.max(1, Math.ceil(spec.resources.cpus ?? 1)),
        cpuQuota: spec.resources.cpus ?? null,
        boot,
        useKvm,
        tap,
        netRateKbit: tap ? (spec.resources.netRateKbit ?? null) : null,
        mac: tap ? macFor(ctx.id) : null,
        volumes,
        diskThrottle: vmDiskThrottle(spec, target),
        cmdline: fittedKernelCmdline(this.host, useKvm, guest(ip ? `${ip}/${this.network.subnet.prefix}` : null), reserve),
      };
      const rt: VmRuntime = { dir: ctx.dir, imageLayers: ctx.image.layers, machine, proc, ip };
      const limits = vmLimits(this.descriptor.kind as 'microvm' | 'vm', spec, this.host, target);
      return { runtime: rt as unknown as Record<string, unknown>, limits, warnings: limitWarnings(limits) };
    } catch (e) {
      await this.network.detach(ctx.id);
      this.store.releaseLeases(ctx.id);
      rmSync(ctx.dir, { recursive: true, force: true });
      throw e;
    }
  }

  async runAttached(rec: SandboxRecord, { sink, stdin }: AttachOptions): Promise<AttachedRun> {
    const rt = this.rt(rec);
    const boot = this.bootTimeoutMs();
    const exited = this.superviseHere(rec, sink, stdin ?? null).then((x) => {
      writeExit(vmFiles(rt.dir).exit, x);
      // A guest that never came up is a failure of the run itself, not an end of the workload.
      if (x.bootTimedOut) throw new BootTimeoutError(`sandbox ${rec.id}: ${x.crash}`, boot);
      return toExitStatus(x);
    });
    return { exited };
  }

  async monitor(rec: SandboxRecord): Promise<void> {
    const rt = this.rt(rec);
    const files = vmFiles(rt.dir);
    const out = createWriteStream(files.stdout, { flags: 'a' });
    const err = createWriteStream(files.stderr, { flags: 'a' });
    const x = await this.superviseHere(rec, { onStdout: (c) => out.write(c), onStderr: (c) => err.write(c) }, null);
    await Promise.all([new Promise((r) => out.end(r)), new Promise((r) => err.end(r))]);
    writeExit(files.exit, x);
  }

  async startDetached(rec: SandboxRecord, monitor: SelfInvocation): Promise<{ monitorPid: number }> {
    const files = vmFiles(this.rt(rec).dir);
    const [cmd, ...args] = [...monitor.argv, 'internal', 'monitor', rec.id];
    const child = spawnChild(cmd!, args, { detached: true, env: { ...process.env, ...monitor.env } }).process;
    // Started = the agent is up; failed = the monitor recorded an end first.
    const settled = await pollUntil(() => existsSync(files.ready) || existsSync(files.exit), { timeoutMs: this.bootTimeoutMs() + 15_000, intervalMs: 10 });
    if (!settled) throw new RuntimeError(`sandbox ${rec.id} did not start in time`);
    if (!existsSync(files.ready)) {
      const x = JSON.parse(readFileSync(files.exit, 'utf8')) as VmExit;
      if (x.bootTimedOut) throw new BootTimeoutError(`sandbox ${rec.id} did not start: ${x.crash}`, this.bootTimeoutMs());
      if (x.crash) throw new RuntimeError(`sandbox ${rec.id} did not start: ${x.crash}`);
    }
    return { monitorPid: child.pid! };
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
    const stdin = opts.stdin ?? null;
    return new Promise<number>((resolve, reject) => {
      const decoder = new FrameDecoder();
      let done = false;
      const onData = (c: Buffer | string): void => {
        const buf = typeof c === 'string' ? Buffer.from(c) : c;
        for (let off = 0; off < buf.length; off += MAX_PAYLOAD) sock.write(encodeFrame('I', 0, buf.subarray(off, off + MAX_PAYLOAD)));
      };
      const onEnd = (): void => void sock.write(encodeFrame('C', 0));
      // Stopping the command: SIGTERM to its session through the supervisor, SIGKILL after the grace period.
      const kill = (signal: string): void => void sock.write(encodeFrame('K', 0, Buffer.from(JSON.stringify({ signal }))));
      let killTimer: NodeJS.Timeout | undefined;
      const onAbort = (): void => {
        kill('SIGTERM');
        killTimer = setTimeout(() => kill('SIGKILL'), TIMEOUT_GRACE_MS);
      };
      const finish = (): void => {
        done = true;
        clearTimeout(killTimer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (!stdin) return;
        stdin.off('data', onData);
        stdin.off('end', onEnd);
        stdin.pause();
      };
      sock.on('data', (chunk: Buffer) => {
        for (const f of decoder.push(chunk)) {
          if (done) return;
          if (f.type === 'O') opts.sink.onStdout(f.payload);
          else if (f.type === 'E') opts.sink.onStderr(f.payload);
          else if (f.type === 'X') {
            finish();
            const x = decodeJsonPayload(f);
            const code = x?.exitCode;
            resolve(typeof code === 'number' ? code : 128 + 9);
          } else if (f.type === 'F') {
            finish();
            const m = decodeJsonPayload(f)?.message;
            reject(new RuntimeError(`exec failed: ${typeof m === 'string' ? m : f.payload.toString('utf8').slice(0, 200)}`));
          }
        }
      });
      sock.on('error', () => undefined);
      sock.on('close', () => {
        if (!done) {
          finish();
          reject(new RuntimeError('the VM stopped while the command ran'));
        }
      });
      sock.write(encodeFrame('S', 0, Buffer.from(JSON.stringify({ ...proc, stdin: stdin !== null }))));
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
      if (stdin) {
        stdin.on('data', onData);
        stdin.once('end', onEnd);
      }
    });
  }

  async signal(rec: SandboxRecord, signal: WorkloadSignal): Promise<void> {
    const files = vmFiles(this.rt(rec).dir);
    if (signal === 'KILL') {
      // The supervisor then reports a kill, not a crash.
      if (this.launcher.pid(rec.id, files) !== null) {
        try {
          writeFileSync(files.killed, '');
        } catch {
          /* removed meanwhile */
        }
      }
      return this.launcher.destroy(rec.id, files);
    }
    // INT, TERM, HUP go to the workload through the agent; the guest powers off when it ends.
    const here = this.controls.get(rec.id);
    if (here) return here.signal(SIGNALS[signal]);
    const s = await connectUnix(files.ctlSock).catch(() => null);
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.once('close', () => resolve());
      s.once('error', () => resolve());
      s.end(encodeFrame('K', 0, Buffer.from(JSON.stringify({ signal: SIGNALS[signal] }))));
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
    // A microVM's QEMU ran under /hybridbox/<id>/vm (--cpus). A QEMU whose supervisor died is
    // reaped by the host's PID 1, which can be slow, and keeps the cgroup busy until then.
    let left: string[] = [];
    await pollUntil(() => (left = removeCgroups(rec.id)).length === 0, { timeoutMs: 5000, intervalMs: 20 });
    const complete = rt.machine !== undefined;
    if (!complete || rt.machine.tap) await this.network.detach(rec.id);
    if (!complete || rt.ip) this.store.releaseLeases(rec.id);
    if (left.length) throw new RuntimeError(`could not remove cgroup ${left[0]} of sandbox ${rec.id}`);
  }

  async describe(rec: SandboxRecord): Promise<Record<string, unknown>> {
    const rt = this.rt(rec);
    const files = vmFiles(rt.dir);
    const live = await this.launcher.status(rec.id, files).catch((e: Error) => ({ error: e.message }));
    return { ip: rt.ip, kernel: rt.machine.boot, cmdline: rt.machine.cmdline, machine: live, ...this.launcher.describe(rt.machine, files) };
  }
}
