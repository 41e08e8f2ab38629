// Checks every answer a service sends, whoever asked (raw calls, the client, the CLI, attack
// tests), against the service's own OpenAPI document: an onSend hook on its app sees each
// status and body as it leaves. A mismatch is kept, not thrown, so the caller still gets
// the answer and the test that owns the service fails at its end with all of them.
import type { FastifyInstance } from 'fastify';
import { OpenApiChecker } from './openapi.js';

export interface AnswerWatch {
  /** Pass as ServiceOptions.extend. */
  extend: (app: FastifyInstance) => void;
  /** Answers checked so far (JSON bodies against their schema; streams by status). */
  readonly checked: number;
  readonly violations: string[];
  /** Throws with every violation, or when nothing was checked at all. */
  assertClean(): void;
}

export function watchAnswers(): AnswerWatch {
  let checker: Promise<OpenApiChecker> | null = null;
  const violations: string[] = [];
  let checked = 0;
  const watch: AnswerWatch = {
    extend(app) {
      app.addHook('onSend', async (req, reply, payload) => {
        // Not a route of the document (fastify's own 404 for an unknown path).
        if (!req.routeOptions.url) return payload;
        checker ??= OpenApiChecker.load(app.swagger()).then((l) => {
          if (!l.valid) violations.push(`the OpenAPI document is not valid: ${JSON.stringify(l.errors)}`);
          return l.checker;
        });
        const c = await checker;
        const type = String(reply.getHeader('content-type') ?? '');
        let body: unknown = null;
        if (typeof payload === 'string' || Buffer.isBuffer(payload)) {
          if (type.startsWith('application/json')) {
            try {
              body = JSON.parse(payload.toString());
            } catch {
              violations.push(`${req.method} ${req.url} ${reply.statusCode}: a JSON content type with a body that is not JSON`);
              return payload;
            }
          } else if (payload.length > 0) violations.push(`${req.method} ${req.url} ${reply.statusCode}: a body of type "${type}"`);
        }
        try {
          // A stream (server-sent events) is checked by its status, its events by the tests that read them.
          c.check(req.method, req.url, reply.statusCode, body, { bodyless: body === null });
          checked++;
        } catch (e) {
          violations.push((e as Error).message);
        }
        return payload;
      });
    },
    get checked() {
      return checked;
    },
    violations,
    assertClean() {
      if (violations.length) throw new Error(`${violations.length} answers do not match the OpenAPI document:\n${violations.slice(0, 20).join('\n')}`);
      if (checked === 0) throw new Error('no answer was checked against the OpenAPI document');
    },
  };
  return watch;
}
