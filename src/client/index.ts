// The typed client of `hybridbox serve` (`import { Client } from 'hybridbox/client'`). It
// mirrors the library's run API over HTTP, streams with async iterators or callbacks, and
// raises one error class per failure a caller can handle. It imports no library code: only
// types, which vanish at build time, so a remote CLI loads this file alone.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import type { JudgeRequestSchema, Run, RunRequestSchema } from '../service/schemas.js';
import type * as z from 'zod/mini';

export type RunRequest = z.input<typeof RunRequestSchema>;
export type JudgeRequest = z.input<typeof JudgeRequestSchema>;
export type { Run };

export interface ClientOptions {
  /**
   * `unix:///run/hybridbox/api.sock`, `http://127.0.0.1:8080` or `https://...`.
   * @default process.env.HYBRIDBOX_HOST ?? 'unix:///run/hybridbox/api.sock'
   */
  host?: string;
  /** @default process.env.HYBRIDBOX_API_KEY (none over a root-only unix socket) */
  apiKey?: string;
  /** Per request, streams excepted. @default 120000 */
  timeoutMs?: number;
  /** Extra CA certificates (PEM) for https. */
  ca?: string | Buffer;
  /**
   * Reuse connections between requests. A one-shot caller (the CLI) turns it off, so that
   * its process does not wait on an idle pooled socket before it can exit. @default true
   */
  keepAlive?: boolean;
}

/** Anything the service answered with an error. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly body: { error?: string; field?: string; value?: unknown; allowed?: string; code?: string },
  ) {
    super(message);
    this.name = new.target.name;
  }
  get field(): string | undefined {
    return this.body.field;
  }
}
/** 401 (no key, or a key that is not valid) and 403 (a key without the scope). */
export class AuthError extends ApiError {}
/** 429 from the key's rate. */
export class RateLimitError extends ApiError {
  constructor(
    message: string,
    status: number,
    body: ApiError['body'],
    readonly retryAfterMs: number,
  ) {
    super(message, status, body);
  }
}
/** The key's quota: too many runs at once (429), or a limit beyond the key's maximum (400). */
export class QuotaError extends RateLimitError {}
export class NotFoundError extends ApiError {}
/** 400/413/415: the request itself is wrong; `field` names what. */
export class ValidationError extends ApiError {}
/** 503: the queue is full or the service is stopping; retry after `retryAfterMs`. */
export class UnavailableError extends RateLimitError {}
/** The service could not be reached at all. */
export class ConnectionError extends Error {}

export interface RunEvent {
  /** The id to resume from (Last-Event-ID). */
  id: number;
  type: 'status' | 'step' | 'stdout' | 'stderr' | 'exit' | 'test' | 'verdict' | 'end' | string;
  data: Record<string, unknown>;
}

export interface StreamOptions {
  /** Resume after this event id. @default 0 */
  lastEventId?: number;
  signal?: AbortSignal;
  /** Reconnect a dropped stream (with Last-Event-ID) this many times. @default 5 */
  reconnects?: number;
}

export class Client {
  readonly host: string;
  private readonly apiKey: string | undefined;
  private readonly timeoutMs: number;
  private readonly ca: string | Buffer | undefined;
  private readonly keepAlive: boolean;

  constructor(o: ClientOptions = {}) {
    this.host = o.host ?? process.env.HYBRIDBOX_HOST ?? 'unix:///run/hybridbox/api.sock';
    this.apiKey = o.apiKey ?? process.env.HYBRIDBOX_API_KEY;
    this.timeoutMs = o.timeoutMs ?? 120_000;
    this.ca = o.ca;
    this.keepAlive = o.keepAlive ?? true;
    if (!/^(unix:\/\/\/|https?:\/\/)/.test(this.host)) throw new TypeError(`host: ${this.host} is not unix:///PATH, http://HOST:PORT or https://HOST:PORT`);
  }

  readonly runs = {
    /** Submits a run; with `waitMs` the answer waits (bounded by the service) for its end. */
    create: (req: RunRequest, o: { waitMs?: number; idempotencyKey?: string } = {}): Promise<Run> =>
      this.json('POST', `/v1/runs${o.waitMs ? `?wait=${o.waitMs}ms` : ''}`, req, o.idempotencyKey ? { 'idempotency-key': o.idempotencyKey } : {}),
    get: (id: string, o: { waitMs?: number } = {}): Promise<Run> => this.json('GET', `/v1/runs/${encodeURIComponent(id)}${o.waitMs ? `?wait=${o.waitMs}ms` : ''}`),
    list: async (o: { limit?: number } = {}): Promise<Run[]> => (await this.json<{ runs: Run[] }>('GET', `/v1/runs${o.limit ? `?limit=${o.limit}` : ''}`)).runs,
    /** The run's events as they happen, resuming with Last-Event-ID after a dropped connection. */
    events: (id: string, o: StreamOptions = {}): AsyncIterable<RunEvent> => this.stream(id, o),
    /**
     * Submits a run and yields its events from the same request (one round trip); a dropped
     * stream is resumed from the last event on GET .../events.
     */
    submitAndStream: (req: RunRequest, o: StreamOptions = {}): AsyncIterable<RunEvent> => this.stream(null, o, req),
    /** Submits, streams its output to the callbacks, and returns the finished run. */
    run: async (req: RunRequest, o: { onStdout?: (text: string) => void; onStderr?: (text: string) => void; signal?: AbortSignal } = {}): Promise<Run> => {
      const events = this.stream(null, o.signal ? { signal: o.signal } : {}, req);
      for await (const e of events) {
        if (e.type === 'stdout') o.onStdout?.(String(e.data.text));
        if (e.type === 'stderr') o.onStderr?.(String(e.data.text));
      }
      return this.runs.get(events.runId!);
    },
  };

  /** Submits a judge request; with `waitMs` the answer waits for the verdict. */
  judge(req: JudgeRequest, o: { waitMs?: number; idempotencyKey?: string } = {}): Promise<Run> {
    return this.json('POST', `/v1/judge${o.waitMs ? `?wait=${o.waitMs}ms` : ''}`, req, o.idempotencyKey ? { 'idempotency-key': o.idempotencyKey } : {});
  }

  async runtimes(): Promise<{ name: string; version: string; aliases: string[]; image: string; compile: string[] | null; run: string[]; fileName: string }[]> {
    return (await this.json<{ runtimes: never[] }>('GET', '/v1/runtimes')).runtimes;
  }

  health(): Promise<{ ok: boolean; queued: number; running: number; capacity: Record<string, number> }> {
    return this.json('GET', '/v1/health');
  }

  openapi(): Promise<Record<string, unknown>> {
    return this.json('GET', '/v1/openapi.json');
  }

  /** One request and its JSON answer; an error status becomes its error class. */
  async json<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const res = await this.send(method, path, body, headers, this.timeoutMs);
    const text = await readAll(res);
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : {};
    } catch {
      throw new ApiError(`the service answered ${res.statusCode} with a body that is not JSON`, res.statusCode ?? 0, {});
    }
    if ((res.statusCode ?? 500) >= 400) throw toError(res, parsed as ApiError['body']);
    return parsed as T;
  }

  private async send(method: string, path: string, body: unknown, headers: Record<string, string>, timeoutMs: number | null, signal?: AbortSignal): Promise<IncomingMessage> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const h: Record<string, string> = { accept: 'application/json', ...headers };
    if (payload) {
      h['content-type'] = 'application/json';
      h['content-length'] = String(payload.length);
    }
    if (this.apiKey) h.authorization = `Bearer ${this.apiKey}`;
    const unix = this.host.startsWith('unix://');
    const url = unix ? null : new URL(path, this.host);
    // node:https (and TLS with it) loads only for an https host: a remote CLI call on the socket skips its cost.
    const https = url?.protocol === 'https:' ? await import('node:https') : null;
    return new Promise((resolve, reject) => {
      const socketPath = unix ? this.host.slice('unix://'.length) : null;
      const hostname = url ? url.hostname.replace(/^\[|\]$/g, '') : '';
      const opts = socketPath ? { socketPath, path, method, headers: h } : { hostname, port: url!.port, path: url!.pathname + url!.search, method, headers: h, ...(this.ca ? { ca: this.ca } : {}) };
      // Without keep-alive a plain connection needs no agent at all; a one-shot process (the
      // remote CLI) then skips the agent's set-up, a few ms of its start on a small host.
      const direct = this.keepAlive || https ? null : socketPath ? () => connect(socketPath) : () => connect({ host: hostname, port: Number(url!.port) || 80 });
      const req = (https ? https.request : httpRequest)({ ...opts, ...(signal ? { signal } : {}), ...(direct ? { createConnection: direct } : this.keepAlive ? {} : { agent: false }) }, resolve);
      if (timeoutMs) req.setTimeout(timeoutMs, () => req.destroy(new ConnectionError(`no answer from ${this.host} within ${timeoutMs} ms`)));
      req.on('error', (e: NodeJS.ErrnoException) =>
        reject(e instanceof ConnectionError || e.name === 'AbortError' ? e : new ConnectionError(`cannot reach the service at ${this.host}: ${e.code ?? e.message}`)),
      );
      req.end(payload);
    });
  }

  /** Events of run `id`, or of the run `submit` creates (its id then known from the answer's X-Run-Id). */
  private stream(id: string | null, o: StreamOptions, submit?: RunRequest): AsyncIterable<RunEvent> & { runId: string | null } {
    const it = { runId: id, [Symbol.asyncIterator]: () => this.streamEvents(it, o, submit) };
    return it;
  }

  private async *streamEvents(it: { runId: string | null }, o: StreamOptions, submit?: RunRequest): AsyncGenerator<RunEvent> {
    let last = o.lastEventId ?? 0;
    let reconnects = o.reconnects ?? 5;
    for (;;) {
      let res: IncomingMessage;
      try {
        if (it.runId === null) {
          // The POST itself: not retried (a retry could run it twice); its errors are the caller's.
          res = await this.send('POST', '/v1/runs', submit, { accept: 'text/event-stream' }, null, o.signal);
          if ((res.statusCode ?? 500) >= 400) throw toError(res, JSON.parse((await readAll(res)) || '{}'));
          it.runId = String(res.headers['x-run-id']);
        } else {
          res = await this.send('GET', `/v1/runs/${encodeURIComponent(it.runId)}/events`, undefined, { accept: 'text/event-stream', 'last-event-id': String(last) }, null, o.signal);
        }
      } catch (e) {
        if (e instanceof ApiError || it.runId === null) throw e;
        if (o.signal?.aborted || reconnects-- <= 0) throw e;
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      if ((res.statusCode ?? 500) >= 400) throw toError(res, JSON.parse((await readAll(res)) || '{}'));
      let ended = false;
      try {
        for await (const e of parseSse(res)) {
          last = e.id;
          yield e;
          if (e.type === 'end') ended = true;
        }
      } catch (e) {
        if (o.signal?.aborted) throw e;
      }
      // The service closes a stream at the run's end; anything else is a drop to resume from.
      if (ended || o.signal?.aborted || reconnects-- <= 0) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

async function readAll(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Server-sent events (the WHATWG format: id, event, data lines; a blank line ends one). */
async function* parseSse(res: IncomingMessage): AsyncGenerator<RunEvent> {
  let buf = '';
  let cur: { id?: number; type?: string; data: string[] } = { data: [] };
  res.setEncoding('utf8');
  for await (const chunk of res) {
    buf += chunk as string;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (cur.data.length && cur.id !== undefined) yield { id: cur.id, type: cur.type ?? 'message', data: JSON.parse(cur.data.join('\n')) };
        cur = { data: [] };
      } else if (line.startsWith(':')) continue;
      else {
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'id') cur.id = Number(value);
        else if (field === 'event') cur.type = value;
        else if (field === 'data') cur.data.push(value);
      }
    }
  }
}

function toError(res: IncomingMessage, body: ApiError['body']): ApiError {
  const status = res.statusCode ?? 0;
  const msg = body.error ?? `HTTP ${status}`;
  const retryAfterMs = Number(res.headers['retry-after'] ?? 1) * 1000;
  if (status === 401 || status === 403) return new AuthError(msg, status, body);
  if (status === 429) return body.code === 'quota' ? new QuotaError(msg, status, body, retryAfterMs) : new RateLimitError(msg, status, body, retryAfterMs);
  if (status === 503) return new UnavailableError(msg, status, body, retryAfterMs);
  if (status === 404) return new NotFoundError(msg, status, body);
  if (status === 400 && body.code === 'quota') return new QuotaError(msg, status, body, 0);
  if (status === 400 || status === 413 || status === 415) return new ValidationError(msg, status, body);
  return new ApiError(msg, status, body);
}
