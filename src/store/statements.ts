import type Database from 'better-sqlite3';

/**
 * Prepared statements kept by their SQL text: preparing costs as much as running a small
 * query, and a run makes a dozen. The texts come from code (a few shapes each), never from
 * input, so the cache stays small.
 */
export class Statements {
  private readonly cache = new Map<string, Database.Statement>();

  constructor(private readonly db: Database.Database) {}

  get(sql: string): Database.Statement {
    let st = this.cache.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.cache.set(sql, st);
    }
    return st;
  }
}
