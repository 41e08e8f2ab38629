import type Database from 'better-sqlite3';

/**
 * A statement per SQL text, prepared once: preparing costs as much as running a small query,
 * and a run makes a dozen. The texts come from code (a few shapes each), never from input, so
 * the cache stays small.
 */
export function preparedOnce(db: Database.Database): (sql: string) => Database.Statement {
  const cache = new Map<string, Database.Statement>();
  return (sql) => {
    let st = cache.get(sql);
    if (!st) {
      st = db.prepare(sql);
      cache.set(sql, st);
    }
    return st;
  };
}
