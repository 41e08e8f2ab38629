// Accepted requests, from the row written before the caller hears "accepted" to their
// terminal state. A run waits for capacity (admission.ts), runs its steps, and records its
// outcome and its events; on start, what a dead service left is settled: queued runs run,
// runs that were in flight end as internal-error, and their sandboxes are removed.
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { Hybridbox } from '../api/index.js';
import { HybridboxError, SpecError } from '../errors.js';
import type { Placement } from '../scheduler/index.js';
import type { BackendKind } from '../spec/index.js';
import { type Admission, type Cost, DEFAULT_OVERHEAD_MIB } from './admission.js';
import type { RunKind, RunRow, ServiceStore, StoredEvent } from './db.js';
import { CheckerError, judge } from './judge.js';
import type { JudgeRequest, Run, RunRequest, Step } from './schemas.js';
import { type LanguageRuntime, runStep, type StepInput, stepSpec, withDefaults, writeBox } from './steps.js';

/** An idempotency key reused with a different request (HTTP 409). */
export class IdempotencyConflictError extends Error {}

/** Every sandbox the service makes is named so: what a restart finds with this prefix is a leftover. */
export const SANDBOX_PREFIX = 'svc-';

export interface RequestContext {
  runId: string;
  workDir: string;
  runtime(name: string): LanguageRuntime;
  stepName(what: string): string;
  step(phase: string, s: StepInput): Promise<Step>;
  emit(type: string, data: unknown): void;
}

export type Listener = (e: StoredEvent) => void;

interface Live {
  events: StoredEvent[];
  listeners: Set<Listener>;
  placement: Placement | null;
}

export interface RunManagerOptions {
  hb: Hybridbox;
  store: ServiceStore;
  admission: Admission;
  runtimes: (name: string) => LanguageRuntime;
  /** Where each request's files live while it runs. */
  workRoot: string;
  onFinished?: (run: Run) => void;
}

export class RunManager {
  private readonly live = new Map<string, Live>();
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly o: RunManagerOptions) {
    mkdirSync(o.workRoot, { recursive: true, mode: 0o700 });
  }

  /**
   * Checks a request against the host (image, limits) and places it, without making anything:
   * a request that cannot run is refused here, before it is recorded.
   */
  plan(kind: RunKind, req: RunRequest | JudgeRequest): { placement: Placement; cost: Cost } {
    const first = firstStep(kind, req, this.o.runtimes);
    const placement = this.o.hb.placement.place(stepSpec(first));
    const cost = this.costOf(placement.backend, first.limits);
    if (!this.o.admission.fitsAtAll(cost)) {
      throw new SpecError(
        'limits.memoryMiB',
        first.limits.memoryMiB,
        `this service admits at most ${this.o.admission.capacity.memoryMiB} MiB and ${this.o.admission.capacity.cpuSlots} CPU slots per run, overhead included`,
      );
    }
    return { placement, cost };
  }

  /** Each backend's overhead (MiB) from this host's newest `bench density`, read once per minute rather than per request. */
  private overheads: { at: number; mib: Partial<Record<BackendKind, number>> } | null = null;

  private costOf(backend: BackendKind, l: { memoryMiB: number; cpus: number }): Cost {
    if (!this.overheads || Date.now() - this.overheads.at > 60_000) {
      const density = this.o.hb.measurements.latest('density', this.o.hb.measurements.hostKey);
      const mib: Partial<Record<BackendKind, number>> = {};
      for (const b of density?.backends ?? []) if (b.overheadBytesPerSandbox > 0) mib[b.backend] = Math.ceil(b.overheadBytesPerSandbox / 1048576);
      this.overheads = { at: Date.now(), mib };
    }
    const overhead = this.overheads.mib[backend] ?? DEFAULT_OVERHEAD_MIB[backend];
    return { cpuSlots: Math.max(1, Math.ceil(l.cpus)), memoryMiB: l.memoryMiB + overhead };
  }

  /** Records a request (or finds the one an idempotency key names) and queues it. */
  submit(kind: RunKind, req: RunRequest | JudgeRequest, keyId: string | null, idempotencyKey?: string): { row: RunRow; created: boolean } {
    const { placement, cost } = this.plan(kind, req);
    const id = newRunId();
    const row = this.o.store.insertRun({ id, kind, keyId, request: { kind, body: req, cost }, createdAtMs: Date.now() }, idempotencyKey ? { keyId: keyId ?? 'local', key: idempotencyKey } : undefined);
    if (row.id !== id) {
      const prior = row.request as { kind: RunKind; body: unknown };
      if (prior.kind !== kind || JSON.stringify(prior.body) !== JSON.stringify(req)) {
        throw new IdempotencyConflictError(`Idempotency-Key ${idempotencyKey} was used for run ${row.id} with another request; use a new key for a new request`);
      }
      return { row, created: false };
    }
    this.start(row, placement);
    return { row, created: true };
  }

  /** Settles what a previous service process left: called once, before listening. */
  async recover(): Promise<{ requeued: number; failed: number }> {
    const { store, hb } = this.o;
    const running = store.runsWithStatus('running');
    for (const r of running) {
      store.transitionRun(r.id, 'running', { status: 'internal-error', reason: 'the service stopped while this run was in flight; it was not completed', finishedAtMs: Date.now() });
    }
    // The library reconciles sandboxes whose owner (a dead service) is gone; then they are removed.
    for (const s of await hb.sandboxes.list({ all: true })) {
      if (s.name.startsWith(SANDBOX_PREFIX)) await hb.sandboxes.remove(s.id, { force: true }).catch(() => undefined);
    }
    // Emptied, not removed: the work root may be the service's tmpfs mount point.
    for (const d of readdirSync(this.o.workRoot)) rmSync(join(this.o.workRoot, d), { recursive: true, force: true });
    const queued = store.runsWithStatus('queued');
    for (const r of queued) this.start(r, null);
    return { requeued: queued.length, failed: running.length };
  }

  /** Events of a run after `seq`: from memory while it is live, else from the database. */
  events(id: string, afterSeq: number): StoredEvent[] {
    const l = this.live.get(id);
    return l ? l.events.filter((e) => e.seq > afterSeq) : this.o.store.eventsAfter(id, afterSeq);
  }

  /** Subscribes to a live run's further events; false when it has already ended. */
  subscribe(id: string, fn: Listener): (() => void) | null {
    const l = this.live.get(id);
    if (!l) return null;
    l.listeners.add(fn);
    return () => l.listeners.delete(fn);
  }

  view(row: RunRow): Run {
    const l = this.live.get(row.id);
    const result = row.result as { placement?: Placement; step?: Step; judge?: Run['judge'] } | null;
    const placement = l?.placement ?? result?.placement ?? null;
    return {
      id: row.id,
      kind: row.kind,
      status: row.status,
      queuePosition: row.status === 'queued' ? this.o.admission.position(row.id) : null,
      reason: row.status === 'queued' ? (this.o.admission.why(row.id) ?? row.reason) : row.reason,
      // A waiting run's placement says why it waits, after why it goes where it will.
      placement: placement && {
        backend: placement.backend,
        reasons: [...placement.reasons, ...(row.status === 'queued' && this.o.admission.why(row.id) ? [`It waits: ${this.o.admission.why(row.id)}.`] : [])],
        rejected: placement.rejected,
      },
      createdAtMs: row.createdAtMs,
      startedAtMs: row.startedAtMs,
      finishedAtMs: row.finishedAtMs,
      result: result?.step ?? null,
      judge: result?.judge ?? null,
    };
  }

  get running(): number {
    return [...this.live.keys()].filter((id) => this.o.store.getRun(id)?.status === 'running').length;
  }

  /** Waits for every run this process started (a graceful stop). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }

  private start(row: RunRow, placement: Placement | null): void {
    const live: Live = { events: [], listeners: new Set(), placement };
    this.live.set(row.id, live);
    const p = this.execute(row, live).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  private emit(live: Live, type: string, data: unknown): void {
    const e = { seq: live.events.length + 1, type, data };
    live.events.push(e);
    for (const fn of live.listeners) fn(e);
  }

  private async execute(row: RunRow, live: Live): Promise<void> {
    const { store, admission } = this.o;
    const { kind, body, cost } = row.request as { kind: RunKind; body: RunRequest | JudgeRequest; cost: Cost };
    const emit = (type: string, data: unknown) => this.emit(live, type, data);
    emit('status', { status: 'queued' });
    let admitted = false;
    let verdictSent = false;
    let outcome: { status: 'completed' | 'internal-error'; result: unknown; reason: string | null };
    const workDir = join(this.o.workRoot, row.id);
    let workMade = false;
    try {
      await admission.acquire(row.id, cost);
      admitted = true;
      store.transitionRun(row.id, 'queued', { status: 'running', startedAtMs: Date.now() });
      emit('status', { status: 'running' });
      let n = 0;
      const ctx: RequestContext = {
        runId: row.id,
        // Made on first use: a run with no files and no runtime needs none.
        get workDir() {
          if (!workMade) {
            mkdirSync(workDir, { mode: 0o700 });
            workMade = true;
          }
          return workDir;
        },
        runtime: this.o.runtimes,
        stepName: (what) => `${SANDBOX_PREFIX}${row.id}-${n++}-${what}`.slice(0, 63),
        emit,
        step: async (phase, s) => {
          const out = new StringDecoder('utf8');
          const err = new StringDecoder('utf8');
          // The exit (and a one-shot run's verdict) goes out as soon as the workload has ended;
          // the sandbox's teardown follows, and the run's status changes only after it.
          const ended = (step: Step) => {
            emit('exit', { phase, exitCode: step.exitCode, signal: step.signal, verdict: step.verdict });
            if (kind === 'run' && phase === 'run') {
              verdictSent = true;
              emit('verdict', { verdict: step.verdict, message: step.message });
            }
          };
          const { step, result } = await runStep(this.o.hb, s, {
            onStdout: (c) => emit('stdout', { phase, text: out.write(c) }),
            onStderr: (c) => emit('stderr', { phase, text: err.write(c) }),
            onStarted: (sandboxId, backend) => emit('step', { phase, sandboxId, backend }),
            onEnded: ended,
          });
          live.placement ??= result.placement;
          return step;
        },
      };
      if (kind === 'judge') {
        const j = await judge(ctx, body as JudgeRequest);
        emit('verdict', { verdict: j.verdict });
        outcome = { status: 'completed', result: { placement: live.placement, judge: j }, reason: null };
      } else {
        const step = await oneRun(ctx, body as RunRequest);
        if (!verdictSent) emit('verdict', { verdict: step.verdict, message: step.message });
        outcome = { status: 'completed', result: { placement: live.placement, step }, reason: null };
      }
    } catch (e) {
      const reason = e instanceof HybridboxError || e instanceof CheckerError ? e.message : `internal error: ${(e as Error)?.message ?? String(e)}`;
      emit('verdict', { verdict: 'internal-error', message: reason });
      outcome = { status: 'internal-error', result: { placement: live.placement }, reason };
    } finally {
      if (admitted) admission.release(cost);
      if (workMade) rmSync(workDir, { recursive: true, force: true });
    }
    emit('end', { status: outcome.status });
    store.saveEvents(row.id, live.events);
    const from = store.getRun(row.id)?.status === 'queued' ? 'queued' : 'running';
    store.transitionRun(row.id, from, { status: outcome.status, result: outcome.result, reason: outcome.reason, finishedAtMs: Date.now() });
    this.live.delete(row.id);
    for (const fn of live.listeners) fn({ seq: -1, type: 'closed', data: null });
    const done = store.getRun(row.id);
    if (done) this.o.onFinished?.(this.view(done));
  }
}

/** A run: its runtime's compile step first (its failure is the run's compile-error), then the command. */
async function oneRun(ctx: RequestContext, req: RunRequest): Promise<Step> {
  const rt = req.runtime ? ctx.runtime(req.runtime) : null;
  const box = req.files.length || rt ? join(ctx.workDir, 'box') : null;
  // The runtime's commands name its file (main.c); an entrypoint of another name is copied to it.
  const entry = rt && req.entrypoint && req.entrypoint !== rt.fileName ? req.files.find((f) => f.path === req.entrypoint) : undefined;
  if (box) writeBox(box, entry ? [...req.files.filter((f) => f.path !== rt!.fileName), { ...entry, path: rt!.fileName }] : req.files);
  const first = firstStep('run', req, () => rt!);
  if (rt?.compile && !req.command) {
    const c = await ctx.step('compile', { ...first, name: ctx.stepName('compile'), command: rt.compile, stdin: '', box: { hostDir: box!, writable: true } });
    if (c.verdict !== 'accepted') return { ...c, verdict: 'compile-error', message: c.message };
  }
  return ctx.step('run', { ...first, name: ctx.stepName('run'), box: box ? { hostDir: box, writable: false } : null });
}

/** The first sandboxed step of a request, which is what it is placed and costed by. */
function firstStep(kind: RunKind, req: RunRequest | JudgeRequest, runtimes: (name: string) => LanguageRuntime): StepInput {
  if (!req.image && !req.runtime) throw new SpecError('image', undefined, 'give an image or a runtime (GET /v1/runtimes lists them)');
  if (req.image && req.runtime) throw new SpecError('runtime', req.runtime, 'give an image or a runtime, not both');
  const paths = new Set(req.files.map((f) => f.path));
  for (const [i, f] of req.files.entries()) {
    const clash = paths.size < req.files.length && req.files.findIndex((g) => g.path === f.path) !== i;
    const parent = f.path
      .split('/')
      .slice(0, -1)
      .map((_, k, parts) => parts.slice(0, k + 1).join('/'))
      .find((d) => paths.has(d));
    if (clash || parent) throw new SpecError(`files.${i}.path`, f.path, clash ? 'each file once' : `${parent} is a file of this request, so it cannot be a directory too`);
  }
  const rt = req.runtime ? runtimes(req.runtime) : null;
  const image = req.image ?? rt!.image;
  if (rt && req.files.length) {
    const entry = (kind === 'run' ? (req as RunRequest).entrypoint : undefined) ?? rt.fileName;
    if (!req.files.some((f) => f.path === entry))
      throw new SpecError(
        kind === 'run' && (req as RunRequest).entrypoint ? 'entrypoint' : 'files',
        entry,
        `the ${rt.name} runtime compiles and runs ${rt.fileName}: give a file of that path, or name yours with entrypoint`,
      );
  }
  let command: string[] | undefined;
  if (kind === 'run') {
    const r = req as RunRequest;
    command = r.command ?? rt?.run;
    if (!command) throw new SpecError('command', undefined, 'give a command, or a runtime whose run command is used');
  } else {
    const j = req as JudgeRequest;
    command = j.compile ?? rt?.compile ?? j.run ?? rt?.run;
    if (!(j.run ?? rt?.run)) throw new SpecError('run', undefined, 'give a run command, or a runtime whose run command is used');
  }
  return {
    name: `${SANDBOX_PREFIX}plan`,
    image,
    command: command!,
    env: req.env,
    stdin: kind === 'run' ? (req as RunRequest).stdin : '',
    limits: withDefaults(req.limits),
    isolation: req.isolation,
    trust: req.trust,
    box: null,
  };
}

let counter = 0;
function newRunId(): string {
  // Sortable by time, unique within the process and across restarts.
  return `r${Date.now().toString(36)}${(counter++ % 1296).toString(36).padStart(2, '0')}${Math.random().toString(36).slice(2, 6)}`;
}
