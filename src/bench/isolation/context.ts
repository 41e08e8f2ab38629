// What the three parts of `bench isolation` share: the probe binary and the bench image,
// a register of every sandbox the bench makes (all removed at the end, on failure and on
// Ctrl-C), and host-side measurements (QEMU processes, host latency, process counts).
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, copyFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Hybridbox } from '../../api/index.js';
import { HostCapabilityError, SandboxNotFoundError } from '../../errors.js';
import type { BackendKind } from '../../spec/schema.js';
import { lastLine, run, spawnChild } from '../../util/exec.js';
import { packageRoot } from '../../util/paths.js';
import { processStartTime, withDeadline } from '../../util/proc.js';

/** Where the probe lives inside the bench image. */
export const PROBE_IN_IMAGE = '/usr/local/bin/hbx-probe';
export const BENCH_IMAGE = 'hbx-bench-isolation:latest';

/** The same limits for every neighbour (and the victim), whatever the backend. */
/**
 * The nominal limits every sandbox of the bench gets, the same on every backend; the disk
 * and network caps go on the limited disk writer and UDP flood.
 */
export const LIMITS = { cpus: 1, memoryMiB: 128, pids: 64, diskMiBps: 20, netMbit: 10 } as const;
/** A limited neighbour may exceed its limit by this factor and still count as held. */
export const RATE_TOLERANCE = 1.25;

export type Log = (line: string) => void;

/** The static probe in dist/, built from src/bench/probe/ when it is missing. */
export async function ensureProbe(): Promise<string> {
  const root = packageRoot();
  const bin = join(root, 'dist', 'hbx-probe');
  const script = join(root, 'src', 'bench', 'probe', 'build.sh');
  if (existsSync(script)) {
    // Rebuilds only when the source is newer than the binary.
    const r = await run('sh', [script, bin]);
    if (r.exitCode !== 0) throw new HostCapabilityError(`cannot build hbx-probe: ${lastLine(r.stderr || r.stdout)}`);
  }
  if (!existsSync(bin)) throw new HostCapabilityError(`${bin} is missing; run \`npm run build\``);
  return bin;
}

/** busybox plus the probe: one image for every backend (the layer and the VM disk are cached). */
export async function ensureBenchImage(hb: Hybridbox, probe: string): Promise<string> {
  await hb.images.ensureBase();
  const ctx = mkdtempSync(join(tmpdir(), 'hbx-bench-image-'));
  try {
    copyFileSync(probe, join(ctx, 'hbx-probe'));
    writeFileSync(join(ctx, 'Sandboxfile'), `FROM busybox\nCOPY hbx-probe ${PROBE_IN_IMAGE}\n`);
    await hb.images.build({ file: join(ctx, 'Sandboxfile'), contextDir: ctx, tags: [BENCH_IMAGE] });
  } finally {
    rmSync(ctx, { recursive: true, force: true });
  }
  return BENCH_IMAGE;
}

/**
 * Every sandbox the bench makes is named here before it is created, so that one call removes
 * all of them: at the end of a part, when a step fails, and on SIGINT/SIGTERM.
 */
export class SandboxRegister {
  readonly tag = `hbx-iso-${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
  private readonly names = new Set<string>();
  /** Ids of the sandboxes removed so far (for leak checks). */
  readonly ids = new Set<string>();
  private readonly children = new Set<ChildProcess>();
  aborted = false;

  constructor(private readonly hb: Hybridbox) {}

  /** A fresh sandbox name, registered for removal. Refused once the bench is being aborted. */
  name(what: string): string {
    if (this.aborted) throw new Error('the bench was interrupted');
    const n = `${this.tag}-${what}`.slice(0, 63);
    this.names.add(n);
    return n;
  }

  /** A host process the bench started (the latency probe): killed, by its pid, on abort. */
  child(c: ChildProcess): void {
    this.children.add(c);
    c.on('exit', () => this.children.delete(c));
  }

  /** Removes one sandbox (by name), whatever its state; quiet when it is gone already. */
  async remove(name: string): Promise<void> {
    const rec = this.hb.sandboxes.find(name);
    if (rec) this.ids.add(rec.id);
    try {
      await this.hb.sandboxes.remove(name, { force: true });
    } catch (e) {
      if (!(e instanceof SandboxNotFoundError)) throw e;
    }
    this.names.delete(name);
  }

  async removeAll(): Promise<string[]> {
    const failed: string[] = [];
    for (const c of this.children) if (c.exitCode === null && c.pid) c.kill('SIGKILL');
    for (const n of [...this.names]) {
      try {
        await this.remove(n);
      } catch (e) {
        failed.push(`${n}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    return failed;
  }
}

/** Rejects when `p` has not settled within `ms` (the work behind it is ended by the register). */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return withDeadline(p, ms, () => new Error(`${what} did not finish within ${Math.round(ms / 1000)} s`));
}

/** The last line of `text` that parses as a JSON object. */
export function lastJson(text: string): Record<string, unknown> | null {
  const lines = text.trim().split('\n').reverse();
  for (const l of lines) {
    if (!l.startsWith('{')) continue;
    try {
      return JSON.parse(l) as Record<string, unknown>;
    } catch {
      /* not JSON */
    }
  }
  return null;
}

/** "comm:starttime" of a host process: with the pid, it names one process for good. */
export function procIdentity(pid: number): string | null {
  const start = processStartTime(pid);
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return start === null ? null : `${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))}:${start}`;
  } catch {
    return null;
  }
}

/** Number of processes on the host. */
export function hostProcessCount(): number {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).length;
}

/** The QEMU process of a VM sandbox: argv[0] is qemu-system-* and its command line names the id. */
export function findQemuPid(id: string): number | null {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (/(^|\/)qemu-system-/.test(argv[0] ?? '') && argv.some((a) => a.includes(id))) return Number(d);
    } catch {
      /* gone */
    }
  }
  return null;
}

export interface QemuProcess {
  pid: number;
  argv: string[];
  uid: number | null;
  seccomp: number | null;
}

/** What the host sees of a QEMU process: its command line, owner and seccomp mode. */
export function describeQemu(pid: number): QemuProcess | null {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (k: string): number | null => {
      const m = new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status);
      return m ? Number(m[1]) : null;
    };
    return { pid, argv, uid: field('Uid'), seccomp: field('Seccomp') };
  } catch {
    return null;
  }
}

/** Resident memory (now and peak) and CPU time of a host process. */
export function processUsage(pid: number): { rssBytes: number; hwmBytes: number; cpuMs: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0) * 1024;
    const raw = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const stat = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ = 100 on Linux).
    const ticks = Number(stat[11]) + Number(stat[12]);
    return { rssBytes: kib('VmRSS'), hwmBytes: kib('VmHWM'), cpuMs: ticks * 10 };
  } catch {
    return null;
  }
}

/** Samples the host while a neighbour runs: process count, and its QEMU's memory and CPU for a VM. */
export class HostSampler {
  private timer: NodeJS.Timeout | undefined;
  private qemu: number | null = null;
  private firstCpu: { ms: number; at: number } | null = null;
  private lastCpu: { ms: number; at: number } | null = null;
  readonly baselineProcs = hostProcessCount();
  maxProcs = this.baselineProcs;
  qemuPeakRssBytes = 0;

  constructor(private readonly sandboxId: (() => string | null) | null) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), 250);
  }

  private sample(): void {
    this.maxProcs = Math.max(this.maxProcs, hostProcessCount());
    if (!this.sandboxId) return;
    if (this.qemu === null) {
      const id = this.sandboxId();
      if (id) this.qemu = findQemuPid(id);
    }
    if (this.qemu === null) return;
    const u = processUsage(this.qemu);
    if (!u) return;
    this.qemuPeakRssBytes = Math.max(this.qemuPeakRssBytes, u.hwmBytes, u.rssBytes);
    const at = performance.now();
    if (!this.firstCpu) this.firstCpu = { ms: u.cpuMs, at };
    this.lastCpu = { ms: u.cpuMs, at };
  }

  stop(): void {
    this.sample();
    clearInterval(this.timer);
  }

  /** CPUs the QEMU process used on the host over the sampled window. */
  qemuCpus(): number | null {
    if (!this.firstCpu || !this.lastCpu || this.lastCpu.at - this.firstCpu.at < 500) return null;
    return (this.lastCpu.ms - this.firstCpu.ms) / (this.lastCpu.at - this.firstCpu.at);
  }
}

/**
 * The host responsiveness probe: `hbx-probe host-latency` on the host, every 100 ms timing
 * a 10 ms sleep's overshoot and a spawn of /bin/true, until it is stopped.
 */
export class HostLatencyProbe {
  private child: ChildProcess | null = null;
  private out = '';
  private exited: Promise<void> = Promise.resolve();

  constructor(
    private readonly probe: string,
    private readonly register: SandboxRegister,
  ) {}

  async start(): Promise<void> {
    let ready = (): void => undefined;
    const c = spawnChild(this.probe, ['host-latency', '600'], {
      stdout: (d) => {
        this.out += d.toString();
        if (this.out.includes('ready\n')) ready();
      },
      stderr: 'ignore',
    });
    this.child = c.process;
    this.register.child(c.process);
    this.exited = c.done.then(
      () => undefined,
      () => undefined,
    );
    await new Promise<void>((resolve, reject) => {
      ready = resolve;
      c.done.then(() => resolve(), reject);
    });
  }

  async stop(): Promise<{ sleepOvershootMs: number[]; spawnMs: number[] } | null> {
    const c = this.child;
    if (!c) return null;
    if (c.exitCode === null) c.kill('SIGTERM');
    await this.exited;
    const j = lastJson(this.out);
    if (!j) return null;
    return {
      sleepOvershootMs: (j.sleepOvershootMs as number[]) ?? [],
      spawnMs: ((j.spawnMs as number[]) ?? []).filter((x) => x >= 0),
    };
  }
}

/** Is the host itself still fine: /bin/true runs within a few seconds and the kernel has not rebooted. */
export async function hostIsUp(bootId: string): Promise<boolean> {
  const t0 = performance.now();
  const ok = await spawnChild('/bin/true', [], { stderr: 'ignore' }).done.then(
    (r) => r.code === 0,
    () => false,
  );
  return ok && performance.now() - t0 < 5000 && readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() === bootId;
}

export function hostBootId(): string {
  return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}

/** Backends asked for that are available here; the others, with why not. */
export function chooseBackends(hb: Hybridbox, asked: BackendKind[] | null): { use: BackendKind[]; skipped: string[] } {
  const avail = hb.info().backends;
  const use: BackendKind[] = [];
  const skipped: string[] = [];
  for (const b of avail) {
    if (asked && !asked.includes(b.kind as BackendKind)) continue;
    if (b.available) use.push(b.kind as BackendKind);
    else skipped.push(`${b.kind}: ${b.reason ?? 'unavailable'}`);
  }
  return { use, skipped };
}
