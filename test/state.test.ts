// State that cannot race: compare-and-set transitions, exact references, and the lock that
// keeps `image prune` and the image store's writers apart. Real SQLite, real processes.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { AmbiguousReferenceError, Hybridbox, ImageStoreBusyError } from '../src/index.js';
import { ImageStore } from '../src/images/index.js';
import { StateStore, type SandboxRecord } from '../src/store/index.js';
import { isSameProcessAlive, processStartTime } from '../src/util/proc.js';
import { freshHybridbox, hostTraces, stateOf, waitFor } from './helpers.js';

function record(id: string, name: string, state: SandboxRecord['state'] = 'exited'): SandboxRecord {
  return {
    id,
    name,
    backend: 'container',
    image: 'busybox:latest',
    imageDigest: '',
    state,
    spec: {},
    placement: {},
    runtime: {},
    createdAtMs: Date.now(),
    startedAtMs: null,
    finishedAtMs: null,
    exitCode: null,
    signal: null,
    oomKilled: false,
    timedOut: false,
    ownerPid: null,
    ownerStartTime: null,
    warnings: [],
    stateReason: null,
  };
}

function tempStore(): { store: StateStore; done: () => void } {
  const root = mkdtempSync(join(tmpdir(), 'hbx-state-'));
  const store = new StateStore(root);
  return { store, done: () => (store.close(), rmSync(root, { recursive: true, force: true })) };
}

test('a transition is compare-and-set: of two processes finishing one sandbox, one wins', (t) => {
  const { store, done } = tempStore();
  const other = new StateStore(store.root);
  store.insert(record('aaaa11112222', 'one', 'running'));
  t.true(store.transition('aaaa11112222', 'running', { state: 'exiting' }));
  t.false(other.transition('aaaa11112222', 'running', { state: 'exiting' }), 'the second finisher sees the changed state');
  t.false(other.transition('aaaa11112222', 'exiting', { state: 'exited' }, 4242), 'a wrong expected owner changes nothing');
  t.true(other.transition('aaaa11112222', 'exiting', { state: 'exited' }, null));
  t.is(store.get('aaaa11112222')!.state, 'exited');
  other.close();
  done();
});

test('references: exact id, exact name, or an unambiguous id prefix; SQL wildcards match only themselves', (t) => {
  const { store, done } = tempStore();
  store.insert(record('abc123000000', 'web_1'));
  store.insert(record('abd456000000', 'db'));
  store.insert(record('zz0000000000', 'abc123000000x'));
  t.is(store.find('abc123000000')?.name, 'web_1');
  t.is(store.find('web_1')?.id, 'abc123000000');
  t.is(store.find('abc')?.id, 'abc123000000');
  t.is(store.find('a_c'), undefined, '_ is not a wildcard');
  t.is(store.find('%'), undefined, '% is not a wildcard');
  t.is(store.find('web%'), undefined);
  t.is(store.find(''), undefined);
  const err = t.throws(() => store.find('ab'), { instanceOf: AmbiguousReferenceError });
  t.regex(err!.message, /abc123000000.*abd456000000/);
  t.notRegex(err!.message, /\n/);
  // An exact name that is also another id's prefix names that sandbox, not the prefix match.
  t.is(store.find('abc123000000x')?.id, 'zz0000000000');
  done();
});

test('image prune and the writers exclude each other', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hbx-prune-lock-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const images = new ImageStore(root);
  // A writer holds the store: prune refuses, and deletes nothing.
  const release = images.guardFromPrune();
  let inUseRead = false;
  await t.throwsAsync(
    images.prune(() => ((inUseRead = true), [])),
    { instanceOf: ImageStoreBusyError, message: /build, import, pull or sandbox start/ },
  );
  t.false(inUseRead, 'prune decided nothing while a writer held the store');
  release();
  await t.notThrowsAsync(images.prune(() => []));
  // Another process is pruning (its marker, its live pid): a writer waits until it is gone.
  const pruner = spawn('sleep', ['1.5'], { stdio: 'ignore' });
  await waitFor(() => processStartTime(pruner.pid!) !== null, 2000);
  mkdirSync(join(images.dir, 'locks'), { recursive: true });
  writeFileSync(join(images.dir, 'locks', `prune-${pruner.pid}-${processStartTime(pruner.pid!)}-test`), '');
  const exited = new Promise<void>((r) => pruner.on('exit', () => r()));
  const t0 = Date.now();
  const release2 = images.guardFromPrune();
  const waited = Date.now() - t0;
  release2();
  await exited;
  t.true(waited >= 1000, `the writer waited for the pruner (${waited} ms)`);
});

test('racing stop, stop and rm -f of one detached sandbox: one teardown, a consistent end, nothing left', async (t) => {
  const { hb, root, cleanup } = await freshHybridbox('hbx-state-race-');
  t.teardown(cleanup);
  const others = [await Hybridbox.open({ root, host: hb.host }), await Hybridbox.open({ root, host: hb.host })];
  t.teardown(() => others.forEach((o) => o.close()));
  for (let round = 0; round < 3; round++) {
    const s = await hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '30'] });
    const results = await Promise.allSettled([hb.sandboxes.stop(s.id, { graceMs: 500 }), others[0]!.sandboxes.stop(s.id, { graceMs: 500 }), others[1]!.sandboxes.list({ all: true })]);
    for (const r of results) t.is(r.status, 'fulfilled', r.status === 'rejected' ? String(r.reason) : '');
    const rec = stateOf(root).get(s.id)!;
    t.is(rec.state, 'exited', `round ${round}: ${rec.stateReason}`);
    t.is(rec.ownerPid, null);
    await Promise.allSettled([hb.sandboxes.remove(s.id, { force: true }), others[0]!.sandboxes.remove(s.id, { force: true })]);
    t.is(stateOf(root).get(s.id), undefined);
    t.deepEqual(hostTraces([s.id]), []);
    // The sandbox's monitor (its last step is `internal reap`) finds the work done and exits.
    if (s.supervisorPid !== null) t.true(await waitFor(() => !isSameProcessAlive(s.supervisorPid!, null), 15_000, 50), 'the monitor exited');
  }
});

test('a state root with a comma, quote and space runs containers; one with ":" is refused before anything is made', async (t) => {
  const { hb, root, cleanup } = await freshHybridbox('hbx-odd, "root-');
  t.teardown(cleanup);
  const r = await hb.sandboxes.run({ image: 'busybox', command: ['sh', '-c', 'echo ok > /tmp/x; cat /tmp/x; touch /made'] }, { remove: true });
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'ok\n');
  t.true(root.includes(','));
  const bad = join(tmpdir(), `hbx-colon:${process.pid}`);
  await t.throwsAsync(Hybridbox.open({ root: bad }), { message: /^root: .* without ":"/ });
  t.false(existsSync(bad), 'nothing was created');
});
