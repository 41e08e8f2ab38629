import { customAlphabet } from 'nanoid';
import { chmodSync, createReadStream, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BenchResults } from '../bench/results.js';
import { hostKey } from '../bench/host.js';
import { ImageNotFoundError, NameConflictError, RuntimeError, SandboxNotFoundError, SandboxStateError } from '../errors.js';
import { probeHost } from '../host/probe.js';
import type { HostInfo, HostLoad } from '../host/types.js';
import { ImageStore, buildBusyboxImage, checkRef, ensureVmDisk, normalizeRef, type PruneResult } from '../images/index.js';
import type { ProgressReporter, PullResult, PushResult, Registry, RegistryConfigFile } from '../registry/index.js';
import { buildImage, type BuildOptions, type BuildResult, type StepRunner } from '../images/build/index.js';
import { BridgeNetwork } from '../network/index.js';
import type { Backend, ExitStatus, OutputSink, SelfInvocation } from '../runtimes/backend.js';
import { BackendRegistry, type BackendAvailability, type BackendOptions } from '../runtimes/registry.js';
import { place, type Placement } from '../scheduler/index.js';
import { validateForHost, validateSpec, type WorkloadSpec, type WorkloadSpecInput } from '../spec/index.js';
import { StateStore, type SandboxRecord } from '../store/index.js';
import { ensureSbinOnPath, packageRoot, stateRoot } from '../util/paths.js';
import { isSameProcessAlive, processStartTime, sleep } from '../util/proc.js';

const newId = customAlphabet('0123456789abcdefghijklmnopqrstuvwxyz', 12);

/** Base images made on this host from local packages (no registry is needed). */
const BASE_IMAGES: Record<string, (store: ImageStore) => Promise<unknown>> = {
  'busybox:latest': (store) => buildBusyboxImage(store),
  'debian:bookworm': async (store) => (await import('../images/bases/debian.js')).buildDebianImage(store),
};

export interface HybridboxOptions extends BackendOptions {
  /** State directory (default /var/lib/hybridbox, or HYBRIDBOX_ROOT). */
  root?: string;
  /** Host description; probed when absent. */
  host?: HostInfo;
}

export interface RegistryTransferOptions {
  /** s3://bucket/prefix; default from the registry config, else the embedded registry. */
  registry?: string;
  /** Name in the registry when it differs from the local one. */
  remoteRef?: string;
  /** Move the image's VM disk (ext4/qcow2) too, so a VM starts without making it. */
  withVmDisk?: boolean;
  /** Settings that take precedence over the environment and the config file (docs/registry.md). */
  registryConfig?: RegistryConfigFile;
  /** `bars` (a terminal) or lines, `quiet` (the summary only), `none`. Default: bars or lines. */
  progress?: 'auto' | 'quiet' | 'none';
  signal?: AbortSignal;
}

export interface RunOptions {
  /** Called with each chunk of the workload's output as it arrives. */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** How much of each stream the result keeps (default 1 MiB); the rest is counted, not kept. */
  maxBufferBytes?: number;
  /** Remove the sandbox after it exits (like `--rm`). */
  remove?: boolean;
  /** The workload's standard input, its end being the workload's EOF (default: /dev/null). */
  stdin?: NodeJS.ReadableStream;
}

/** Everything about one finished run, in one object (after execa's result). */
export interface RunResult {
  id: string;
  name: string;
  backend: string;
  placement: Placement;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  oomKilled: boolean;
  /** From the call until the result was ready. */
  durationMs: number;
  /** From the call until the sandbox's first process existed. */
  startupMs: number | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  peakMemoryBytes: number | null;
  cpuTimeMs: number | null;
  /** Parts of the spec this host could not honour. */
  warnings: string[];
  /** Why the sandbox died without its workload ending (a guest kernel panic), else null. */
  crash: string | null;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

/** What callers see of a sandbox: its record without the backend's private details. */
export type SandboxInfo = Omit<SandboxRecord, 'spec' | 'placement' | 'runtime' | 'ownerPid' | 'ownerStartTime'> & {
  command: string[] | null;
  ip: string | null;
};

const DEFAULT_MAX_BUFFER = 1024 * 1024;

class Capture {
  private chunks: Buffer[] = [];
  private kept = 0;
  truncated = false;
  constructor(private readonly max: number) {}
  push(c: Buffer): void {
    if (this.kept >= this.max) {
      this.truncated = true;
      return;
    }
    const part = c.length + this.kept > this.max ? c.subarray(0, this.max - this.kept) : c;
    if (part.length < c.length) this.truncated = true;
    this.chunks.push(part);
    this.kept += part.length;
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
  text(): string {
    return this.bytes().toString('utf8');
  }
}

/** Keeps a bounded copy of each stream and passes every chunk on to the caller. */
function teeSink(out: Capture, err: Capture, to: { onStdout?: (c: Buffer) => void; onStderr?: (c: Buffer) => void }): OutputSink {
  return {
    onStdout: (c) => {
      out.push(c);
      to.onStdout?.(c);
    },
    onStderr: (c) => {
      err.push(c);
      to.onStderr?.(c);
    },
  };
}

function toInfo(rec: SandboxRecord): SandboxInfo {
  const { spec, placement: _p, runtime: _r, ownerPid: _o, ownerStartTime: _s, ...pub } = rec;
  return {
    ...pub,
    command: (spec as WorkloadSpec).command ?? null,
    ip: rec.state === 'running' ? ((rec.runtime.ip as string | undefined) ?? null) : null,
  };
}

/**
 * The library API: every CLI verb is one call here. The CLI only parses flags and prints.
 *
 *   const hb = await Hybridbox.open();
 *   const r = await hb.run({ image: 'busybox', command: ['echo', 'hi'] });
 */
export class Hybridbox {
  readonly images: ImageStore;
  private readonly backends: BackendRegistry;
  private readonly network: BridgeNetwork;

  private constructor(
    readonly root: string,
    readonly host: HostInfo,
    readonly store: StateStore,
    options: BackendOptions,
  ) {
    this.images = new ImageStore(root);
    this.network = new BridgeNetwork(store);
    this.backends = new BackendRegistry(host, store, this.network, this.images, options);
  }

  static async open(options: HybridboxOptions = {}): Promise<Hybridbox> {
    ensureSbinOnPath();
    const root = options.root ?? stateRoot();
    mkdirSync(root, { recursive: true, mode: 0o711 });
    // Sandboxes with a user namespace must traverse the state root as an unmapped uid.
    if ((statSync(root).mode & 0o011) !== 0o011) chmodSync(root, statSync(root).mode | 0o011);
    const host = options.host ?? (await probeHost({ cacheDir: join(root, 'cache') }));
    return new Hybridbox(root, host, new StateStore(root), options);
  }

  close(): void {
    this.store.close();
  }

  /** The host and every backend as hybridbox sees them (`hybridbox info`). */
  info(): { host: HostInfo; backends: BackendAvailability[] } {
    return { host: this.host, backends: this.backends.availability() };
  }

  /** Builds the base images that are missing: busybox from busybox-static, debian:bookworm with mmdebstrap. */
  async ensureBaseImages(opts: { debian?: boolean } = {}): Promise<void> {
    await this.ensureBaseImage('busybox:latest');
    if (opts.debian) await this.ensureBaseImage('debian:bookworm');
  }

  /** Makes a base image hybridbox knows how to build locally; false for any other name. */
  async ensureBaseImage(ref: string): Promise<boolean> {
    const full = normalizeRef(ref);
    if (this.images.has(full)) return true;
    const make = BASE_IMAGES[full];
    if (!make) return false;
    await make(this.images);
    return true;
  }

  /**
   * Builds an image from a Sandboxfile. RUN steps run as container sandboxes of this
   * hybridbox (network off unless asked), whose filesystem changes become the layers.
   */
  async build(opts: Omit<BuildOptions, 'ensureBase'>): Promise<BuildResult> {
    const runner: StepRunner = {
      withStep: async (req, use) => {
        const name = `build-${newId()}`;
        try {
          const r = await this.run(
            { image: req.image, command: req.argv, env: req.env, workdir: req.workdir, user: req.user, network: req.network, isolation: 'container', name },
            { onStdout: req.onStdout, onStderr: req.onStderr, maxBufferBytes: 0 },
          );
          const rec = this.store.get(r.id)!;
          const changes = this.backendOf(rec).filesystemChanges?.(rec);
          if (!changes) throw new RuntimeError(`the ${rec.backend} backend cannot report filesystem changes, which a build step needs`);
          return await use({ exitCode: r.exitCode, signal: r.signal, changes });
        } finally {
          const rec = this.store.find(name);
          if (rec) await this.removeRecord(rec);
        }
      },
    };
    return buildImage(this.images, runner, { ...opts, ensureBase: (ref) => this.ensureBaseImage(ref) });
  }

  /** Manifest digests that sandboxes (in any state) were made from: never pruned. */
  private imagesInUse(): Map<string, string[]> {
    const used = new Map<string, string[]>();
    for (const r of this.store.list()) if (r.imageDigest) used.set(r.imageDigest, [...(used.get(r.imageDigest) ?? []), r.name]);
    return used;
  }

  /** Removes image tags; refuses while a sandbox uses the image unless `force` (its data stays until prune). */
  async removeImage(ref: string, opts: { force?: boolean } = {}): Promise<string> {
    const digest = this.images.digestOf(ref);
    if (!digest) throw new ImageNotFoundError(ref, this.images.list());
    const users = this.imagesInUse().get(digest);
    // Another tag still naming the image keeps it reachable: only the last one is guarded.
    const lastTag = this.images.entries().filter((e) => e.digest === digest).length <= 1;
    if (users && lastTag && !opts.force) {
      throw new SandboxStateError(`image ${normalizeRef(ref)} is used by sandbox ${users.join(', ')}; remove ${users.length > 1 ? 'them' : 'it'} first, or use \`hybridbox image rm -f\` (the sandbox keeps its copy until it is removed)`);
    }
    return this.images.untag(ref);
  }

  /**
   * Pushes an image (and with `withVmDisk` its VM disk) to an S3 registry: blobs first,
   * skipping those already there, the tag last. No registry configured: the embedded one.
   */
  async push(ref: string, opts: RegistryTransferOptions = {}): Promise<PushResult> {
    const digest = this.images.digestOf(ref);
    if (!digest) throw new ImageNotFoundError(ref, this.images.list());
    const vmDisk = opts.withVmDisk ? { path: await ensureVmDisk(this.images, await this.images.resolve(ref)) } : undefined;
    return this.withRegistry(opts, (reg, progress) =>
      reg.push({ blobs: this.images.blobs, ref: normalizeRef(ref), remoteRef: opts.remoteRef, vmDisk, progress, signal: opts.signal }),
    );
  }

  /** Pulls an image from an S3 registry, verifying every blob while it streams; the tag last. */
  async pull(ref: string, opts: RegistryTransferOptions = {}): Promise<PullResult> {
    const end = this.images.beginBuild();
    try {
      if (opts.withVmDisk) mkdirSync(this.images.disksDir, { recursive: true });
      return await this.withRegistry(opts, (reg, progress) =>
        reg.pull({
          blobs: this.images.blobs,
          ref: checkRef(ref, 'image'),
          remoteRef: opts.remoteRef,
          vmDiskPath: opts.withVmDisk ? (digest) => this.images.vmDiskPath(digest) : undefined,
          progress,
          signal: opts.signal,
        }),
      );
    } finally {
      end();
    }
  }

  private async withRegistry<T>(opts: RegistryTransferOptions, fn: (reg: Registry, progress: ProgressReporter) => Promise<T>): Promise<T> {
    const { resolveRegistryConfig, openRegistry, createProgressReporter, silentProgress } = await import('../registry/index.js');
    const config = resolveRegistryConfig(process.env, this.root, { url: opts.registry, overrides: opts.registryConfig });
    const reg = await openRegistry(config);
    try {
      return await fn(reg, opts.progress === 'none' ? silentProgress : createProgressReporter({ quiet: opts.progress === 'quiet' }));
    } finally {
      await reg.close();
    }
  }

  /** Deletes image data no tag and no sandbox reaches. */
  async pruneImages(): Promise<PruneResult> {
    return this.images.prune(this.imagesInUse().keys());
  }

  /** Validates a spec against the schema and this host; throws a one-line SpecError. */
  validate(input: WorkloadSpecInput | unknown): WorkloadSpec {
    const spec = validateSpec(input);
    validateForHost(spec, {
      hostCpus: this.host.cpus,
      hostMemoryMiB: Math.floor(this.host.memTotalBytes / 1048576),
      imageExists: (ref) => this.images.has(ref),
      knownImages: () => this.images.list(),
      nameTaken: (name) => this.store.nameTaken(name),
      pathExists: (p) => existsSync(p),
    });
    return spec;
  }

  private load(): HostLoad {
    const running = { container: 0, microvm: 0, vm: 0 };
    let committedMemoryMiB = 0;
    for (const r of this.store.list('running')) {
      running[r.backend]++;
      committedMemoryMiB += (r.spec as WorkloadSpec).resources.memoryMiB ?? 0;
    }
    return { running, committedMemoryMiB };
  }

  /** The scheduler's decision for a spec, without running anything. */
  place(input: WorkloadSpecInput | unknown): Placement {
    return this.decide(this.validate(input));
  }

  private benchResultsStore: BenchResults | null = null;
  private hostKeyCache: string | null = null;

  /** Benchmark results stored in this state root (`hybridbox bench`), which the scheduler reads. */
  benchResults(): BenchResults {
    return (this.benchResultsStore ??= new BenchResults(this.store.db));
  }

  /** The key this host's benchmark results are stored under (computed once, spawns nothing). */
  hostKey(): string {
    return (this.hostKeyCache ??= hostKey(this.host));
  }

  /**
   * Every placement predicts start-up from this host's newest `bench startup` result (time
   * to the workload's first output), and from the backends' documented defaults before one.
   */
  private decide(spec: WorkloadSpec): Placement {
    const measured = this.benchResults().startupStats(this.hostKey(), { measure: 'firstOutput' });
    return place(spec, this.host, this.load(), this.backends.descriptors(), measured);
  }

  private backendOf(rec: SandboxRecord): Backend {
    return this.backends.get(rec.backend);
  }

  private owner(): { ownerPid: number; ownerStartTime: number | null } {
    return { ownerPid: process.pid, ownerStartTime: processStartTime(process.pid) };
  }

  /** Validates, places, records and prepares a sandbox; nothing runs yet. */
  async create(input: WorkloadSpecInput | unknown): Promise<SandboxInfo> {
    return toInfo(await this.createRecord(input));
  }

  /** With `attached`, the record goes straight to running, owned by this process. */
  private async createRecord(input: WorkloadSpecInput | unknown, attached = false): Promise<SandboxRecord> {
    const spec = this.validate(input);
    const placement = this.decide(spec);
    const image = await this.images.resolve(spec.image);
    const id = newId();
    const rec: SandboxRecord = {
      id,
      name: spec.name ?? `sb-${id.slice(0, 8)}`,
      backend: placement.backend,
      image: spec.image.startsWith('sha256:') ? spec.image : image.ref,
      imageDigest: image.digest,
      state: 'created',
      spec,
      placement,
      runtime: {},
      createdAtMs: Date.now(),
      startedAtMs: null,
      finishedAtMs: null,
      exitCode: null,
      signal: null,
      oomKilled: false,
      timedOut: false,
      stateReason: null,
      warnings: [],
      // Until create finishes, this process owns the record: a crash here is reconciled.
      ...this.owner(),
    };
    this.store.tx(() => {
      const taken = this.store.nameTaken(rec.name);
      if (taken) throw new NameConflictError(rec.name, taken);
      this.store.insert(rec);
    });
    const dir = this.sandboxDir(id);
    try {
      ({ runtime: rec.runtime, warnings: rec.warnings } = await this.backendOf(rec).create({ id, name: rec.name, spec, image, dir }));
    } catch (e) {
      this.store.delete(id);
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    const next: Partial<SandboxRecord> = attached ? { state: 'running', startedAtMs: Date.now() } : { ownerPid: null, ownerStartTime: null };
    this.store.update(id, { runtime: rec.runtime, warnings: rec.warnings, ...next });
    return Object.assign(rec, next);
  }

  private sandboxDir(id: string): string {
    return join(this.root, 'sandboxes', id);
  }

  /** Runs a workload in the foreground and returns when it has exited. */
  async run(input: WorkloadSpecInput | unknown, opts: RunOptions = {}): Promise<RunResult> {
    const t0 = performance.now();
    const t0Epoch = Date.now();
    const rec = await this.createRecord(input, true);
    const backend = this.backendOf(rec);
    const out = new Capture(opts.maxBufferBytes ?? DEFAULT_MAX_BUFFER);
    const err = new Capture(opts.maxBufferBytes ?? DEFAULT_MAX_BUFFER);
    let status: ExitStatus;
    try {
      // The backend keeps spec.timeoutMs itself (the contract in runtimes/backend.ts).
      const attached = await backend.runAttached(rec, { sink: teeSink(out, err, opts), stdin: opts.stdin ?? null });
      status = await attached.exited;
    } catch (e) {
      if (opts.remove) await this.removeRecord(rec);
      else await this.finalize(rec, null, e instanceof Error ? e.message : String(e));
      throw e;
    }
    // With `remove`, recording the end would be undone at once: tear down and delete instead.
    if (opts.remove) await this.removeRecord(rec);
    else {
      // `logs` of a foreground run shows what the run showed (the bounded copy kept here).
      const logs = backend.logPaths(rec);
      writeFileSync(logs.stdout, out.bytes());
      writeFileSync(logs.stderr, err.bytes());
      await this.finalize(rec, status);
    }
    return {
      id: rec.id,
      name: rec.name,
      backend: rec.backend,
      placement: rec.placement as Placement,
      exitCode: status.exitCode,
      signal: status.signal,
      timedOut: status.timedOut,
      oomKilled: status.oomKilled,
      durationMs: Math.round((performance.now() - t0) * 10) / 10,
      startupMs: status.startedAtMs === null ? null : Math.max(0, Math.round((status.startedAtMs - t0Epoch) * 10) / 10),
      stdout: out.text(),
      stderr: err.text(),
      stdoutTruncated: out.truncated,
      stderrTruncated: err.truncated,
      peakMemoryBytes: status.peakMemoryBytes,
      cpuTimeMs: status.cpuTimeMs,
      warnings: rec.warnings,
      crash: status.crash ?? null,
    };
  }

  /** Records how a sandbox ended and releases everything its run held. */
  private async finalize(rec: SandboxRecord, status: ExitStatus | null, failure?: string): Promise<void> {
    // Resources first, so that a sandbox seen as ended holds nothing on the host any more.
    let teardownError: unknown;
    try {
      await this.backendOf(rec).teardown(rec);
    } catch (e) {
      teardownError = e;
    }
    this.store.update(rec.id, {
      state: status && !status.crash ? 'exited' : 'crashed',
      finishedAtMs: Date.now(),
      exitCode: status?.exitCode ?? null,
      signal: status?.signal ?? null,
      oomKilled: status?.oomKilled ?? false,
      timedOut: status?.timedOut ?? false,
      stateReason: failure ?? status?.crash ?? (status?.oomKilled ? 'killed by the kernel: out of memory (memory limit reached)' : status?.timedOut ? 'killed: timeout reached' : null),
      ownerPid: null,
      ownerStartTime: null,
    });
    if (teardownError) throw teardownError;
  }

  /** Creates and starts a sandbox that keeps running after this process exits. */
  async runDetached(input: WorkloadSpecInput | unknown): Promise<SandboxInfo> {
    const rec = await this.createRecord(input);
    return this.startRecord(rec);
  }

  async start(ref: string): Promise<SandboxInfo> {
    const rec = await this.get(ref);
    if (rec.state === 'running') throw new SandboxStateError(`sandbox ${rec.name} is already running`);
    if (rec.state !== 'created') {
      throw new SandboxStateError(`sandbox ${rec.name} has ${rec.state}; only a created sandbox can be started: run a new one, or remove it with \`hybridbox rm ${rec.name}\``);
    }
    return this.startRecord(rec);
  }

  private async startRecord(rec: SandboxRecord): Promise<SandboxInfo> {
    const backend = this.backendOf(rec);
    this.store.update(rec.id, { state: 'running', startedAtMs: Date.now(), ...this.owner() });
    let monitorPid: number;
    try {
      ({ monitorPid } = await backend.startDetached(rec, this.selfInvocation()));
    } catch (e) {
      await this.finalize(rec, null, e instanceof Error ? e.message : String(e));
      throw e;
    }
    // From now on the monitor owns it: while it lives, nobody else decides the sandbox's end.
    this.store.update(rec.id, { ownerPid: monitorPid, ownerStartTime: processStartTime(monitorPid) });
    return toInfo(this.store.get(rec.id)!);
  }

  /** How a detached sandbox's monitor calls back into hybridbox (`internal reap`, `internal vm-monitor`). */
  private selfInvocation(): SelfInvocation {
    return { argv: [process.execPath, join(packageRoot(), 'dist', 'cli.js')], env: { HYBRIDBOX_ROOT: this.root } };
  }

  /** The detached monitor of a backend that has one in-process (`hybridbox internal monitor`). */
  async monitor(id: string): Promise<void> {
    const rec = this.store.get(id);
    if (!rec) return;
    const backend = this.backendOf(rec);
    if (!backend.monitor) throw new SandboxStateError(`the ${rec.backend} backend has no monitor of its own`);
    await backend.monitor(rec);
    await this.reap(id);
  }

  /** Records the exit of a detached sandbox and releases its resources (run by its monitor). */
  async reap(id: string): Promise<void> {
    const rec = this.store.get(id);
    if (!rec) return this.backends.teardownOrphan(id, this.sandboxDir(id));
    if (rec.state !== 'running') return;
    const status = await this.backendOf(rec).collectExit(rec);
    await this.finalize(rec, status, status ? undefined : 'the sandbox exited without recording a status');
  }

  private async get(ref: string): Promise<SandboxRecord> {
    const rec = this.store.find(ref);
    if (!rec) throw new SandboxNotFoundError(ref);
    return this.reconcile(rec);
  }

  /**
   * Brings a record in line with the host: a sandbox marked running whose processes and
   * owner are gone (a killed CLI, a killed monitor) is recorded as ended and cleaned up.
   */
  private async reconcile(rec: SandboxRecord): Promise<SandboxRecord> {
    if (rec.state !== 'running' && rec.state !== 'created') return rec;
    if (rec.ownerPid !== null && isSameProcessAlive(rec.ownerPid, rec.ownerStartTime)) return rec;
    const backend = this.backendOf(rec);
    if (rec.state === 'created') {
      if (rec.ownerPid !== null) {
        // Its creator died half-way: nothing of it can be trusted.
        await backend.teardown(rec);
        rmSync(this.sandboxDir(rec.id), { recursive: true, force: true });
        this.store.delete(rec.id);
        throw new SandboxNotFoundError(rec.name);
      }
      return rec;
    }
    if (await backend.isAlive(rec)) {
      // Still running without an owner: a detached container whose monitor died (`stop` still works).
      if (rec.ownerPid === null) return rec;
      // Its supervisor died (a killed CLI, a killed VM monitor): nothing collects its output
      // or its end any more, and a foreground sandbox must not outlive its CLI. End it.
      await backend.signal(rec, 'KILL');
      await this.waitDead(rec, 10_000);
    }
    // Give a monitor that is finishing a moment to write its exit record.
    let status = await backend.collectExit(rec);
    if (!status && rec.ownerPid === null) {
      await sleep(50);
      status = await backend.collectExit(rec);
    }
    const fresh = this.store.get(rec.id);
    if (!fresh || fresh.state !== 'running') return fresh ?? rec;
    await this.finalize(rec, status, status ? undefined : 'its supervising process died before the workload exited');
    return this.store.get(rec.id)!;
  }

  /** All sandboxes (running only unless `all`), reconciled with the host first. */
  async list(opts: { all?: boolean } = {}): Promise<SandboxInfo[]> {
    await this.cleanupOrphans();
    const out: SandboxInfo[] = [];
    for (const r of this.store.list()) {
      let rec: SandboxRecord = r;
      try {
        rec = await this.reconcile(r);
      } catch (e) {
        if (e instanceof SandboxNotFoundError) continue;
        throw e;
      }
      if (opts.all || rec.state === 'running') out.push(toInfo(rec));
    }
    return out;
  }

  async inspect(ref: string): Promise<Record<string, unknown>> {
    const rec = await this.get(ref);
    return { ...toInfo(rec), spec: rec.spec, placement: rec.placement, backendDetails: await this.backendOf(rec).describe(rec) };
  }

  /** Stops a running sandbox: SIGTERM, then SIGKILL after `graceMs`. */
  async stop(ref: string, opts: { graceMs?: number } = {}): Promise<SandboxInfo> {
    let rec = await this.get(ref);
    if (rec.state !== 'running') return toInfo(rec);
    const backend = this.backendOf(rec);
    await backend.signal(rec, 'TERM');
    if (!(await this.waitDead(rec, opts.graceMs ?? 10_000))) {
      await backend.signal(rec, 'KILL');
      await this.waitDead(rec, 10_000);
    }
    rec = await this.settle(rec);
    return toInfo(rec);
  }

  private async waitDead(rec: SandboxRecord, ms: number): Promise<boolean> {
    const backend = this.backendOf(rec);
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (!(await backend.isAlive(rec))) return true;
      await sleep(10);
    }
    return !(await backend.isAlive(rec));
  }

  /** After the processes are gone: wait briefly for the owner's own bookkeeping, then reconcile. */
  private async settle(rec: SandboxRecord): Promise<SandboxRecord> {
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline) {
      const fresh = this.store.get(rec.id);
      if (!fresh || fresh.state !== 'running') return fresh ?? rec;
      if (await this.backendOf(rec).collectExit(fresh)) break;
      await sleep(10);
    }
    const fresh = this.store.get(rec.id);
    if (fresh && fresh.state === 'running') {
      const status = await this.backendOf(fresh).collectExit(fresh);
      await this.finalize(fresh, status, status ? undefined : 'stopped');
    }
    return this.store.get(rec.id) ?? rec;
  }

  /** Removes a sandbox and everything it holds on the host. `force` stops a running one first. */
  async remove(ref: string, opts: { force?: boolean } = {}): Promise<void> {
    const rec = await this.get(ref);
    if (rec.state === 'running') {
      if (!opts.force) throw new SandboxStateError(`sandbox ${rec.name} is running; stop it first (\`hybridbox stop ${rec.name}\`) or use \`hybridbox rm -f\``);
      await this.backendOf(rec).signal(rec, 'KILL');
      await this.waitDead(rec, 10_000);
      // A supervisor of its own (a VM's monitor, another CLI) is finishing up: let it go first.
      if (rec.ownerPid !== null && rec.ownerPid !== process.pid) {
        for (let i = 0; i < 500 && isSameProcessAlive(rec.ownerPid, rec.ownerStartTime); i++) await sleep(10);
      }
    }
    await this.removeRecord(rec);
  }

  private async removeRecord(rec: SandboxRecord): Promise<void> {
    await this.backendOf(rec).teardown(rec);
    rmSync(this.sandboxDir(rec.id), { recursive: true, force: true });
    this.store.delete(rec.id);
  }

  /** Runs a further command in a running sandbox. */
  async exec(ref: string, argv: string[], opts: { env?: Record<string, string>; workdir?: string; user?: string; onStdout?: (c: Buffer) => void; onStderr?: (c: Buffer) => void; stdin?: NodeJS.ReadableStream } = {}): Promise<ExecResult> {
    const t0 = performance.now();
    const rec = await this.get(ref);
    if (rec.state !== 'running') throw new SandboxStateError(`sandbox ${rec.name} is ${rec.state}, not running; start it with \`hybridbox start ${rec.name}\``);
    if (argv.length === 0 || !argv[0]) throw new SandboxStateError('exec needs a command: hybridbox exec SANDBOX -- COMMAND [ARGS...]');
    const out = new Capture(DEFAULT_MAX_BUFFER);
    const err = new Capture(DEFAULT_MAX_BUFFER);
    const exitCode = await this.backendOf(rec).exec(rec, argv, {
      env: opts.env,
      workdir: opts.workdir,
      user: opts.user,
      stdin: opts.stdin ?? null,
      sink: teeSink(out, err, opts),
    });
    return { exitCode, stdout: out.text(), stderr: err.text(), durationMs: Math.round(performance.now() - t0) };
  }

  /**
   * Streams a detached sandbox's logs. With `follow`, keeps reading until the sandbox has
   * ended (or `signal` aborts).
   */
  async logs(ref: string, opts: { follow?: boolean; onStdout: (c: Buffer) => void; onStderr: (c: Buffer) => void; signal?: AbortSignal }): Promise<void> {
    let rec = await this.get(ref);
    const paths = this.backendOf(rec).logPaths(rec);
    const offsets = { stdout: 0, stderr: 0 };
    const drain = async (): Promise<void> => {
      for (const k of ['stdout', 'stderr'] as const) {
        const p = paths[k];
        if (!existsSync(p)) continue;
        const size = statSync(p).size;
        if (size <= offsets[k]) continue;
        await new Promise<void>((resolve, reject) => {
          const s = createReadStream(p, { start: offsets[k], end: size - 1 });
          s.on('data', (c) => (k === 'stdout' ? opts.onStdout : opts.onStderr)(c as Buffer));
          s.on('end', resolve);
          s.on('error', reject);
        });
        offsets[k] = size;
      }
    };
    await drain();
    while (opts.follow && !opts.signal?.aborted) {
      rec = await this.reconcile(this.store.get(rec.id) ?? rec);
      if (rec.state !== 'running' && rec.state !== 'created') break;
      await sleep(100);
      await drain();
    }
    await drain();
  }

  /**
   * Removes what a crash left behind: sandbox directories of this state root that have no
   * record (a process killed between creating and recording, or half-way through removal),
   * with the host resources (cgroups, namespaces, leases) named after them.
   */
  async cleanupOrphans(): Promise<string[]> {
    let dirs: string[] = [];
    try {
      dirs = readdirSync(join(this.root, 'sandboxes'));
    } catch {
      return [];
    }
    const known = new Set(this.store.list().map((r) => r.id));
    const orphans = dirs.filter((id) => !known.has(id));
    for (const id of orphans) {
      await this.backends.teardownOrphan(id, this.sandboxDir(id));
      rmSync(this.sandboxDir(id), { recursive: true, force: true });
    }
    return orphans;
  }
}

export { RuntimeError };
