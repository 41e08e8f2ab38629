import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxNotFoundError } from '../errors.js';
import type { ExitStatus } from '../runtimes/backend.js';
import { withCpuVerdict } from '../runtimes/limits.js';
import type { WorkloadSpec } from '../spec/index.js';
import type { SandboxRecord } from '../store/index.js';
import { isSameProcessAlive, pollUntil, sleep } from '../util/proc.js';
import { backendOf, sandboxDir, thisProcessAsOwner, type Core } from './context.js';

/** Removes a sandbox's directory; a late writer (a monitor's last log line) gets a few retries. */
function removeDir(dir: string): void {
  try {
    rmSync(dir, { recursive: true, force: true });
  } catch {
    // Node's retrying removal is slower: only for the rare race.
    rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
  }
}

/** The stateReason of a record that is being removed (in state `exiting` until it is gone). */
const REMOVING = 'removing';

/**
 * Ownership and settling ends. Each sandbox has one owner process at a time (its CLI, its
 * monitor); every change of state is a compare-and-set, so when a `stop`, a monitor's reap
 * and a `ps` race to record the same end, exactly one of them tears the sandbox down.
 * Records whose owner died are settled by whichever call sees them next.
 */
export class Reconciler {
  constructor(private readonly core: Core) {}

  /**
   * Records how a sandbox ended and releases what its run held. Only the caller that moves
   * the record out of running (or created) does this; false when another process did first.
   */
  async finish(rec: SandboxRecord, status: ExitStatus | null, failure?: string): Promise<boolean> {
    // The state alone decides: running → exiting happens once, whoever owns the record meanwhile
    // (a fast workload's monitor may reap it while its starter is still handing it over).
    if (!this.core.store.transition(rec.id, ['running', 'created'], { state: 'exiting', ...thisProcessAsOwner() })) return false;
    await this.completeExit(rec, status, failure);
    return true;
  }

  private async completeExit(rec: SandboxRecord, given: ExitStatus | null, failure?: string): Promise<void> {
    const status = given && withCpuVerdict(rec.spec as WorkloadSpec, given);
    // Resources first, so that a sandbox seen as ended holds nothing on the host any more.
    let teardownError: unknown;
    try {
      await backendOf(this.core, rec).teardown(rec);
    } catch (e) {
      teardownError = e;
    }
    // A timeout is an ordinary end (`exited`, timedOut): only a sandbox that died without its workload ending has crashed.
    this.core.store.transition(rec.id, 'exiting', {
      state: status && !status.crash ? 'exited' : 'crashed',
      finishedAtMs: Date.now(),
      exitCode: status?.exitCode ?? null,
      signal: status?.signal ?? null,
      oomKilled: status?.oomKilled ?? false,
      timedOut: status?.timedOut ?? false,
      stateReason: failure ?? status?.crash ?? (status ? endReason(status) : null),
      ownerPid: null,
      ownerStartTime: null,
    });
    if (teardownError) throw teardownError;
  }

  /**
   * Removes a sandbox's record and everything it holds, once: the caller that claims the
   * record tears it down; a concurrent remover finds it gone. A crash half-way leaves a
   * claimed record (or an orphan directory) that the next call finishes removing.
   */
  async remove(rec: SandboxRecord): Promise<void> {
    const { store } = this.core;
    let claimed: SandboxRecord | undefined;
    let gone = false;
    await pollUntil(
      () => {
        const fresh = store.get(rec.id);
        if (!fresh) return (gone = true);
        // Another live process is finishing it: let it, then take what is left.
        if (fresh.state === 'exiting' && fresh.ownerPid !== process.pid && fresh.ownerPid !== null && isSameProcessAlive(fresh.ownerPid, fresh.ownerStartTime)) return false;
        if (store.transition(rec.id, fresh.state, { state: 'exiting', stateReason: REMOVING, ...thisProcessAsOwner() }, fresh.ownerPid)) claimed = fresh;
        return claimed !== undefined;
      },
      { timeoutMs: 30_000, intervalMs: 10 },
    );
    if (gone) return;
    if (!claimed) throw new SandboxNotFoundError(rec.name);
    await backendOf(this.core, claimed).teardown(claimed);
    removeDir(sandboxDir(this.core, claimed.id));
    store.delete(claimed.id);
  }

  /** Waits until no process of the sandbox is alive; false if some still are after `ms`. */
  async waitDead(rec: SandboxRecord, ms: number): Promise<boolean> {
    const backend = backendOf(this.core, rec);
    return pollUntil(async () => !(await backend.isAlive(rec)), { timeoutMs: ms, intervalMs: 10 });
  }

  /** Waits (at most `ms`) for the record's owner to exit, unless that owner is this process. */
  async waitOwnerGone(rec: SandboxRecord, ms: number): Promise<void> {
    const { ownerPid, ownerStartTime } = rec;
    if (ownerPid === null || ownerPid === process.pid) return;
    await pollUntil(() => !isSameProcessAlive(ownerPid, ownerStartTime), { timeoutMs: ms, intervalMs: 10 });
  }

  /**
   * Brings a record in line with the host: a sandbox whose owner died (a killed CLI, a
   * killed monitor, a crash while recording an end) is ended, recorded and cleaned up.
   * Throws SandboxNotFoundError for a record that turned out to be half-made or half-removed.
   */
  async reconcile(rec: SandboxRecord): Promise<SandboxRecord> {
    if (rec.state === 'exited' || rec.state === 'crashed') return rec;
    if (rec.ownerPid !== null && isSameProcessAlive(rec.ownerPid, rec.ownerStartTime)) return rec;
    const { store } = this.core;
    const backend = backendOf(this.core, rec);
    if (rec.state === 'exiting' || (rec.state === 'created' && rec.ownerPid !== null)) {
      // Its creator died half-way, or a remover or finisher did: take over from it.
      if (!store.transition(rec.id, rec.state, { state: 'exiting', ...thisProcessAsOwner() }, rec.ownerPid)) return store.get(rec.id) ?? rec;
      if (rec.state === 'created' || rec.stateReason === REMOVING) {
        await backend.teardown(rec);
        rmSync(sandboxDir(this.core, rec.id), { recursive: true, force: true });
        store.delete(rec.id);
        throw new SandboxNotFoundError(rec.name);
      }
      await this.completeExit(rec, await backend.collectExit(rec), undefined);
      return store.get(rec.id) ?? rec;
    }
    if (rec.state === 'created') return rec;
    if (await backend.isAlive(rec)) {
      // Still running without an owner: a detached container whose monitor died (`stop` still works).
      if (rec.ownerPid === null) return rec;
      // Its supervisor died: nothing collects its output or its end any more, and a
      // foreground sandbox must not outlive its CLI. End it.
      await backend.signal(rec, 'KILL');
      await this.waitDead(rec, 10_000);
    }
    // Give a monitor that is finishing a moment to write its exit record.
    let status = await backend.collectExit(rec);
    if (!status && rec.ownerPid === null) {
      await sleep(50);
      status = await backend.collectExit(rec);
    }
    await this.finish(rec, status, status ? undefined : 'its supervising process died before the workload exited');
    return store.get(rec.id) ?? rec;
  }

  /**
   * After a sandbox's processes are gone: waits briefly for its owner's own bookkeeping,
   * then records the end itself if the owner did not.
   */
  async settle(rec: SandboxRecord, reason: string): Promise<SandboxRecord> {
    const { store } = this.core;
    // Until the owner has recorded the end, or the backend's exit record is there for us to.
    let recorded: SandboxRecord | undefined;
    await pollUntil(
      async () => {
        const fresh = store.get(rec.id);
        if (!fresh || (fresh.state !== 'running' && fresh.state !== 'exiting')) {
          recorded = fresh ?? rec;
          return true;
        }
        return fresh.state === 'running' && (await backendOf(this.core, rec).collectExit(fresh)) !== null;
      },
      { timeoutMs: 3000, intervalMs: 10 },
    );
    if (recorded) return recorded;
    const fresh = store.get(rec.id);
    if (fresh && fresh.state === 'running') {
      const status = await backendOf(this.core, fresh).collectExit(fresh);
      await this.finish(fresh, status, status ? undefined : reason);
    } else if (fresh && fresh.state === 'exiting') {
      // A stop returns once the end is recorded, not while it is exiting: by its owner (a
      // monitor tearing a VM down can take seconds on a loaded host, and may claim the record
      // while we look, so it is read afresh), or by us once no live process owns it. The wait
      // outlasts a teardown's own bounds (a `virsh destroy` alone may take up to 60 s), so
      // only an owner that is truly stuck leaves the caller with `exiting`.
      let last: SandboxRecord = fresh;
      await pollUntil(
        async () => {
          const f = store.get(rec.id);
          if (!f || f.state !== 'exiting') return true;
          last = f;
          if (f.ownerPid !== null && isSameProcessAlive(f.ownerPid, f.ownerStartTime)) return false;
          last = await this.reconcile(f).catch(() => f);
          return last.state !== 'exiting';
        },
        { timeoutMs: 90_000, intervalMs: 10 },
      );
      return store.get(rec.id) ?? last;
    }
    return store.get(rec.id) ?? rec;
  }

  /**
   * Removes what a crash left behind: sandbox directories of this state root that have no
   * record (a process killed between creating and recording, or half-way through removal),
   * with the host resources (cgroups, namespaces, leases) named after them.
   */
  async cleanupOrphans(): Promise<string[]> {
    let dirs: string[] = [];
    try {
      dirs = readdirSync(join(this.core.root, 'sandboxes'));
    } catch {
      return [];
    }
    const known = new Set(this.core.store.list().map((r) => r.id));
    const orphans = dirs.filter((id) => !known.has(id));
    for (const id of orphans) {
      await this.core.backends.teardownOrphan(id, sandboxDir(this.core, id));
      rmSync(sandboxDir(this.core, id), { recursive: true, force: true });
    }
    return orphans;
  }
}

/** Why a workload that ended did so, when a limit ended it. */
function endReason(status: ExitStatus): string | null {
  if (status.oomKilled) return 'killed by the kernel: out of memory (memory limit reached)';
  if (status.timedOut) return 'stopped: its time limit ran out';
  if (status.cpuTimeLimitExceeded) return `killed: its CPU time limit ran out (${status.cpuTimeMs ?? '?'} ms used)`;
  if (status.signal === 'SIGXFSZ') return 'killed by SIGXFSZ: a file reached its size limit';
  return null;
}
