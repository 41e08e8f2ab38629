import test from 'ava';
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { BootTimeoutError, SpecError, type Hybridbox } from '../src/index.js';
import { BridgeNetwork } from '../src/network/index.js';
import type { Backend } from '../src/runtimes/backend.js';
import { BackendRegistry } from '../src/runtimes/registry.js';
import { encodeFrame, FrameDecoder, type Frame } from '../src/runtimes/vm/agent/index.js';
import { BOOT_TIMEOUT_ENV, writeExit } from '../src/runtimes/vm/backend.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { QmpClient } from '../src/runtimes/vm/qmp.js';
import { ImageStore } from '../src/images/index.js';
import type { StateStore } from '../src/store/index.js';
import { CLI, freshHybridbox, stateOf, waitFor } from './helpers.js';

// How VM sandboxes fail and end: time limits, a guest that never comes up, signals, a CLI
// killed under a libvirt VM, stdin, and a control socket fed garbage. Real VMs throughout.

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;
let backends: BackendRegistry;
let store: StateStore;

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, root, cleanup } = await freshHybridbox('hbx-vmf-'));
  store = stateOf(root);
  backends = new BackendRegistry(hb.host, store, new BridgeNetwork(store), new ImageStore(root));
});
test.after.always(async () => {
  await cleanup?.();
});

const sh = (script: string, more: Record<string, unknown> = {}) => ({ image: 'busybox', command: ['sh', '-c', script], ...more });
const KINDS = ['microvm', 'vm'] as const;
const backend = (kind: string): Backend => backends.get(kind as 'microvm' | 'vm');
const sandboxDir = (id: string): string => join(root, 'sandboxes', id);

async function withBootTimeout<T>(ms: string, f: () => Promise<T>): Promise<T> {
  const saved = process.env[BOOT_TIMEOUT_ENV];
  process.env[BOOT_TIMEOUT_ENV] = ms;
  try {
    return await f();
  } finally {
    if (saved === undefined) delete process.env[BOOT_TIMEOUT_ENV];
    else process.env[BOOT_TIMEOUT_ENV] = saved;
  }
}

async function ended(id: string, ms: number): Promise<void> {
  // Ended = recorded: `exiting` is the moment in between, while the monitor tears it down.
  await waitFor(async () => ['exited', 'crashed', undefined].includes((await hb.sandboxes.list({ all: true })).find((s) => s.id === id)?.state), ms, 100);
}

test('exit.json is replaced whole: a reader that opened the old one never sees a partial new one', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hbx-atomic-'));
  const path = join(dir, 'exit.json');
  writeFileSync(path, '{"old":true}\n');
  const fd = openSync(path, 'r');
  writeExit(path, { exitCode: 0, signal: null, oomKilled: false, timedOut: false, crash: null, readyAtMs: 1, finishedAtMs: 2 });
  const buf = Buffer.alloc(64);
  const n = readSync(fd, buf, 0, 64, 0);
  closeSync(fd);
  t.is(buf.subarray(0, n).toString(), '{"old":true}\n', 'the new record went to a new file, renamed over the old');
  t.is(JSON.parse(readFileSync(path, 'utf8')).exitCode, 0);
  t.deepEqual(readdirSync(dir), ['exit.json'], 'no temporary file is left');
});

test('QMP: a QEMU that takes the connection but never greets (stopped) is given up on at the limit', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hbx-qmp-'));
  const sock = join(dir, 'qmp.sock');
  const qemu = spawn('qemu-system-x86_64', ['-machine', 'none', '-display', 'none', '-nodefaults', '-no-user-config', '-qmp', `unix:${sock},server=on,wait=off`], { stdio: 'ignore' });
  t.teardown(() => {
    qemu.kill('SIGCONT');
    qemu.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  t.true(await waitFor(() => existsSync(sock), 20_000), 'QEMU made its QMP socket');
  const live = await QmpClient.connect(sock, 20_000);
  t.is((await live.execute<{ status: string }>('query-status')).status, 'running');
  live.close();
  qemu.kill('SIGSTOP');
  const t0 = performance.now();
  await t.throwsAsync(QmpClient.connect(sock, 500), { message: /QEMU did not answer on .* within 500 ms/ });
  t.true(performance.now() - t0 < 3000, `${Math.round(performance.now() - t0)} ms`);
});

for (const kind of KINDS) {
  test.serial(`${kind}: the time limit counts from the workload's start, ends it with TERM, and is never a crash`, async (t) => {
    // Started at boot, a 3 s limit would not leave this workload its 2 s (a boot takes >1 s here).
    const quick = await hb.sandboxes.run(sh('sleep 2; echo finished', { isolation: kind, timeoutMs: 3000 }), { remove: true });
    t.is(quick.stdout, 'finished\n');
    t.is(quick.exitCode, 0);
    t.false(quick.timedOut);

    const r = await hb.sandboxes.run(sh('echo started; exec sleep 30', { isolation: kind, timeoutMs: 3000 }));
    t.is(r.crash, null);
    t.true(r.timedOut);
    t.is(r.exitCode, 124);
    t.is(r.signal, 'SIGTERM');
    t.is(r.stdout, 'started\n');
    const afterStart = r.durationMs - r.startupMs!;
    t.true(afterStart >= 3000 && afterStart < 3000 + 3000, `${afterStart} ms from the workload's start to the result`);
    t.log(`${kind}: --timeout 3s of sleep 30: ${Math.round(r.durationMs)} ms in all, startup ${r.startupMs} ms`);
    const rec = store.find(r.id)!;
    t.is(rec.state, 'exited');
    t.true(rec.timedOut);
    t.is(rec.stateReason, 'stopped: its time limit ran out');
    await hb.sandboxes.remove(r.id);
  });
}

test.serial('microvm: a workload that ignores TERM at its time limit gets KILL after the grace period', async (t) => {
  const r = await hb.sandboxes.run(sh('trap "" TERM; echo up; while :; do sleep 0.1; done', { isolation: 'microvm', timeoutMs: 2000 }), { remove: true });
  t.is(r.crash, null);
  t.true(r.timedOut);
  t.is(r.exitCode, 124);
  t.is(r.signal, 'SIGKILL');
  const afterStart = r.durationMs - r.startupMs!;
  t.true(afterStart >= 2000 + 2000 && afterStart < 2000 + 2000 + 3000, `${afterStart} ms`);
});

test.serial('microvm: a detached VM keeps its time limit with nobody watching', async (t) => {
  const d = await hb.sandboxes.runDetached(sh('exec sleep 60', { isolation: 'microvm', timeoutMs: 2000 }));
  await ended(d.id, 20_000);
  const rec = store.find(d.id)!;
  t.is(rec.state, 'exited');
  t.true(rec.timedOut);
  t.is(rec.exitCode, 124);
  t.is(rec.signal, 'SIGTERM');
  t.is(rec.stateReason, 'stopped: its time limit ran out');
  await hb.sandboxes.remove(d.id);
});

test.serial('microvm: a hung guest fails the run with BootTimeoutError, not as the workload timing out', async (t) => {
  const before = new Set(existsSync(join(root, 'sandboxes')) ? readdirSync(join(root, 'sandboxes')) : []);
  let frozen: number | null = null;
  const run = withBootTimeout('3000', () => hb.sandboxes.run(sh('echo never', { isolation: 'microvm', timeoutMs: 60_000 })));
  // Freeze QEMU as soon as it is up (pid file and agent socket): the guest then prints
  // nothing, as a hung one does.
  await waitFor(
    () => {
      for (const id of existsSync(join(root, 'sandboxes')) ? readdirSync(join(root, 'sandboxes')) : []) {
        if (before.has(id)) continue;
        const pidFile = join(sandboxDir(id), 'qemu.pid');
        if (!existsSync(pidFile) || !existsSync(join(sandboxDir(id), 'agent.sock'))) continue;
        const pid = Number(readFileSync(pidFile, 'utf8').trim());
        if (pid > 0) {
          process.kill(pid, 'SIGSTOP');
          frozen = pid;
          return true;
        }
      }
      return false;
    },
    30_000,
    2,
  );
  t.truthy(frozen);
  const t0 = Date.now();
  const e = await t.throwsAsync(run, { instanceOf: BootTimeoutError });
  t.regex(e!.message, /did not come up within 3 s/);
  t.true(Date.now() - t0 < 15_000, 'a frozen QEMU is still ended promptly');
  t.false(existsSync(`/proc/${frozen}`) && !readFileSync(`/proc/${frozen}/stat`, 'utf8').includes(') Z'), 'the frozen QEMU is gone');
  const rec = store.list().find((r) => !before.has(r.id) && r.backend === 'microvm')!;
  t.is(rec.state, 'crashed');
  t.false(rec.timedOut);
  t.regex(rec.stateReason ?? '', /did not come up within 3 s/);
  await hb.sandboxes.remove(rec.id);
});

test.serial('vm: the boot limit is its own failure, attached and detached; a bad limit is refused up front', async (t) => {
  await withBootTimeout('200', async () => {
    const e = await t.throwsAsync(hb.sandboxes.run(sh('echo never', { isolation: 'vm', name: 'hung-fg' })), { instanceOf: BootTimeoutError });
    t.regex(e!.message, /did not come up within 0\.2 s/);
    const fg = store.find('hung-fg')!;
    t.is(fg.state, 'crashed');
    t.regex(fg.stateReason ?? '', /did not come up within 0\.2 s/);
    const d = await t.throwsAsync(hb.sandboxes.runDetached(sh('echo never', { isolation: 'vm', name: 'hung-bg' })), { instanceOf: BootTimeoutError });
    t.regex(d!.message, /did not come up within 0\.2 s/);
    const bg = store.find('hung-bg')!;
    await ended(bg.id, 20_000);
    t.regex(store.find(bg.id)!.stateReason ?? '', /did not come up within 0\.2 s/);
    t.false(store.find(bg.id)!.timedOut);
    for (const r of [fg, bg]) await hb.sandboxes.remove(r.id);
  });
  const count = store.list().length;
  await withBootTimeout('soon', async () => {
    const e = await t.throwsAsync(hb.sandboxes.run(sh('true', { isolation: 'microvm' })), { instanceOf: SpecError });
    t.regex(e!.message, new RegExp(`^${BOOT_TIMEOUT_ENV}: "soon" is not valid`));
  });
  t.is(store.list().length, count, 'nothing was created');
});

test.serial('microvm: INT and HUP reach the workload through the agent; KILL ends the VM as a kill, not a crash', async (t) => {
  const b = backend('microvm');
  const d = await hb.sandboxes.runDetached(sh('trap "echo got-HUP" HUP; trap "echo got-INT; exit 7" INT; echo started; while :; do sleep 0.1; done', { isolation: 'microvm' }));
  const rec = store.find(d.id)!;
  const logs = (): string => readFileSync(b.logPaths(rec).stdout, 'utf8');
  t.true(await waitFor(() => logs().includes('started'), 10_000));
  await b.signal(rec, 'HUP');
  t.true(await waitFor(() => logs().includes('got-HUP'), 10_000), logs());
  t.true(await b.isAlive(rec), 'HUP was trapped: the workload runs on');
  await b.signal(rec, 'INT');
  await ended(d.id, 20_000);
  t.is(logs(), 'started\ngot-HUP\ngot-INT\n');
  t.is(store.find(d.id)!.exitCode, 7);
  await hb.sandboxes.remove(d.id);

  const k = await hb.sandboxes.runDetached(sh('exec sleep 60', { isolation: 'microvm' }));
  const krec = store.find(k.id)!;
  await b.signal(krec, 'KILL');
  t.false(await b.isAlive(krec));
  await ended(k.id, 20_000);
  const killed = store.find(k.id)!;
  t.is(killed.state, 'exited', killed.stateReason ?? '');
  t.is(killed.signal, 'SIGKILL');
  await hb.sandboxes.remove(k.id);
});

test.serial('vm: TERM to a foreground run reaches its workload', async (t) => {
  const b = backend('vm');
  let seen = '';
  const run = hb.sandboxes.run(sh('echo up; exec sleep 60', { isolation: 'vm', name: 'fg-term' }), { remove: true, onStdout: (c) => (seen += c) });
  t.true(await waitFor(() => seen === 'up\n', 90_000, 50));
  await b.signal(store.find('fg-term')!, 'TERM');
  const r = await run;
  t.is(r.crash, null);
  t.false(r.timedOut);
  t.is(r.signal, 'SIGTERM');
  t.is(r.stdout, 'up\n');
});

test.serial('microvm: a signal sent while the guest boots waits for the workload instead of being lost', async (t) => {
  const b = backend('microvm');
  const c = await hb.sandboxes.create(sh('exec sleep 60', { isolation: 'microvm' }));
  const rec = store.find(c.id)!;
  const t0 = Date.now();
  const attached = await b.runAttached(rec, { sink: { onStdout: () => undefined, onStderr: () => undefined } });
  await b.signal(rec, 'TERM');
  const x = await attached.exited;
  t.is(x.signal, 'SIGTERM');
  t.is(x.crash, undefined);
  t.true(Date.now() - t0 < 30_000);
  await b.teardown(rec);
  await hb.sandboxes.remove(c.id);
});

for (const kind of KINDS) {
  test.serial(`${kind}: stdin reaches the workload, with its EOF`, async (t) => {
    const r = await hb.sandboxes.run({ image: 'busybox', command: ['cat'], isolation: kind }, { remove: true, stdin: Readable.from([Buffer.from('hel'), Buffer.from('lo\n')]) });
    t.is(r.crash, null);
    t.is(r.exitCode, 0, r.stderr);
    t.is(r.stdout, 'hello\n');
  });
}

test.serial('vm: a foreground libvirt VM dies with its CLI, with no further hybridbox call', async (t) => {
  const name = `lv-victim-${process.pid}`;
  const child = spawn('node', [CLI, 'run', '--name', name, '--isolation', 'vm', 'busybox', '--', 'sleep', '60'], {
    env: { ...process.env, HYBRIDBOX_ROOT: root },
    stdio: 'ignore',
  });
  t.true(await waitFor(() => existsSync(join(sandboxDir(store.find(name)?.id ?? 'none'), 'ready.json')), 90_000, 100), 'the VM came up');
  const id = store.find(name)!.id;
  const domain = `hbx-${id}`;
  const listed = async (): Promise<boolean> => (await execa('virsh', ['-c', 'qemu:///system', 'list', '--name'])).stdout.split('\n').includes(domain);
  const qemu = async (): Promise<boolean> => (await execa('ps', ['-eo', 'args'])).stdout.includes(`guest=${domain}`);
  t.true(await listed());
  const t0 = Date.now();
  child.kill('SIGKILL');
  const gone = await waitFor(async () => !(await listed()) && !(await qemu()), 10_000, 50);
  const ms = Date.now() - t0;
  t.true(gone, 'domain and QEMU are gone');
  t.log(`libvirt VM gone ${ms} ms after kill -9 of its CLI`);
  t.true(ms < 5000, `${ms} ms`);
  await hb.sandboxes.remove(id, { force: true });
});

/** Sends `bytes` on a fresh connection to the control socket and collects the frames until it closes. */
function ctlExchange(sock: string, bytes: Buffer): Promise<Frame[]> {
  return new Promise((resolve, reject) => {
    const s = connect(sock);
    const d = new FrameDecoder();
    const frames: Frame[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no close after ${bytes.toString('hex').slice(0, 40)}`));
    }, 10_000);
    s.on('data', (c: Buffer) => frames.push(...d.push(c)));
    s.on('error', reject);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(frames);
    });
    s.write(bytes);
  });
}

test.serial('microvm: garbage on the control socket gets an F frame and leaves exec working; exec passes stdin', async (t) => {
  const d = await hb.sandboxes.runDetached(sh('exec sleep 300', { isolation: 'microvm' }));
  const sock = join(sandboxDir(d.id), 'ctl.sock');
  const oversized = Buffer.from(encodeFrame('S', 0, '{}'));
  oversized.writeUInt32BE(0x7fffffff, 6);
  const cases: [string, Buffer][] = [
    ['bad JSON in S', encodeFrame('S', 0, '{"argv": [')],
    ['S that is not a session', encodeFrame('S', 0, '{"argv": 5}')],
    ['bad JSON in K', encodeFrame('K', 0, 'not json')],
    ['unknown type', encodeFrame('Z', 0, '{}')],
    ['garbage bytes', Buffer.from('GET / HTTP/1.1\r\n\r\n')],
    ['oversized length', oversized],
  ];
  for (const [what, bytes] of cases) {
    const frames = await ctlExchange(sock, bytes);
    t.is(frames.length, 1, what);
    t.is(frames[0]?.type, 'F', what);
    t.truthy(JSON.parse(frames[0]!.payload.toString()).message, what);
  }
  const e = await hb.sandboxes.exec(d.id, ['sh', '-c', 'echo alive; cat'], { stdin: Readable.from(['piped\n']) });
  t.is(e.exitCode, 0);
  t.is(e.stdout, 'alive\npiped\n');
  t.is(store.find(d.id)!.state, 'running');
  await hb.sandboxes.remove(d.id, { force: true });
});
