// Result callbacks: the finished run POSTed to the caller's URL, signed, retried with
// backoff, and resumed after a restart. Only destinations the configuration allows are
// accepted at submission, so a caller cannot make the service reach arbitrary addresses.
import { createHmac } from 'node:crypto';
import { SpecError } from '../errors.js';
import type { ServiceStore } from './db.js';
import type { Run } from './schemas.js';

export const SIGNATURE_HEADER = 'x-hybridbox-signature';
export const TIMESTAMP_HEADER = 'x-hybridbox-timestamp';

/** `sha256=` + HMAC-SHA256 over "<timestamp>.<body>", as Stripe-style webhooks sign. */
export function sign(secret: string, timestamp: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

export interface CallbackOptions {
  /** host or host:port entries a callback may go to. */
  allow: string[];
  secret: string;
  /** Delays between attempts. @default [500, 1000, 2000, 4000, 8000] */
  backoffMs?: number[];
}

export function checkCallbackUrl(url: string, allow: string[]): void {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const port = u.port || (u.protocol === 'https:' ? '443' : '80');
  if (!allow.some((a) => a === host || a === `${host}:${port}`)) {
    throw new SpecError(
      'callbackUrl',
      url,
      allow.length ? `callbacks may go to ${allow.join(', ')} (the service's --callback-allow)` : 'callbacks are off: start the service with --callback-allow HOST[:PORT]',
    );
  }
}

export class Callbacks {
  private readonly timers = new Set<NodeJS.Timeout>();
  private stopped = false;

  constructor(
    private readonly store: ServiceStore,
    private readonly o: CallbackOptions,
    private readonly view: (runId: string) => Run | undefined,
  ) {}

  /** Sends a finished run's callback, if it asked for one. */
  deliver(runId: string, attempt = 0): void {
    const cb = this.store.pendingCallback(runId);
    const run = this.view(runId);
    if (!cb || !run || this.stopped) return;
    const body = JSON.stringify(run);
    const ts = String(Math.floor(Date.now() / 1000));
    fetch(cb.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', [SIGNATURE_HEADER]: sign(this.o.secret, ts, body), [TIMESTAMP_HEADER]: ts },
      body,
      signal: AbortSignal.timeout(10_000),
      redirect: 'error',
    })
      .then((r) => {
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        this.store.callbackAttempt(runId, true, null);
      })
      .catch((e: Error) => {
        this.store.callbackAttempt(runId, false, e.message);
        const backoff = this.o.backoffMs ?? [500, 1000, 2000, 4000, 8000];
        if (attempt >= backoff.length || this.stopped) return;
        const t = setTimeout(() => {
          this.timers.delete(t);
          this.deliver(runId, attempt + 1);
        }, backoff[attempt]);
        this.timers.add(t);
      });
  }

  /** Resumes what a previous process did not deliver. */
  resume(): void {
    for (const c of this.store.pendingCallbacks()) this.deliver(c.runId);
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
  }
}
