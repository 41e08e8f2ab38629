import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { HostCapabilityError, RuntimeError, SpecError } from '../../errors.js';
import type { HostInfo } from '../../host/types.js';
import { imagePathExists } from '../../images/index.js';
import type { WorkloadSpec } from '../../spec/index.js';
import type { BridgeNetwork } from '../../network/index.js';
import type { StateStore, SandboxRecord } from '../../store/index.js';
import { lastLine, run, spawnChild } from '../../util/exec.js';
import { packageRoot } from '../../util/paths.js';
import { pollUntil } from '../../util/proc.js';
import { TIMEOUT_EXIT_CODE, TIMEOUT_GRACE_MS } from '../backend.js';
import type { AttachOptions, AttachedRun, Backend, CreateContext, CreatedSandbox, ExecOptions, ExitStatus, SelfInvocation, WorkloadSignal } from '../backend.js';
import { limitWarnings, type BackendDescriptor } from '../descriptor.js';
import { diskBehind } from '../../host/blockdev.js';
import { containerDiskLimits, containerLimits, ociThrottles, openFilesCeiling } from './limits.js';
import { cgroupCaps, cpuUsageFile, ensureSandboxCgroup, hostOomKills, isUnified, leafPath, readCpuTimeMs, readUsage, removeCgroups, sandboxPids } from '../cgroups.js';
import { cpuCheckInMs } from '../limits.js';
import { buildOciConfig } from './oci-config.js';

export type OciRuntimeName = 'crun' | 'runc';

export const containerDescriptor: BackendDescriptor = {
  kind: 'container',
  summary: 'Linux container: namespaces + cgroups on the host kernel, driven through the OCI runtime spec (crun)',
  traits: { ownKernel: false, hardwareIsolation: false, fullMachine: false, defaultStartupMs: { median: 60, p95: 120 } },
  unavailableReason(host: HostInfo): string | null {
    if (!host.isRoot) return 'container sandboxes need root on this host (rootless crun on cgroup v1 would apply no limits)';
    if (!host.tools.crun && !host.tools.runc) return 'neither crun nor runc is installed (apt-get install crun)';
    if (!host.tools.tini) return 'tini is not installed (apt-get install tini)';
    if (!host.features.overlayfs) return 'the kernel has no overlayfs';
    return null;
  },
  // cgroup v2's io files exist only in a sandbox's own cgroup: its weight is known at create.
  limits: (spec, host) => containerLimits(spec, host, {}, { ioWeight: host.cgroup.layout === 'v2' ? undefined : cgroupCaps('preview').ioWeight }),
};

/** What the container backend keeps in a sandbox record's `runtime` object. */
interface ContainerRuntime {
  ociRuntime: OciRuntimeName;
  dir: string;
  /** The image's unpacked layers, lowest first. */
  imageLayers: string[];
  /** Mount points made in the upper directory because the image lacks them (not workload output). */
  mountStubs: string[];
  ip: string | null;
  netnsPath: string | null;
  uidBase: number | null;
}

const UID_BASE = 100_000;
const UID_RANGE = 65_536;
const UID_SLOTS = 4096;
/** How long a runtime may take to start a workload before it is given up on. */
const START_LIMIT_MS = 30_000;

function files(dir: string) {
  // The upper directory's root is the sandbox's "/" (0755), so it lives in a private parent;
  // sandboxes made before that have it directly in their directory.
  const overlay = existsSync(join(dir, 'upper')) ? dir : join(dir, 'overlay');
  return {
    config: join(dir, 'config.json'),
    rootfs: join(dir, 'rootfs'),
    overlay,
    upper: join(overlay, 'upper'),
    work: join(overlay, 'work'),
    pid: join(dir, 'pid'),
    exit: join(dir, 'exit.json'),
    stdout: join(dir, 'stdout.log'),
    stderr: join(dir, 'stderr.log'),
    oomBase: join(dir, 'oom-kills-at-start'),
  };
}

/**
 * Containers on crun (or runc). Every runtime call goes through hbx-shim, which gives the
 * runtime a private mount namespace: there the per-sandbox overlay is mounted (so no mount
 * can outlive the sandbox on the host) and, on cgroup-v1 hybrid hosts, the cgroup2 mount is
 * hidden so that crun uses the v1 controllers without touching the host's configuration.
 */
export class ContainerBackend implements Backend {
  readonly descriptor = containerDescriptor;
  /** Sandboxes whose runtime this process runs in the foreground (runAttached), until it exits. */
  private readonly attachedHere = new Set<string>();
  private readonly shim: string;
  private readonly initBinary: string;
  private readonly runtimePaths: Partial<Record<OciRuntimeName, string>>;

  constructor(
    private readonly host: HostInfo,
    private readonly store: StateStore,
    private readonly network: BridgeNetwork,
    readonly ociRuntime: OciRuntimeName = 'crun',
  ) {
    if (!host.tools[ociRuntime]) throw new HostCapabilityError(`${ociRuntime} is not installed; install it with \`apt-get install ${ociRuntime}\``);
    this.runtimePaths = { crun: host.tools.crun?.path, runc: host.tools.runc?.path };
    this.initBinary = existsSync('/usr/bin/tini-static') ? '/usr/bin/tini-static' : (host.tools.tini?.path ?? '/usr/bin/tini');
    this.shim = process.env.HYBRIDBOX_SHIM ?? join(packageRoot(), 'dist', 'hbx-shim');
    if (!existsSync(this.shim)) throw new HostCapabilityError(`${this.shim} is missing; run \`npm run setup\` to build it`);
  }

  private rt(rec: { runtime: Record<string, unknown> }): ContainerRuntime {
    return rec.runtime as unknown as ContainerRuntime;
  }

  /** The runtime a sandbox was created with: later calls (exec, delete) must use the same one. */
  private runtimeOf(rec: { runtime: Record<string, unknown> }): { name: OciRuntimeName; path: string } {
    const name = this.rt(rec).ociRuntime ?? this.ociRuntime;
    const path = this.runtimePaths[name];
    if (!path) throw new HostCapabilityError(`${name} is not installed; install it with \`apt-get install ${name}\``);
    return { name, path };
  }

  /** Options that set up the runtime's private mount namespace. */
  private nsArgs(runtimePath: string): string[] {
    const a = ['--private-mounts'];
    if (!isUnified()) a.push('--mask-dir', '/sys/fs/cgroup/unified');
    a.push('--ro-self', runtimePath);
    return a;
  }

  async create(ctx: CreateContext): Promise<CreatedSandbox> {
    const f = files(ctx.dir);
    // A user-namespace runtime walks to rootfs as an unmapped uid: the directory is traversable,
    // not listable, and everything else in it is private (chmod: a umask must not narrow these).
    mkdirSync(ctx.dir, { recursive: true, mode: 0o711 });
    chmodSync(ctx.dir, 0o711);
    mkdirSync(f.overlay, { mode: 0o700 });
    // The upper layer's root becomes the sandbox's "/": it must be readable by a mapped root.
    mkdirSync(f.upper, { mode: 0o755 });
    chmodSync(f.upper, 0o755);
    mkdirSync(f.rootfs, { mode: 0o755 });
    chmodSync(f.rootfs, 0o755);
    mkdirSync(f.work, { mode: 0o700 });
    // Whoever writes the logs later (the CLI after a foreground run, the shim) keeps this mode.
    for (const log of [f.stdout, f.stderr]) writeFileSync(log, '', { mode: 0o600 });
    let uidBase: number | null = null;
    let ip: string | null = null;
    let mountStubs: string[] = [];
    let netnsPath: string | null = null;
    let limits: CreatedSandbox['limits'] = [];
    const { openFiles } = ctx.spec.resources;
    if (openFiles !== undefined) {
      const ceiling = openFilesCeiling();
      // crun would fail the start with "setrlimit: Operation not permitted": refuse it now, in words.
      if (openFiles > ceiling.max) throw new SpecError('resources.openFiles', openFiles, `allowed for container sandboxes on this host: at most ${ceiling.max} (${ceiling.why})`);
    }
    try {
      const caps = cgroupCaps(ctx.spec.resources.ioWeight !== undefined ? ctx.id : undefined);
      const target = { id: ctx.id, disk: diskBehind(f.upper) };
      // One resolution of the disks for the plan and for crun, so inspect shows what holds.
      const disk = containerDiskLimits(ctx.spec, this.host, target);
      limits = containerLimits(ctx.spec, this.host, target, { ioWeight: caps.ioWeight }, disk);
      const blockIOThrottles = ociThrottles(disk);
      if (ctx.spec.trust === 'untrusted') {
        const slot = this.store.tx(() =>
          this.store.lease(
            'uid-range',
            ctx.id,
            (function* () {
              for (let s = 0; s < UID_SLOTS; s++) yield String(s);
            })(),
          ),
        );
        if (slot === null) throw new HostCapabilityError('no free user-namespace uid range left; remove some untrusted sandboxes');
        uidBase = UID_BASE + Number(slot) * UID_RANGE;
      }
      if (ctx.spec.network === 'bridge') {
        ip = this.network.allocate(ctx.id);
        netnsPath = (await this.network.attach(ctx.id, ip, ctx.spec.resources.netRateKbit)).netnsPath;
      }
      const config = buildOciConfig({
        id: ctx.id,
        hostname: ctx.name,
        spec: ctx.spec,
        image: ctx.image,
        rootfs: f.rootfs,
        cgroupsPath: leafPath(ctx.id),
        initBinary: this.initBinary,
        netnsPath,
        userns: uidBase === null ? null : { hostId: uidBase, size: UID_RANGE },
        cgroupCaps: caps,
        blockIOThrottles,
      });
      writeFileSync(f.config, JSON.stringify(config, null, 1), { mode: 0o600 });
      overlayLowerdir(ctx.image.layers);
      mountStubs = prepareMountTargets(config, ctx.image.layers, f.upper, uidBase ?? 0);
    } catch (e) {
      await this.teardown({ id: ctx.id, runtime: {} });
      rmSync(ctx.dir, { recursive: true, force: true });
      throw e;
    }
    const rt: ContainerRuntime = { ociRuntime: this.ociRuntime, dir: ctx.dir, imageLayers: ctx.image.layers, mountStubs, ip, netnsPath, uidBase };
    return { runtime: rt as unknown as Record<string, unknown>, limits, warnings: limitWarnings(limits) };
  }

  private runArgs(rec: SandboxRecord): string[] {
    const rt = this.rt(rec);
    const f = files(rt.dir);
    // A re-start begins from a clean slate: stale pid and exit files would mislead the waiters.
    rmSync(f.pid, { force: true });
    rmSync(f.exit, { force: true });
    writeFileSync(f.oomBase, String(hostOomKills()), { mode: 0o600 });
    ensureSandboxCgroup(rec.id);
    const nofile = (rec.spec as WorkloadSpec).resources.openFiles;
    return [
      ...this.nsArgs(this.runtimeOf(rec).path),
      '--overlay',
      overlayLowerdir(rt.imageLayers),
      f.upper,
      f.work,
      f.rootfs,
      // The runtime can lower its own hard limit for the container, never raise it.
      ...(nofile !== undefined ? ['--nofile', String(nofile)] : []),
    ];
  }

  private runtimeRun(rec: SandboxRecord): string[] {
    const f = files(this.rt(rec).dir);
    return [this.runtimeOf(rec).path, 'run', '--bundle', this.rt(rec).dir, '--pid-file', f.pid, rec.id];
  }

  async runAttached(rec: SandboxRecord, { sink, stdin }: AttachOptions): Promise<AttachedRun> {
    const args = [...this.runArgs(rec), '--pdeathsig', 'KILL', '--', ...this.runtimeRun(rec)];
    // crun and runc hand their own stdin to the container's init (process.terminal is false),
    // and tini hands it to the workload; without one they get /dev/null.
    const { process: child, done } = spawnChild(this.shim, args, {
      input: stdin ?? undefined,
      stdout: (c) => sink.onStdout(c),
      stderr: (c) => sink.onStderr(c),
    });
    this.attachedHere.add(rec.id);
    let timedOut = false;
    const timers: NodeJS.Timeout[] = [];
    const timeoutMs = (rec.spec as WorkloadSpec).timeoutMs;
    if (timeoutMs !== undefined) {
      // The limit counts from the workload's start (the runtime's pid file, as startedAtMs),
      // not from the runtime's set-up; a runtime that never starts it is stopped after
      // START_LIMIT_MS more.
      const spawnedAt = Date.now();
      const onDeadline = (): void => {
        const started = this.startedAtMs(rec);
        const left = started === null ? (Date.now() - spawnedAt < timeoutMs + START_LIMIT_MS ? 10 : 0) : Math.min(timeoutMs, started + timeoutMs - Date.now());
        if (left > 0) {
          timers.push(setTimeout(onDeadline, left));
          return;
        }
        timedOut = true;
        // To the init, which hands it to the workload's process group (signal() waits until it
        // can); to the runtime if it never started one.
        if (started === null) child.kill('SIGTERM');
        else void this.signal(rec, 'TERM');
        timers.push(
          setTimeout(() => {
            // Killing the init ends its pid namespace, and the runtime then cleans up after it.
            // Killing the runtime ends the init too (its parent-death signal): for when the
            // init is not known, or the runtime lingers.
            if (this.initPid(rec) === null) child.kill('SIGKILL');
            else {
              void this.signal(rec, 'KILL').then(() => {
                if (child.exitCode === null && child.signalCode === null) timers.push(setTimeout(() => child.kill('SIGKILL'), 1000));
              });
            }
          }, TIMEOUT_GRACE_MS),
        );
      };
      timers.push(setTimeout(onDeadline, timeoutMs));
    }
    // The CPU time of the whole group, as isolate counts it: the sandbox's cgroup, every
    // process (a per-process RLIMIT_CPU would let a workload spread its time over children).
    let cpuExceeded = false;
    let cpuTimer: NodeJS.Timeout | undefined;
    const cpuLimitMs = (rec.spec as WorkloadSpec).resources.cpuTimeMs;
    // No counter (a v1 host without cpuacct): the plan lists the limit as not applied.
    if (cpuLimitMs !== undefined && cpuUsageFile(rec.id) !== null) {
      const rate = (rec.spec as WorkloadSpec).resources.cpus ?? this.host.cpus;
      const check = (): void => {
        const used = readCpuTimeMs(rec.id) ?? 0;
        if (used < cpuLimitMs) {
          cpuTimer = setTimeout(check, cpuCheckInMs(cpuLimitMs - used, rate));
          return;
        }
        cpuExceeded = true;
        // SIGKILL to the init ends its pid namespace; the runtime, if it never started one.
        if (this.initPid(rec) === null) child.kill('SIGKILL');
        else void this.signal(rec, 'KILL');
      };
      cpuTimer = setTimeout(check, cpuCheckInMs(cpuLimitMs, rate));
    }
    const exited = done
      .finally(() => {
        this.attachedHere.delete(rec.id);
        for (const t of timers) clearTimeout(t);
        clearTimeout(cpuTimer);
      })
      .then(
        (r) => this.finish(rec, r.code, r.signal, r.stderr, timedOut, cpuExceeded),
        (e: Error) => {
          throw new RuntimeError(`cannot start ${this.shim}: ${e.message}`);
        },
      );
    return { exited };
  }

  /**
   * Turns the runtime's exit into an ExitStatus, or an error when the container never started.
   * `code` and `signal` are the runtime's (a workload killed by signal N shows as code 128+N).
   */
  private finish(rec: SandboxRecord, code: number | null, signal: string | null, stderr: string, timedOut: boolean, cpuExceeded: boolean): ExitStatus {
    const f = files(this.rt(rec).dir);
    if (!began(f.pid, timedOut, cpuExceeded)) {
      const line = lastLine(stderr, `exit code ${code}`);
      throw new RuntimeError(`${this.runtimeOf(rec).name} could not start sandbox ${rec.id}: ${line}`, stderr);
    }
    // tini reports a workload killed by signal N as exit code 128+N, like a shell does.
    const bySignal = code !== null && code > 128 && code < 128 + 65;
    const memoryMiB = (rec.spec as WorkloadSpec).resources.memoryMiB;
    let oomBase: number | null = null;
    try {
      oomBase = Number(readFileSync(f.oomBase, 'utf8'));
    } catch {
      /* not recorded */
    }
    const usage = readUsage(rec.id, {
      killedBySigkill: code === 137 || signal === 'SIGKILL',
      limitBytes: memoryMiB === undefined ? null : memoryMiB * 1048576,
      hostOomKillsAtStart: oomBase,
    });
    return {
      startedAtMs: this.startedAtMs(rec),
      exitCode: timedOut ? TIMEOUT_EXIT_CODE : code,
      signal: signal ?? (bySignal ? signalName(code - 128) : null),
      oomKilled: usage.oomKilled,
      peakMemoryBytes: usage.peakMemoryBytes,
      cpuTimeMs: usage.cpuTimeMs,
      cpuTimeLimitExceeded: cpuExceeded,
      timedOut,
    };
  }

  async startDetached(rec: SandboxRecord, self: SelfInvocation): Promise<{ monitorPid: number }> {
    // The monitor's exit hook records the end and releases everything: `hybridbox internal reap`.
    const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const env = Object.entries(self.env).map(([k, v]) => `${k}=${q(v)}`);
    const onExitCommand = `${env.join(' ')} exec ${[...self.argv, 'internal', 'reap', rec.id].map(q).join(' ')} >/dev/null 2>&1`;
    const f = files(this.rt(rec).dir);
    const spec = rec.spec as WorkloadSpec;
    const args = [
      ...this.runArgs(rec),
      '--stdin-null',
      '--stdout',
      f.stdout,
      '--stderr',
      f.stderr,
      '--exit-file',
      f.exit,
      '--on-exit',
      onExitCommand,
      ...(spec.timeoutMs !== undefined ? ['--timeout-ms', String(spec.timeoutMs), '--grace-ms', String(TIMEOUT_GRACE_MS), '--pid-file', f.pid] : []),
      ...this.cpuLimitArgs(rec),
      '--',
      ...this.runtimeRun(rec),
    ];
    const child = spawnChild(this.shim, args, { detached: true }).process;
    // Started = the runtime wrote the pid file; failed = the monitor recorded an exit first (the
    // runtime is done by then, so the pid file that is not there never will be).
    if (!(await pollUntil(() => existsSync(f.pid) || existsSync(f.exit), { timeoutMs: START_LIMIT_MS, intervalMs: 2 }))) {
      throw new RuntimeError(`sandbox ${rec.id} did not start within 30 s`);
    }
    // The monitor keeps its pid through the exit hook (sh, then `exec` of the reap).
    const ended = readExitFile(f.exit);
    if (began(f.pid, ended?.timedOut === true, ended?.cpuTimeLimitExceeded === true)) return { monitorPid: child.pid! };
    const err = existsSync(f.stderr) ? readFileSync(f.stderr, 'utf8') : '';
    throw new RuntimeError(`${this.runtimeOf(rec).name} could not start sandbox ${rec.id}: ${lastLine(err, 'no output')}`, err);
  }

  /** The shim's watch over the sandbox's CPU time, for a detached run nobody else watches. */
  private cpuLimitArgs(rec: SandboxRecord): string[] {
    const limit = (rec.spec as WorkloadSpec).resources.cpuTimeMs;
    if (limit === undefined) return [];
    const usage = cpuUsageFile(rec.id);
    // No counter: the plan lists the limit as not applied (containerLimits).
    return usage === null ? [] : ['--cpu-limit-ms', String(limit), '--cpu-usage', usage];
  }

  async exec(rec: SandboxRecord, argv: string[], opts: ExecOptions): Promise<number> {
    const { path } = this.runtimeOf(rec);
    const a = [path, 'exec'];
    if (opts.workdir) a.push('--cwd', opts.workdir);
    if (opts.user) a.push('--user', opts.user);
    for (const [k, v] of Object.entries(opts.env ?? {})) a.push('--env', `${k}=${v}`);
    a.push(rec.id, ...argv);
    const { code, signal } = await spawnChild(this.shim, [...this.nsArgs(path), '--pdeathsig', 'KILL', '--', ...a], {
      input: opts.stdin ?? undefined,
      stdout: (c) => opts.sink.onStdout(c),
      stderr: (c) => opts.sink.onStderr(c),
    }).done;
    return code ?? 128 + (signal ? signalNumber(signal) : 0);
  }

  private initPid(rec: { id: string; runtime: Record<string, unknown> }): number | null {
    const dir = this.rt(rec).dir;
    if (!dir) return null;
    try {
      const pid = Number(readFileSync(files(dir).pid, 'utf8').trim());
      // The pid may have been reused since: only trust it while it is in our cgroup.
      return pid > 0 && sandboxPids(rec.id).includes(pid) ? pid : null;
    } catch {
      return null;
    }
  }

  async signal(rec: SandboxRecord, signal: WorkloadSignal): Promise<void> {
    // A sandbox this process is still starting (the runtime has not written the init's pid
    // yet: a Ctrl-C right after `run`) would drop the signal: wait for its workload to exist.
    // The same holds for one another process is starting: its cgroup has processes (the
    // runtime), and the pid file may not be there, or not be whole, yet.
    let pid = this.initPid(rec);
    if (pid === null) {
      const starting = (): boolean => this.attachedHere.has(rec.id) || sandboxPids(rec.id).length > 0;
      await pollUntil(() => (pid = this.initPid(rec)) !== null || !starting(), { timeoutMs: this.attachedHere.has(rec.id) ? 30_000 : 2000, intervalMs: 2 });
    }
    if (pid === null) return;
    const init: number = pid;
    // The runtime writes the pid file before the init can pass a signal on, and one sent too
    // early is lost: PID 1 of a pid namespace drops what it neither handles nor blocks (tini
    // blocks its signals only once it runs), and tini forwards to the workload's process group,
    // which does not exist until its child has made it. Wait for that group, then signal.
    if (signal !== 'KILL') {
      await pollUntil(() => !existsSync(`/proc/${init}`) || this.workloadGroupExists(rec, init), { timeoutMs: 1000, intervalMs: 2 });
    }
    try {
      // SIGKILL to PID 1 of a pid namespace ends every process in it.
      process.kill(init, `SIG${signal}`);
    } catch {
      /* already gone */
    }
  }

  /**
   * Whether the workload is ready for a signal: a child of the init that leads its own
   * process group (tini's child calls setpgid first) and has exec'd the workload (until then
   * it runs tini's code, and a signal in that window can be lost).
   */
  private workloadGroupExists(rec: SandboxRecord, initPid: number): boolean {
    const initExe = exeOf(initPid);
    return sandboxPids(rec.id).some((p) => {
      const st = procStat(p);
      return p !== initPid && st !== null && st.ppid === initPid && st.pgrp === p && exeOf(p) !== initExe;
    });
  }

  async isAlive(rec: SandboxRecord): Promise<boolean> {
    return sandboxPids(rec.id).length > 0;
  }

  async collectExit(rec: SandboxRecord): Promise<ExitStatus | null> {
    const f = files(this.rt(rec).dir);
    const raw = readExitFile(f.exit);
    if (raw === null || !began(f.pid, raw.timedOut === true, raw.cpuTimeLimitExceeded === true)) return null;
    // The monitor has already turned a timed-out end into 124 and the signal that ended it.
    return this.finish(rec, raw.exitCode, raw.signal, '', raw.timedOut === true, raw.cpuTimeLimitExceeded === true);
  }

  logPaths(rec: SandboxRecord): { stdout: string; stderr: string } {
    const f = files(this.rt(rec).dir);
    return { stdout: f.stdout, stderr: f.stderr };
  }

  filesystemChanges(rec: SandboxRecord): { dir: string; madeByBackend: string[] } {
    const rt = this.rt(rec);
    return { dir: files(rt.dir).upper, madeByBackend: rt.mountStubs ?? [] };
  }

  private startedAtMs(rec: SandboxRecord): number | null {
    try {
      return statSync(files(this.rt(rec).dir).pid).mtimeMs;
    } catch {
      return null;
    }
  }

  async teardown(rec: { id: string; runtime: Record<string, unknown> }): Promise<void> {
    // Kill what is left; PID 1's death takes the pid namespace with it.
    await pollUntil(
      () => {
        const pids = sandboxPids(rec.id);
        for (const pid of pids) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        return pids.length === 0;
      },
      { timeoutMs: 1000, intervalMs: 5 },
    );
    // A runtime killed mid-run leaves its state directory: delete through the runtime itself,
    // then make sure. Orphans have no record of which runtime made them, so check both.
    for (const [name, path] of Object.entries(this.runtimePaths) as [OciRuntimeName, string | undefined][]) {
      if (path && existsSync(`/run/${name}/${rec.id}`)) {
        await run(this.shim, [...this.nsArgs(path), '--', path, 'delete', '--force', rec.id]);
        rmSync(`/run/${name}/${rec.id}`, { recursive: true, force: true });
      }
    }
    // A killed workload whose parent died is reaped by the host's PID 1, which can be slow; an
    // unreaped zombie still holds its cgroup busy, so removal is retried for a while.
    let left: string[] = [];
    await pollUntil(() => (left = removeCgroups(rec.id)).length === 0, { timeoutMs: 5000, intervalMs: 20 });
    // A complete record says what the sandbox holds; an orphan's (runtime {}) does not.
    const rt = this.rt(rec);
    const complete = rt.ociRuntime !== undefined;
    if (!complete || rt.netnsPath) await this.network.detach(rec.id);
    if (!complete || rt.ip || rt.uidBase !== null) this.store.releaseLeases(rec.id);
    if (left.length) throw new RuntimeError(`could not remove cgroup ${left[0]} of sandbox ${rec.id}`);
  }

  async describe(rec: SandboxRecord): Promise<Record<string, unknown>> {
    const rt = this.rt(rec);
    let config: unknown = null;
    try {
      config = JSON.parse(readFileSync(files(rt.dir).config, 'utf8'));
    } catch {
      /* removed */
    }
    return { ociRuntime: rt.ociRuntime, bundle: rt.dir, ip: rt.ip, userNamespaceBase: rt.uidBase, cgroup: leafPath(rec.id), ociConfig: config };
  }
}

/**
 * Creates missing mount targets and the working directory in the sandbox's upper layer,
 * as root on the host. The runtime would create them itself, but inside a user namespace
 * container root cannot write into directories owned by host root.
 */
/**
 * overlayfs takes the lower layers top first, colon-separated, and all of its options must
 * fit in one page: an image with more layers than that cannot be mounted as it is.
 */
function overlayLowerdir(layers: readonly string[]): string {
  const lower = [...layers].reverse().join(':');
  if (lower.length > 3800) throw new RuntimeError(`image has too many layers (${layers.length}) for one overlayfs mount; rebuild it with fewer RUN/COPY instructions`);
  return lower;
}

/** Makes the mount points the image lacks in the upper directory; returns them (relative paths). */
function prepareMountTargets(config: Record<string, unknown>, layers: readonly string[], upper: string, idShift: number): string[] {
  const made: string[] = [];
  const mounts = config.mounts as { destination: string; source: string; type: string }[];
  const proc = config.process as { cwd: string; user: { uid: number; gid: number } };
  const missing = (p: string): boolean => !imagePathExists(layers, p) && !existsSync(join(upper, p));
  // A target inside an earlier mount (/dev/pts in the /dev tmpfs) is made by the runtime there.
  const covered = (d: string, i: number): boolean => mounts.slice(0, i).some((m) => d.startsWith(m.destination === '/' ? '/' : `${m.destination}/`));
  for (const [i, m] of mounts.entries()) {
    if (covered(m.destination, i) || !missing(m.destination)) continue;
    const isFile = m.type === 'bind' && existsSync(m.source) && !statSync(m.source).isDirectory();
    const target = join(upper, m.destination);
    mkdirSync(isFile ? dirname(target) : target, { recursive: true, mode: 0o755 });
    if (isFile) writeFileSync(target, '', { mode: 0o755 });
    made.push(m.destination.replace(/^\/+/, ''));
  }
  if (missing(proc.cwd)) {
    const dir = join(upper, proc.cwd);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    chownSync(dir, idShift + proc.user.uid, idShift + proc.user.gid);
  }
  return made;
}

/** A process's parent and process group, from /proc (host pids); null once it is gone. */
function exeOf(pid: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return null;
  }
}

function procStat(pid: number): { ppid: number; pgrp: number } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const [, ppid, pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(ppid), pgrp: Number(pgrp) };
  } catch {
    return null;
  }
}

// Linux x86 numbering, to 31: SIGXFSZ (25) is how a write past RLIMIT_FSIZE ends a workload.
const SIGNALS = [
  '',
  'HUP',
  'INT',
  'QUIT',
  'ILL',
  'TRAP',
  'ABRT',
  'BUS',
  'FPE',
  'KILL',
  'USR1',
  'SEGV',
  'USR2',
  'PIPE',
  'ALRM',
  'TERM',
  'STKFLT',
  'CHLD',
  'CONT',
  'STOP',
  'TSTP',
  'TTIN',
  'TTOU',
  'URG',
  'XCPU',
  'XFSZ',
  'VTALRM',
  'PROF',
  'WINCH',
  'IO',
  'PWR',
  'SYS',
];
function signalName(n: number): string {
  return SIGNALS[n] ? `SIG${SIGNALS[n]}` : `SIG${n}`;
}
function signalNumber(sig: string): number {
  const i = SIGNALS.indexOf(sig.replace(/^SIG/, ''));
  return Math.max(i, 0);
}

/** What hbx-shim's monitor wrote at the end; null while it is not there (or not whole). */
interface ShimExit {
  exitCode: number | null;
  signal: string | null;
  timedOut?: boolean;
  cpuTimeLimitExceeded?: boolean;
}

function readExitFile(path: string): ShimExit | null {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as ShimExit;
  } catch {
    return null;
  }
}

/**
 * Whether the workload started: the runtime wrote its pid file, or a limit ended the run while
 * the runtime was still setting it up (CPU time counts the whole group, the runtime's work in
 * it too: a slow, emulated host can spend it there). Such a run ended by its limit; it is not
 * a failure to start.
 */
const began = (pidFile: string, timedOut: boolean, cpuExceeded: boolean): boolean => existsSync(pidFile) || timedOut || cpuExceeded;
