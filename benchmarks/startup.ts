// Startup-latency benchmark: how long `/bin/true` in a busybox container takes through the
// library, through the CLI, and through a raw `crun run` of an equivalent bundle, next to
// the cost of starting Node itself; and how long `echo ready` in a QEMU microvm and in a
// libvirt VM takes through the library and by hand (QEMU or virsh plus the guest agent).
// Scenarios are measured interleaved (A B C D E ..., A B C D E ..., ...) so that drift of the
// machine hits all of them alike. See benchmarks/README.md.
//
//   node dist/benchmarks/startup.js [--runs N] [--warmup N] [--vm-runs N] [--scenarios a,b] [--json] [--out DIR]
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Hybridbox } from '../src/api/hybridbox.js';
import { probeHost } from '../src/host/probe.js';
import type { HostInfo } from '../src/host/types.js';
import { cgroupMounts, removeCgroupTree } from '../src/runtimes/container/cgroups.js';
import { INIT_PATH } from '../src/runtimes/container/oci-config.js';
import { AgentClient, type ReadyInfo, type SessionExit } from '../src/runtimes/vm/agent/index.js';
import { findGuestBoot, guestBootFile } from '../src/runtimes/vm/boot.js';
import { vmFiles } from '../src/runtimes/vm/files.js';
import { ensureLibvirtd } from '../src/runtimes/vm/libvirt.js';
import { packageRoot } from '../src/util/paths.js';

const CONTAINER_SCENARIOS = ['library', 'cli', 'crun-raw', 'node-e0', 'cli-version'] as const;
const VM_SCENARIOS = ['microvm', 'microvm-raw', 'vm', 'vm-raw'] as const;
const SCENARIOS = [...CONTAINER_SCENARIOS, ...VM_SCENARIOS] as const;
type Scenario = (typeof SCENARIOS)[number];
type VmScenario = (typeof VM_SCENARIOS)[number];
const isVmScenario = (s: Scenario): s is VmScenario => (VM_SCENARIOS as readonly string[]).includes(s);

const DESCRIPTIONS: Record<Scenario, string> = {
  library: "hb.run({ image: 'busybox', command: ['/bin/true'], isolation: 'container' }, { remove: true }) in this process",
  cli: 'node dist/cli.js run --rm --isolation container busybox -- /bin/true',
  'crun-raw': 'hbx-shim --private-mounts --mask-dir /sys/fs/cgroup/unified --ro-self CRUN -- crun run --bundle DIR ID (same config.json, read-only image rootfs)',
  'node-e0': 'node -e 0',
  'cli-version': 'node dist/cli.js --version',
  microvm: "hb.run({ image: 'busybox', command: ['echo', 'ready'], isolation: 'microvm' }, { remove: true }) in this process",
  'microvm-raw': 'qemu-img create (overlay on the same base disk), then hbx-shim --pdeathsig KILL -- <the qemuCommandLine hybridbox builds, paths in a temp dir>, AgentClient: waitReady, session 0 `echo ready`, until QEMU exits',
  vm: "hb.run({ image: 'busybox', command: ['echo', 'ready'], isolation: 'vm' }, { remove: true }) in this process",
  'vm-raw': 'qemu-img create, virsh create --paused <the domain XML hybridbox builds, paths in a temp dir, own name>, AgentClient, virsh resume, session 0 `echo ready`, until libvirt has dropped the domain',
};


const SPEC = { image: 'busybox', command: ['/bin/true'], isolation: 'container' } as const;
const vmSpec = (isolation: 'microvm' | 'vm') => ({ image: 'busybox', command: ['echo', 'ready'], isolation }) as const;
/** What the raw VM scenarios ask the agent to run (session 0). */
const RAW_SESSION = { argv: ['echo', 'ready'], env: { PATH: '/bin:/usr/bin' }, workdir: '/', uid: 0, gid: 0 };
const LIBVIRT_URI = 'qemu:///system';
/** Domain names of the vm-raw scenario: `hbxbench-<pid>-<n>` (hybridbox's own are `hbx-<id>`). */
const RAW_DOMAIN_PREFIX = 'hbxbench';
/** Cgroup parent of the raw crun runs, in every hierarchy; removed at the end. */
const CGROUP_PARENT = 'hybridbox-bench';
/** Where the raw bundle mounts tini: inside the config's own /dev tmpfs (see README). */
const RAW_INIT_PATH = '/dev/.hbx/init';
/** One iteration that takes longer than this is a hang, not a measurement. */
const ITERATION_TIMEOUT_MS = 60_000;

interface Options {
  runs: number;
  warmup: number;
  /** VM scenarios run in the first vmRuns measured rounds only (and in the first warm-up round). */
  vmRuns: number;
  scenarios: Scenario[];
  json: boolean;
  out: string | null;
}

interface Stats {
  n: number;
  min: number;
  median: number;
  p95: number;
  max: number;
  mean: number;
}

interface Ratio {
  formula: string;
  value: number;
  target: number;
  pass: boolean;
}

class BenchError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

function usage(): string {
  return `usage: node dist/benchmarks/startup.js [--runs N (30)] [--warmup N (3)] [--vm-runs N (10)] [--scenarios a,b,... (all: ${SCENARIOS.join(',')})] [--json] [--out DIR]`;
}

const OPTION_SPEC = {
  runs: { type: 'string', default: '30' },
  warmup: { type: 'string', default: '3' },
  'vm-runs': { type: 'string', default: '10' },
  scenarios: { type: 'string' },
  json: { type: 'boolean', default: false },
  out: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function parseOptions(argv: string[]): Options {
  let values: ReturnType<typeof parseArgs<{ options: typeof OPTION_SPEC }>>['values'];
  try {
    ({ values } = parseArgs({ args: argv, options: OPTION_SPEC, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new BenchError(`${(e as Error).message}\n${usage()}`, 2);
  }
  if (values.help) {
    process.stdout.write(`${usage()}\n`);
    process.exit(0);
  }
  const int = (name: string, s: string, min: number): number => {
    if (!/^\d+$/.test(s) || Number(s) < min) throw new BenchError(`--${name}: "${s}" is not valid; allowed: an integer >= ${min}`, 2);
    return Number(s);
  };
  let scenarios: Scenario[] = [...SCENARIOS];
  if (values.scenarios !== undefined) {
    const asked = values.scenarios.split(',').map((x) => x.trim()).filter(Boolean);
    const bad = asked.filter((x) => !(SCENARIOS as readonly string[]).includes(x));
    if (bad.length || !asked.length) throw new BenchError(`--scenarios: "${values.scenarios}" is not valid; allowed: a comma-separated list of ${SCENARIOS.join(', ')}`, 2);
    // Always in the canonical order: the interleaving (and each ratio's pair) stays the same.
    scenarios = SCENARIOS.filter((x) => asked.includes(x));
  }
  return {
    runs: int('runs', values.runs, 1),
    warmup: int('warmup', values.warmup, 0),
    vmRuns: int('vm-runs', values['vm-runs'], 1),
    scenarios,
    json: values.json,
    out: values.out ?? null,
  };
}

// ---------------------------------------------------------------------------------------
// Statistics

function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const n = s.length;
  const at = (i: number): number => s[Math.min(n - 1, Math.max(0, i))]!;
  const median = n % 2 ? at((n - 1) / 2) : (at(n / 2 - 1) + at(n / 2)) / 2;
  const r = (x: number): number => Math.round(x * 100) / 100;
  return {
    n,
    min: r(at(0)),
    median: r(median),
    // Nearest rank: the smallest sample that at least 95% of the samples do not exceed.
    p95: r(at(Math.ceil(0.95 * n) - 1)),
    max: r(at(n - 1)),
    mean: r(s.reduce((a, b) => a + b, 0) / n),
  };
}

/** The ratios whose scenarios were all measured (see --scenarios). */
function ratios(m: Partial<Record<Scenario, Stats>>, first: Partial<Record<VmScenario, Stats>>): Record<string, Ratio> {
  const mk = (formula: string, value: number, target: number): Ratio => ({
    formula,
    value: Math.round(value * 1000) / 1000,
    target,
    pass: value <= target,
  });
  const out: Record<string, Ratio> = {};
  const { library, cli, 'crun-raw': crunRaw, 'node-e0': node, 'cli-version': version } = m;
  if (library && crunRaw) out['library/crun-raw'] = mk('median(library) / median(crun-raw)', library.median / crunRaw.median, 1.3);
  if (cli && node && crunRaw) out['cli/(node-e0+crun-raw)'] = mk('median(cli) / (median(node-e0) + median(crun-raw))', cli.median / (node.median + crunRaw.median), 1.3);
  if (version && node) out['cli-version/node-e0'] = mk('median(cli-version) / median(node-e0)', version.median / node.median, 1.2);
  // VM start-up is compared on the time to the workload's first output: what a caller waits
  // for. The wall times include the guest's power-off and (for hybridbox) the clean-up.
  for (const [a, b] of [['microvm', 'microvm-raw'], ['vm', 'vm-raw']] as const) {
    const fa = first[a];
    const fb = first[b];
    if (fa && fb) out[`${a}/${b}`] = mk(`median(${a} first output) / median(${b} first output)`, fa.median / fb.median, 1.15);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Running things

interface ProcResult {
  ms: number;
  code: number | null;
  signal: string | null;
  stderr: string;
}

/** The current child, so that a signal to the benchmark can end it. */
let current: ReturnType<typeof spawn> | null = null;

/** Wall time from spawn() to the child's exit (and its pipes closing). */
function timeSpawn(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<ProcResult> {
  return new Promise((resolvePromise, reject) => {
    let stderr = '';
    const t0 = performance.now();
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    current = child;
    // Output is drained (a full pipe would stall the child) but only stderr is kept.
    child.stdout!.resume();
    child.stderr!.on('data', (c: Buffer) => {
      if (stderr.length < 8192) stderr += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), ITERATION_TIMEOUT_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      current = null;
      reject(new BenchError(`cannot start ${file}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      current = null;
      resolvePromise({ ms, code, signal, stderr });
    });
  });
}

function lastLine(text: string): string {
  return text.trim().split('\n').filter(Boolean).pop() ?? '(no output)';
}

/** A helper command (qemu-img, virsh): its output is kept; failing is an error. */
function tool(file: string, args: string[], timeoutMs = ITERATION_TIMEOUT_MS): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    let stdout = '';
    let stderr = '';
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new BenchError(`cannot start ${file}: ${e.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

async function mustTool(file: string, args: string[]): Promise<string> {
  const r = await tool(file, args);
  if (r.code !== 0) throw new BenchError(`${file} ${args.slice(0, 3).join(' ')} failed (exit ${r.code}): ${lastLine(r.stderr || r.stdout)}`);
  return r.stdout;
}

const virsh = (args: string[]) => tool('virsh', ['-c', LIBVIRT_URI, ...args]);

const sleepMs = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Rejects after `ms` with a message naming what did not happen; the timer never keeps the process alive. */
function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BenchError(`${what} did not happen within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}


// ---------------------------------------------------------------------------------------
// The benchmark

interface Context {
  node: string;
  cli: string;
  shim: string;
  crun: string | null;
  env: NodeJS.ProcessEnv;
  hb: Hybridbox;
  work: string;
  bundle: string;
  rawConfig: Record<string, unknown>;
  rawSeq: number;
  /** Raw container ids started so far, for the final clean-up. */
  rawIds: string[];
  microvmTemplate: MicrovmTemplate | null;
  vmTemplate: VmTemplate | null;
  vmSeq: number;
  /** QEMU processes of microvm-raw (through hbx-shim) that may still run. */
  rawQemus: Set<ChildProcess>;
  /** Domains vm-raw created, for the final clean-up. */
  rawDomains: string[];
}

/** One iteration: wall time, and for VM scenarios the time to the first output and the phases. */
interface Measurement {
  ms: number;
  firstOutputMs?: number;
  phases?: Record<string, number>;
}

/** What microvm-raw replays: hybridbox's QEMU command line, with the sandbox directory as a placeholder. */
interface MicrovmTemplate {
  argv: string[];
  dir: string;
  base: string;
}

/** What vm-raw replays: hybridbox's domain XML, with the sandbox directory as a placeholder. */
interface VmTemplate {
  xml: string;
  dir: string;
  base: string;
}

/** Builds the raw bundle from the config.json hybridbox writes for the same spec. */
async function prepareRawBundle(hb: Hybridbox, bundle: string): Promise<Record<string, unknown>> {
  const info = await hb.create(SPEC);
  let config: Record<string, unknown>;
  try {
    const details = (await hb.inspect(info.id)).backendDetails as { ociConfig?: Record<string, unknown> | null };
    if (!details.ociConfig) throw new BenchError(`sandbox ${info.id} has no OCI config to copy`);
    config = structuredClone(details.ociConfig);
  } finally {
    await hb.remove(info.id, { force: true });
  }
  // The image's own root filesystem, read-only (the library mounts an overlay over it instead).
  config.root = { path: singleLayer(await hb.images.resolve(SPEC.image)), readonly: true };
  // tini stays PID 1, but its mount target cannot be /.hbx/init: the image has no /.hbx,
  // and crun would create it in the shared image directory (it makes the root read-only
  // only after the mounts). Inside the config's own /dev tmpfs the target costs nothing.
  const mounts = (config.mounts ?? []) as { destination: string }[];
  const init = mounts.find((m) => m.destination === INIT_PATH);
  if (init) {
    init.destination = RAW_INIT_PATH;
    const proc = config.process as { args: string[] };
    if (proc.args[0] === INIT_PATH) proc.args[0] = RAW_INIT_PATH;
  }
  const linux = config.linux as { namespaces?: { type: string; path?: string }[] };
  if (linux.namespaces?.some((ns) => ns.path)) throw new BenchError('the sandbox config joins an existing namespace; the raw bundle needs a self-contained one');
  mkdirSync(bundle, { recursive: true });
  return config;
}

async function runRaw(ctx: Context): Promise<ProcResult> {
  const id = `bench-${process.pid}-${++ctx.rawSeq}`;
  ctx.rawIds.push(id);
  const config = structuredClone(ctx.rawConfig);
  (config.linux as { cgroupsPath: string }).cgroupsPath = `/${CGROUP_PARENT}/${id}`;
  writeFileSync(join(ctx.bundle, 'config.json'), JSON.stringify(config));
  const args = [
    '--private-mounts', '--mask-dir', '/sys/fs/cgroup/unified', '--ro-self', ctx.crun!,
    // One prctl(2), so that a killed benchmark takes crun with it.
    '--pdeathsig', 'KILL',
    '--', ctx.crun!, 'run', '--bundle', ctx.bundle, id,
  ];
  const r = await timeSpawn(ctx.shim, args, ctx.env);
  await cleanupRaw(ctx, id);
  return r;
}

/** What a raw run leaves: crun state (a failed or killed run) and cgroup directories. */
async function cleanupRaw(ctx: Context, id: string): Promise<void> {
  if (existsSync(`/run/crun/${id}`)) {
    await timeSpawn(ctx.shim, ['--private-mounts', '--mask-dir', '/sys/fs/cgroup/unified', '--ro-self', ctx.crun!, '--', ctx.crun!, 'delete', '--force', id], ctx.env);
    rmSync(`/run/crun/${id}`, { recursive: true, force: true });
  }
  const left = removeCgroupTree(join(CGROUP_PARENT, id));
  if (left.length) throw new BenchError(`could not remove cgroup ${left[0]} of raw container ${id}`);
}

// ---------------------------------------------------------------------------------------
// VM scenarios

/**
 * Creates one sandbox of the VM spec with hb.create() and hands its inspect() details and
 * its directory to `take`; the sandbox is removed again whatever happens. Also returns the
 * base disk its overlay sits on (the raw runs get their own overlays on the same base).
 */
async function withVmTemplate<T>(hb: Hybridbox, isolation: 'microvm' | 'vm', take: (details: Record<string, unknown>, dir: string) => T): Promise<{ value: T; base: string }> {
  const info = await hb.create(vmSpec(isolation));
  try {
    const details = (await hb.inspect(info.id)).backendDetails as Record<string, unknown>;
    const dir = join(hb.root, 'sandboxes', info.id);
    const disk = vmFiles(dir).disk;
    const meta = JSON.parse(await mustTool('qemu-img', ['info', '--output=json', '-U', disk])) as { 'full-backing-filename'?: string; 'backing-filename'?: string };
    const base = meta['full-backing-filename'] ?? meta['backing-filename'];
    if (!base || !existsSync(base)) throw new BenchError(`the ${isolation} sandbox's disk ${disk} has no base disk to share`);
    return { value: take(details, dir), base };
  } finally {
    await hb.remove(info.id, { force: true });
  }
}

/** Every file the raw run uses must be inside the sandbox directory, so that rewriting it moves them all. */
function checkRewritable(text: string, dir: string, what: string): void {
  const f = vmFiles(dir);
  for (const p of [f.disk, f.agentSock, f.console]) {
    if (!text.includes(p)) throw new BenchError(`the ${what} does not name ${p}; the benchmark cannot redirect it to a temporary directory`);
  }
}

async function prepareMicrovm(hb: Hybridbox): Promise<MicrovmTemplate> {
  const { value, base } = await withVmTemplate(hb, 'microvm', (d, dir) => {
    const argv = d.qemuCommandLine as string[] | undefined;
    if (!Array.isArray(argv) || !argv.length) throw new BenchError('the microvm sandbox has no qemuCommandLine in inspect()');
    checkRewritable(argv.join('\n'), dir, 'QEMU command line');
    for (const p of [vmFiles(dir).qmpSock, vmFiles(dir).pid]) if (!argv.join('\n').includes(p)) throw new BenchError(`the QEMU command line does not name ${p}`);
    return { argv, dir };
  });
  return { ...value, base };
}

async function prepareVm(hb: Hybridbox): Promise<VmTemplate> {
  const { value, base } = await withVmTemplate(hb, 'vm', (d, dir) => {
    const xml = d.domainXml as string | undefined;
    if (typeof xml !== 'string' || !/<name>[^<]+<\/name>/.test(xml)) throw new BenchError('the vm sandbox has no domainXml with a <name> in inspect()');
    checkRewritable(xml, dir, 'domain XML');
    return { xml, dir };
  });
  return { ...value, base };
}

const since = (t0: number): number => performance.now() - t0;

/** The raw runs' session 0 with its first stdout chunk timed; rejects on anything but exit 0 with output. */
async function rawSession(agent: AgentClient, t0: number, phases: Record<string, number>): Promise<SessionExit> {
  let out = '';
  let err = '';
  const x = await agent.startSession(0, RAW_SESSION, {
    onStdout: (c) => {
      phases.firstOutput ??= since(t0);
      out += c.toString();
    },
    onStderr: (c) => (err += c.toString()),
  }, { timeoutMs: ITERATION_TIMEOUT_MS });
  phases.exitFrame = since(t0);
  if (x.exitCode !== 0) throw new BenchError(`session 0 ended with ${x.signal ?? `exit code ${x.exitCode}`}; stderr: ${lastLine(err)}`);
  if (out !== 'ready\n') throw new BenchError(`session 0 printed ${JSON.stringify(out.slice(0, 80))}, not "ready"`);
  return x;
}

/** Keeps the agent's R payload (guest uptimes) for the JSON. */
function guestTimes(ready: ReadyInfo, phases: Record<string, number>): void {
  phases.guestInitUptime = ready.initMs;
  phases.guestReadyUptime = ready.uptimeMs;
}

/** microvm-raw: a fresh overlay, hybridbox's exact QEMU argv in a temp dir, the agent by hand. */
async function runMicrovmRaw(ctx: Context): Promise<Measurement> {
  const t = ctx.microvmTemplate!;
  const dir = join(ctx.work, `microvm-raw-${++ctx.vmSeq}`);
  mkdirSync(dir, { mode: 0o711 });
  const files = vmFiles(dir);
  const argv = t.argv.map((a) => a.split(t.dir).join(dir));
  const phases: Record<string, number> = {};
  let child: ChildProcess | null = null;
  let agent: AgentClient | null = null;
  try {
    const t0 = performance.now();
    await mustTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', t.base, files.disk]);
    phases.overlay = since(t0);
    // Through the shim for its parent-death signal, as hybridbox does: a killed benchmark takes QEMU with it.
    const c = spawn(ctx.shim, ['--pdeathsig', 'KILL', '--', ...argv], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    ctx.rawQemus.add(c);
    current = c;
    let stderr = '';
    c.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString();
    });
    const exited = new Promise<number>((res, rej) => {
      c.on('error', (e) => rej(new BenchError(`cannot start QEMU: ${e.message}`)));
      c.on('close', (code, signal) => {
        ctx.rawQemus.delete(c);
        res(since(t0));
        if (code !== 0) stderr += `\n(QEMU exit ${signal ?? code})`;
      });
    });
    const early = exited.then(() => {
      throw new BenchError(`QEMU exited early: ${lastLine(stderr)}`);
    });
    early.catch(() => undefined);
    agent = await Promise.race([AgentClient.connect(files.agentSock, 10_000), early]);
    phases.connected = since(t0);
    guestTimes(await Promise.race([agent.waitReady(ITERATION_TIMEOUT_MS), early]), phases);
    phases.ready = since(t0);
    await rawSession(agent, t0, phases);
    phases.qemuExit = await deadline(exited, 10_000, 'QEMU exit after the workload');
    if (/QEMU exit/.test(stderr)) throw new BenchError(`QEMU did not exit cleanly: ${lastLine(stderr)}`);
    return { ms: phases.qemuExit, firstOutputMs: phases.firstOutput!, phases };
  } finally {
    current = null;
    agent?.close();
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child!.once('close', r));
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** libvirt keeps these while a domain exists; a transient domain that powered off loses both. */
const domainFiles = (name: string): string[] => [`/run/libvirt/qemu/${name}.pid`, `/run/libvirt/qemu/${name}.xml`];
const domainExists = (name: string): boolean => domainFiles(name).some((f) => existsSync(f));

/** vm-raw: a fresh overlay, hybridbox's exact domain XML in a temp dir, virsh and the agent by hand. */
async function runVmRaw(ctx: Context): Promise<Measurement> {
  const t = ctx.vmTemplate!;
  const n = ++ctx.vmSeq;
  const dir = join(ctx.work, `vm-raw-${n}`);
  mkdirSync(dir, { mode: 0o711 });
  const files = vmFiles(dir);
  const name = `${RAW_DOMAIN_PREFIX}-${process.pid}-${n}`;
  const xml = t.xml.split(t.dir).join(dir).replace(/<name>[^<]+<\/name>/, `<name>${name}</name>`);
  const phases: Record<string, number> = {};
  let agent: AgentClient | null = null;
  try {
    const t0 = performance.now();
    await mustTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', t.base, files.disk]);
    writeFileSync(files.domainXml, xml);
    phases.overlay = since(t0);
    ctx.rawDomains.push(name);
    const created = await virsh(['create', '--paused', files.domainXml]);
    if (created.code !== 0) throw new BenchError(`virsh create failed: ${lastLine(created.stderr || created.stdout)}`);
    phases.created = since(t0);
    agent = await AgentClient.connect(files.agentSock, 10_000);
    phases.connected = since(t0);
    const closed = agent.waitClosed(ITERATION_TIMEOUT_MS).then(() => since(t0));
    closed.catch(() => undefined);
    const resumed = await virsh(['resume', name]);
    if (resumed.code !== 0) throw new BenchError(`virsh resume failed: ${lastLine(resumed.stderr || resumed.stdout)}`);
    phases.resumed = since(t0);
    guestTimes(await agent.waitReady(ITERATION_TIMEOUT_MS), phases);
    phases.ready = since(t0);
    await rawSession(agent, t0, phases);
    // QEMU closes the agent socket when it exits; libvirt then drops the (transient) domain.
    phases.qemuExit = await deadline(closed, 10_000, 'QEMU exit after the workload');
    while (domainExists(name)) {
      if (since(t0) - phases.qemuExit > 10_000) throw new BenchError(`libvirt still has domain ${name} 10 s after QEMU exited`);
      await sleepMs(2);
    }
    phases.gone = since(t0);
    return { ms: phases.gone, firstOutputMs: phases.firstOutput!, phases };
  } finally {
    agent?.close();
    await destroyDomain(name);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function destroyDomain(name: string): Promise<void> {
  if (!domainExists(name)) return;
  await virsh(['destroy', name]);
  for (let i = 0; i < 200 && domainExists(name); i++) await sleepMs(25);
  if (domainExists(name)) throw new BenchError(`domain ${name} is still there after virsh destroy`);
}

/** microvm / vm: hb.run in this process, the first stdout chunk timed through onStdout. */
async function runVmLibrary(ctx: Context, isolation: 'microvm' | 'vm'): Promise<Measurement> {
  let first: number | undefined;
  const t0 = performance.now();
  const r = await ctx.hb.run(vmSpec(isolation), { remove: true, onStdout: () => (first ??= since(t0)) });
  const ms = since(t0);
  if (r.crash) throw new BenchError(`the VM crashed: ${r.crash}`);
  if (r.exitCode !== 0) throw new BenchError(`exit code ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}; stderr: ${lastLine(r.stderr)}`);
  if (first === undefined || r.stdout !== 'ready\n') throw new BenchError(`printed ${JSON.stringify(r.stdout.slice(0, 80))}, not "ready"`);
  const phases: Record<string, number> = { firstOutput: first };
  if (r.startupMs !== null) phases.ready = r.startupMs;
  return { ms, firstOutputMs: first, phases };
}

async function runOnce(ctx: Context, s: Scenario): Promise<Measurement> {
  const fail = (what: string, detail: string): never => {
    throw new BenchError(`scenario "${s}" failed: ${what}; ${detail}`);
  };
  const check = (r: ProcResult): number => {
    if (r.code !== 0) {
      // Others rebuilding dist/ mid-run replace the chunk files under a running benchmark.
      const hint = /Cannot find module .*dist\/chunks\//.test(r.stderr) ? ' (dist/ was rebuilt while the benchmark ran: run it again)' : '';
      fail(r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`, `stderr: ${lastLine(r.stderr)}${hint}`);
    }
    return r.ms;
  };
  const vm = async (f: () => Promise<Measurement>): Promise<Measurement> => {
    try {
      return await f();
    } catch (e) {
      throw new BenchError(`scenario "${s}" failed: ${(e as Error).message}`);
    }
  };
  switch (s) {
    case 'library': {
      const t0 = performance.now();
      const r = await ctx.hb.run(SPEC, { remove: true });
      const ms = performance.now() - t0;
      if (r.exitCode !== 0) fail(`exit code ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}`, `stderr: ${lastLine(r.stderr)}`);
      return { ms };
    }
    case 'cli':
      return { ms: check(await timeSpawn(ctx.node, [ctx.cli, 'run', '--rm', '--isolation', 'container', 'busybox', '--', '/bin/true'], ctx.env)) };
    case 'crun-raw':
      return { ms: check(await runRaw(ctx)) };
    case 'node-e0':
      return { ms: check(await timeSpawn(ctx.node, ['-e', '0'], ctx.env)) };
    case 'cli-version':
      return { ms: check(await timeSpawn(ctx.node, [ctx.cli, '--version'], ctx.env)) };
    case 'microvm':
      return vm(() => runVmLibrary(ctx, 'microvm'));
    case 'microvm-raw':
      return vm(() => runMicrovmRaw(ctx));
    case 'vm':
      return vm(() => runVmLibrary(ctx, 'vm'));
    case 'vm-raw':
      return vm(() => runVmRaw(ctx));
  }
}

function hostDescription(host: HostInfo): Record<string, unknown> {
  return {
    cpuModel: host.cpuModel,
    cores: host.cpus,
    arch: host.arch,
    kernel: host.kernelRelease,
    memTotalBytes: host.memTotalBytes,
    crunVersion: host.tools.crun?.version ?? null,
    tiniVersion: host.tools.tini?.version ?? null,
    kvm: host.kvm.usable,
    kvmReason: host.kvm.reason,
    cgroupLayout: host.cgroup.layout,
    node: process.version,
    qemuVersion: host.tools.qemu?.version ?? null,
    libvirtVersion: host.tools.libvirtd?.version ?? null,
    guestKernel: findGuestBoot()?.kernelRelease ?? null,
  };
}

const fmt = (x: number): string => x.toFixed(1);

interface TableInput {
  host: Record<string, unknown>;
  options: { runs: number; warmup: number; vmRuns: number; vmWarmup: number };
  scenarios: Record<string, Stats>;
  firstOutput: Record<string, Stats>;
  phases: Record<string, Record<string, Stats>>;
  ratios: Record<string, Ratio>;
}

function formatTable(result: TableInput): string {
  const h = result.host;
  const o = result.options;
  const vm = Object.keys(result.firstOutput).length > 0;
  const lines = [
    `startup benchmark: ${o.runs} runs (+${o.warmup} warm-up)${vm ? `, VM scenarios ${Math.min(o.vmRuns, o.runs)} runs (+${o.vmWarmup} warm-up)` : ''}, interleaved; times in ms`,
    `host: ${h.cpuModel}, ${h.cores} cores, kernel ${h.kernel}, crun ${h.crunVersion ?? '-'}, KVM ${h.kvm ? 'yes' : 'no'}, cgroup ${h.cgroupLayout}, node ${h.node}`,
  ];
  if (vm) lines.push(`vm: qemu ${h.qemuVersion ?? '-'}, libvirt ${h.libvirtVersion ?? '-'}, guest kernel ${h.guestKernel ?? '-'}, ${h.kvm ? 'KVM' : 'TCG (software emulation)'}`);
  lines.push('');
  const table = (head: string[], body: string[][]): void => {
    const rows = [head, ...body];
    const w = head.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
    for (const r of rows) lines.push(r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ').trimEnd());
  };
  const statRow = (name: string, st: Stats): string[] => [name, String(st.n), fmt(st.min), fmt(st.median), fmt(st.p95), fmt(st.max)];
  table(['scenario', 'n', 'min', 'median', 'p95', 'max'], Object.entries(result.scenarios).map(([name, st]) => statRow(name, st)));
  if (vm) {
    lines.push('');
    table(['first output', 'n', 'min', 'median', 'p95', 'max'], Object.entries(result.firstOutput).map(([name, st]) => statRow(name, st)));
    lines.push('');
    lines.push('VM phases (medians, ms since the start of the iteration; guest* = guest uptime in the R frame)');
    for (const [name, ph] of Object.entries(result.phases)) {
      lines.push(`  ${name.padEnd(12)} ${Object.entries(ph).map(([k, st]) => `${k} ${fmt(st.median)}`).join(', ')}`);
    }
  }
  lines.push('');
  table(['ratio (medians)', 'value', 'target', 'result'], Object.entries(result.ratios).map(([name, r]) => [name, r.value.toFixed(2), `<= ${r.target}`, r.pass ? 'pass' : 'FAIL']));
  return lines.join('\n') + '\n';
}

// Signals: the first one stops after the current iteration and cleans up; a second one exits.
let interrupted: NodeJS.Signals | null = null;
function onSignal(sig: NodeJS.Signals): void {
  if (interrupted) {
    process.stderr.write(`startup benchmark: ${sig} again, exiting without clean-up\n`);
    process.exit(130);
  }
  interrupted = sig;
  current?.kill('SIGTERM');
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new BenchError('container and VM sandboxes need root: run the benchmark as root');
  const pkgRoot = packageRoot();
  const cli = join(pkgRoot, 'dist', 'cli.js');
  const shim = process.env.HYBRIDBOX_SHIM ?? join(pkgRoot, 'dist', 'hbx-shim');
  for (const f of [cli, shim]) if (!existsSync(f)) throw new BenchError(`${f} is missing; run \`npm run build\` first`);
  const want = (...names: Scenario[]): boolean => names.some((n) => opts.scenarios.includes(n));
  // VM scenarios take seconds each under TCG: they warm up in one round at most.
  const vmWarmup = Math.min(opts.warmup, 1);

  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  const log = (s: string): void => void process.stderr.write(s);
  const tty = process.stderr.isTTY;

  // Everything this run creates lives under one temporary directory: the state root, the
  // raw bundle, the raw VMs' disks and sockets. Host-side leftovers (cgroups, crun state,
  // QEMU processes, libvirt domains) are tracked and removed too.
  const work = mkdtempSync(join(os.tmpdir(), 'hbx-bench-'));
  const root = join(work, 'state');
  let hb: Hybridbox | null = null;
  let ctx: Context | null = null;
  try {
    const host = await probeHost({ cacheDir: join(root, 'cache') });
    const crun = host.tools.crun?.path ?? null;
    if (!crun && want('library', 'cli', 'crun-raw')) throw new BenchError('crun is not installed (apt-get install crun)');
    if (want(...VM_SCENARIOS)) {
      const leave = `or leave the VM scenarios out: --scenarios ${CONTAINER_SCENARIOS.join(',')}`;
      if (!host.tools.qemu) throw new BenchError(`QEMU is not installed (apt-get install qemu-system-x86 qemu-utils), ${leave}`);
      if (!findGuestBoot()) throw new BenchError(`no guest kernel (${guestBootFile()} is missing or stale): run \`npm run setup\`, ${leave}`);
      if (want('vm', 'vm-raw') && !(host.tools.virsh && host.tools.libvirtd)) throw new BenchError(`libvirt is not installed (apt-get install libvirt-daemon-system), ${leave}`);
    }
    hb = await Hybridbox.open({ root, host, ociRuntime: 'crun' });
    await hb.ensureBaseImages();
    ctx = {
      node: process.execPath,
      cli,
      shim,
      crun,
      env: { ...process.env, HYBRIDBOX_ROOT: root },
      hb,
      work,
      bundle: join(work, 'bundle'),
      rawConfig: {},
      rawSeq: 0,
      rawIds: [],
      microvmTemplate: null,
      vmTemplate: null,
      vmSeq: 0,
      rawQemus: new Set(),
      rawDomains: [],
    };
    if (want('crun-raw')) ctx.rawConfig = await prepareRawBundle(hb, ctx.bundle);
    // hybridbox starts libvirtd on its first VM; started here, neither vm nor vm-raw pays for it.
    if (want('vm', 'vm-raw')) await ensureLibvirtd(!host.kvm.usable);
    if (want('microvm-raw')) ctx.microvmTemplate = await prepareMicrovm(hb);
    if (want('vm-raw')) ctx.vmTemplate = await prepareVm(hb);

    const samples = Object.fromEntries(opts.scenarios.map((s) => [s, [] as number[]])) as Partial<Record<Scenario, number[]>>;
    const firstOutputSamples: Partial<Record<VmScenario, number[]>> = {};
    const phaseSamples: Partial<Record<VmScenario, Record<string, number[]>>> = {};
    const loadStart = os.loadavg();
    const total = opts.warmup + opts.runs;
    for (let round = 0; round < total; round++) {
      const warm = round < opts.warmup;
      const vmRound = warm ? round < vmWarmup : round - opts.warmup < opts.vmRuns;
      if (tty) log(`\r${warm ? 'warm-up' : 'round'} ${warm ? round + 1 : round - opts.warmup + 1}/${warm ? opts.warmup : opts.runs}   `);
      for (const s of opts.scenarios) {
        if (isVmScenario(s) && !vmRound) continue;
        if (interrupted) throw new BenchError(`interrupted by ${interrupted}`);
        let m: Measurement;
        try {
          m = await runOnce(ctx, s);
        } catch (e) {
          if (interrupted) throw new BenchError(`interrupted by ${interrupted}`);
          const where = warm ? `warm-up round ${round + 1}` : `round ${round - opts.warmup + 1}`;
          throw new BenchError(`${(e as Error).message} (${where})`);
        }
        if (warm) continue;
        samples[s]!.push(m.ms);
        if (isVmScenario(s)) {
          (firstOutputSamples[s] ??= []).push(m.firstOutputMs!);
          const ph = (phaseSamples[s] ??= {});
          for (const [k, v] of Object.entries(m.phases ?? {})) (ph[k] ??= []).push(v);
        }
      }
    }
    if (tty) log('\r\x1b[K');

    const scenarios = Object.fromEntries(opts.scenarios.map((s) => [s, stats(samples[s]!)])) as Partial<Record<Scenario, Stats>>;
    const firstOutput = Object.fromEntries(Object.entries(firstOutputSamples).map(([s, v]) => [s, stats(v)])) as Partial<Record<VmScenario, Stats>>;
    const phases = Object.fromEntries(
      Object.entries(phaseSamples).map(([s, ph]) => [s, Object.fromEntries(Object.entries(ph).map(([k, v]) => [k, stats(v)]))]),
    ) as Record<string, Record<string, Stats>>;
    const result = {
      benchmark: 'startup',
      schemaVersion: 2,
      timestamp: new Date().toISOString(),
      hybridboxVersion: (JSON.parse(readFileSync(join(pkgRoot, 'package.json'), 'utf8')) as { version: string }).version,
      options: { runs: opts.runs, warmup: opts.warmup, vmRuns: opts.vmRuns, vmWarmup, scenarios: [...opts.scenarios], order: [...opts.scenarios] },
      host: { ...hostDescription(host), loadavgStart: loadStart, loadavgEnd: os.loadavg() },
      unit: 'ms',
      scenarios: scenarios as Record<string, Stats>,
      firstOutput: firstOutput as Record<string, Stats>,
      phases,
      ratios: ratios(scenarios, firstOutput),
      descriptions: Object.fromEntries(opts.scenarios.map((s) => [s, DESCRIPTIONS[s]])),
      samples,
      firstOutputSamples,
      phaseSamples,
    };
    const table = formatTable(result);
    if (opts.json) {
      // stdout stays machine-readable; the table goes to stderr for whoever is watching.
      process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      log(table);
    } else process.stdout.write(table);
    if (opts.out) {
      const dir = resolve(opts.out);
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `startup-${result.timestamp.replace(/[:.]/g, '-')}.json`);
      writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
      log(`wrote ${file}\n`);
    }
    return 0;
  } finally {
    if (tty) log('\r\x1b[K');
    const problems: string[] = [];
    const attempt = async (what: string, f: () => unknown): Promise<void> => {
      try {
        await f();
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
      }
    };
    if (ctx) for (const id of ctx.rawIds) await attempt(`raw container ${id}`, () => cleanupRaw(ctx!, id));
    if (ctx) {
      for (const q of ctx.rawQemus) {
        await attempt(`raw QEMU ${q.pid}`, async () => {
          q.kill('SIGKILL');
          if (q.exitCode === null && q.signalCode === null) await new Promise((r) => q.once('close', r));
        });
      }
      for (const name of ctx.rawDomains) await attempt(`raw domain ${name}`, () => destroyDomain(name));
    }
    // The shared parent goes too, unless another benchmark is still using it (then it is
    // not empty and stays: never walk into it, those children are not ours).
    for (const m of cgroupMounts()) {
      try {
        rmdirSync(join(m.path, CGROUP_PARENT));
      } catch {
        /* absent, or in use */
      }
    }
    if (hb) {
      const h = hb;
      await attempt('sandboxes', async () => {
        for (const s of await h.list({ all: true })) await h.remove(s.id, { force: true });
        await h.cleanupOrphans();
      });
      await attempt('state store', () => h.close());
    }
    await attempt('temporary directory', () => rmSync(work, { recursive: true, force: true }));
    for (const p of problems) log(`startup benchmark: clean-up: ${p}\n`);
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const msg = e instanceof BenchError ? e.message : ((e as Error)?.stack ?? String(e));
    process.stderr.write(`startup benchmark: ${msg}\n`);
    process.exitCode = e instanceof BenchError ? e.exitCode : 1;
  },
);

/** The raw baseline mounts the image directly, which only a one-layer image allows. */
function singleLayer(image: { ref: string; layers: string[] }): string {
  if (image.layers.length !== 1) throw new BenchError(`the raw crun baseline needs a one-layer image; ${image.ref} has ${image.layers.length}`);
  return image.layers[0]!;
}
