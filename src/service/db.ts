// The service's own database, beside the sandboxes' state.db: runs as the API accepted them,
// their events (for SSE replay), API keys (hashes only), idempotency keys and the audit log.
// A separate file keeps the library's schema free of the service's concerns.
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { StateStoreError } from '../errors.js';
import { ensurePrivateFile } from '../store/private.js';
import { preparedOnce } from '../store/statements.js';

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,               -- run | judge
  key_id TEXT,                      -- the API key that asked for it (null: local root over the socket)
  status TEXT NOT NULL,             -- queued | running | completed | internal-error
  request TEXT NOT NULL,            -- the validated request (JSON)
  result TEXT,                      -- the outcome (JSON), once completed
  reason TEXT,                      -- why internal-error, or why it waits
  created_at_ms INTEGER NOT NULL,
  started_at_ms INTEGER,
  finished_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created_at_ms);
CREATE TABLE IF NOT EXISTS run_events (
  run_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL UNIQUE,        -- sha256 of the secret; the secret itself is never stored
  scope TEXT NOT NULL,
  quota TEXT NOT NULL,              -- JSON: maxConcurrent, ratePerMin, maxMemoryMiB, maxCpuTimeMs
  created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
  key_id TEXT NOT NULL,
  idem_key TEXT NOT NULL,
  run_id TEXT NOT NULL,
  PRIMARY KEY (key_id, idem_key)
);
CREATE TABLE IF NOT EXISTS callbacks (
  run_id TEXT PRIMARY KEY,
  url TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  delivered_at_ms INTEGER,
  last_error TEXT
);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at_ms INTEGER NOT NULL,
  key_id TEXT,
  action TEXT NOT NULL,
  target TEXT,
  outcome INTEGER NOT NULL,         -- the HTTP status
  duration_ms REAL NOT NULL
);
`;

function nativeBinding(): string {
  const pkg = createRequire(import.meta.url).resolve('better-sqlite3/package.json');
  return join(dirname(pkg), 'build', 'Release', 'better_sqlite3.node');
}

export type RunStatus = 'queued' | 'running' | 'completed' | 'internal-error';
export type RunKind = 'run' | 'judge';

export interface RunRow {
  id: string;
  kind: RunKind;
  keyId: string | null;
  status: RunStatus;
  request: unknown;
  result: unknown;
  reason: string | null;
  createdAtMs: number;
  startedAtMs: number | null;
  finishedAtMs: number | null;
}

export interface StoredEvent {
  seq: number;
  type: string;
  data: unknown;
}

export interface KeyRow {
  id: string;
  name: string;
  hash: string;
  scope: string;
  quota: Record<string, number | undefined>;
  createdAtMs: number;
}

interface RawRun {
  id: string;
  kind: RunKind;
  key_id: string | null;
  status: RunStatus;
  request: string;
  result: string | null;
  reason: string | null;
  created_at_ms: number;
  started_at_ms: number | null;
  finished_at_ms: number | null;
}

const fromRaw = (r: RawRun): RunRow => ({
  id: r.id,
  kind: r.kind,
  keyId: r.key_id,
  status: r.status,
  request: JSON.parse(r.request),
  result: r.result === null ? null : JSON.parse(r.result),
  reason: r.reason,
  createdAtMs: r.created_at_ms,
  startedAtMs: r.started_at_ms,
  finishedAtMs: r.finished_at_ms,
});

interface PendingCallback {
  runId: string;
  url: string;
  attempts: number;
}
type RawCallback = { run_id: string; url: string; attempts: number };
const fromRawCallback = (c: RawCallback): PendingCallback => ({ runId: c.run_id, url: c.url, attempts: c.attempts });
const PENDING_CALLBACKS = "SELECT c.run_id, c.url, c.attempts FROM callbacks c JOIN runs r ON r.id = c.run_id WHERE c.delivered_at_ms IS NULL AND r.status IN ('completed', 'internal-error')";

export class ServiceStore {
  readonly db: Database.Database;
  /** Each statement is prepared once (store/statements.ts). */
  private readonly sql: (text: string) => Database.Statement;

  constructor(root: string) {
    mkdirSync(root, { recursive: true, mode: 0o700 });
    const file = join(root, 'service.db');
    ensurePrivateFile(file);
    this.db = new Database(file, { nativeBinding: nativeBinding() });
    this.sql = preparedOnce(this.db);
    this.db.pragma('busy_timeout = 10000');
    this.db.pragma('journal_mode = WAL');
    // WAL with NORMAL: a committed row survives the service's own crash (kill -9, OOM), which
    // is what "recorded before acknowledged" must hold against; an fsync per commit (FULL)
    // would also cover a power cut of the host, at ~2 ms per request on this disk.
    this.db.pragma('synchronous = NORMAL');
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version !== 0 && version !== SCHEMA_VERSION) throw new StateStoreError(`${file} has schema version ${version}, this hybridbox needs ${SCHEMA_VERSION}`);
    this.db.exec(SCHEMA);
    this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }

  close(): void {
    this.db.close();
  }

  insertRun(r: { id: string; kind: RunKind; keyId: string | null; request: unknown; createdAtMs: number }, idem?: { keyId: string; key: string }): RunRow {
    return this.db
      .transaction(() => {
        const existing = idem && this.idempotentRun(idem.keyId, idem.key);
        if (existing) return existing;
        this.sql("INSERT INTO runs (id, kind, key_id, status, request, created_at_ms) VALUES (?, ?, ?, 'queued', ?, ?)").run(r.id, r.kind, r.keyId, JSON.stringify(r.request), r.createdAtMs);
        if (idem) this.sql('INSERT INTO idempotency (key_id, idem_key, run_id) VALUES (?, ?, ?)').run(idem.keyId, idem.key, r.id);
        return this.getRun(r.id)!;
      })
      .immediate();
  }

  /** The run an idempotency key of a key already made, if any. */
  idempotentRun(keyId: string, idemKey: string): RunRow | undefined {
    const r = this.sql('SELECT run_id FROM idempotency WHERE key_id = ? AND idem_key = ?').get(keyId, idemKey) as { run_id: string } | undefined;
    return r && this.getRun(r.run_id);
  }

  getRun(id: string): RunRow | undefined {
    const r = this.sql('SELECT * FROM runs WHERE id = ?').get(id) as RawRun | undefined;
    return r && fromRaw(r);
  }

  runsWithStatus(status: RunStatus): RunRow[] {
    return (this.sql('SELECT * FROM runs WHERE status = ? ORDER BY created_at_ms, id').all(status) as RawRun[]).map(fromRaw);
  }

  listRuns(opts: { keyId?: string | null; limit: number }): RunRow[] {
    const rows =
      opts.keyId === undefined
        ? this.sql('SELECT * FROM runs ORDER BY created_at_ms DESC LIMIT ?').all(opts.limit)
        : this.sql('SELECT * FROM runs WHERE key_id IS ? ORDER BY created_at_ms DESC LIMIT ?').all(opts.keyId, opts.limit);
    return (rows as RawRun[]).map(fromRaw);
  }

  /** Runs of a key that are queued or running. */
  activeRuns(keyId: string): number {
    return (this.sql("SELECT count(*) AS n FROM runs WHERE key_id = ? AND status IN ('queued', 'running')").get(keyId) as { n: number }).n;
  }

  /** Compare-and-set on a run's status; false when it was not in `from`. */
  transitionRun(id: string, from: RunStatus, patch: { status: RunStatus; result?: unknown; reason?: string | null; startedAtMs?: number; finishedAtMs?: number }): boolean {
    const r = this.sql(
      'UPDATE runs SET status = ?, result = COALESCE(?, result), reason = ?, started_at_ms = COALESCE(?, started_at_ms), finished_at_ms = COALESCE(?, finished_at_ms) WHERE id = ? AND status = ?',
    ).run(patch.status, patch.result === undefined ? null : JSON.stringify(patch.result), patch.reason ?? null, patch.startedAtMs ?? null, patch.finishedAtMs ?? null, id, from);
    return r.changes === 1;
  }

  /** A finished run's events, written once at its end (a live run's stay in memory). */
  saveEvents(runId: string, events: StoredEvent[]): void {
    const ins = this.sql('INSERT OR IGNORE INTO run_events (run_id, seq, type, data) VALUES (?, ?, ?, ?)');
    this.db.transaction(() => {
      for (const e of events) ins.run(runId, e.seq, e.type, JSON.stringify(e.data));
    })();
  }

  eventsAfter(runId: string, seq: number): StoredEvent[] {
    return (this.sql('SELECT seq, type, data FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq').all(runId, seq) as { seq: number; type: string; data: string }[]).map((e) => ({
      seq: e.seq,
      type: e.type,
      data: JSON.parse(e.data),
    }));
  }

  insertKey(k: KeyRow): void {
    this.sql('INSERT INTO api_keys (id, name, hash, scope, quota, created_at_ms) VALUES (?, ?, ?, ?, ?, ?)').run(k.id, k.name, k.hash, k.scope, JSON.stringify(k.quota), k.createdAtMs);
  }

  keyByHash(hash: string): KeyRow | undefined {
    const r = this.sql('SELECT * FROM api_keys WHERE hash = ?').get(hash) as (Omit<KeyRow, 'quota' | 'createdAtMs'> & { quota: string; created_at_ms: number }) | undefined;
    return r && { id: r.id, name: r.name, hash: r.hash, scope: r.scope, quota: JSON.parse(r.quota), createdAtMs: r.created_at_ms };
  }

  listKeys(): KeyRow[] {
    return (this.sql('SELECT * FROM api_keys ORDER BY created_at_ms').all() as (Omit<KeyRow, 'quota' | 'createdAtMs'> & { quota: string; created_at_ms: number })[]).map((r) => ({
      id: r.id,
      name: r.name,
      hash: r.hash,
      scope: r.scope,
      quota: JSON.parse(r.quota),
      createdAtMs: r.created_at_ms,
    }));
  }

  /** Removes a key by id or name; false when there is none. */
  deleteKey(ref: string): boolean {
    return this.sql('DELETE FROM api_keys WHERE id = ? OR name = ?').run(ref, ref).changes > 0;
  }

  addCallback(runId: string, url: string): void {
    this.sql('INSERT OR IGNORE INTO callbacks (run_id, url) VALUES (?, ?)').run(runId, url);
  }

  callbackAttempt(runId: string, delivered: boolean, error: string | null): void {
    this.sql('UPDATE callbacks SET attempts = attempts + 1, delivered_at_ms = ?, last_error = ? WHERE run_id = ?').run(delivered ? Date.now() : null, error, runId);
  }

  /** A finished run's callback, while it is not yet delivered. */
  pendingCallback(runId: string): PendingCallback | undefined {
    const c = this.sql(`${PENDING_CALLBACKS} AND c.run_id = ?`).get(runId) as RawCallback | undefined;
    return c && fromRawCallback(c);
  }

  /** Callbacks of finished runs not yet delivered (a restart resumes them). */
  pendingCallbacks(): PendingCallback[] {
    return (this.sql(PENDING_CALLBACKS).all() as RawCallback[]).map(fromRawCallback);
  }

  audit(e: { keyId: string | null; action: string; target: string | null; outcome: number; durationMs: number }): void {
    this.sql('INSERT INTO audit (at_ms, key_id, action, target, outcome, duration_ms) VALUES (?, ?, ?, ?, ?, ?)').run(Date.now(), e.keyId, e.action, e.target, e.outcome, e.durationMs);
  }

  auditLog(limit: number): { atMs: number; keyId: string | null; action: string; target: string | null; outcome: number; durationMs: number }[] {
    return (
      this.sql('SELECT * FROM audit ORDER BY seq DESC LIMIT ?').all(limit) as {
        at_ms: number;
        key_id: string | null;
        action: string;
        target: string | null;
        outcome: number;
        duration_ms: number;
      }[]
    ).map((a) => ({
      atMs: a.at_ms,
      keyId: a.key_id,
      action: a.action,
      target: a.target,
      outcome: a.outcome,
      durationMs: a.duration_ms,
    }));
  }
}
