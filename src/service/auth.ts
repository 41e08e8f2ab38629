// API keys: shown once when made, stored as a SHA-256 hash only. A key has a scope and a
// quota; the quota's rate is a token bucket per key, kept in memory (a restart refills it).
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { SpecError } from '../errors.js';
import type { KeyRow, ServiceStore } from './db.js';

export const SCOPES = ['run', 'sandboxes', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

export interface KeyQuota {
  /** Runs of this key queued or running at once. */
  maxConcurrent?: number;
  /** Requests per minute that start work (POST). */
  ratePerMin?: number;
  /** The largest memory limit a run of this key may ask for. */
  maxMemoryMiB?: number;
  /** The largest CPU time limit a run of this key may ask for. */
  maxCpuTimeMs?: number;
}

/** Who is calling: a key, or a local root caller over the unix socket. */
export interface Caller {
  keyId: string | null;
  name: string;
  scope: Scope;
  quota: KeyQuota;
}

export const LOCAL_ROOT: Caller = { keyId: null, name: 'local root (unix socket)', scope: 'admin', quota: {} };

const PREFIX = 'hbx_';
const hash = (secret: string): string => createHash('sha256').update(secret).digest('hex');

export function createKey(store: ServiceStore, o: { name: string; scope: string; quota: KeyQuota }): { id: string; name: string; secret: string } {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(o.name)) throw new SpecError('name', o.name, 'use 1-63 letters, digits, _ . -, starting with a letter or digit');
  if (!(SCOPES as readonly string[]).includes(o.scope)) throw new SpecError('scope', o.scope, `one of ${SCOPES.join(', ')}`);
  if (store.listKeys().some((k) => k.name === o.name)) throw new SpecError('name', o.name, 'a key of that name exists; remove it first (`hybridbox keys rm NAME`)');
  const id = `k${randomBytes(6).toString('hex')}`;
  const secret = `${PREFIX}${randomBytes(24).toString('base64url')}`;
  store.insertKey({ id, name: o.name, hash: hash(secret), scope: o.scope, quota: o.quota as KeyRow['quota'], createdAtMs: Date.now() });
  return { id, name: o.name, secret };
}

/** The key a secret belongs to; undefined for any other string. */
export function lookupKey(store: ServiceStore, secret: string): Caller | undefined {
  if (!secret.startsWith(PREFIX) || secret.length > 128) return undefined;
  const h = hash(secret);
  const k = store.keyByHash(h);
  // The lookup is by hash already; the comparison guards against a future index that is not.
  if (!k || !timingSafeEqual(Buffer.from(k.hash), Buffer.from(h))) return undefined;
  return { keyId: k.id, name: k.name, scope: k.scope as Scope, quota: k.quota as KeyQuota };
}

/** Whether a caller's scope allows an action that needs `needed`: admin allows all. */
export const allows = (have: Scope, needed: Scope): boolean => have === 'admin' || have === needed;

/** Per-key token buckets: `ratePerMin` tokens a minute, as many in a burst. */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  /** Takes one token; says how many are left, or how long until the next. */
  take(keyId: string, ratePerMin: number, now = Date.now()): { ok: boolean; remaining: number; resetMs: number } {
    const b = this.buckets.get(keyId) ?? { tokens: ratePerMin, at: now };
    b.tokens = Math.min(ratePerMin, b.tokens + ((now - b.at) * ratePerMin) / 60_000);
    b.at = now;
    const perTokenMs = 60_000 / ratePerMin;
    if (b.tokens < 1) {
      this.buckets.set(keyId, b);
      return { ok: false, remaining: 0, resetMs: Math.ceil((1 - b.tokens) * perTokenMs) };
    }
    b.tokens -= 1;
    this.buckets.set(keyId, b);
    return { ok: true, remaining: Math.floor(b.tokens), resetMs: Math.ceil((ratePerMin - b.tokens) * perTokenMs) };
  }
}
