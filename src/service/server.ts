// `hybridbox serve`: the HTTP front door over the library. fastify routes, validated by the
// zod schemas of schemas.ts (which also generate /v1/openapi.json); every error is one JSON
// object naming the field; every request that starts work is recorded before it is answered.
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, jsonSchemaTransform, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import * as z from 'zod/mini';
import { HybridboxError, ImageNotFoundError, PlacementError, SpecError } from '../errors.js';
import { QueueFullError } from './admission.js';
import { allows, type Caller, LOCAL_ROOT, lookupKey, RateLimiter, type Scope } from './auth.js';
import { checkCallbackUrl } from './callbacks.js';
import { DEFAULT_LIMITS, definedOnly } from './steps.js';
import type { RunKind, ServiceStore } from './db.js';
import { IdempotencyConflictError, type RunManager } from './runs.js';
import { ErrorSchema, HealthSchema, type JudgeRequest, type Limits, JudgeRequestSchema, type Run, type RunRequest, RunRequestSchema, RunSchema, RuntimeSchema } from './schemas.js';
import type { Admission } from './admission.js';
import { parseDuration } from '../spec/units.js';

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller | null;
    startedAt: number;
  }
  interface FastifyContextConfig {
    /** The scope a route needs; absent: open (health, the OpenAPI document). */
    scope?: Scope;
    /** What the audit log calls it. */
    action?: string;
  }
}

export interface AppOptions {
  store: ServiceStore;
  runs: RunManager;
  admission: Admission;
  runtimes: () => z.output<typeof RuntimeSchema>[];
  /** Keyless requests over the unix socket act as local root (only root can reach it). */
  keylessSocket: boolean;
  callbackAllow: string[];
  /** The longest `?wait=`. @default 60000 */
  maxWaitMs?: number;
  /** Largest request body. @default 32 MiB */
  bodyLimitBytes?: number;
  version: string;
}

const MAX_WAIT_MS = 60_000;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** A limit beyond what the caller's key allows: a 400 that names the limit and the maximum. */
function quotaError(field: string, value: unknown, allowed: string): HttpError {
  return new HttpError(400, `${field}: ${JSON.stringify(value)} is beyond this key's quota; ${allowed}`, { field, value, allowed, code: 'quota' });
}

/** A zod issue's path (`/limits/memoryMiB`) as the dotted field name the error names. */
const fieldOf = (instancePath: string): string => instancePath.replace(/^\//, '').replaceAll('/', '.');

function valueAt(body: unknown, field: string): unknown {
  let v: unknown = body;
  for (const k of field.split('.').filter(Boolean)) v = v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
  if (typeof v === 'string' && v.length > 200) return `${v.slice(0, 200)}…`;
  return v;
}

export async function buildApp(o: AppOptions, server?: { https: { cert: Buffer; key: Buffer } }): Promise<FastifyInstance> {
  const app = Fastify({ ...(server ?? {}), bodyLimit: o.bodyLimitBytes ?? 32 * 1024 * 1024, logger: false, return503OnClosing: true, forceCloseConnections: true }).withTypeProvider<ZodTypeProvider>();
  // JSON only: fastify also parses text/plain by default, which would turn a wrong content type into a 400 instead of a 415.
  app.removeContentTypeParser('text/plain');
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  const limiter = new RateLimiter();

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'hybridbox', version: o.version, description: 'Run untrusted code in containers and virtual machines, with judge verdicts.' },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'an API key from `hybridbox keys create`' } } },
      security: [{ apiKey: [] }],
    },
    transform: jsonSchemaTransform,
  });

  app.decorateRequest('caller', null);
  app.decorateRequest('startedAt', 0);

  app.addHook('onRequest', async (req) => {
    req.startedAt = performance.now();
    const scope = req.routeOptions.config.scope;
    if (!scope) return;
    const auth = req.headers.authorization;
    if (!auth) {
      if (o.keylessSocket && !req.socket.remoteAddress) {
        req.caller = LOCAL_ROOT;
        return;
      }
      throw new HttpError(401, 'an API key is needed: send "Authorization: Bearer <key>" (`hybridbox keys create`)');
    }
    const m = /^Bearer\s+(\S+)$/i.exec(auth);
    const caller = m ? lookupKey(o.store, m[1]!) : undefined;
    if (!caller) throw new HttpError(401, 'the API key is not valid (revoked, mistyped, or not a key of this service)');
    if (!allows(caller.scope, scope)) throw new HttpError(403, `this key's scope is ${caller.scope}; this needs ${scope}`);
    req.caller = caller;
  });

  app.addHook('onResponse', async (req, reply) => audit(o, req, reply.statusCode, (reply.getHeader('x-run-id') as string | undefined) ?? null));

  app.setErrorHandler(async (err: unknown, req, reply) => {
    const e = err as Error & { statusCode?: number; code?: string; validation?: { instancePath: string; message: string }[] };
    if (hasZodFastifySchemaValidationErrors(e)) {
      const first = e.validation![0]!;
      const field = fieldOf(first.instancePath) || 'body';
      return reply.code(400).send({ error: `${field}: ${first.message}`, field, value: valueAt(req.body, field), allowed: first.message });
    }
    if (e instanceof HttpError) {
      for (const [k, v] of Object.entries(e.headers)) reply.header(k, v);
      return reply.code(e.status).send({ error: e.message, ...e.extra });
    }
    if (e instanceof SpecError) return reply.code(400).send({ error: e.message, field: e.field, value: e.value, allowed: e.allowed });
    if (e instanceof ImageNotFoundError)
      return reply.code(400).send({ error: e.message, field: 'image', value: e.image, allowed: "an image in the service's store, or a runtime from GET /v1/runtimes" });
    if (e instanceof PlacementError) return reply.code(400).send({ error: e.message, field: 'isolation' });
    if (e instanceof IdempotencyConflictError) return reply.code(409).send({ error: e.message, field: 'Idempotency-Key' });
    if (e instanceof QueueFullError)
      return reply
        .code(503)
        .header('retry-after', '5')
        .send({ error: `${e.message}; retry later` });
    if (e instanceof HybridboxError) return reply.code(400).send({ error: e.message });
    // fastify's own: 413 body too large, 415 content type, 400 malformed JSON, 404 route.
    if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) return reply.code(e.statusCode).send({ error: e.message });
    return reply.code(500).send({ error: 'internal error: the service could not complete this request; it is logged' });
  });
  app.setNotFoundHandler(async (req, reply) => reply.code(404).send({ error: `no such endpoint: ${req.method} ${req.url.split('?')[0]}` }));

  const errors = { 400: ErrorSchema, 401: ErrorSchema, 403: ErrorSchema, 404: ErrorSchema, 429: ErrorSchema, 503: ErrorSchema };

  app.get('/v1/health', { schema: { response: { 200: HealthSchema } } }, async () => {
    const used = o.admission.inUse;
    return {
      ok: true,
      queued: o.admission.queued,
      running: o.runs.running,
      capacity: { cpuSlots: o.admission.capacity.cpuSlots, cpuSlotsUsed: used.cpuSlots, memoryMiB: o.admission.capacity.memoryMiB, memoryMiBUsed: used.memoryMiB },
    };
  });

  app.get('/v1/openapi.json', { schema: { description: 'This document.', response: { 200: z.record(z.string(), z.unknown()) } } }, async () => app.swagger() as unknown as Record<string, unknown>);

  app.get('/v1/runtimes', { config: { scope: 'run' }, schema: { response: { 200: z.object({ runtimes: z.array(RuntimeSchema) }), ...errors } } }, async () => ({ runtimes: o.runtimes() }));

  const WaitQuery = z.strictObject({ wait: z.optional(z.string().check(z.regex(/^\d+(\.\d+)?(ms|s|m)?$/, { message: 'a duration such as 30s or 500ms' }))) });

  const submit = async (kind: RunKind, req: FastifyRequest, reply: FastifyReply, body: RunRequest | JudgeRequest): Promise<Run> => {
    const caller = req.caller!;
    // Every step's effective limits: a judge test's own limits must not lift it past the key's maxima.
    const perStep: [string, Limits][] = [
      ['limits', body.limits],
      ...('tests' in body ? body.tests.map((t, i): [string, Limits] => [`tests.${i}.limits`, { ...body.limits, ...definedOnly(t.limits) }]) : []),
    ];
    for (const [where, l] of perStep) {
      const memory = l.memoryMiB ?? DEFAULT_LIMITS.memoryMiB;
      if (caller.quota.maxMemoryMiB !== undefined && memory > caller.quota.maxMemoryMiB) {
        throw quotaError(`${where}.memoryMiB`, memory, `this key allows at most ${caller.quota.maxMemoryMiB} MiB`);
      }
      if (caller.quota.maxCpuTimeMs !== undefined && (l.cpuTimeMs === undefined || l.cpuTimeMs + (l.extraTimeMs ?? 0) > caller.quota.maxCpuTimeMs)) {
        throw quotaError(`${where}.cpuTimeMs`, l.cpuTimeMs ?? null, `this key allows at most ${caller.quota.maxCpuTimeMs} ms of CPU time (extra time included); set limits.cpuTimeMs`);
      }
    }
    if (body.callbackUrl) checkCallbackUrl(body.callbackUrl, o.callbackAllow);
    const idem = req.headers['idempotency-key'];
    if (idem !== undefined && (typeof idem !== 'string' || !/^[\x21-\x7e]{1,200}$/.test(idem)))
      throw new HttpError(400, 'Idempotency-Key: use 1-200 printable characters', { field: 'Idempotency-Key' });
    // A retry of a request already accepted is answered before the quotas: it starts nothing new.
    const replay = idem !== undefined && o.store.idempotentRun(caller.keyId ?? 'local', idem) !== undefined;
    if (!replay && caller.keyId && caller.quota.ratePerMin) {
      const r = limiter.take(caller.keyId, caller.quota.ratePerMin);
      reply.header('ratelimit-limit', String(caller.quota.ratePerMin));
      reply.header('ratelimit-remaining', String(r.remaining));
      reply.header('ratelimit-reset', String(Math.ceil(r.resetMs / 1000)));
      if (!r.ok) throw new HttpError(429, `this key may start ${caller.quota.ratePerMin} requests a minute`, { code: 'rate-limit' }, { 'retry-after': String(Math.ceil(r.resetMs / 1000)) });
    }
    if (!replay && caller.keyId && caller.quota.maxConcurrent) {
      const active = o.store.activeRuns(caller.keyId);
      if (active >= caller.quota.maxConcurrent)
        throw new HttpError(429, `this key may have ${caller.quota.maxConcurrent} runs queued or running; ${active} are`, { code: 'quota' }, { 'retry-after': '1' });
    }
    if (!replay && o.admission.queued >= o.admission.maxQueued) throw new QueueFullError(`the queue is full (${o.admission.maxQueued} runs waiting)`);
    const { row, created } = o.runs.submit(kind, body, caller.keyId, idem);
    if (body.callbackUrl && created) o.store.addCallback(row.id, body.callbackUrl);
    reply.header('x-run-id', row.id);
    if (!created) reply.header('idempotent-replayed', 'true');
    // Accept: text/event-stream: the POST answers with the run's event stream, in one round trip.
    if (String(req.headers.accept ?? '').includes('text/event-stream')) {
      streamEvents(o, req, reply, row.id, 0, { 'x-run-id': row.id });
      return undefined as unknown as Run;
    }
    const wait = (req.query as { wait?: string }).wait;
    const waitMs = wait ? Math.min(parseDuration(wait.replace(/^(\d+(\.\d+)?)$/, '$1ms'), 'wait'), o.maxWaitMs ?? MAX_WAIT_MS) : 0;
    const run = waitMs > 0 ? await waitForEnd(o, row.id, waitMs) : o.runs.view(o.store.getRun(row.id)!);
    reply.code(run.status === 'completed' || run.status === 'internal-error' ? 200 : created ? 202 : 200);
    return run;
  };

  const runResponses = { 200: RunSchema, 202: RunSchema, ...errors, 409: ErrorSchema, 413: ErrorSchema, 415: ErrorSchema };
  app.post('/v1/runs', { config: { scope: 'run', action: 'runs.create' }, schema: { body: RunRequestSchema, querystring: WaitQuery, response: runResponses } }, async (req, reply) =>
    submit('run', req, reply, req.body),
  );
  app.post('/v1/judge', { config: { scope: 'run', action: 'judge.create' }, schema: { body: JudgeRequestSchema, querystring: WaitQuery, response: runResponses } }, async (req, reply) =>
    submit('judge', req, reply, req.body),
  );

  const IdParams = z.strictObject({ id: z.string().check(z.regex(/^r[a-z0-9]{6,40}$/, { message: 'a run id' })) });
  const ownRun = (req: FastifyRequest, id: string) => {
    const row = o.store.getRun(id);
    // Another key's run is as absent as a run that never was.
    if (!row || (req.caller!.keyId !== null && req.caller!.scope !== 'admin' && row.keyId !== req.caller!.keyId)) throw new HttpError(404, `no run ${id}`, { field: 'id', value: id });
    return row;
  };

  app.get('/v1/runs/:id', { config: { scope: 'run', action: 'runs.get' }, schema: { params: IdParams, querystring: WaitQuery, response: { 200: RunSchema, ...errors } } }, async (req) => {
    const row = ownRun(req, req.params.id);
    const wait = req.query.wait;
    return wait ? waitForEnd(o, row.id, Math.min(parseDuration(wait.replace(/^(\d+(\.\d+)?)$/, '$1ms'), 'wait'), o.maxWaitMs ?? MAX_WAIT_MS)) : o.runs.view(row);
  });

  app.get(
    '/v1/runs',
    {
      config: { scope: 'run', action: 'runs.list' },
      schema: { querystring: z.strictObject({ limit: z.optional(z.coerce.number().check(z.int(), z.gte(1), z.lte(1000))) }), response: { 200: z.object({ runs: z.array(RunSchema) }), ...errors } },
    },
    async (req) => {
      const c = req.caller!;
      const rows = o.store.listRuns({ keyId: c.keyId === null || c.scope === 'admin' ? undefined : c.keyId, limit: req.query.limit ?? 100 });
      return { runs: rows.map((r) => o.runs.view(r)) };
    },
  );

  app.get(
    '/v1/runs/:id/events',
    {
      config: { scope: 'run', action: 'runs.events' },
      schema: {
        params: IdParams,
        querystring: z.strictObject({ after: z.optional(z.coerce.number().check(z.int(), z.gte(0))) }),
        description: 'Server-sent events (text/event-stream) of the run: status, step, stdout, stderr, exit, test, verdict, end. Reconnect with Last-Event-ID to resume.',
        response: errors,
      },
    },
    async (req, reply) => {
      const row = ownRun(req, req.params.id);
      const lastId = Number(req.headers['last-event-id'] ?? req.query.after ?? 0);
      if (!Number.isInteger(lastId) || lastId < 0) throw new HttpError(400, 'Last-Event-ID: give the id of the last event received', { field: 'Last-Event-ID', value: req.headers['last-event-id'] });
      streamEvents(o, req, reply, row.id, lastId);
    },
  );

  app.get(
    '/v1/audit',
    {
      config: { scope: 'admin' },
      schema: {
        querystring: z.strictObject({ limit: z.optional(z.coerce.number().check(z.int(), z.gte(1), z.lte(10_000))) }),
        response: {
          200: z.object({
            entries: z.array(z.object({ atMs: z.number(), keyId: z.nullable(z.string()), action: z.string(), target: z.nullable(z.string()), outcome: z.number(), durationMs: z.number() })),
          }),
          ...errors,
        },
      },
    },
    async (req) => ({ entries: o.store.auditLog(req.query.limit ?? 100) }),
  );

  return app;
}

/** One line of the audit table. A hijacked answer (an event stream) writes its own at its end: fastify's hooks no longer run for it. */
function audit(o: AppOptions, req: FastifyRequest, status: number, runId: string | null): void {
  const action = req.routeOptions.config.action;
  if (!action) return;
  const target = (req.params as { id?: string } | undefined)?.id ?? runId;
  o.store.audit({ keyId: req.caller?.keyId ?? null, action, target, outcome: status, durationMs: Math.round((performance.now() - req.startedAt) * 10) / 10 });
}

/**
 * A run's events as server-sent events, from after `lastId` to its end. Subscribed before
 * the replay, so an event that arrives in between is sent once (deduplicated by its id).
 */
function streamEvents(o: AppOptions, req: FastifyRequest, reply: FastifyReply, runId: string, lastId: number, headers: Record<string, string> = {}): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no', ...headers });
  let sent = lastId;
  const write = (e: { seq: number; type: string; data: unknown }) => {
    if (e.seq <= sent) return;
    sent = e.seq;
    res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e.data)}\n\n`);
  };
  const finish = () => {
    clearInterval(beat);
    unsubscribe?.();
    res.end();
  };
  const unsubscribe = o.runs.subscribe(runId, (e) => {
    if (e.type === 'closed') {
      for (const rest of o.runs.events(runId, sent)) write(rest);
      finish();
    } else write(e);
  });
  const beat = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  for (const e of o.runs.events(runId, lastId)) write(e);
  if (!unsubscribe) finish();
  // A client that goes away leaves nothing behind: its listener and timer go with it. The
  // response's close, not the request's: a POST's request closes once its body is read.
  res.on('close', () => {
    clearInterval(beat);
    unsubscribe?.();
    audit(o, req, 200, runId);
  });
}

/** The run once it has ended, or as it stands when `ms` have passed. */
async function waitForEnd(o: AppOptions, id: string, ms: number): Promise<Run> {
  await new Promise<void>((resolve) => {
    const t = setTimeout(done, ms);
    const unsubscribe = o.runs.subscribe(id, (e) => e.type === 'closed' && done());
    if (!unsubscribe) done();
    function done() {
      clearTimeout(t);
      unsubscribe?.();
      resolve();
    }
  });
  return o.runs.view(o.store.getRun(id)!);
}
