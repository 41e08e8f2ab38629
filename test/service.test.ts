// `hybridbox serve` over real HTTP on 127.0.0.1 and a unix socket, with real sandboxes.
// Every answer is checked against the service's own OpenAPI document.
import test from 'ava';
import { createHmac } from 'node:crypto';
import { createServer, request, type IncomingHttpHeaders } from 'node:http';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthError, Client, type RunRequest, NotFoundError, QuotaError, RateLimitError, ValidationError } from '../src/client/index.js';
import { createKey, type Service, ServiceStore, startService } from '../src/service/index.js';
import { ensureRuntimeImages, type Hybridbox } from '../src/index.js';
import { BIN, CLI, freshHybridbox, hostTraces } from './helpers.js';
import { watchAnswers } from './support/answers.js';
import { OpenApiChecker } from './support/openapi.js';
import { readMountinfo } from '../src/util/mountinfo.js';

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;
let svc: Service;
let base: string;
const answers = watchAnswers();
let keys: Record<'run' | 'sandboxes' | 'admin' | 'other' | 'limited' | 'rate', string>;
const sandboxIds = new Set<string>();

test.before(async () => {
  ({ hb, root, cleanup } = await freshHybridbox('hbx-svc-'));
  await ensureRuntimeImages(hb);
  const store = new ServiceStore(root);
  const mk = (name: string, scope: string, quota = {}) => createKey(store, { name, scope, quota }).secret;
  keys = {
    run: mk('runner', 'run'),
    sandboxes: mk('sessions', 'sandboxes'),
    admin: mk('admin', 'admin'),
    other: mk('other', 'run'),
    limited: mk('limited', 'run', { maxConcurrent: 1, maxMemoryMiB: 128, maxCpuTimeMs: 5000 }),
    rate: mk('rate', 'run', { ratePerMin: 3 }),
  };
  store.close();
  svc = await startService({ hb, listen: '127.0.0.1:0', callbackAllow: ['127.0.0.1'], version: 'test', extend: answers.extend });
  base = svc.address;
  const doc = (await call('GET', '/v1/openapi.json')).body;
  const loaded = await OpenApiChecker.load(doc);
  if (!loaded.valid) throw new Error(`the OpenAPI document is not valid: ${JSON.stringify(loaded.errors)}`);
});

test.after.always(async () => {
  await svc?.close();
  await cleanup?.();
});

// Last: every answer the service gave, to any test through any path, matched the document.
test.after('every answer the service sent matched its OpenAPI document', () => {
  answers.assertClean();
});

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: any;
  text: string;
}

/** One raw request (its answer is checked against the OpenAPI document by `answers`). */
function call(method: string, path: string, o: { key?: string | null; body?: unknown; raw?: string | Buffer; headers?: Record<string, string> } = {}): Promise<Answer> {
  const url = new URL(path, base);
  const payload = o.raw !== undefined ? Buffer.from(o.raw) : o.body !== undefined ? Buffer.from(JSON.stringify(o.body)) : undefined;
  const headers: Record<string, string> = { ...(payload && o.raw === undefined ? { 'content-type': 'application/json' } : {}), ...(o.headers ?? {}) };
  const key = o.key === undefined ? keys?.run : o.key;
  if (key) headers.authorization = `Bearer ${key}`;
  return new Promise((resolve, reject) => {
    const req = request({ hostname: url.hostname, port: url.port, path: url.pathname + url.search, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let body: unknown = null;
        try {
          body = JSON.parse(text);
        } catch {
          /* not JSON: the test says so */
        }
        const a = { status: res.statusCode!, headers: res.headers, body, text };
        if (body && typeof body === 'object') collectIds(body);
        resolve(a);
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

function collectIds(run: any): void {
  for (const s of [run.result, run.judge?.compile, ...(run.judge?.tests ?? [])]) if (s?.sandboxId) sandboxIds.add(s.sandboxId);
}

const sh = (script: string, extra: Partial<RunRequest> = {}): RunRequest => ({ image: 'busybox', command: ['sh', '-c', script], isolation: 'container', ...extra });

test.serial('the OpenAPI document is valid OpenAPI 3.1 and names every route', async (t) => {
  const doc = (await call('GET', '/v1/openapi.json', { key: null })).body;
  t.is(doc.openapi, '3.1.0');
  for (const p of ['/v1/runs', '/v1/runs/{id}', '/v1/runs/{id}/events', '/v1/judge', '/v1/runtimes', '/v1/health']) t.truthy(doc.paths[p], p);
  t.truthy(doc.paths['/v1/runs'].post.requestBody);
});

test.serial('a run: placed with reasons, its output, exit code and verdict; nothing left on the host', async (t) => {
  const a = await call('POST', '/v1/runs?wait=30s', { body: sh('echo out; echo err >&2; exit 3') });
  t.is(a.status, 200, a.text);
  t.is(a.body.status, 'completed');
  t.is(a.body.placement.backend, 'container');
  t.true(a.body.placement.reasons.length > 0);
  t.like(a.body.result, { verdict: 'runtime-error', exitCode: 3, stdout: 'out\n', stderr: 'err\n', message: 'exited with code 3' });
  t.true(a.body.result.cpuMs !== null && a.body.result.peakMemoryBytes > 0);
  const again = await call('GET', `/v1/runs/${a.body.id}`);
  t.deepEqual(again.body.result, a.body.result);
  t.deepEqual(hostTraces([a.body.result.sandboxId]), []);
});

test.serial('untrusted by default: a run without isolation is placed behind a VM boundary, and says why', async (t) => {
  const a = await call('POST', '/v1/runs?wait=60s', { body: { image: 'busybox', command: ['sh', '-c', 'uname -r; echo $HOME'] } });
  t.is(a.status, 200, a.text);
  t.is(a.body.placement.backend, 'microvm');
  t.regex(a.body.placement.reasons.join(' '), /untrusted/);
  t.is(a.body.result.verdict, 'accepted');
});

test.serial("the service's environment does not reach a workload", async (t) => {
  process.env.HBX_SERVICE_SECRET = 'do-not-leak';
  const a = await call('POST', '/v1/runs?wait=30s', { body: sh('env; cat /proc/1/environ | tr "\\0" "\\n"', { env: { MINE: 'yes' } }) });
  delete process.env.HBX_SERVICE_SECRET;
  t.is(a.body.result.verdict, 'accepted', a.text);
  t.notRegex(a.body.result.stdout, /do-not-leak/);
  t.regex(a.body.result.stdout, /MINE=yes/);
});

test.serial('judge (shell): accepted, wrong-answer, runtime-error, wall-time-limit and memory-limit, each with its measures', async (t) => {
  const a = await call('POST', '/v1/judge?wait=60s', {
    body: {
      image: 'busybox',
      isolation: 'container',
      run: ['sh', '-c', 'read a b; case $a in s) sleep 5;; m) x=a; while :; do x="$x$x"; done;; e) exit 7;; esac; echo $((a+b))'],
      tests: [
        { stdin: '1 2\n', expected: '3\n' },
        { stdin: '2 2\n', expected: '5\n' },
        { stdin: 'e 0\n', expected: '' },
        { stdin: 's 0\n', expected: '', limits: { wallTimeMs: 1000 } },
        { stdin: 'm 0\n', expected: '', limits: { memoryMiB: 32 } },
        { stdin: '40 2\n', expected: '42   \n\n' },
      ],
    },
  });
  t.is(a.status, 200, a.text);
  const v = a.body.judge.tests.map((x: { verdict: string }) => x.verdict);
  t.deepEqual(v, ['accepted', 'wrong-answer', 'runtime-error', 'wall-time-limit', 'memory-limit', 'accepted']);
  t.is(a.body.judge.verdict, 'wrong-answer');
  t.is(a.body.judge.tests[2].exitCode, 7);
  for (const x of a.body.judge.tests) t.true(x.wallMs > 0 && x.peakMemoryBytes > 0, JSON.stringify(x));
  t.true(a.body.judge.tests[4].peakMemoryBytes <= 33 * 1024 * 1024);
  t.deepEqual(hostTraces(a.body.judge.tests.map((x: { sandboxId: string }) => x.sandboxId)), []);
});

test.serial('judge: compile-error stops before the tests; stopOnFirstFailure; the float checker', async (t) => {
  const ce = await call('POST', '/v1/judge?wait=30s', {
    body: { image: 'busybox', isolation: 'container', compile: ['sh', '-c', 'echo "main.c:1: error" >&2; exit 1'], run: ['true'], tests: [{ expected: '' }] },
  });
  t.is(ce.body.judge.verdict, 'compile-error');
  t.is(ce.body.judge.tests.length, 0);
  t.regex(ce.body.judge.compile.stderr, /main\.c:1: error/);
  const stop = await call('POST', '/v1/judge?wait=30s', {
    body: { image: 'busybox', isolation: 'container', run: ['echo', 'x'], tests: [{ expected: 'y' }, { expected: 'x' }], stopOnFirstFailure: true },
  });
  t.is(stop.body.judge.tests.length, 1);
  const fl = await call('POST', '/v1/judge?wait=30s', {
    body: { image: 'busybox', isolation: 'container', run: ['echo', '3.1415927 2'], checker: { kind: 'float', epsilon: 1e-4 }, tests: [{ expected: '3.14159 2.00001' }, { expected: '3.2 2' }] },
  });
  t.deepEqual(
    fl.body.judge.tests.map((x: { verdict: string }) => x.verdict),
    ['accepted', 'wrong-answer'],
  );
  // A compile step writes into the box that the tests then read.
  const built = await call('POST', '/v1/judge?wait=30s', {
    body: {
      image: 'busybox',
      isolation: 'container',
      files: [{ path: 'src/a.sh', content: 'echo built' }],
      compile: ['sh', '-c', 'cp src/a.sh prog && chmod +x prog'],
      run: ['./prog'],
      tests: [{ expected: 'built\n' }],
    },
  });
  t.is(built.body.judge.verdict, 'accepted', built.text);
});

test.serial('judge: a custom checker runs sandboxed, reads input, expected and actual, and decides', async (t) => {
  // Accepts any output whose number is within 1 of the expected one (a checker a built-in one cannot express).
  const checker = 'read e < /judge/expected; read a < /judge/actual; d=$((a - e)); [ "$d" -ge -1 ] && [ "$d" -le 1 ] && exit 0; echo "off by $d"; exit 1\n';
  const a = await call('POST', '/v1/judge?wait=60s', {
    body: {
      image: 'busybox',
      isolation: 'container',
      run: ['sh', '-c', 'read x; echo $((x + 1))'],
      checker: { kind: 'custom', runtime: 'shell', source: checker },
      tests: [
        { stdin: '5\n', expected: '5' },
        { stdin: '9\n', expected: '5' },
      ],
    },
  });
  t.is(a.status, 200, a.text);
  t.deepEqual(
    a.body.judge.tests.map((x: { verdict: string; message: string | null }) => [x.verdict, x.message]),
    [
      ['accepted', null],
      ['wrong-answer', 'off by 5'],
    ],
  );
  const broken = await call('POST', '/v1/judge?wait=60s', {
    body: { image: 'busybox', isolation: 'container', run: ['echo', '1'], checker: { kind: 'custom', runtime: 'shell', source: 'exit 3' }, tests: [{ expected: '1' }] },
  });
  t.is(broken.body.status, 'internal-error');
  t.regex(broken.body.reason, /custom checker failed/);
});

test.serial('auth: no key 401, a bad key 401, the wrong scope 403, another key sees 404; every request is audited', async (t) => {
  t.is((await call('POST', '/v1/runs', { key: null, body: sh('true') })).status, 401);
  t.is((await call('POST', '/v1/runs', { key: 'hbx_nope', body: sh('true') })).status, 401);
  const forbidden = await call('POST', '/v1/runs', { key: keys.sandboxes, body: sh('true') });
  t.is(forbidden.status, 403);
  t.regex(forbidden.body.error, /scope is sandboxes/);
  const mine = await call('POST', '/v1/runs?wait=30s', { body: sh('echo mine') });
  t.is((await call('GET', `/v1/runs/${mine.body.id}`, { key: keys.other })).status, 404);
  t.is((await call('GET', `/v1/runs/${mine.body.id}`, { key: keys.admin })).status, 200);
  const listed = await call('GET', '/v1/runs', { key: keys.other });
  t.false(listed.body.runs.some((r: { id: string }) => r.id === mine.body.id));
  const audit = await call('GET', '/v1/audit?limit=50', { key: keys.admin });
  t.true(audit.body.entries.some((e: { action: string; outcome: number }) => e.action === 'runs.create' && e.outcome === 401));
  t.true(audit.body.entries.some((e: { action: string; target: string }) => e.action === 'runs.create' && e.target === mine.body.id));
  t.is((await call('GET', '/v1/audit', { key: keys.run })).status, 403);
  // An event stream is audited too, once it ends.
  await new Client({ host: base, apiKey: keys.run }).runs.events(mine.body.id)[Symbol.asyncIterator]().next();
  await new Promise((r) => setTimeout(r, 200));
  const again = await call('GET', '/v1/audit?limit=20', { key: keys.admin });
  t.true(again.body.entries.some((e: { action: string; target: string }) => e.action === 'runs.events' && e.target === mine.body.id));
});

test.serial('quotas: a limit over the key maximum is a 400 naming it; a second concurrent run and the rate are 429 with Retry-After', async (t) => {
  const over = await call('POST', '/v1/runs', { key: keys.limited, body: sh('true', { limits: { memoryMiB: 512, cpuTimeMs: 1000 } }) });
  t.is(over.status, 400);
  t.is(over.body.field, 'limits.memoryMiB');
  t.regex(over.body.error, /at most 128 MiB/);
  const sneaky = await call('POST', '/v1/judge', {
    key: keys.limited,
    body: { image: 'busybox', run: ['true'], limits: { memoryMiB: 64, cpuTimeMs: 1000 }, tests: [{ expected: '', limits: { memoryMiB: 4096 } }] },
  });
  t.is(sneaky.status, 400, 'a test cannot lift its memory past the key maximum');
  t.is(sneaky.body.field, 'tests.0.limits.memoryMiB');
  const first = await call('POST', '/v1/runs', { key: keys.limited, body: sh('sleep 2', { limits: { memoryMiB: 64, cpuTimeMs: 1000 } }), headers: { 'idempotency-key': 'q-1' } });
  t.is(first.status, 202, first.text);
  const retried = await call('POST', '/v1/runs', { key: keys.limited, body: sh('sleep 2', { limits: { memoryMiB: 64, cpuTimeMs: 1000 } }), headers: { 'idempotency-key': 'q-1' } });
  t.is(retried.status, 200, 'a retry of the running request is answered, not refused by the concurrency quota');
  t.is(retried.body.id, first.body.id);
  const second = await call('POST', '/v1/runs', { key: keys.limited, body: sh('true', { limits: { memoryMiB: 64, cpuTimeMs: 1000 } }) });
  t.is(second.status, 429);
  t.truthy(second.headers['retry-after']);
  await call('GET', `/v1/runs/${first.body.id}?wait=30s`, { key: keys.limited });
  const client = new Client({ host: base, apiKey: keys.rate });
  for (let i = 0; i < 3; i++) await client.runs.create(sh('true'));
  const e = await t.throwsAsync(client.runs.create(sh('true')), { instanceOf: RateLimitError });
  t.true(e!.retryAfterMs > 0);
  const q = await t.throwsAsync(new Client({ host: base, apiKey: keys.limited }).runs.create(sh('true', { limits: { memoryMiB: 999, cpuTimeMs: 10 } })), { instanceOf: QuotaError });
  t.is(q!.field, 'limits.memoryMiB');
  await t.throwsAsync(new Client({ host: base }).runs.create(sh('true')), { instanceOf: AuthError });
  await t.throwsAsync(new Client({ host: base, apiKey: keys.run }).runs.get('rdoesnotexist'), { instanceOf: NotFoundError });
  const ra = await call('POST', '/v1/runs', { key: keys.rate, body: sh('true') });
  t.is(ra.status, 429);
  t.is(ra.headers['ratelimit-remaining'], '0');
});

/** Until the service has nothing queued or running (earlier tests leave runs finishing). */
async function idle(): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const h = (await call('GET', '/v1/health', { key: null })).body;
    if (h.queued === 0 && h.running === 0 && h.capacity.cpuSlotsUsed === 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the service did not become idle');
}

test.serial('bad input: a JSON error naming the field (400), 413, 415, malformed JSON; nothing is created', async (t) => {
  await idle();
  const before = (await hb.sandboxes.list({ all: true })).length;
  const cases: [unknown, string][] = [
    [{ image: 'busybox' }, 'command'],
    [{ image: 'busybox', command: ['x'], limits: { memoryMiB: 1 } }, 'limits.memoryMiB'],
    [{ image: 'busybox', command: ['x'], limits: { wallTimeMs: -1 } }, 'limits.wallTimeMs'],
    [{ image: 'no-such-image', command: ['x'] }, 'image'],
    [{ image: 'busybox', command: ['x'], files: [{ path: '../etc/passwd', content: 'x' }] }, 'files.0.path'],
    [{ image: 'busybox', command: ['x'], files: [{ path: '/abs', content: 'x' }] }, 'files.0.path'],
    [{ image: 'busybox', command: ['x'], isolation: 'teleport' }, 'isolation'],
    [
      {
        image: 'busybox',
        command: ['x'],
        files: [
          { path: 'a', content: '' },
          { path: 'a', content: '' },
        ],
      },
      'files.1.path',
    ],
    [
      {
        image: 'busybox',
        command: ['x'],
        files: [
          { path: 'a', content: '' },
          { path: 'a/b', content: '' },
        ],
      },
      'files.1.path',
    ],
    [{ image: 'busybox', command: ['x'], callbackUrl: 'http://10.1.2.3/hook' }, 'callbackUrl'],
    [{ image: 'busybox', command: ['x'], surprise: 1 }, 'body'],
    [{ image: 'busybox', command: ['x'], env: { 'BAD NAME': 'x' } }, 'env.BAD NAME'],
  ];
  for (const [body, field] of cases) {
    const a = await call('POST', '/v1/runs', { body });
    t.is(a.status, 400, `${JSON.stringify(body)} → ${a.text}`);
    t.is(typeof a.body.error, 'string');
    t.false(a.text.includes('    at '), 'no stack trace');
    if (field !== 'body') t.is(a.body.field, field, a.text);
  }
  t.is((await call('POST', '/v1/runs', { raw: '{"image": ', headers: { 'content-type': 'application/json' } })).status, 400);
  t.is((await call('POST', '/v1/runs', { raw: 'echo hi', headers: { 'content-type': 'text/plain' } })).status, 415);
  t.is(
    (await call('POST', '/v1/runs', { raw: JSON.stringify({ image: 'busybox', command: ['x'], stdin: 'x'.repeat(33 * 1024 * 1024) }), headers: { 'content-type': 'application/json' } })).status,
    413,
  );
  t.is((await call('GET', '/v1/runs/rnosuchrun1')).status, 404);
  t.is((await call('GET', '/v1/nothing')).status, 404);
  const e = await t.throwsAsync(new Client({ host: base, apiKey: keys.run }).runs.create({ image: 'busybox', command: ['x'], limits: { pids: 0 } }), { instanceOf: ValidationError });
  t.is(e!.field, 'limits.pids');
  t.is((await hb.sandboxes.list({ all: true })).length, before);
});

test.serial('idempotency: a retried POST with the same key returns the same run and runs it once', async (t) => {
  const body = sh('echo once');
  const a = await call('POST', '/v1/runs', { body, headers: { 'idempotency-key': 'retry-1' } });
  const b = await call('POST', '/v1/runs', { body, headers: { 'idempotency-key': 'retry-1' } });
  t.is(a.body.id, b.body.id);
  t.is(b.headers['idempotent-replayed'], 'true');
  const other = await call('POST', '/v1/runs', { key: keys.other, body, headers: { 'idempotency-key': 'retry-1' } });
  t.not(other.body.id, a.body.id, "one key's idempotency keys are its own");
  const conflict = await call('POST', '/v1/runs', { body: sh('echo another'), headers: { 'idempotency-key': 'retry-1' } });
  t.is(conflict.status, 409);
  t.is(conflict.body.field, 'Idempotency-Key');
});

test.serial('events: SSE in order, resumed with Last-Event-ID; the client streams with an async iterator and callbacks', async (t) => {
  const client = new Client({ host: base, apiKey: keys.run });
  const r = await client.runs.create(sh('for i in 1 2 3 4; do echo line$i; sleep 0.2; done; echo bye >&2'));
  const seen: string[] = [];
  let lastId = 0;
  for await (const e of client.runs.events(r.id)) {
    seen.push(e.type);
    if (e.type === 'stdout' && String(e.data.text).includes('line2')) {
      lastId = e.id;
      break;
    }
  }
  // Resume from the middle: nothing before lastId again, everything after it.
  const rest: string[] = [];
  for await (const e of client.runs.events(r.id, { lastEventId: lastId })) {
    t.true(e.id > lastId);
    if (e.type === 'stdout') rest.push(String(e.data.text));
    seen.push(e.type);
  }
  t.deepEqual(rest.join('').trim().split('\n'), ['line3', 'line4']);
  t.deepEqual(seen.slice(0, 3), ['status', 'status', 'step']);
  t.deepEqual(seen.slice(-3), ['exit', 'verdict', 'end']);
  let out = '';
  let err = '';
  const done = await client.runs.run(sh('echo streamed; echo e >&2'), { onStdout: (s) => (out += s), onStderr: (s) => (err += s) });
  t.is(out, 'streamed\n');
  t.is(err, 'e\n');
  t.is(done.result?.verdict, 'accepted');
});

test.serial('a client that disconnects mid-stream leaks nothing: the run completes and its sandbox is gone', async (t) => {
  const a = await call('POST', '/v1/runs', { body: sh('for i in $(seq 1 10); do echo $i; sleep 0.1; done') });
  await new Promise<void>((resolve) => {
    const url = new URL(`/v1/runs/${a.body.id}/events`, base);
    const req = request({ hostname: url.hostname, port: url.port, path: url.pathname, headers: { authorization: `Bearer ${keys.run}` } }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.end();
  });
  const done = await call('GET', `/v1/runs/${a.body.id}?wait=30s`);
  t.is(done.body.status, 'completed');
  t.is(done.body.result.stdout.trim().split('\n').length, 10);
  t.deepEqual(hostTraces([done.body.result.sandboxId]), []);
});

test.serial('callbacks: signed with HMAC-SHA256 over the timestamp and body, retried after a failure', async (t) => {
  const got: { body: string; sig: string; ts: string }[] = [];
  let fails = 1;
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (fails-- > 0) {
        res.writeHead(500).end();
        return;
      }
      got.push({ body, sig: String(req.headers['x-hybridbox-signature']), ts: String(req.headers['x-hybridbox-timestamp']) });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const a = await call('POST', '/v1/runs', { body: sh('echo hook', { callbackUrl: `http://127.0.0.1:${port}/done` }) });
  const deadline = Date.now() + 20_000;
  while (!got.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  server.close();
  t.is(got.length, 1);
  const secret = (await import('node:fs')).readFileSync(join(root, 'service-callback.key'), 'utf8').trim();
  t.is(got[0]!.sig, `sha256=${createHmac('sha256', secret).update(`${got[0]!.ts}.${got[0]!.body}`).digest('hex')}`);
  const run = JSON.parse(got[0]!.body);
  t.is(run.id, a.body.id);
  t.is(run.result.stdout, 'hook\n');
});

test.serial('capacity: runs beyond the CPU slots wait, with their queue position and why', async (t) => {
  const slots = svc.app ? ((await call('GET', '/v1/health')).body.capacity.cpuSlots as number) : 0;
  const ids: string[] = [];
  for (let i = 0; i < slots + 2; i++) ids.push((await call('POST', '/v1/runs', { body: sh('sleep 1.5') })).body.id);
  const waiting = await call('GET', `/v1/runs/${ids[ids.length - 1]}`);
  t.is(waiting.body.status, 'queued');
  t.is(waiting.body.queuePosition, 2);
  t.regex(waiting.body.reason, /waiting for capacity/);
  t.regex(waiting.body.placement.reasons.join(' '), /It waits: .*waiting for capacity/);
  const health = await call('GET', '/v1/health', { key: null });
  t.is(health.body.capacity.cpuSlotsUsed, slots);
  for (const id of ids) t.is((await call('GET', `/v1/runs/${id}?wait=60s`)).body.status, 'completed');
});

test.serial('load: 300 runs from 30 concurrent clients, containers and microVMs, some failing on purpose; every run accounted for, health answers', async (t) => {
  const client = new Client({ host: base, apiKey: keys.admin });
  const health: number[] = [];
  let stop = false;
  const prober = (async () => {
    while (!stop) {
      const t0 = performance.now();
      await client.health();
      health.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const outcomes: string[] = [];
  let n = 0;
  await Promise.all(
    Array.from({ length: 30 }, async () => {
      for (let i = 0; i < 10; i++) {
        const k = n++;
        const vm = k % 10 === 0;
        const fail = k % 7 === 0;
        const req: RunRequest = { image: 'busybox', command: ['sh', '-c', fail ? 'exit 1' : 'echo ok'], isolation: vm ? 'microvm' : 'container' };
        const r = await client.runs.create(req, { waitMs: 60_000 });
        const done = r.status === 'completed' || r.status === 'internal-error' ? r : await client.runs.get(r.id, { waitMs: 60_000 });
        outcomes.push(`${done.status}:${done.result?.verdict}:${fail}`);
        if (done.result) sandboxIds.add(done.result.sandboxId);
      }
    }),
  );
  stop = true;
  await prober;
  t.is(outcomes.length, 300);
  t.true(
    outcomes.every((o) => o === 'completed:accepted:false' || o === 'completed:runtime-error:true'),
    [...new Set(outcomes)].join(' '),
  );
  health.sort((a, b) => a - b);
  const p99 = health[Math.floor(health.length * 0.99)]!;
  t.log(`/v1/health during the load: ${health.length} probes, p50 ${health[Math.floor(health.length / 2)]!.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms`);
  t.true(p99 < 1000, `health p99 ${p99} ms`);
  t.deepEqual(hostTraces(sandboxIds), []);
  t.deepEqual(await hb.sandboxes.list({ all: true }), []);
});

test.serial('one service per state root: a second one is refused while the first lives', async (t) => {
  const err = await t.throwsAsync(startService({ hb, listen: '127.0.0.1:0', version: 'test' }));
  t.regex(err!.message, /another hybridbox serve \(pid \d+\) uses the state root/);
  t.is((await call('GET', '/v1/health', { key: null })).status, 200, 'the first one is untouched');
});

test.serial('over the unix socket: mode 0660, a local root caller needs no key', async (t) => {
  const { hb: hb2, cleanup: c2 } = await freshHybridbox('hbx-svc-unix-');
  const sock = join(mkdtempSync(join(tmpdir(), 'hbx-sock-')), 'api.sock');
  const s2 = await startService({ hb: hb2, listen: sock, version: 'test', extend: answers.extend });
  try {
    const { statSync } = await import('node:fs');
    t.is(statSync(sock).mode & 0o777, 0o660);
    const client = new Client({ host: `unix://${sock}` });
    const r = await client.runs.create(sh('echo local'), { waitMs: 30_000 });
    t.is(r.result?.stdout, 'local\n');
  } finally {
    await s2.close();
    await c2();
  }
  t.deepEqual(readdirSync(join(sock, '..')), []);
});

/** `hybridbox serve` as its own process, on a free loopback port; resolves once it listens. */
async function serveProcess(root: string, extra: string[] = []): Promise<{ child: import('node:child_process').ChildProcess; url: string }> {
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', ...extra], { env: { ...process.env, HYBRIDBOX_ROOT: root }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (c) => {
      err += c;
      const m = /listening on (\S+)/.exec(err);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${err}`)));
  });
  return { child, url };
}

test.serial('kill -9 of the service with runs queued and running: after a restart every accepted run ends, and the host is clean', async (t) => {
  const { hb: hb3, root: root3, cleanup: c3 } = await freshHybridbox('hbx-svc-kill-');
  const store = new ServiceStore(root3);
  const key = createKey(store, { name: 'k', scope: 'run', quota: {} }).secret;
  store.close();
  let s = await serveProcess(root3);
  try {
    const client = new Client({ host: s.url, apiKey: key });
    const slots = (await client.health()).capacity.cpuSlots!;
    const ids: string[] = [];
    for (let i = 0; i < slots + 2; i++) ids.push((await client.runs.create(sh('echo started; sleep 30'))).id);
    // Wait until the first ones run (their sandboxes exist), then kill the service outright.
    const deadline = Date.now() + 20_000;
    while ((await hb3.sandboxes.list()).length < slots && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const live = (await hb3.sandboxes.list()).map((x) => x.id);
    t.is(live.length, slots);
    s.child.kill('SIGKILL');
    await new Promise((r) => s.child.once('exit', r));
    s = await serveProcess(root3);
    const after = new Client({ host: s.url, apiKey: key });
    const ends = await Promise.all(ids.map((id) => after.runs.get(id, { waitMs: 60_000 })));
    t.deepEqual(
      ends.map((r) => r.status),
      [...Array(slots).fill('internal-error'), 'completed', 'completed'],
    );
    t.regex(ends[0]!.reason ?? '', /service stopped while this run was in flight/);
    t.deepEqual(hostTraces(live), []);
    t.deepEqual(
      (await hb3.sandboxes.list({ all: true })).filter((x) => x.state === 'running'),
      [],
    );
  } finally {
    // A graceful stop unmounts the work tmpfs that the killed one left (and the restart reused).
    const exited = new Promise((r) => s.child.once('exit', r));
    s.child.kill('SIGTERM');
    await exited;
    t.false(
      readMountinfo().some((m) => m.mountPoint.startsWith(root3)),
      'no mount left under the state root',
    );
    await c3();
  }
});

test.serial('a full queue answers 503 with Retry-After; TLS on TCP', async (t) => {
  const { hb: hb4, root: root4, cleanup: c4 } = await freshHybridbox('hbx-svc-q-');
  const dir = mkdtempSync(join(tmpdir(), 'hbx-tls-'));
  const { execFileSync } = await import('node:child_process');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
    { stdio: 'ignore' },
  );
  const { readFileSync } = await import('node:fs');
  const s4 = await startService({
    hb: hb4,
    listen: '127.0.0.1:0',
    tls: { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') },
    maxQueued: 1,
    cpuOvercommit: 0.5,
    version: 'test',
    extend: answers.extend,
  });
  try {
    t.regex(s4.address, /^https:\/\/127\.0\.0\.1:\d+$/);
    const store = new ServiceStore(root4);
    const key = createKey(store, { name: 'q', scope: 'run', quota: {} }).secret;
    store.close();
    const client = new Client({ host: s4.address, apiKey: key, ca: readFileSync(join(dir, 'cert.pem')) });
    // One slot (2 cores x 0.5): one run holds it, one waits, the third finds the queue full.
    const a = await client.runs.create(sh('sleep 1'));
    const b = await client.runs.create(sh('true'));
    const e = await t.throwsAsync(client.runs.create(sh('true')), { instanceOf: (await import('../src/client/index.js')).UnavailableError });
    t.true(e!.retryAfterMs > 0);
    t.is((await client.runs.get(b.id)).status, 'queued');
    for (const r of [a, b]) t.is((await client.runs.get(r.id, { waitMs: 30_000 })).status, 'completed');
  } finally {
    await s4.close();
    await c4();
  }
});

test.serial('the CLI through the service: run streams and exits with the code; judge prints a verdict table; a bad key is one line', async (t) => {
  const { execa } = await import('execa');
  const env = { ...process.env, HYBRIDBOX_API_KEY: keys.run };
  // The installed command answers remote calls itself; the ESM entry (dist/cli.js) does too.
  const r = await execa(process.execPath, [BIN, '--host', base, 'run', '--isolation', 'container', '-e', 'A=b', 'busybox', 'sh', '-c', 'echo out $A; echo err >&2; exit 4'], { env, reject: false });
  t.is(r.exitCode, 4);
  t.is(r.stdout, 'out b');
  t.is(r.stderr, 'err');
  // It exits as soon as the verdict is in: all of a large output still arrives, through a pipe.
  const big = await execa(process.execPath, [BIN, '--host', base, 'run', '--isolation', 'container', 'busybox', 'seq', '1', '100000'], { env, reject: false, stripFinalNewline: false });
  t.is(big.exitCode, 0, big.stderr);
  t.is(big.stdout.length, 588895);
  t.true(big.stdout.endsWith('99999\n100000\n'));
  // Every other command goes on to the local CLI.
  t.regex((await execa(process.execPath, [BIN, '--version'])).stdout, /^\d+\.\d+\.\d+$/);
  const local = await execa(process.execPath, [BIN, '--host', base, 'ps'], { reject: false });
  t.is(local.exitCode, 125);
  t.regex(local.stderr, /--host works with run and judge; ps runs locally only/);
  const slow = await execa(process.execPath, [CLI, '--host', base, 'run', '--isolation', 'container', '--timeout', '300ms', 'busybox', 'sleep', '5'], { env, reject: false });
  t.is(slow.exitCode, 124);
  t.regex(slow.stderr, /wall-time-limit: still running after 300 ms/);
  const dir = mkdtempSync(join(tmpdir(), 'hbx-judge-'));
  const { writeFileSync } = await import('node:fs');
  writeFileSync(join(dir, '1.in'), '1 2\n');
  writeFileSync(join(dir, '1.out'), '3\n');
  writeFileSync(join(dir, '2.in'), '2 2\n');
  writeFileSync(join(dir, '2.out'), '5\n');
  writeFileSync(join(dir, 'sum.sh'), 'read a b; echo $((a+b))\n');
  const j = await execa(process.execPath, [BIN, '--host', base, 'judge', '--image', 'busybox', '--isolation', 'container', '--tests', dir, '--run', 'sh sum.sh', join(dir, 'sum.sh')], {
    env,
    reject: false,
  });
  t.is(j.exitCode, 1, j.stderr);
  t.regex(j.stdout, /^1\s+accepted/m);
  t.regex(j.stdout, /^2\s+wrong-answer/m);
  t.regex(j.stdout, /verdict: wrong-answer \(container\)/);
  const bad = await execa(process.execPath, [BIN, '--host', base, 'run', 'busybox', 'true'], { env: { ...process.env, HYBRIDBOX_API_KEY: 'hbx_wrong' }, reject: false });
  t.is(bad.exitCode, 125);
  t.is(bad.stderr.split('\n').length, 1);
  t.regex(bad.stderr, /API key is not valid/);
});

// One program per language that does, by its input, each thing a judge must tell apart.
const PROGRAMS: Record<string, { runtime: string; file: string; source: string; compileError: string }> = {
  c: {
    runtime: 'c',
    file: 'main.c',
    compileError: 'int main( { return 0; }',
    source: `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) {
  char c[16]; long a, b;
  if (scanf("%15s", c) != 1) return 2;
  if (!strcmp(c, "cpu")) for (volatile long i = 0;; i++);
  if (!strcmp(c, "sleep")) { sleep(10); return 0; }
  if (!strcmp(c, "mem")) { for (;;) { char *p = malloc(1 << 20); if (!p) return 9; memset(p, 1, 1 << 20); } }
  if (!strcmp(c, "out")) for (;;) fputs("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\n", stdout);
  if (!strcmp(c, "file")) { FILE *f = fopen("/tmp/f", "w"); for (int i = 0; i < 4096; i++) fwrite(c, 1, 1024, f); fclose(f); return 0; }
  if (!strcmp(c, "crash")) return 3;
  if (!strcmp(c, "wrong")) { puts("0"); return 0; }
  a = atol(c); if (scanf("%ld", &b) != 1) return 2;
  printf("%ld\\n", a + b);
  return 0;
}
`,
  },
  python: {
    runtime: 'python',
    file: 'main.py',
    compileError: '',
    // CPython ignores SIGXFSZ (a write past the limit is then an OSError); this program asks for the default.
    source: `import sys, time, signal
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
a = sys.stdin.readline().split()
c = a[0]
if c == 'cpu':
    while True: pass
elif c == 'sleep': time.sleep(10)
elif c == 'mem':
    x = []
    while True: x.append(bytearray(1 << 20))
elif c == 'out':
    while True: sys.stdout.write('x' * 1000)
elif c == 'file':
    with open('/tmp/f', 'wb') as f: f.write(b'x' * (4 << 20))
elif c == 'crash': sys.exit(3)
elif c == 'wrong': print(0)
else: print(int(a[0]) + int(a[1]))
`,
  },
  shell: {
    runtime: 'shell',
    file: 'main.sh',
    compileError: '',
    source: `read c b
case $c in
  cpu) while :; do :; done ;;
  sleep) sleep 10 ;;
  mem) x=a; while :; do x="$x$x"; done ;;
  out) while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done ;;
  file) head -c 4194304 /dev/zero > /tmp/f ;;
  crash) exit 3 ;;
  wrong) echo 0 ;;
  *) echo $((c + b)) ;;
esac
`,
  },
};

const VERDICT_TESTS = [
  { stdin: '1 2\n', expected: '3\n', verdict: 'accepted' },
  { stdin: 'wrong\n', expected: '3\n', verdict: 'wrong-answer' },
  { stdin: 'crash\n', expected: '', verdict: 'runtime-error' },
  { stdin: 'cpu\n', expected: '', verdict: 'time-limit', limits: { cpuTimeMs: 500, wallTimeMs: 15_000 } },
  { stdin: 'sleep\n', expected: '', verdict: 'wall-time-limit', limits: { wallTimeMs: 1000, cpuTimeMs: 5000 } },
  { stdin: 'mem\n', expected: '', verdict: 'memory-limit', limits: { memoryMiB: 48, wallTimeMs: 15_000 } },
  { stdin: 'out\n', expected: '', verdict: 'output-limit', limits: { outputBytes: 10_000 } },
  { stdin: 'file\n', expected: '', verdict: 'file-size-limit', limits: { fileSizeBytes: 1024 * 1024 } },
];

test.serial('GET /v1/runtimes lists the shipped runtimes with the versions their images hold', async (t) => {
  const a = await call('GET', '/v1/runtimes');
  const names = a.body.runtimes.map((r: { name: string }) => r.name);
  for (const n of ['shell', 'c', 'cpp', 'python', 'node']) t.true(names.includes(n), n);
  for (const r of a.body.runtimes) t.regex(r.version, /^\d+(\.\d+)+/);
  const bad = await call('POST', '/v1/runs', { body: { runtime: 'cobol', files: [{ path: 'x', content: 'x' }] } });
  t.is(bad.status, 400);
  t.is(bad.body.field, 'runtime');
  const noFile = await call('POST', '/v1/runs', { body: { runtime: 'c', files: [{ path: 'other.c', content: 'x' }] } });
  t.is(noFile.body.field, 'files');
});

for (const backend of ['container', 'microvm'] as const) {
  for (const lang of ['c', 'python', 'shell'] as const) {
    test.serial(`every verdict from a ${lang} program on ${backend === 'container' ? 'a container' : 'a microVM'}`, async (t) => {
      const p = PROGRAMS[lang]!;
      const a = await call('POST', '/v1/judge?wait=60s', {
        body: { runtime: p.runtime, isolation: backend, files: [{ path: p.file, content: p.source }], tests: VERDICT_TESTS.map(({ verdict: _v, ...x }) => x) },
      });
      t.is(a.status, 200, a.text);
      const got = a.body.judge.tests.map((x: { verdict: string }) => x.verdict);
      t.deepEqual(
        got,
        VERDICT_TESTS.map((x) => x.verdict),
        JSON.stringify(a.body.judge.tests.map((x: Record<string, unknown>) => [x.verdict, x.message, x.exitCode, x.signal, x.cpuMs])),
      );
      t.is(a.body.placement.backend, backend);
      const cpu = a.body.judge.tests[3];
      t.true(cpu.cpuMs >= 500 && cpu.cpuMs < 2000, `cpu ${cpu.cpuMs}`);
      for (const x of a.body.judge.tests.slice(0, 3)) t.true(x.peakMemoryBytes > 0 && x.cpuMs !== null, JSON.stringify(x));
      t.log(`${lang} on ${backend}: ${a.body.judge.tests.map((x: { verdict: string; cpuMs: number; wallMs: number }) => `${x.verdict} ${x.cpuMs}/${x.wallMs} ms`).join(', ')}`);
      if (p.compileError) {
        const ce = await call('POST', '/v1/judge?wait=60s', {
          body: { runtime: p.runtime, isolation: backend, files: [{ path: p.file, content: p.compileError }], tests: [{ stdin: '', expected: '' }] },
        });
        t.is(ce.body.judge.verdict, 'compile-error');
        t.regex(ce.body.judge.compile.stderr, /error/);
      }
      t.deepEqual(hostTraces([...a.body.judge.tests.map((x: { sandboxId: string }) => x.sandboxId)]), []);
    });
  }
}
