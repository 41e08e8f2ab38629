import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { AmbiguousReferenceError, StateStoreError } from '../errors.js';
import { ensurePrivateFile } from './private.js';
import { preparedOnce } from './statements.js';
import type { BackendKind } from '../spec/schema.js';

/**
 * `exiting` is the short step between a workload's end and its record's: whoever moves a
 * record from running to exiting (a compare-and-set) is the one process that tears the
 * sandbox down and records how it ended.
 */
export type SandboxState = 'created' | 'running' | 'exiting' | 'exited' | 'crashed';

/** One sandbox as recorded in the state database. */
export interface SandboxRecord {
  id: string;
  name: string;
  backend: BackendKind;
  image: string;
  /** Manifest digest of the image at create time: what keeps it from being pruned. */
  imageDigest: string;
  state: SandboxState;
  /** The validated WorkloadSpec (JSON). */
  spec: unknown;
  /** The scheduler's decision (JSON). */
  placement: unknown;
  /** Backend-owned details: paths, addresses, pids (JSON). Opaque to everyone else. */
  runtime: Record<string, unknown>;
  createdAtMs: number;
  startedAtMs: number | null;
  finishedAtMs: number | null;
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  timedOut: boolean;
  /** The process that watches the sandbox (the CLI for attached runs, the monitor for detached ones). */
  ownerPid: number | null;
  ownerStartTime: number | null;
  /** Requests the backend could not honour on this host (e.g. an IO weight without BFQ). */
  warnings: string[];
  /** Free-text reason for 'crashed' or a failed start. */
  stateReason: string | null;
}

// The addon's path, given directly: better-sqlite3's default lookup (the `bindings` package)
// tries a dozen locations, which costs several milliseconds on every CLI call.
function nativeBinding(): string {
  const pkg = createRequire(import.meta.url).resolve('better-sqlite3/package.json');
  return join(dirname(pkg), 'build', 'Release', 'better_sqlite3.node');
}

const SCHEMA_VERSION = 2;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS sandboxes (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  backend TEXT NOT NULL,
  image TEXT NOT NULL,
  image_digest TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  spec TEXT NOT NULL,
  placement TEXT NOT NULL,
  runtime TEXT NOT NULL DEFAULT '{}',
  created_at_ms INTEGER NOT NULL,
  started_at_ms INTEGER,
  finished_at_ms INTEGER,
  exit_code INTEGER,
  signal TEXT,
  oom_killed INTEGER NOT NULL DEFAULT 0,
  timed_out INTEGER NOT NULL DEFAULT 0,
  warnings TEXT NOT NULL DEFAULT '[]',
  owner_pid INTEGER,
  owner_start_time INTEGER,
  state_reason TEXT
);
-- Anything that must be unique across concurrent CLI processes (IP addresses, uid ranges)
-- is a lease: the primary key makes a double allocation impossible.
CREATE TABLE IF NOT EXISTS leases (
  kind TEXT NOT NULL,
  value TEXT NOT NULL,
  sandbox_id TEXT NOT NULL,
  PRIMARY KEY (kind, value)
);
CREATE INDEX IF NOT EXISTS leases_by_sandbox ON leases (sandbox_id);
`;

interface Row {
  id: string;
  name: string;
  backend: string;
  image: string;
  image_digest: string;
  state: string;
  spec: string;
  placement: string;
  runtime: string;
  created_at_ms: number;
  started_at_ms: number | null;
  finished_at_ms: number | null;
  exit_code: number | null;
  signal: string | null;
  oom_killed: number;
  timed_out: number;
  warnings: string;
  owner_pid: number | null;
  owner_start_time: number | null;
  state_reason: string | null;
}

function fromRow(r: Row): SandboxRecord {
  return {
    id: r.id,
    name: r.name,
    backend: r.backend as BackendKind,
    image: r.image,
    imageDigest: r.image_digest,
    state: r.state as SandboxState,
    spec: JSON.parse(r.spec),
    placement: JSON.parse(r.placement),
    runtime: JSON.parse(r.runtime),
    createdAtMs: r.created_at_ms,
    startedAtMs: r.started_at_ms,
    finishedAtMs: r.finished_at_ms,
    exitCode: r.exit_code,
    signal: r.signal,
    oomKilled: r.oom_killed === 1,
    timedOut: r.timed_out === 1,
    warnings: JSON.parse(r.warnings),
    ownerPid: r.owner_pid,
    ownerStartTime: r.owner_start_time,
    stateReason: r.state_reason,
  };
}

const COLUMN: Record<keyof Omit<SandboxRecord, 'id'>, string> = {
  name: 'name',
  backend: 'backend',
  image: 'image',
  imageDigest: 'image_digest',
  state: 'state',
  spec: 'spec',
  placement: 'placement',
  runtime: 'runtime',
  createdAtMs: 'created_at_ms',
  startedAtMs: 'started_at_ms',
  finishedAtMs: 'finished_at_ms',
  exitCode: 'exit_code',
  signal: 'signal',
  oomKilled: 'oom_killed',
  timedOut: 'timed_out',
  warnings: 'warnings',
  ownerPid: 'owner_pid',
  ownerStartTime: 'owner_start_time',
  stateReason: 'state_reason',
};

function toColumnValue(key: keyof typeof COLUMN, v: unknown): unknown {
  if (key === 'spec' || key === 'placement' || key === 'runtime' || key === 'warnings') return JSON.stringify(v);
  if (key === 'oomKilled' || key === 'timedOut') return v ? 1 : 0;
  return v;
}

/**
 * The state database. Many CLI processes open it at once: WAL lets readers run beside a
 * writer, busy_timeout makes writers queue instead of failing, and every read-modify-write
 * runs in an IMMEDIATE transaction so two processes never decide on the same snapshot.
 */
export class StateStore {
  readonly db: Database.Database;
  /** Each statement is prepared once (store/statements.ts). */
  private readonly sql: (text: string) => Database.Statement;

  constructor(readonly root: string) {
    mkdirSync(root, { recursive: true, mode: 0o700 });
    // SQLite would make the file 0644 (less the umask), and its -wal and -shm take the file's mode.
    ensurePrivateFile(join(root, 'state.db'));
    this.db = new Database(join(root, 'state.db'), { nativeBinding: nativeBinding() });
    this.sql = preparedOnce(this.db);
    this.db.pragma('busy_timeout = 10000');
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    const version = this.db.pragma('user_version', { simple: true }) as number;
    const fresh = (this.sql("SELECT count(*) AS n FROM sqlite_master WHERE name = 'sandboxes'").get() as { n: number }).n === 0;
    // Version 1 lacked the image digest that `image prune` needs to spare images in use.
    if (!fresh && version === 1) {
      this.db.exec("ALTER TABLE sandboxes ADD COLUMN image_digest TEXT NOT NULL DEFAULT ''");
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } else if (!fresh && version !== SCHEMA_VERSION) {
      throw new StateStoreError(
        `the state database ${join(root, 'state.db')} has schema version ${version}, this hybridbox needs ${SCHEMA_VERSION}; remove the sandboxes with the version that made them, or move the state directory away`,
      );
    }
    this.db.exec(SCHEMA);
    if (fresh) this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }

  /** Runs fn in a write transaction taken up front (BEGIN IMMEDIATE). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  insert(rec: SandboxRecord): void {
    const keys = Object.keys(COLUMN) as (keyof typeof COLUMN)[];
    const cols = ['id', ...keys.map((k) => COLUMN[k])];
    this.sql(`INSERT INTO sandboxes (${cols.join(',')}) VALUES (${cols.map(() => '?').join(',')})`).run(rec.id, ...keys.map((k) => toColumnValue(k, rec[k])));
  }

  update(id: string, patch: Partial<Omit<SandboxRecord, 'id'>>): void {
    const keys = Object.keys(patch) as (keyof typeof COLUMN)[];
    if (keys.length === 0) return;
    this.sql(`UPDATE sandboxes SET ${keys.map((k) => `${COLUMN[k]} = ?`).join(', ')} WHERE id = ?`).run(...keys.map((k) => toColumnValue(k, patch[k])), id);
  }

  get(id: string): SandboxRecord | undefined {
    const r = this.sql('SELECT * FROM sandboxes WHERE id = ?').get(id) as Row | undefined;
    return r && fromRow(r);
  }

  /**
   * Compare-and-set: applies `patch` only while the record is in one of `from`. False when
   * another process changed the state first (it then owns what follows, such as teardown).
   */
  transition(
    id: string,
    from: SandboxState | readonly SandboxState[],
    patch: Partial<Omit<SandboxRecord, 'id'>>,
    /** Also require this owner (null: no owner; undefined: any), so two takers of a dead owner's record cannot both win. */
    expectOwnerPid?: number | null,
  ): boolean {
    const states = typeof from === 'string' ? [from] : [...from];
    const keys = Object.keys(patch) as (keyof typeof COLUMN)[];
    const ownerClause = expectOwnerPid === undefined ? '' : expectOwnerPid === null ? ' AND owner_pid IS NULL' : ' AND owner_pid = ?';
    const r = this.sql(`UPDATE sandboxes SET ${keys.map((k) => `${COLUMN[k]} = ?`).join(', ')} WHERE id = ? AND state IN (${states.map(() => '?').join(',')})${ownerClause}`).run(
      ...keys.map((k) => toColumnValue(k, patch[k])),
      id,
      ...states,
      ...(typeof expectOwnerPid === 'number' ? [expectOwnerPid] : []),
    );
    return r.changes === 1;
  }

  /**
   * A sandbox reference: an exact id, an exact name, or a prefix of exactly one id. Compared
   * as plain strings (no LIKE), so `%` and `_` in a reference match only themselves.
   */
  find(ref: string): SandboxRecord | undefined {
    if (!ref) return undefined;
    const exact = this.sql('SELECT * FROM sandboxes WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1').get(ref, ref, ref) as Row | undefined;
    if (exact) return fromRow(exact);
    const rows = this.sql('SELECT * FROM sandboxes WHERE substr(id, 1, length(?)) = ? ORDER BY id LIMIT 6').all(ref, ref) as Row[];
    if (rows.length > 1)
      throw new AmbiguousReferenceError(
        ref,
        rows.slice(0, 5).map((r) => `${r.id} (${r.name})`),
      );
    return rows.length === 1 ? fromRow(rows[0]!) : undefined;
  }

  nameTaken(name: string): string | null {
    const r = this.sql('SELECT id FROM sandboxes WHERE name = ?').get(name) as { id: string } | undefined;
    return r?.id ?? null;
  }

  /** All records, or only those in `states` (placement reads the running ones on every start). */
  list(...states: SandboxState[]): SandboxRecord[] {
    const rows = states.length
      ? this.sql(`SELECT * FROM sandboxes WHERE state IN (${states.map(() => '?').join(',')}) ORDER BY created_at_ms`).all(...states)
      : this.sql('SELECT * FROM sandboxes ORDER BY created_at_ms').all();
    return (rows as Row[]).map(fromRow);
  }

  delete(id: string): void {
    this.tx(() => {
      this.sql('DELETE FROM leases WHERE sandbox_id = ?').run(id);
      this.sql('DELETE FROM sandboxes WHERE id = ?').run(id);
    });
  }

  /**
   * Leases the first free value that `candidates` yields for `kind`. Must be called inside
   * tx() so that the read of taken values and the insert are one atomic step.
   */
  lease(kind: string, sandboxId: string, candidates: Iterable<string>): string | null {
    const taken = new Set((this.sql('SELECT value FROM leases WHERE kind = ?').all(kind) as { value: string }[]).map((r) => r.value));
    for (const c of candidates) {
      if (!taken.has(c)) {
        this.sql('INSERT INTO leases (kind, value, sandbox_id) VALUES (?, ?, ?)').run(kind, c, sandboxId);
        return c;
      }
    }
    return null;
  }

  releaseLeases(sandboxId: string, kind?: string): void {
    if (kind) this.sql('DELETE FROM leases WHERE sandbox_id = ? AND kind = ?').run(sandboxId, kind);
    else this.sql('DELETE FROM leases WHERE sandbox_id = ?').run(sandboxId);
  }

  leases(kind?: string): { kind: string; value: string; sandboxId: string }[] {
    const rows = (kind ? this.sql('SELECT * FROM leases WHERE kind = ?').all(kind) : this.sql('SELECT * FROM leases').all()) as { kind: string; value: string; sandbox_id: string }[];
    return rows.map((r) => ({ kind: r.kind, value: r.value, sandboxId: r.sandbox_id }));
  }

  close(): void {
    this.db.close();
  }
}
