import type Database from 'better-sqlite3';
import type { BackendKind } from '../spec/schema.js';
import type { StartupStats } from '../scheduler/index.js';
import type { BenchKind, BenchResult, StartupResult } from './types.js';

const SCHEMA = `
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
export class BenchResults {
  constructor(private readonly db: Database.Database) {
    db.exec(SCHEMA);
  }

  save(result: BenchResult): number {
    const r = this.db
      .prepare('INSERT INTO bench_results (kind, host_key, started_at_ms, result) VALUES (?, ?, ?, ?)')
      .run(result.kind, result.host.key, result.startedAtMs, JSON.stringify(result));
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

  /**
   * What the scheduler predicts start-up from: per backend, the median and p95 of the
   * newest startup result on this host that measured it.
   */
  startupStats(hostKey: string): Partial<Record<BackendKind, StartupStats>> {
    const out: Partial<Record<BackendKind, StartupStats>> = {};
    const rows = this.db
      .prepare("SELECT result FROM bench_results WHERE kind = 'startup' AND host_key = ? ORDER BY started_at_ms DESC, id DESC LIMIT 20")
      .all(hostKey) as { result: string }[];
    for (const row of rows) {
      const r = JSON.parse(row.result) as StartupResult;
      for (const s of r.scenarios) {
        if (s.kind !== 'backend' || !s.backend || out[s.backend] || s.stats.n === 0) continue;
        out[s.backend] = { median: s.stats.medianMs, p95: s.stats.p95Ms, samples: s.stats.n };
      }
    }
    return out;
  }
}
