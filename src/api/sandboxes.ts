import { customAlphabet } from 'nanoid';
import { createReadStream, existsSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { AbortedError, NameConflictError, SandboxNotFoundError, SandboxStateError, SpecError } from '../errors.js';
import { TIMEOUT_GRACE_MS, type ExitStatus, type SelfInvocation, type WorkloadSignal } from '../runtimes/backend.js';
import { limitWarnings } from '../runtimes/descriptor.js';
import { withCpuVerdict } from '../runtimes/limits.js';
import type { Placement } from '../scheduler/index.js';
import type { WorkloadSpec, WorkloadSpecInput } from '../spec/index.js';
import type { SandboxRecord } from '../store/index.js';
import { packageRoot } from '../util/paths.js';
import { processStartTime, sleep } from '../util/proc.js';
import { OutputCapture } from './capture.js';
import { backendOf, sandboxDir, thisProcessAsOwner, type Core } from './context.js';
import type { PlacementService } from './placement.js';
import type { Reconciler } from './reconciler.js';
import type { ExecOptions, ExecResult, ListOptions, LogsOptions, RemoveOptions, RunOptions, RunResult, SandboxInfo, StopOptions } from './types.js';

const newId = customAlphabet('0123456789abcdefghijklmnopqrstuvwxyz', 12);

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SIGNALS: readonly WorkloadSignal[] = ['INT', 'TERM', 'HUP', 'KILL'];

export function toInfo(rec: SandboxRecord): SandboxInfo {
  const { spec, placement: _p, runtime: _r, ownerPid, ownerStartTime: _s, ...pub } = rec;
  return {
    ...pub,
    supervisorPid: rec.state === 'running' ? ownerPid : null,
    command: (spec as WorkloadSpec).command ?? null,
    ip: rec.state === 'running' ? ((rec.runtime.ip as string | undefined) ?? null) : null,
    limits: (rec.placement as Partial<Placement>).limits ?? [],
  };
}

/** Stops work when `signal` aborts (or `timeoutMs` runs out): `stop` first, `kill` after the grace period. */
function stopOn(signal: AbortSignal | undefined, timeoutMs: number | undefined, stop: () => void, kill: () => void): { aborted(): boolean; timedOut(): boolean; dispose(): void } {
  let aborted = false;
  let timedOut = false;
  const timers: NodeJS.Timeout[] = [];
  const fire = (): void => {
    stop();
    timers.push(setTimeout(kill, TIMEOUT_GRACE_MS));
  };
  const onAbort = (): void => {
    aborted = true;
    fire();
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  if (timeoutMs !== undefined) {
    timers.push(
      setTimeout(() => {
        timedOut = true;
        fire();
      }, timeoutMs),
    );
  }
  return {
    aborted: () => aborted,
    timedOut: () => timedOut,
    dispose: () => {
      for (const t of timers) clearTimeout(t);
      signal?.removeEventListener('abort', onAbort);
    },
  };
}

/**
 * The sandbox lifecycle: create, run (foreground or detached), start, stop, kill, remove,
 * list, inspect, exec, logs. Every call resolves a reference, reconciles the record with the
 * host, and acts through the backend interface without asking which backend it holds.
 */
export class SandboxService {
  constructor(
    private readonly core: Core,
    private readonly placement: PlacementService,
    private readonly reconciler: Reconciler,
  ) {}

  /** Validates, places, records and prepares a sandbox; nothing runs yet. */
  async create(input: WorkloadSpecInput | unknown): Promise<SandboxInfo> {
    return toInfo(await this.createRecord(input));
  }

  /** With `attached`, the record goes straight to running, owned by this process. */
  private async createRecord(input: WorkloadSpecInput | unknown, attached = false): Promise<SandboxRecord> {
    const { store, images } = this.core;
    const spec = this.placement.validate(input);
    if (!attached && spec.outputLimitBytes !== undefined) {
      throw new SpecError('outputLimitBytes', spec.outputLimitBytes, "allowed only for foreground runs (run without -d): a detached sandbox's output goes to its logs, which nobody watches");
    }
    const placement = this.placement.decide(spec);
    const id = newId();
    // From resolving the image until the record names it, `image prune` must not run.
    const release = images.guardFromPrune({ sweep: false });
    let rec: SandboxRecord;
    let image: Awaited<ReturnType<typeof images.resolve>>;
    try {
      image = await images.resolve(spec.image);
      rec = {
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
        ...thisProcessAsOwner(),
      };
      const r = rec;
      store.tx(() => {
        const taken = store.nameTaken(r.name);
        if (taken) throw new NameConflictError(r.name, taken);
        store.insert(r);
      });
    } finally {
      release();
    }
    const dir = sandboxDir(this.core, id);
    try {
      const made = await backendOf(this.core, rec).create({ id, name: rec.name, spec, image, dir });
      // The placement's preview of the limits gives way to the sandbox's own, devices resolved.
      rec.placement = { ...(rec.placement as Placement), limits: made.limits, warnings: limitWarnings(made.limits) };
      rec.runtime = made.runtime;
      rec.warnings = made.warnings;
    } catch (e) {
      store.delete(id);
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    const next: Partial<SandboxRecord> = attached ? { state: 'running', startedAtMs: Date.now() } : { ownerPid: null, ownerStartTime: null };
    store.update(id, { runtime: rec.runtime, placement: rec.placement, warnings: rec.warnings, ...next });
    return Object.assign(rec, next);
  }

  /**
   * Runs a workload in the foreground and resolves when it has ended, with everything about
   * the run. The sandbox dies with this process. `opts.signal` stops it early (the call then
   * rejects with an AbortedError carrying the result).
   */
  async run(input: WorkloadSpecInput | unknown, opts: RunOptions = {}): Promise<RunResult> {
    const t0 = performance.now();
    const t0Epoch = Date.now();
    if (opts.signal?.aborted) throw new AbortedError('the run was aborted before it started; nothing was created');
    const withTimeout = opts.timeoutMs !== undefined && input && typeof input === 'object' ? { ...(input as object), timeoutMs: opts.timeoutMs } : input;
    const rec = await this.createRecord(withTimeout, true);
    const backend = backendOf(this.core, rec);
    const outputLimitBytes = (rec.spec as WorkloadSpec).outputLimitBytes;
    // One place for every backend: the cap is on what reaches this process, and passing it
    // ends the whole sandbox at once (no grace: more output is what it would spend it on).
    const output = new OutputCapture(
      opts.maxBufferBytes,
      opts,
      outputLimitBytes === undefined ? undefined : { bytes: outputLimitBytes, onExceeded: () => void backend.signal(rec, 'KILL').catch(() => undefined) },
    );
    // The backend keeps the time limit itself (from the workload's start); an abort is the caller's.
    const abort = stopOn(
      opts.signal,
      undefined,
      () => void backend.signal(rec, 'TERM').catch(() => undefined),
      () => void backend.signal(rec, 'KILL').catch(() => undefined),
    );
    let status: ExitStatus;
    try {
      opts.onCreated?.(toInfo(rec));
      const attached = await backend.runAttached(rec, { sink: output.sink, stdin: opts.stdin ?? null });
      // An abort while the workload was still being started found nothing to signal.
      if (abort.aborted()) void backend.signal(rec, 'TERM').catch(() => undefined);
      status = withCpuVerdict(rec.spec as WorkloadSpec, await attached.exited);
    } catch (e) {
      if (opts.remove) await this.reconciler.remove(rec);
      else await this.reconciler.finish(rec, null, e instanceof Error ? e.message : String(e));
      throw e;
    } finally {
      abort.dispose();
    }
    const result: RunResult = {
      id: rec.id,
      name: rec.name,
      backend: rec.backend,
      placement: rec.placement as Placement,
      exitCode: status.exitCode,
      signal: status.signal,
      timedOut: status.timedOut,
      oomKilled: status.oomKilled,
      aborted: abort.aborted(),
      durationMs: Math.round((performance.now() - t0) * 10) / 10,
      startupMs: status.startedAtMs === null ? null : Math.max(0, Math.round((status.startedAtMs - t0Epoch) * 10) / 10),
      ...output.fields(),
      peakMemoryBytes: status.peakMemoryBytes,
      cpuTimeMs: status.cpuTimeMs,
      cpuTimeLimitExceeded: status.cpuTimeLimitExceeded,
      fileSizeLimitExceeded: status.signal === 'SIGXFSZ',
      outputLimitExceeded: output.exceededBy !== null,
      outputLimitStream: output.exceededBy,
      warnings: rec.warnings,
      limits: toInfo(rec).limits,
      crash: status.crash ?? null,
    };
    // The caller's callback failing must not skip the teardown; its error is thrown after it.
    let ended: { error: unknown } | null = null;
    try {
      if (!result.aborted) opts.onEnded?.(result);
    } catch (error) {
      ended = { error };
    }
    // With `remove`, recording the end would be undone at once: tear down and delete instead.
    if (opts.remove) await this.reconciler.remove(rec);
    else {
      // `logs` of a foreground run shows what the run showed (the bounded copy kept here).
      const logs = backend.logPaths(rec);
      writeFileSync(logs.stdout, output.stdout.bytes(), { mode: 0o600 });
      writeFileSync(logs.stderr, output.stderr.bytes(), { mode: 0o600 });
      await this.reconciler.finish(rec, status);
    }
    if (ended) throw ended.error;
    if (result.aborted) throw new AbortedError(`sandbox ${rec.name} was stopped: the caller aborted the run`, result);
    return result;
  }

  /** Creates and starts a sandbox that keeps running after this process exits. */
  async runDetached(input: WorkloadSpecInput | unknown): Promise<SandboxInfo> {
    return this.startRecord(await this.createRecord(input));
  }

  /** Starts a created sandbox (detached). */
  async start(ref: string): Promise<SandboxInfo> {
    return this.startRecord(await this.resolve(ref));
  }

  private async startRecord(rec: SandboxRecord): Promise<SandboxInfo> {
    const { store } = this.core;
    if (!store.transition(rec.id, 'created', { state: 'running', startedAtMs: Date.now(), ...thisProcessAsOwner() }, null)) {
      const now = store.get(rec.id) ?? rec;
      if (now.state === 'running') throw new SandboxStateError(`sandbox ${rec.name} is already running`, rec.name, now.state);
      throw new SandboxStateError(`sandbox ${rec.name} has ${now.state}; only a created sandbox can be started: run a new one, or remove it with \`hybridbox rm ${rec.name}\``, rec.name, now.state);
    }
    const started = store.get(rec.id)!;
    let monitorPid: number;
    try {
      ({ monitorPid } = await backendOf(this.core, rec).startDetached(started, this.selfInvocation()));
    } catch (e) {
      await this.reconciler.finish(started, null, e instanceof Error ? e.message : String(e));
      throw e;
    }
    // From now on the monitor owns it: while it lives, nobody else decides the sandbox's end.
    // (It may have finished already, fast workloads do: then the record is no longer ours to change.)
    store.transition(rec.id, 'running', { ownerPid: monitorPid, ownerStartTime: processStartTime(monitorPid) }, process.pid);
    return toInfo(store.get(rec.id) ?? started);
  }

  /** How a detached sandbox's monitor calls back into hybridbox (`internal reap`, `internal monitor`). */
  private selfInvocation(): SelfInvocation {
    return { argv: [process.execPath, join(packageRoot(), 'dist', 'cli.js')], env: { HYBRIDBOX_ROOT: this.core.root } };
  }

  /** @internal The detached monitor of a backend that has one in-process (`hybridbox internal monitor`). */
  async monitor(id: string): Promise<void> {
    const rec = this.core.store.get(id);
    if (!rec) return;
    const backend = backendOf(this.core, rec);
    if (!backend.monitor) throw new SandboxStateError(`the ${rec.backend} backend has no monitor of its own`);
    await backend.monitor(rec);
    await this.reap(id);
  }

  /** @internal Records the exit of a detached sandbox and releases its resources (run by its monitor). */
  async reap(id: string): Promise<void> {
    const rec = this.core.store.get(id);
    if (!rec) return this.core.backends.teardownOrphan(id, sandboxDir(this.core, id));
    if (rec.state !== 'running') return;
    const status = await backendOf(this.core, rec).collectExit(rec);
    await this.reconciler.finish(rec, status, status ? undefined : 'the sandbox exited without recording a status');
  }

  /** A reference (exact id, exact name, or unambiguous id prefix) to a reconciled record. */
  private async resolve(ref: string): Promise<SandboxRecord> {
    const rec = this.core.store.find(ref);
    if (!rec) throw new SandboxNotFoundError(ref);
    return this.reconciler.reconcile(rec);
  }

  /** One sandbox as recorded, without reconciling it with the host; undefined when no reference matches. */
  find(ref: string): SandboxInfo | undefined {
    const rec = this.core.store.find(ref);
    return rec && toInfo(rec);
  }

  /** One sandbox, reconciled with the host first. */
  async get(ref: string): Promise<SandboxInfo> {
    return toInfo(await this.resolve(ref));
  }

  /** All sandboxes (running only unless `all`), reconciled with the host first. */
  async list(opts: ListOptions = {}): Promise<SandboxInfo[]> {
    await this.reconciler.cleanupOrphans();
    const out: SandboxInfo[] = [];
    for (const r of this.core.store.list()) {
      let rec: SandboxRecord = r;
      try {
        rec = await this.reconciler.reconcile(r);
      } catch (e) {
        if (e instanceof SandboxNotFoundError) continue;
        throw e;
      }
      if (opts.all || rec.state === 'running') out.push(toInfo(rec));
    }
    return out;
  }

  async inspect(ref: string): Promise<Record<string, unknown>> {
    const rec = await this.resolve(ref);
    return { ...toInfo(rec), spec: rec.spec, placement: rec.placement, backendDetails: await backendOf(this.core, rec).describe(rec) };
  }

  /** Sends a signal to a running sandbox's workload (`docker kill -s`); KILL ends the whole sandbox. */
  async kill(ref: string, signal: WorkloadSignal = 'KILL'): Promise<SandboxInfo> {
    if (!SIGNALS.includes(signal)) throw new SpecError('signal', signal, `give one of ${SIGNALS.join(', ')}`);
    const rec = await this.resolve(ref);
    if (rec.state !== 'running') throw new SandboxStateError(`sandbox ${rec.name} is ${rec.state}, not running`, rec.name, rec.state);
    await backendOf(this.core, rec).signal(rec, signal);
    return toInfo(rec);
  }

  /** Stops a running sandbox: SIGTERM, then SIGKILL after `graceMs`. A sandbox that is not running is left as it is. */
  async stop(ref: string, opts: StopOptions = {}): Promise<SandboxInfo> {
    const rec = await this.resolve(ref);
    if (rec.state !== 'running') return toInfo(rec);
    const backend = backendOf(this.core, rec);
    await backend.signal(rec, 'TERM');
    if (!(await this.reconciler.waitDead(rec, opts.graceMs ?? 10_000))) {
      await backend.signal(rec, 'KILL');
      await this.reconciler.waitDead(rec, 10_000);
    }
    return toInfo(await this.reconciler.settle(rec, 'stopped'));
  }

  /** Removes a sandbox and everything it holds on the host. `force` stops a running one first. */
  async remove(ref: string, opts: RemoveOptions = {}): Promise<void> {
    const rec = await this.resolve(ref);
    if (rec.state === 'running') {
      if (!opts.force) throw new SandboxStateError(`sandbox ${rec.name} is running; stop it first (\`hybridbox stop ${rec.name}\`) or use \`hybridbox rm -f\``, rec.name, rec.state);
      await backendOf(this.core, rec).signal(rec, 'KILL');
      await this.reconciler.waitDead(rec, 10_000);
      // A supervisor of its own (a VM's monitor, a shim's reap, another CLI) is finishing up: let it go first.
      await this.reconciler.waitOwnerGone(rec, 5000);
    }
    await this.reconciler.remove(rec);
  }

  /** Runs a further command in a running sandbox. */
  async exec(ref: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const t0 = performance.now();
    if (!Array.isArray(argv) || argv.length === 0 || !argv[0]) throw new SpecError('command', argv, 'exec needs a command: hybridbox exec SANDBOX -- COMMAND [ARGS...]');
    for (const [k, v] of Object.entries(opts.env ?? {})) {
      if (!ENV_KEY.test(k)) throw new SpecError('env', k, 'a variable name is letters, digits and _, not starting with a digit');
      if (typeof v !== 'string' || v.includes('\0')) throw new SpecError(`env.${k}`, v, 'give a string without NUL bytes');
    }
    if (opts.timeoutMs !== undefined && !(Number.isInteger(opts.timeoutMs) && opts.timeoutMs > 0)) throw new SpecError('timeoutMs', opts.timeoutMs, 'give a whole number of milliseconds above 0');
    if (opts.signal?.aborted) throw new AbortedError('the exec was aborted before it started');
    const rec = await this.resolve(ref);
    if (rec.state !== 'running') throw new SandboxStateError(`sandbox ${rec.name} is ${rec.state}, not running; start it with \`hybridbox start ${rec.name}\``, rec.name, rec.state);
    const output = new OutputCapture(opts.maxBufferBytes, opts);
    // The backend stops the command when `stop` aborts: SIGTERM, then SIGKILL after the grace period.
    const stop = new AbortController();
    const limit = stopOn(
      opts.signal,
      opts.timeoutMs,
      () => stop.abort(),
      () => undefined,
    );
    let code: number;
    try {
      code = await backendOf(this.core, rec).exec(rec, argv, {
        env: opts.env,
        workdir: opts.workdir,
        user: opts.user,
        stdin: opts.stdin ?? null,
        sink: output.sink,
        signal: stop.signal,
      });
    } finally {
      limit.dispose();
    }
    const bySignal = code > 128 && code < 128 + 65;
    const signal = bySignal ? (Object.entries(constants.signals).find(([, n]) => n === code - 128)?.[0] ?? null) : null;
    const result: ExecResult = {
      exitCode: limit.timedOut() ? 124 : code,
      signal,
      timedOut: limit.timedOut(),
      aborted: limit.aborted(),
      durationMs: Math.round(performance.now() - t0),
      ...output.fields(),
    };
    if (result.aborted) throw new AbortedError(`the command in sandbox ${rec.name} was stopped: the caller aborted it`, result);
    return result;
  }

  /**
   * Streams a sandbox's logs. With `follow`, keeps reading until the sandbox has ended (or
   * `signal` aborts).
   */
  async logs(ref: string, opts: LogsOptions): Promise<void> {
    let rec = await this.resolve(ref);
    const paths = backendOf(this.core, rec).logPaths(rec);
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
      rec = await this.reconciler.reconcile(this.core.store.get(rec.id) ?? rec);
      if (rec.state !== 'running' && rec.state !== 'created' && rec.state !== 'exiting') break;
      await sleep(100);
      await drain();
    }
    await drain();
  }

  /** Removes what crashes left behind (directories without records, and what is named after them). */
  cleanupOrphans(): Promise<string[]> {
    return this.reconciler.cleanupOrphans();
  }
}
