import type Database from 'better-sqlite3';
import { StateStoreError } from '../errors.js';
import { BACKEND_KINDS, type BackendKind } from '../spec/schema.js';
import type { StartupStats } from '../scheduler/index.js';
import type { BenchKind, BenchResult, StartupResult } from './types.js';

/** Which time of a startup result the scheduler's figures come from (see startupStats). */
export type StartupMeasure = 'total' | 'firstOutput';

/** The measurements' own schema version, kept apart from the sandboxes' (PRAGMA user_version). */
const MEASUREMENTS_SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bench_results (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  host_key TEXT NOT NULL,
  started_at_ms INTEGER NOT NULL,
  result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bench_results_by_kind ON bench_results (kind, host_key, started_at_ms);
`;

/**
 * Benchmark results in the state database, one JSON document each with the host it was
 * measured on. The table is created on first use, so older state databases need no migration.
 */
export class Measurements {
  /** `hostKey`: this host's key (see hostKey()), under which its own results are stored. */
  constructor(
    private readonly db: Database.Database,
    readonly hostKey: string,
  ) {
    db.exec(SCHEMA);
    const row = db.prepare("SELECT version FROM schema_versions WHERE component = 'measurements'").get() as { version: number } | undefined;
    if (!row) db.prepare("INSERT OR IGNORE INTO schema_versions (component, version) VALUES ('measurements', ?)").run(MEASUREMENTS_SCHEMA_VERSION);
    else if (row.version !== MEASUREMENTS_SCHEMA_VERSION) {
      throw new StateStoreError(
        `the stored measurements have schema version ${row.version}, this hybridbox reads ${MEASUREMENTS_SCHEMA_VERSION}; use the hybridbox that wrote them, or move the state directory away`,
      );
    }
  }

  save(result: BenchResult): number {
    const r = this.db.prepare('INSERT INTO bench_results (kind, host_key, started_at_ms, result) VALUES (?, ?, ?, ?)').run(result.kind, result.host.key, result.startedAtMs, JSON.stringify(result));
    result.id = Number(r.lastInsertRowid);
    this.db.prepare('UPDATE bench_results SET result = ? WHERE id = ?').run(JSON.stringify(result), result.id);
    return result.id;
  }

  /** The newest result of a kind (on one host when `hostKey` is given). */
  latest<K extends BenchKind>(kind: K, hostKey?: string): Extract<BenchResult, { kind: K }> | undefined {
    const row = (
      hostKey
        ? this.db.prepare('SELECT result FROM bench_results WHERE kind = ? AND host_key = ? ORDER BY started_at_ms DESC, id DESC LIMIT 1').get(kind, hostKey)
        : this.db.prepare('SELECT result FROM bench_results WHERE kind = ? ORDER BY started_at_ms DESC, id DESC LIMIT 1').get(kind)
    ) as { result: string } | undefined;
    return row ? (JSON.parse(row.result) as Extract<BenchResult, { kind: K }>) : undefined;
  }

  list(kind?: BenchKind): { id: number; kind: BenchKind; hostKey: string; startedAtMs: number }[] {
    const rows = (
      kind
        ? this.db.prepare('SELECT id, kind, host_key, started_at_ms FROM bench_results WHERE kind = ? ORDER BY started_at_ms').all(kind)
        : this.db.prepare('SELECT id, kind, host_key, started_at_ms FROM bench_results ORDER BY started_at_ms').all()
    ) as { id: number; kind: BenchKind; host_key: string; started_at_ms: number }[];
    return rows.map((r) => ({ id: r.id, kind: r.kind, hostKey: r.host_key, startedAtMs: r.started_at_ms }));
  }

  /** Memo of startupStats: valid while no startup result of that host was added or removed. */
  private startupMemo: { hostKey: string; measure: StartupMeasure; version: string; stats: Partial<Record<BackendKind, StartupStats>> } | null = null;

  /**
   * What the scheduler predicts start-up from: per backend, the median and p95 of the
   * newest startup result on this host that measured it. `measure`: the wall time of the
   * whole run (`total`, the default), or the time to the workload's first output
   * (`firstOutput`, what a caller waits for; the wall time where a run printed nothing).
   * Cheap to call again: the answer is kept until this host's startup results change.
   */
  startupStats(hostKey: string, opts: { measure?: StartupMeasure } = {}): Partial<Record<BackendKind, StartupStats>> {
    const measure = opts.measure ?? 'total';
    const v = this.db.prepare("SELECT COUNT(*) AS n, MAX(id) AS last FROM bench_results WHERE kind = 'startup' AND host_key = ?").get(hostKey) as { n: number; last: number | null };
    const version = `${v.n}:${v.last}`;
    const memo = this.startupMemo;
    if (memo && memo.hostKey === hostKey && memo.measure === measure && memo.version === version) return { ...memo.stats };
    const out: Partial<Record<BackendKind, StartupStats>> = {};
    // Rows are read one at a time: the newest result usually answers for every backend, and
    // this runs in every placement, so the older documents are neither fetched nor parsed.
    const rows = this.db.prepare("SELECT result FROM bench_results WHERE kind = 'startup' AND host_key = ? ORDER BY started_at_ms DESC, id DESC LIMIT 20").iterate(hostKey) as IterableIterator<{
      result: string;
    }>;
    for (const row of rows) {
      const r = JSON.parse(row.result) as StartupResult;
      for (const s of r.scenarios) {
        if (s.kind !== 'backend' || !s.backend || out[s.backend] || s.stats.n === 0) continue;
        const st = measure === 'firstOutput' && s.firstOutputStats && s.firstOutputStats.n > 0 ? s.firstOutputStats : s.stats;
        out[s.backend] = { median: st.medianMs, p95: st.p95Ms, samples: st.n };
      }
      if (BACKEND_KINDS.every((k) => out[k])) break;
    }
    this.startupMemo = { hostKey, measure, version, stats: out };
    return { ...out };
  }
}
