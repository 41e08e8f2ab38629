import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Hybridbox, RunResult } from '../src/index.js';
import { BridgeNetwork } from '../src/network/index.js';
import { TIMEOUT_EXIT_CODE, TIMEOUT_GRACE_MS } from '../src/runtimes/backend.js';
import { ContainerBackend } from '../src/runtimes/container/backend.js';
import type { StateStore } from '../src/store/index.js';
import { freshHybridbox, hostTraces, stateOf, waitFor } from './helpers.js';

// How containers end when something goes wrong: time limits, signals, standard input, leaks.
// Real crun, tini and cgroups on this host (run as root).

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;
let backend: ContainerBackend;
let store: StateStore;

test.before(async () => {
  ({ hb, root, cleanup } = await freshHybridbox('hbx-ctrfail-'));
  store = stateOf(root);
  backend = new ContainerBackend(hb.host, store, new BridgeNetwork(store));
});
test.after.always(async () => {
  await cleanup?.();
});

const sh = (script: string, more: Record<string, unknown> = {}) => ({ image: 'busybox', command: ['sh', '-c', script], ...more });

const ended = (state: string | undefined): boolean => state === 'exited' || state === 'crashed';

const TIMEOUT = 1000;
/** Each case: the workload, how it should end once the time limit runs out, and roughly when. */
const CASES: { title: string; spec: Record<string, unknown>; signal: string | null; stdout?: RegExp; afterGrace: boolean }[] = [
  { title: 'a workload that handles TERM and exits 0', spec: sh('trap "echo got-term; exit 0" TERM; while :; do sleep 0.1; done'), signal: null, stdout: /got-term/, afterGrace: false },
  { title: '`sleep 30` is ended by SIGTERM', spec: { image: 'busybox', command: ['sleep', '30'] }, signal: 'SIGTERM', afterGrace: false },
  { title: "`trap '' TERM; sleep 30` is ended by SIGKILL after the grace", spec: sh("trap '' TERM; sleep 30"), signal: 'SIGKILL', afterGrace: true },
];

/** The window in which a timed-out run must end, measured from its start. */
function expectedWindow(afterGrace: boolean): [number, number] {
  return afterGrace ? [TIMEOUT + TIMEOUT_GRACE_MS, TIMEOUT + TIMEOUT_GRACE_MS + 2500] : [TIMEOUT, TIMEOUT + 1500];
}

for (const c of CASES) {
  // Serial: these measure time, and concurrent sandbox set-ups on 2 cores would blur it.
  test.serial(`attached timeout: ${c.title}`, async (t) => {
    const r = await hb.sandboxes.run({ ...c.spec, timeoutMs: TIMEOUT });
    t.true(r.timedOut);
    t.is(r.exitCode, TIMEOUT_EXIT_CODE);
    t.is(r.signal, c.signal);
    if (c.stdout) t.regex(r.stdout, c.stdout);
    // From the workload's start to the result (which includes the teardown).
    const ran = r.durationMs - r.startupMs!;
    t.log(`startup ${r.startupMs} ms, then ${ran.toFixed(0)} ms to the result`);
    const [lo, hi] = expectedWindow(c.afterGrace);
    t.true(ran >= lo && ran < hi, `ended after ${ran} ms; expected ${lo}-${hi} ms`);
    const rec = store.find(r.id)!;
    t.is(rec.state, 'exited');
    t.true(rec.timedOut);
    t.is(rec.exitCode, TIMEOUT_EXIT_CODE);
    t.is(rec.signal, c.signal);
    t.deepEqual(hostTraces([r.id]), []);
    await hb.sandboxes.remove(r.id);
  });

  test.serial(`detached timeout: ${c.title}`, async (t) => {
    const d = await hb.sandboxes.runDetached({ ...c.spec, timeoutMs: TIMEOUT });
    // The reap records the end in two steps (exiting while it tears down, then exited): wait for the last.
    t.true(await waitFor(() => ended(store.find(d.id)?.state), 15_000, 50), 'the monitor recorded the end');
    const rec = store.find(d.id)!;
    t.is(rec.state, 'exited', rec.stateReason ?? '');
    t.true(rec.timedOut);
    t.is(rec.exitCode, TIMEOUT_EXIT_CODE);
    t.is(rec.signal, c.signal);
    if (c.stdout) t.regex(readFileSync(join(root, 'sandboxes', d.id, 'stdout.log'), 'utf8'), c.stdout);
    const exit = JSON.parse(readFileSync(join(root, 'sandboxes', d.id, 'exit.json'), 'utf8')) as { finishedAtMs: number };
    const ran = exit.finishedAtMs - rec.startedAtMs!;
    const [lo, hi] = expectedWindow(c.afterGrace);
    t.true(ran >= lo && ran < hi, `ended after ${ran} ms; expected ${lo}-${hi} ms`);
    t.deepEqual(hostTraces([d.id]), []);
    await hb.sandboxes.remove(d.id);
  });
}

test('attached: a time limit of 1 ms still ends the workload with SIGTERM, not SIGKILL after the grace', async (t) => {
  const results = await Promise.all(Array.from({ length: 6 }, () => hb.sandboxes.run({ image: 'busybox', command: ['sleep', '30'], timeoutMs: 1 }, { remove: true })));
  t.deepEqual(
    results.map((r) => [r.timedOut, r.exitCode, r.signal]),
    results.map(() => [true, TIMEOUT_EXIT_CODE, 'SIGTERM']),
  );
  for (const r of results) t.true(r.durationMs - r.startupMs! < TIMEOUT_GRACE_MS, `ran ${r.durationMs - r.startupMs!} ms`);
});

test('detached: a time limit of 1 ms still ends the workload with SIGTERM, not SIGKILL after the grace', async (t) => {
  const ds = await Promise.all(Array.from({ length: 4 }, () => hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '30'], timeoutMs: 1 })));
  t.true(await waitFor(() => ds.every((d) => ended(store.find(d.id)?.state)), 15_000, 50));
  const recs = ds.map((d) => store.find(d.id)!);
  t.deepEqual(
    recs.map((r) => [r.state, r.timedOut, r.exitCode, r.signal]),
    recs.map(() => ['exited', true, TIMEOUT_EXIT_CODE, 'SIGTERM']),
  );
  for (const d of ds) await hb.sandboxes.remove(d.id);
});

test('a workload that ends before its time limit is not marked timed out', async (t) => {
  const r = await hb.sandboxes.run(sh('exit 3', { timeoutMs: 5000 }));
  t.false(r.timedOut);
  t.is(r.exitCode, 3);
  t.true(r.durationMs < 4000);
  await hb.sandboxes.remove(r.id);
});

let fgSeq = 0;
/** Starts a foreground run and resolves once its workload is up, with the record the backend needs. */
async function startForeground(spec: Record<string, unknown>, stepMs = 20): Promise<{ done: Promise<RunResult>; id: string }> {
  const name = `fg-${process.pid}-${++fgSeq}`;
  const done = hb.sandboxes.run({ ...spec, name });
  const up = await waitFor(
    () => {
      const rec = store.find(name);
      return !!rec && rec.state === 'running' && !!rec.runtime.dir && existsSync(join(rec.runtime.dir as string, 'pid'));
    },
    10_000,
    stepMs,
  );
  if (!up) throw new Error('the foreground sandbox did not start');
  return { done, id: store.find(name)!.id };
}

for (const [sig, code] of [
  ['INT', 130],
  ['HUP', 129],
  ['TERM', 143],
] as const) {
  test(`signal ${sig} to a foreground \`sleep 30\` reaches the workload: exit ${code}, SIG${sig}, nothing left`, async (t) => {
    const { done, id } = await startForeground({ image: 'busybox', command: ['sleep', '30'] });
    const t0 = Date.now();
    await backend.signal(store.find(id)!, sig);
    const r = await done;
    t.is(r.exitCode, code);
    t.is(r.signal, `SIG${sig}`);
    t.false(r.timedOut);
    t.true(Date.now() - t0 < 3000);
    const rec = store.find(id)!;
    t.is(rec.state, 'exited');
    t.is(rec.signal, `SIG${sig}`);
    t.deepEqual(hostTraces([id]), []);
    await hb.sandboxes.remove(id);
  });
}

test('a signal sent the moment the sandbox has started is not lost', async (t) => {
  // The pid file appears before the init can take signals; 30 tries, 3 at a time, catch that.
  const lost: string[] = [];
  const one = async (): Promise<void> => {
    const { done, id } = await startForeground({ image: 'busybox', command: ['sleep', '30'] }, 1);
    await backend.signal(store.find(id)!, 'INT');
    // A lost signal leaves `sleep 30` running; a delivered one ends it within seconds even under load.
    const r = await Promise.race([done, new Promise<null>((res) => setTimeout(() => res(null), 15_000))]);
    if (r === null) {
      await backend.signal(store.find(id)!, 'KILL');
      await done;
    }
    if (r?.signal !== 'SIGINT') lost.push(`${id}: ${r ? r.signal : 'still running after 15 s'}`);
    await hb.sandboxes.remove(id);
  };
  for (let round = 0; round < 10; round++) await Promise.all([one(), one(), one()]);
  t.deepEqual(lost, []);
});

test('signal KILL ends the whole sandbox, also processes that ignore every other signal', async (t) => {
  const { done, id } = await startForeground(sh("trap '' INT TERM HUP; sleep 30 & sleep 30; wait"));
  for (const s of ['INT', 'TERM', 'HUP'] as const) await backend.signal(store.find(id)!, s);
  await new Promise((r) => setTimeout(r, 300));
  t.true(await backend.isAlive(store.find(id)!), 'the workload ignores INT, TERM and HUP');
  await backend.signal(store.find(id)!, 'KILL');
  const r = await done;
  t.is(r.signal, 'SIGKILL');
  t.deepEqual(hostTraces([id]), []);
  await hb.sandboxes.remove(id);
});

test('signal to a sandbox that has ended is a no-op', async (t) => {
  const r = await hb.sandboxes.run(sh('true'));
  await t.notThrowsAsync(backend.signal(store.find(r.id)!, 'TERM'));
  await hb.sandboxes.remove(r.id);
});

test('stdin: what is piped reaches the workload, with its EOF', async (t) => {
  const r = await hb.sandboxes.run({ image: 'busybox', command: ['cat'], timeoutMs: 20_000 }, { stdin: Readable.from(['hello\n', 'world\n']), remove: true });
  t.is(r.exitCode, 0, r.stderr);
  t.false(r.timedOut, 'cat saw EOF');
  t.is(r.stdout, 'hello\nworld\n');
});

test('stdin: 4 MiB pass through unchanged (back-pressure, no loss)', async (t) => {
  const data = randomBytes(4 * 1048576);
  const r = await hb.sandboxes.run(sh('sha256sum | cut -d" " -f1', { timeoutMs: 30_000 }), { stdin: Readable.from([data.subarray(0, 1048576), data.subarray(1048576)]), remove: true });
  t.is(r.exitCode, 0, r.stderr);
  const { createHash } = await import('node:crypto');
  t.is(r.stdout.trim(), createHash('sha256').update(data).digest('hex'));
});

test('stdin: a workload that exits without reading an endless stdin ends the run normally', async (t) => {
  const endless = new Readable({
    read() {
      this.push(Buffer.alloc(65536, 120));
    },
  });
  const r = await hb.sandboxes.run(sh('exit 4', { timeoutMs: 20_000 }), { stdin: endless, remove: true });
  t.is(r.exitCode, 4);
  t.false(r.timedOut);
  endless.destroy();
});

test('stdin: without one, the workload reads /dev/null (EOF at once)', async (t) => {
  const r = await hb.sandboxes.run(sh('cat; echo "rc=$?"; readlink /proc/self/fd/0', { timeoutMs: 20_000 }), { remove: true });
  t.false(r.timedOut, 'cat did not wait for input');
  t.is(r.stdout, 'rc=0\n/dev/null\n');
});

test('exec with stdin (`exec -i`): piped input reaches the command, with its EOF', async (t) => {
  const d = await hb.sandboxes.runDetached(sh('sleep 30'));
  const e = await hb.sandboxes.exec(d.id, ['sh', '-c', 'cat | tr a-z A-Z'], { stdin: Readable.from(['piped in\n']) });
  t.is(e.exitCode, 0, e.stderr);
  t.is(e.stdout, 'PIPED IN\n');
  const endless = new Readable({
    read() {
      this.push(Buffer.alloc(65536, 120));
    },
  });
  const early = await hb.sandboxes.exec(d.id, ['true'], { stdin: endless });
  t.is(early.exitCode, 0);
  endless.destroy();
  await hb.sandboxes.remove(d.id, { force: true });
  t.deepEqual(hostTraces([d.id]), []);
});

test('onEnded hands over the result before a remove tears the sandbox down; a throwing callback still leaves nothing', async (t) => {
  let seen: { result: RunResult; listed: boolean; dirThere: boolean } | null = null;
  const r = await hb.sandboxes.run(
    { image: 'busybox', command: ['sh', '-c', 'echo hi; exit 3'] },
    {
      remove: true,
      onEnded: (result) => {
        // Synchronously, before the teardown: the record and its directory are still there.
        seen = { result, listed: Boolean(store.get(result.id)), dirThere: existsSync(join(root, 'sandboxes', result.id)) };
      },
    },
  );
  t.truthy(seen);
  t.like(seen!.result, { exitCode: 3, stdout: 'hi\n', id: r.id });
  t.true(seen!.listed && seen!.dirThere);
  t.false(existsSync(join(root, 'sandboxes', r.id)));
  t.deepEqual(hostTraces([r.id]), []);

  let id = '';
  await t.throwsAsync(
    hb.sandboxes.run(
      { image: 'busybox', command: ['true'] },
      {
        remove: true,
        onEnded: (result) => {
          id = result.id;
          throw new Error('the caller failed');
        },
      },
    ),
    { message: 'the caller failed' },
  );
  t.truthy(id);
  t.false(existsSync(join(root, 'sandboxes', id)));
  t.deepEqual(hostTraces([id]), []);
});
