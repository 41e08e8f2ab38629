// Performance isolation, after the Isolation Benchmark Suite (Matthews et al. 2007): a
// well-behaved victim runs a fixed workload alone, then next to a misbehaving neighbour of
// the same backend with the same nominal limits. Reported per backend and neighbour: how
// much the victim lost, whether the neighbour was held by its limits (and the evidence),
// and how responsive the host stayed meanwhile.
import { readFileSync } from 'node:fs';
import type { Hybridbox, RunResult, SandboxInfo } from '../../api/index.js';
import type { BackendKind, WorkloadSpecInput } from '../../spec/schema.js';
import { lastLine } from '../../util/exec.js';
import { sleep } from '../../util/proc.js';
import { median, summarize } from '../stats.js';
import type { PerformanceCase } from '../../measurements/index.js';
import { hostInterface } from '../../network/index.js';
import { GUEST_RESERVE_MIB } from '../../runtimes/vm/limits.js';
import { HostLatencyProbe, HostSampler, LIMITS, PROBE_IN_IMAGE, RATE_TOLERANCE, lastJson, withTimeout, type Log, type SandboxRegister } from './context.js';

export const NEIGHBOURS = ['cpu-hog', 'memory-bomb', 'fork-bomb', 'disk-writer', 'limited-disk-writer', 'network-flood', 'limited-network-flood'] as const;
export type Neighbour = (typeof NEIGHBOURS)[number];

export interface PerformanceContext {
  hb: Hybridbox;
  image: string;
  /** The probe on the host (for the host latency probe). */
  probe: string;
  register: SandboxRegister;
  log: Log;
}

export interface PerformanceOptions {
  backends: BackendKind[];
  neighbours: readonly Neighbour[];
  /** Victim measurements per case. */
  reps: number;
  /** Length of one victim measurement. */
  seconds: number;
  /** Measure the victim alone again after the neighbours, and pool both baselines. */
  baselineAfter: boolean;
}

const MiB = 1048576;
/** Neighbours end themselves only after this long: the bench stops them when the victim is done. */
const NEIGHBOUR_MAX_S = 900;

function limits(): WorkloadSpecInput['resources'] {
  return { cpus: LIMITS.cpus, memoryMiB: LIMITS.memoryMiB, pids: LIMITS.pids };
}

/** The same nominal limits, plus the disk or network cap a limited neighbour gets. */
function neighbourLimits(n: Neighbour): WorkloadSpecInput['resources'] {
  const rate = LIMITS.diskMiBps * MiB;
  if (n === 'limited-disk-writer') return { ...limits(), deviceWriteBps: [{ rate }], deviceReadBps: [{ rate }] };
  if (n === 'limited-network-flood') return { ...limits(), netRateKbit: LIMITS.netMbit * 1000 };
  return limits();
}

/** The stress a neighbour applies, whatever limit it runs under. */
const stressOf = (n: Neighbour): Exclude<Neighbour, `limited-${string}`> => n.replace(/^limited-/, '') as Exclude<Neighbour, `limited-${string}`>;

function neighbourCommand(n: Neighbour, victimIp: string | null): string[] {
  const s = String(NEIGHBOUR_MAX_S);
  switch (stressOf(n)) {
    case 'cpu-hog':
      return [PROBE_IN_IMAGE, 'cpu-hog', s];
    case 'memory-bomb':
      return [PROBE_IN_IMAGE, 'mem-bomb', s];
    case 'fork-bomb':
      return [PROBE_IN_IMAGE, 'fork-bomb', s];
    case 'disk-writer':
      // The root filesystem: the overlay's upper directory on the host disk for a
      // container, the VM's qcow2 overlay for a VM (/tmp is a tmpfs in both).
      return [PROBE_IN_IMAGE, 'disk-writer', s, '/'];
    case 'network-flood':
      return [PROBE_IN_IMAGE, 'udp-flood', s, victimIp ?? '127.0.0.1', '9'];
  }
}

/** Startup of a VM under TCG takes seconds; a neighbour that is not stressing after this is a failure. */
const START_TIMEOUT_MS = 180_000;

export async function runPerformance(ctx: PerformanceContext, opts: PerformanceOptions): Promise<PerformanceCase[]> {
  const cases: PerformanceCase[] = [];
  for (const backend of opts.backends) cases.push(...(await runBackend(ctx, opts, backend)));
  return cases;
}

async function runBackend(ctx: PerformanceContext, opts: PerformanceOptions, backend: BackendKind): Promise<PerformanceCase[]> {
  const { hb, register, log } = ctx;
  const victimName = register.name(`victim-${backend}`);
  const cases: PerformanceCase[] = [];
  log(`performance: ${backend}: starting the victim`);
  try {
    const victim = await hb.sandboxes.runDetached({
      name: victimName,
      image: ctx.image,
      command: ['sleep', '86400'],
      isolation: backend,
      network: 'bridge',
      resources: limits(),
      // Ends on its own even if this process is killed without a chance to clean up.
      timeoutMs: 3_600_000,
    });
    const measure = async (): Promise<number[]> => {
      const scores: number[] = [];
      for (let i = 0; i < opts.reps; i++) {
        const e = await withTimeout(hb.sandboxes.exec(victim.id, [PROBE_IN_IMAGE, 'work', String(opts.seconds)]), 120_000 + opts.seconds * 5000, `the ${backend} victim's workload`);
        const j = lastJson(e.stdout);
        if (e.exitCode === 0 && j && typeof j.score === 'number') scores.push(j.score);
        else log(`performance: ${backend}: a victim measurement failed (exit ${e.exitCode}): ${lastLine(e.stderr)}`);
      }
      return scores;
    };

    const alone = await measureCase(ctx, measure, null);
    const aloneScores = [...alone.scores];
    const neighbourCases: PerformanceCase[] = [];
    for (const n of opts.neighbours) {
      log(`performance: ${backend}: victim next to a ${n}`);
      neighbourCases.push(await neighbourCase(ctx, backend, n, victim, measure));
    }
    if (opts.baselineAfter && opts.neighbours.length > 0) {
      log(`performance: ${backend}: victim alone again`);
      const again = await measureCase(ctx, measure, null);
      aloneScores.push(...again.scores);
      alone.latency.push(...again.latency);
      alone.overshoot.push(...again.overshoot);
      alone.loadAvg = Math.max(alone.loadAvg ?? 0, again.loadAvg ?? 0);
    }
    const base = aloneScores.length ? median(aloneScores) : NaN;
    cases.push({
      backend,
      neighbour: 'none',
      victimScore: aloneScores,
      degradationPct: aloneScores.length ? 0 : null,
      contained: null,
      containment: 'no neighbour: the baseline',
      hostProbeMs: alone.latency.length ? summarize(alone.latency) : null,
      hostSleepOvershootMs: alone.overshoot.length ? summarize(alone.overshoot) : null,
      neighbourReport: null,
      hostLoadAvg: alone.loadAvg,
    });
    for (const c of neighbourCases) {
      c.degradationPct = c.victimScore.length && base > 0 ? Math.round(1000 * (1 - median(c.victimScore) / base)) / 10 : null;
      cases.push(c);
    }
  } finally {
    await register.remove(victimName);
  }
  return cases;
}

interface Measured {
  scores: number[];
  latency: number[];
  overshoot: number[];
  loadAvg: number | null;
}

function loadAvg(): number | null {
  try {
    return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  } catch {
    return null;
  }
}

/** The victim's measurements with the host latency probe running alongside. */
async function measureCase(ctx: PerformanceContext, measure: () => Promise<number[]>, sampler: HostSampler | null): Promise<Measured> {
  const probe = new HostLatencyProbe(ctx.probe, ctx.register);
  await probe.start();
  sampler?.start();
  let scores: number[] = [];
  let lat: Awaited<ReturnType<HostLatencyProbe['stop']>> = null;
  try {
    scores = await measure();
  } finally {
    sampler?.stop();
    lat = await probe.stop();
  }
  return { scores, latency: lat?.spawnMs ?? [], overshoot: lat?.sleepOvershootMs ?? [], loadAvg: loadAvg() };
}

async function neighbourCase(ctx: PerformanceContext, backend: BackendKind, n: Neighbour, victim: SandboxInfo, measure: () => Promise<number[]>): Promise<PerformanceCase> {
  const { hb, register } = ctx;
  const name = register.name(`${backend}-${n}`);
  const out: PerformanceCase = {
    backend,
    neighbour: n,
    victimScore: [],
    degradationPct: null,
    contained: null,
    containment: '',
    hostProbeMs: null,
    hostSleepOvershootMs: null,
    neighbourReport: null,
  };
  let stdout = '';
  let signalReady: () => void = () => undefined;
  const ready = new Promise<void>((r) => (signalReady = r));
  const started = performance.now();
  const running: Promise<RunResult> = hb.sandboxes.run(
    {
      name,
      image: ctx.image,
      command: neighbourCommand(n, victim.ip),
      isolation: backend,
      network: stressOf(n) === 'network-flood' ? 'bridge' : 'none',
      resources: neighbourLimits(n),
      timeoutMs: (NEIGHBOUR_MAX_S + 60) * 1000,
    },
    {
      maxBufferBytes: 65536,
      onStdout: (c) => {
        stdout += c.toString();
        if (stdout.includes('ready\n')) signalReady();
      },
    },
  );
  running.then(signalReady, signalReady);
  try {
    await withTimeout(ready, START_TIMEOUT_MS, `the ${backend} ${n} neighbour's start`);
    if (!stdout.includes('ready\n')) {
      const r = await running.catch((e: Error) => e);
      out.containment = `the neighbour did not start: ${r instanceof Error ? r.message : `exit ${r.exitCode}, ${lastLine(r.stderr)}`}`;
      return out;
    }
    // A moment for the stress to build up (a fork bomb, a memory bomb's first OOM kill).
    await sleep(500);
    const id = hb.sandboxes.find(name)?.id ?? null;
    const sampler = new HostSampler(backend === 'container' ? null : () => id);
    // What the host hands to the victim over its host-side interface: the flood after any shaping.
    const victimIf = hostInterface(victim.id, backend === 'container' ? 'veth' : 'tap');
    const delivered = { bytes: txBytes(victimIf), at: performance.now() };
    const m = await measureCase(ctx, measure, sampler);
    const deliveredMbit = delivered.bytes === null ? null : (((txBytes(victimIf) ?? delivered.bytes) - delivered.bytes) * 8) / 1000 / (performance.now() - delivered.at);
    out.victimScore = m.scores;
    out.hostProbeMs = m.latency.length ? summarize(m.latency) : null;
    out.hostSleepOvershootMs = m.overshoot.length ? summarize(m.overshoot) : null;
    out.hostLoadAvg = m.loadAvg;
    // SIGTERM: the neighbour stops, prints its counters and exits; then the run's result is complete.
    await hb.sandboxes.stop(name, { graceMs: backend === 'container' ? 5000 : 20_000 }).catch(() => undefined);
    const r = await withTimeout(running, 120_000, `the ${backend} ${n} neighbour's end`).catch((e: Error) => e);
    const report = lastJson(stdout);
    out.neighbourReport = report;
    out.rate = rateOf(n, report, deliveredMbit);
    const verdict = judge(backend, n, r instanceof Error ? null : r, report, sampler, out.rate);
    out.contained = verdict.contained;
    out.containment = r instanceof Error ? `${verdict.text}; ${r.message}` : verdict.text;
    ctx.log(`performance: ${backend}: ${n}: ${out.containment} (${Math.round((performance.now() - started) / 100) / 10} s)`);
    return out;
  } finally {
    await register.remove(name);
    await running.catch(() => undefined);
  }
}

const num = (v: unknown): number => (typeof v === 'number' ? v : NaN);
const fmt = (x: number, d = 1): string => (Number.isFinite(x) ? x.toFixed(d) : '?');

/** Bytes sent on a host interface so far (null when it has none). */
function txBytes(dev: string): number | null {
  try {
    return Number(readFileSync(`/sys/class/net/${dev}/statistics/tx_bytes`, 'utf8'));
  } catch {
    return null;
  }
}

/**
 * The rate a disk writer or a flood reached. The writer's is its own count (bytes written
 * and synced per second); the flood's is what reached the victim, counted by the host
 * where it hands packets to the victim, since the sender's own count includes what its
 * shaper dropped.
 */
export function rateOf(n: Neighbour, report: Record<string, unknown> | null, deliveredMbit: number | null): PerformanceCase['rate'] {
  const limited = n.startsWith('limited-');
  if (stressOf(n) === 'disk-writer') {
    const measured = report && typeof report.MiBps === 'number' ? report.MiBps : null;
    const limit = limited ? LIMITS.diskMiBps : null;
    return { what: 'written and synced by the neighbour', unit: 'MiB/s', measured, limit, ratio: measured !== null && limit ? Math.round((100 * measured) / limit) / 100 : null };
  }
  if (stressOf(n) === 'network-flood') {
    const measured = deliveredMbit === null ? null : Math.round(deliveredMbit * 100) / 100;
    const limit = limited ? LIMITS.netMbit : null;
    return { what: 'delivered to the victim', unit: 'Mbit/s', measured, limit, ratio: measured !== null && limit ? Math.round((100 * measured) / limit) / 100 : null };
  }
  return null;
}

/** Was the neighbour held by its limits, and how we know. */
export function judge(
  backend: BackendKind,
  n: Neighbour,
  r: RunResult | null,
  report: Record<string, unknown> | null,
  sampler: HostSampler,
  rate: PerformanceCase['rate'] = null,
): { contained: boolean | null; text: string } {
  const vm = backend !== 'container';
  const hostProcs = sampler.maxProcs - sampler.baselineProcs;
  const extra: string[] = [];
  if (r?.crash) extra.push(`the neighbour crashed: ${r.crash}`);
  if (r?.timedOut) extra.push('the neighbour hit its timeout');
  const withExtra = (v: { contained: boolean | null; text: string }) => ({ ...v, text: [v.text, ...extra].join('; ') });
  if (!report) {
    return withExtra({
      contained: r?.oomKilled ? true : null,
      text: r ? `no report from the neighbour (exit ${r.exitCode ?? r.signal}${r.oomKilled ? ', OOM-killed' : ''})` : 'no report from the neighbour',
    });
  }
  const secs = num(report.seconds);
  if (n === 'limited-disk-writer' || n === 'limited-network-flood') {
    const held = rate?.ratio != null ? rate.ratio <= RATE_TOLERANCE : null;
    const how = n === 'limited-disk-writer' ? limitMechanism(r, 'resources.deviceWriteBps') : limitMechanism(r, 'resources.netRateKbit');
    return withExtra({
      contained: held,
      text: `${fmt(rate?.measured ?? NaN, 1)} ${rate?.unit} ${rate?.what} against a limit of ${rate?.limit} ${rate?.unit} (${fmt(rate?.ratio ?? NaN, 2)}x; held if <= ${RATE_TOLERANCE}x)${how ? `, enforced by ${how}` : ''}`,
    });
  }
  switch (n) {
    case 'cpu-hog': {
      if (!vm) {
        const cpus = r?.cpuTimeMs != null && secs > 0 ? r.cpuTimeMs / 1000 / secs : NaN;
        return withExtra({
          contained: Number.isFinite(cpus) ? cpus <= LIMITS.cpus * 1.15 : null,
          text: `2 spinning processes held to ${fmt(cpus, 2)} CPU by the cgroup CPU quota (limit ${LIMITS.cpus})`,
        });
      }
      const cpus = sampler.qemuCpus();
      return withExtra({
        contained: cpus === null ? null : cpus <= LIMITS.cpus * 1.3,
        text: `QEMU used ${cpus === null ? '?' : fmt(cpus, 2)} host CPUs for its ${LIMITS.cpus} vCPU (2 spinning processes inside)`,
      });
    }
    case 'memory-bomb': {
      const kills = num(report.oomKills);
      const maxMiB = num(report.maxMiB);
      if (!vm) {
        const peak = r?.peakMemoryBytes ?? null;
        return withExtra({
          contained: kills > 0 && (peak === null || peak <= LIMITS.memoryMiB * MiB * 1.05),
          text: `OOM killer ended the bomb ${kills}x at <= ${maxMiB} MiB; cgroup peak ${peak === null ? '?' : fmt(peak / MiB, 0)} MiB (limit ${LIMITS.memoryMiB})`,
        });
      }
      const rss = sampler.qemuPeakRssBytes;
      return withExtra({
        contained: kills > 0 && (rss === 0 || rss <= (LIMITS.memoryMiB + 256) * MiB),
        text: `the guest cgroup's memory.max (${LIMITS.memoryMiB} MiB) OOM-killed the bomb ${kills}x at <= ${maxMiB} MiB; QEMU RSS peak ${rss ? fmt(rss / MiB, 0) : '?'} MiB for ${LIMITS.memoryMiB + GUEST_RESERVE_MIB} MiB of guest RAM`,
      });
    }
    case 'fork-bomb': {
      const refused = num(report.forksRefused);
      // The same cap in both: a container's cgroup, or the guest agent's cgroup inside a VM.
      const where = vm ? "the guest cgroup's pids cap" : 'pids cap';
      return withExtra({
        contained: refused > 0 && num(report.maxAlive) <= LIMITS.pids && (!vm || hostProcs < 50),
        text: `${where}: ${refused} forks refused, ${fmt(num(report.maxAlive), 0)} processes at most (limit ${LIMITS.pids}); host processes +${hostProcs}`,
      });
    }
    case 'disk-writer':
      return withExtra({
        contained: null,
        text: `no disk limit set (the limited-disk-writer case sets one): wrote ${fmt(num(report.MiBps), 0)} MiB/s${vm ? ' through QEMU' : ''}`,
      });
    case 'network-flood':
      return withExtra({
        contained: null,
        text: `no network limit set (the limited-network-flood case sets one): sent ${fmt(num(report.pps) / 1000, 0)} kpps (${fmt(num(report.MBps), 0)} MB/s), ${fmt(rate?.measured ?? NaN, 1)} Mbit/s delivered to the victim, bounded only by the CPU limit`,
      });
    default:
      return withExtra({ contained: null, text: 'no verdict' });
  }
}

/** The mechanism a sandbox's result names for one of its limits (its first entry for the field). */
function limitMechanism(r: RunResult | null, field: string): string | null {
  return r?.limits?.find((l) => l.field === field || l.field.startsWith(`${field}[`))?.mechanism ?? null;
}
