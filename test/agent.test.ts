import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  AgentClient,
  AgentClosedError,
  AgentError,
  FrameDecoder,
  HEADER_SIZE,
  MAX_PAYLOAD,
  decodeJsonPayload,
  encodeFrame,
  encodeJsonFrame,
  type Frame,
  type SessionExit,
  type SessionSpec,
} from '../src/runtimes/vm/agent/index.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';

// ---- codec -----------------------------------------------------------------------------

const frameBytes = (...frames: Buffer[]): Buffer => Buffer.concat(frames);
const simple = (f: Frame): { type: string; session: number; payload: string } => ({ type: f.type, session: f.session, payload: f.payload.toString('latin1') });

test('codec: a frame round-trips with the documented header layout', (t) => {
  const f = encodeFrame('O', 0x1234, Buffer.from('hello'));
  t.deepEqual([...f.subarray(0, HEADER_SIZE)], [0x48, 0x42, 0x4f, 0, 0x12, 0x34, 0, 0, 0, 5]);
  const d = new FrameDecoder();
  t.deepEqual(d.push(f).map(simple), [{ type: 'O', session: 0x1234, payload: 'hello' }]);
  t.is(d.pendingBytes, 0);
});

test('codec: empty, binary, JSON and maximal payloads round-trip, several per chunk', (t) => {
  const binary = randomBytes(4096);
  const max = randomBytes(MAX_PAYLOAD);
  const all = frameBytes(encodeFrame('C', 7), encodeFrame('E', 65535, binary), encodeJsonFrame('X', 3, { exitCode: 0, signal: null, oomKilled: false }), encodeFrame('O', 1, max));
  const frames = new FrameDecoder().push(all);
  t.is(frames.length, 4);
  t.deepEqual(
    frames.map((f) => [f.type, f.session, f.payload.length]),
    [
      ['C', 7, 0],
      ['E', 65535, 4096],
      ['X', 3, 46],
      ['O', 1, MAX_PAYLOAD],
    ],
  );
  t.true(frames[1]!.payload.equals(binary));
  t.true(frames[3]!.payload.equals(max));
  t.deepEqual(decodeJsonPayload(frames[2]!), { exitCode: 0, signal: null, oomKilled: false });
  t.is(decodeJsonPayload({ type: 'F', session: 0, payload: Buffer.from('[1]') }), null);
  t.is(decodeJsonPayload({ type: 'F', session: 0, payload: Buffer.from('{bad') }), null);
});

test('codec: frames split at every byte boundary decode the same', (t) => {
  const stream = frameBytes(encodeFrame('R', 0, '{"kernel":"6.1"}'), encodeFrame('O', 2, 'HBHBHB'), encodeFrame('Q', 0));
  for (let cut = 1; cut < stream.length; cut++) {
    const d = new FrameDecoder();
    const frames = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    t.deepEqual(frames.map(simple), [
      { type: 'R', session: 0, payload: '{"kernel":"6.1"}' },
      { type: 'O', session: 2, payload: 'HBHBHB' },
      { type: 'Q', session: 0, payload: '' },
    ]);
  }
  const d = new FrameDecoder();
  const oneByOne = [...stream].flatMap((b) => d.push(Buffer.from([b])));
  t.is(oneByOne.length, 3);
  t.is(d.skippedBytes, 0);
});

test('codec: a large frame arriving in tiny pieces is assembled once', (t) => {
  const payload = randomBytes(MAX_PAYLOAD);
  const stream = encodeFrame('O', 9, payload);
  const d = new FrameDecoder();
  const frames: Frame[] = [];
  for (let i = 0; i < stream.length; i += 16) frames.push(...d.push(stream.subarray(i, i + 16)));
  t.is(frames.length, 1);
  t.true(frames[0]!.payload.equals(payload));
});

test('codec: garbage before, between and inside fake headers is skipped to the next magic', (t) => {
  const noise = Buffer.from('login: \r\n\x00\xffH\x07HB\x01xx');
  const badReserved = Buffer.from([0x48, 0x42, 0x4f, 1, 0, 0, 0, 0, 0, 0]);
  const badType = Buffer.from([0x48, 0x42, 0x61, 0, 0, 0, 0, 0, 0, 0]);
  const stream = frameBytes(noise, encodeFrame('R', 0, '{}'), badReserved, badType, Buffer.from('HHH'), encodeFrame('X', 1, '{}'), Buffer.from('H'));
  const d = new FrameDecoder();
  t.deepEqual(d.push(stream).map(simple), [
    { type: 'R', session: 0, payload: '{}' },
    { type: 'X', session: 1, payload: '{}' },
  ]);
  t.is(d.skippedBytes, noise.length + badReserved.length + badType.length + 3);
  t.is(d.pendingBytes, 1, 'a trailing H may start the next frame');
  t.deepEqual(d.push(Buffer.from('B')), []);
  t.deepEqual(d.push(encodeFrame('Q', 0).subarray(2)).map(simple), [{ type: 'Q', session: 0, payload: '' }]);
});

test('codec: oversize payloads are refused by the encoder and skipped by the decoder', (t) => {
  t.throws(() => encodeFrame('O', 0, Buffer.alloc(MAX_PAYLOAD + 1)), { instanceOf: RangeError });
  t.throws(() => encodeFrame('o', 0), { instanceOf: RangeError });
  t.throws(() => encodeFrame('O', 65536), { instanceOf: RangeError });
  const huge = Buffer.from([0x48, 0x42, 0x4f, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
  const justOver = Buffer.from([0x48, 0x42, 0x4f, 0, 0, 1, 0, 1, 0, 1]);
  const d = new FrameDecoder();
  const frames = d.push(frameBytes(huge, justOver, encodeFrame('E', 1, 'ok')));
  t.deepEqual(frames.map(simple), [{ type: 'E', session: 1, payload: 'ok' }]);
  t.is(d.pendingBytes, 0, 'an oversize header must not make the decoder wait for its payload');
  const small = new FrameDecoder(8);
  t.deepEqual(
    small.push(frameBytes(encodeFrame('O', 0, '123456789'), encodeFrame('O', 0, '12345678'))).map((f) => f.payload.toString()),
    ['12345678'],
  );
});

// ---- initramfs -----------------------------------------------------------------------------

const isRoot = process.getuid?.() === 0;
const haveMusl = spawnSync('sh', ['-c', 'command -v musl-gcc && command -v cpio']).status === 0;
const haveBusybox = existsSync('/bin/busybox');
const buildTest = haveMusl ? test : test.skip;
const agentTest = isRoot && haveMusl && haveBusybox ? test : test.skip;
/** Test mode has no guest cgroup: X frames carry no usage counters then. */
const NO_CGROUP = { cpuTimeMs: null, peakMemoryBytes: null, cpuTimeLimitExceeded: false };

const work = mkdtempSync(join(tmpdir(), 'hbx-agent-test-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));

const listCpio = (file: string): string => {
  const r = spawnSync('sh', ['-c', `gzip -dc '${file}' | cpio -itv --quiet`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout;
};

buildTest('initramfs: cached by inputs, reproducible, with /init, /dev/console and the modules asked for', (t) => {
  const script = resolve('guest-images/build-initramfs.sh');
  const build = (cache: string, ...args: string[]): string => {
    const r = spawnSync('bash', [script, ...args], { encoding: 'utf8', env: { ...process.env, HYBRIDBOX_CACHE: cache } });
    if (r.status !== 0) throw new Error(`build-initramfs.sh failed: ${r.stderr}`);
    return r.stdout.trim();
  };
  const cacheA = join(work, 'cache-a');
  const out = join(work, 'out', 'initrd.cpio.gz');
  const a = build(cacheA, out);
  t.regex(a, new RegExp(`^${cacheA}/initramfs/[0-9a-f]{64}\\.cpio\\.gz$`));
  t.true(readFileSync(out).equals(readFileSync(a)));
  const mtime = statSync(a).mtimeMs;
  t.is(build(cacheA), a, 'same inputs, same artefact');
  t.is(statSync(a).mtimeMs, mtime, 'a cached artefact is not rebuilt');
  const b = build(join(work, 'cache-b'));
  t.true(readFileSync(a).equals(readFileSync(b)), 'two builds give the same bytes');
  const listing = listCpio(a);
  t.regex(listing, /^-rwxr-xr-x .* root +root .* init$/m);
  t.regex(listing, /^crw------- .* 5, +1 .* dev\/console$/m);
  t.regex(listing, /run\/hbx\/root$/m);

  const mods = join(work, 'mods');
  mkdirSync(join(mods, 'kernel', 'fs'), { recursive: true });
  writeFileSync(join(mods, 'kernel', 'fs', '9p.ko'), 'not really a module');
  writeFileSync(join(mods, 'unlisted.ko'), 'left out');
  writeFileSync(join(mods, 'modules.order'), 'kernel/fs/9p.ko\n');
  const withMods = build(cacheA, '--modules-dir', mods);
  t.not(withMods, a);
  const modListing = listCpio(withMods);
  t.regex(modListing, /lib\/modules\/modules\.order$/m);
  t.regex(modListing, /lib\/modules\/kernel\/fs\/9p\.ko$/m);
  t.notRegex(modListing, /unlisted/);
  writeFileSync(join(mods, 'kernel', 'fs', '9p.ko'), 'a new build of it');
  t.not(build(cacheA, '--modules-dir', mods), withMods, 'a changed module changes the key');
});

// ---- the real agent, in test mode --------------------------------------------------------------

const agentBin = join(work, 'hbx-agent');
const rootfs = join(work, 'rootfs');

test.before(() => {
  if (!haveMusl) return;
  const r = spawnSync('sh', [resolve('guest-images/agent/build.sh'), agentBin], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`agent build failed: ${r.stderr}`);
  if (!isRoot || !haveBusybox) return;
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  chmodSync(rootfs, 0o755);
  copyFileSync('/bin/busybox', join(rootfs, 'bin', 'busybox'));
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
  // Inside the chroot, so that the links point at /bin/busybox rather than the host path.
  const i = spawnSync('chroot', [rootfs, '/bin/busybox', '--install', '-s', '/bin'], { encoding: 'utf8' });
  if (i.status !== 0) throw new Error(`busybox --install failed: ${i.stderr}`);
  // The shell sends background jobs' stdin to /dev/null; a VM has devtmpfs there.
  mkdirSync(join(rootfs, 'dev'));
  const n = spawnSync('mknod', ['-m', '666', join(rootfs, 'dev', 'null'), 'c', '1', '3'], { encoding: 'utf8' });
  if (n.status !== 0) throw new Error(`mknod failed: ${n.stderr}`);
  writeFileSync(join(rootfs, 'bin', 'notexec'), 'echo never\n', { mode: 0o644 });
  writeFileSync(join(rootfs, 'bin', 'hashbangless'), 'echo "script ran with $# args: $1"\n', { mode: 0o755 });
});

interface Agent {
  client: AgentClient;
  proc: ChildProcess;
  exited: Promise<number | null>;
  console: () => string;
}

let seq = 0;
async function startAgent(t: ExecutionContext): Promise<Agent> {
  const sock = join(work, `agent-${++seq}.sock`);
  // PID 1 of its own PID namespace, as in a VM: kill(-1) and reaping stay inside it.
  // --kill-child: a test that fails half-way leaves no agent behind.
  const proc = spawn('unshare', ['--kill-child', '-m', '-p', '--fork', agentBin], {
    env: { PATH: '/usr/bin:/bin', HBX_AGENT_TEST_ROOT: rootfs, HBX_AGENT_PORT: sock },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  proc.stdout!.on('data', (d: Buffer) => (text += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (text += d.toString()));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  t.teardown(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });
  const client = await AgentClient.connect(sock, 10_000);
  t.teardown(() => client.close());
  await client.waitReady(10_000);
  return { client, proc, exited, console: () => text };
}

const spec = (argv: string[], more: Partial<SessionSpec> = {}): SessionSpec => ({ argv, env: { PATH: '/bin' }, workdir: '/', uid: 0, gid: 0, ...more });

async function run(client: AgentClient, id: number, s: SessionSpec, timeoutMs = 20_000): Promise<{ stdout: string; stderr: string; exit: SessionExit }> {
  let stdout = '';
  let stderr = '';
  const exit = await client.startSession(id, s, { onStdout: (d) => (stdout += d.toString()), onStderr: (d) => (stderr += d.toString()) }, { timeoutMs });
  return { stdout, stderr, exit };
}

agentTest('agent: R reports the kernel; stdout and stderr stay apart; exit codes come back', async (t) => {
  const { client } = await startAgent(t);
  const ready = await client.waitReady(1000);
  t.is(ready.kernel, release());
  t.true(ready.initMs > 0 && ready.initMs <= ready.uptimeMs, JSON.stringify(ready));
  const r = await run(client, 1, spec(['sh', '-c', 'echo out; echo err >&2; echo more; exit 3']));
  t.deepEqual(r, { stdout: 'out\nmore\n', stderr: 'err\n', exit: { exitCode: 3, signal: null, oomKilled: false, ...NO_CGROUP } });
  t.deepEqual((await run(client, 1, spec(['true']))).exit, { exitCode: 0, signal: null, oomKilled: false, ...NO_CGROUP }, 'an id can be reused after its X');
  client.shutdown();
  await client.waitClosed(10_000);
});

agentTest('agent: 127 for a missing command, 126 for a file that cannot run, shell fallback for a script without #!', async (t) => {
  const { client } = await startAgent(t);
  const missing = await run(client, 1, spec(['no-such-command']));
  t.is(missing.exit.exitCode, 127);
  t.regex(missing.stderr, /no-such-command: No such file or directory/);
  t.is((await run(client, 2, spec(['/no/such/path']))).exit.exitCode, 127);
  const denied = await run(client, 3, spec(['notexec']));
  t.is(denied.exit.exitCode, 126);
  t.regex(denied.stderr, /Permission denied/);
  t.is((await run(client, 4, spec(['/bin/notexec']))).exit.exitCode, 126);
  const script = await run(client, 5, spec(['hashbangless', 'a b']));
  t.deepEqual([script.stdout, script.exit.exitCode], ['script ran with 1 args: a b\n', 0]);
  client.shutdown();
});

agentTest('agent: env, workdir (made when missing, owned by the user), uid, gid and groups', async (t) => {
  const { client } = await startAgent(t);
  const r = await run(
    client,
    1,
    spec(['sh', '-c', 'echo "$GREETING"; pwd; id -u; id -g; id -G; env | grep -c HBX_ || true'], {
      env: { PATH: '/bin', GREETING: 'hi there = \u00e9\u{1f600}' },
      workdir: '/work/dir',
      uid: 1000,
      gid: 2000,
    }),
  );
  t.is(r.stderr, '');
  t.deepEqual(r.stdout.split('\n'), ['hi there = \u00e9\u{1f600}', '/work/dir', '1000', '2000', '2000', '0', '']);
  const st = statSync(join(rootfs, 'work', 'dir'));
  t.deepEqual([st.uid, st.gid], [1000, 2000]);
  const g = await run(client, 2, spec(['id', '-G'], { uid: 5, gid: 6, groups: [6, 7, 8] }));
  t.is(g.stdout.trim(), '6 7 8');
  client.shutdown();
});

agentTest('agent: concurrent sessions run side by side with their own output', async (t) => {
  const { client } = await startAgent(t);
  const slow = run(client, 1, spec(['sh', '-c', 'sleep 0.5; echo one']));
  const fast = run(client, 2, spec(['sh', '-c', 'echo two >&2; exit 2']));
  const f = await fast;
  t.deepEqual(f, { stdout: '', stderr: 'two\n', exit: { exitCode: 2, signal: null, oomKilled: false, ...NO_CGROUP } });
  const s = await slow;
  t.deepEqual(s, { stdout: 'one\n', stderr: '', exit: { exitCode: 0, signal: null, oomKilled: false, ...NO_CGROUP } });
  client.shutdown();
});

agentTest('agent: K signals the whole process group of a session', async (t) => {
  const { client } = await startAgent(t);
  const killed = run(client, 1, spec(['sleep', '30']));
  const group = run(client, 2, spec(['sh', '-c', 'sleep 30 & sleep 31 & wait; echo not reached']));
  await new Promise((r) => setTimeout(r, 300));
  client.signal(1, 'SIGKILL');
  client.signal(2, 'TERM');
  // oomKilled is not asserted after a SIGKILL: the counter is machine-wide, and on a host
  // (not a VM) other tests' OOM kills may land in the same window.
  t.like((await killed).exit, { exitCode: null, signal: 'SIGKILL' });
  const g = await group;
  t.deepEqual(g.exit, { exitCode: null, signal: 'SIGTERM', oomKilled: false, ...NO_CGROUP }, JSON.stringify(g));
  t.is(g.stdout, '');
  const ps = await run(client, 3, spec(['sh', '-c', 'ps -o comm | grep -c sleep || true']));
  t.is(ps.stdout.trim(), '0', 'the background sleeps were in the group too');
  client.signal(99, 9); // a session that does not exist: ignored
  client.shutdown();
});

agentTest('agent: stdin is a pipe when asked (I then C), /dev/null otherwise', async (t) => {
  const { client } = await startAgent(t);
  let out = '';
  const p = client.startSession(1, spec(['sh', '-c', 'cat; echo done'], { stdin: true }), { onStdout: (d) => (out += d), onStderr: () => undefined });
  client.writeStdin(1, 'hello ');
  client.writeStdin(1, Buffer.alloc(100_000, 'x'));
  client.closeStdin(1);
  t.is((await p).exitCode, 0);
  t.is(out, 'hello ' + 'x'.repeat(100_000) + 'done\n');
  const noStdin = await run(client, 2, spec(['sh', '-c', 'cat; echo eof']));
  t.is(noStdin.stdout, 'eof\n');
  client.shutdown();
});

agentTest('agent: large output arrives whole and in order', async (t) => {
  const { client } = await startAgent(t);
  const r = await run(client, 1, spec(['sh', '-c', 'seq 1 100000; seq 1 1000 >&2']));
  t.is(r.stdout, Array.from({ length: 100_000 }, (_, i) => `${i + 1}\n`).join(''));
  t.is(r.stderr.split('\n').length, 1001);
  client.shutdown();
});

agentTest('agent: a bad session spec is refused with F, and the agent keeps serving', async (t) => {
  const { client } = await startAgent(t);
  await t.throwsAsync(run(client, 1, spec([])), { instanceOf: AgentError, message: /argv is empty/ });
  await t.throwsAsync(run(client, 2, { ...spec(['true']), workdir: 'relative' }), { instanceOf: AgentError, message: /workdir/ });
  const running = run(client, 3, spec(['sleep', '5']));
  await new Promise((r) => setTimeout(r, 100));
  await t.throwsAsync(run(client, 3, spec(['true'])), { instanceOf: AgentError, message: /already running/ });
  t.is((await run(client, 4, spec(['echo', 'still here']))).stdout, 'still here\n');
  client.signal(3, 'SIGKILL');
  t.is((await running).exit.signal, 'SIGKILL');
  client.shutdown();
});

agentTest('agent: when session 0 exits, the rest is killed and the agent powers off (exits, in test mode)', async (t) => {
  const { client, exited } = await startAgent(t);
  const other = run(client, 1, spec(['sleep', '30']));
  const main = await run(client, 0, spec(['sh', '-c', 'echo main; exit 7']));
  t.deepEqual(main, { stdout: 'main\n', stderr: '', exit: { exitCode: 7, signal: null, oomKilled: false, ...NO_CGROUP } });
  t.deepEqual((await other).exit, { exitCode: null, signal: 'SIGTERM', oomKilled: false, ...NO_CGROUP });
  await client.waitClosed(10_000);
  t.is(await exited, 0);
});

agentTest('agent: Q stops a session that ignores TERM with KILL after the grace period', async (t) => {
  const { client, exited } = await startAgent(t);
  const stubborn = run(client, 1, spec(['sh', '-c', "trap '' TERM; echo ready; sleep 30"]));
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  client.shutdown();
  t.is((await stubborn).exit.signal, 'SIGKILL');
  t.true(Date.now() - t0 >= 1900, 'TERM first, KILL after 2 s');
  await client.waitClosed(10_000);
  t.is(await exited, 0);
});

agentTest('agent: garbage before the first host frame is skipped', async (t) => {
  const sock = join(work, `raw-${++seq}.sock`);
  const proc = spawn('unshare', ['--kill-child', '-m', '-p', '--fork', agentBin], {
    env: { PATH: '/usr/bin:/bin', HBX_AGENT_TEST_ROOT: rootfs, HBX_AGENT_PORT: sock },
    stdio: 'ignore',
  });
  t.teardown(() => void proc.kill('SIGKILL'));
  let socket: import('node:net').Socket | undefined;
  for (let i = 0; i < 500 && !socket; i++) {
    socket = await new Promise((res) => {
      const s = connect(sock);
      s.once('connect', () => res(s));
      s.once('error', () => setTimeout(() => res(undefined), 10));
    });
  }
  if (!socket) return t.fail('agent socket never appeared');
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  const got = (pred: (f: Frame) => boolean): Promise<Frame> =>
    new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`timed out; frames so far: ${frames.map((f) => f.type).join('')}`)), 10_000);
      const check = (): void => {
        const f = frames.find(pred);
        if (f) {
          clearTimeout(timer);
          socket!.off('data', onData);
          res(f);
        }
      };
      const onData = (): void => check();
      socket!.on('data', onData);
      check();
    });
  socket.on('data', (d: Buffer) => frames.push(...decoder.push(d)));
  t.is((await got((f) => f.type === 'R')).session, 0);
  const noise = Buffer.concat([Buffer.from('\r\n+++ATZ\x1b[0m'), Buffer.from([0x48, 0x42, 0x53, 7, 0, 0, 0, 0, 0, 0]), Buffer.from('HBHH'), Buffer.from([0x48, 0x42, 0x53, 0, 0, 1, 0x7f, 0, 0, 0])]);
  socket.write(noise);
  socket.write(encodeJsonFrame('S', 5, spec(['echo', 'through the noise']) as unknown as Record<string, unknown>));
  const x = await got((f) => f.type === 'X' && f.session === 5);
  t.deepEqual(decodeJsonPayload(x), { exitCode: 0, signal: null, oomKilled: false, cpuTimeLimitExceeded: false });
  t.is(
    frames
      .filter((f) => f.type === 'O' && f.session === 5)
      .map((f) => f.payload.toString())
      .join(''),
    'through the noise\n',
  );
  // The client refuses a duplicate id itself; the agent must too.
  const sleeper = encodeJsonFrame('S', 6, spec(['sleep', '5']) as unknown as Record<string, unknown>);
  socket.write(Buffer.concat([sleeper, sleeper]));
  const f = await got((fr) => fr.type === 'F' && fr.session === 6);
  t.like(decodeJsonPayload(f), { request: 'S', message: 'a session with this id is already running' });
  socket.write(encodeJsonFrame('K', 6, { signal: 'SIGKILL' }));
  t.like(decodeJsonPayload(await got((fr) => fr.type === 'X' && fr.session === 6)), { signal: 'SIGKILL' });
  socket.write(encodeFrame('Q', 0));
  await new Promise((r) => socket!.once('close', r));
});

agentTest('agent: the client rejects what is pending when the agent dies', async (t) => {
  const { client, proc } = await startAgent(t);
  const pending = run(client, 1, spec(['sleep', '30']));
  let closed = false;
  client.on('close', () => (closed = true));
  await new Promise((r) => setTimeout(r, 200));
  proc.kill('SIGKILL'); // --kill-child takes the agent, PID 1 of the namespace, with it
  await t.throwsAsync(pending, { instanceOf: AgentClosedError, message: /before session 1 exited/ });
  t.true(closed);
  await t.throwsAsync(run(client, 2, spec(['true'])), { instanceOf: AgentClosedError });
});

// A memory cgroup around the whole agent makes its session meet the OOM killer.
const memoryCgroup = ((): { dir: string; limit: string; procs: string } | null => {
  if (existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes')) return { dir: '/sys/fs/cgroup/memory', limit: 'memory.limit_in_bytes', procs: 'cgroup.procs' };
  if (existsSync('/sys/fs/cgroup/cgroup.controllers') && readFileSync('/sys/fs/cgroup/cgroup.subtree_control', 'utf8').includes('memory'))
    return { dir: '/sys/fs/cgroup', limit: 'memory.max', procs: 'cgroup.procs' };
  return null;
})();
const oomTest = memoryCgroup ? agentTest : test.skip;

oomTest('agent: a session killed by the OOM killer is reported as oomKilled', async (t) => {
  const cg = join(memoryCgroup!.dir, `hbx-agent-test-${process.pid}`);
  mkdirSync(cg);
  t.teardown(async () => {
    // Emptied only once the killed agent's processes are gone.
    for (let i = 0; i < 50 && existsSync(cg); i++) {
      try {
        rmdirSync(cg);
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  });
  writeFileSync(join(cg, memoryCgroup!.limit), String(48 * 1024 * 1024));
  const sock = join(work, `oom-${++seq}.sock`);
  const proc = spawn('sh', ['-c', `echo $$ > ${join(cg, memoryCgroup!.procs)} && exec unshare --kill-child -m -p --fork ${agentBin}`], {
    env: { PATH: '/usr/bin:/bin', HBX_AGENT_TEST_ROOT: rootfs, HBX_AGENT_PORT: sock },
    stdio: 'ignore',
  });
  t.teardown(() => void proc.kill('SIGKILL'));
  const client = await AgentClient.connect(sock, 10_000);
  t.teardown(() => client.close());
  await client.waitReady(10_000);
  // The string quadruples until the cgroup's limit: the kernel, not the shell, ends it.
  const hog = await run(client, 1, spec(['sh', '-c', 'x=aaaaaaaaaaaaaaaa; while :; do x="$x$x$x$x"; done']), 60_000);
  t.deepEqual(hog.exit, { exitCode: null, signal: 'SIGKILL', oomKilled: true, ...NO_CGROUP });
  t.is((await run(client, 2, spec(['echo', 'still serving']))).stdout, 'still serving\n');
  client.shutdown();
  await client.waitClosed(10_000);
});

agentTest('agent: outside test mode it refuses to run unless it is PID 1', (t) => {
  const r = spawnSync(agentBin, [], { encoding: 'utf8', env: {} });
  t.is(r.status, 2);
  t.regex(r.stderr, /not PID 1/);
});

// ---- a real VM: the set-up step's kernel, this initramfs ---------------------------------------

const guest = findGuestBoot();
const haveQemu = spawnSync('sh', ['-c', 'command -v qemu-system-x86_64 && command -v mkfs.ext4']).status === 0;
// The distro kernel has no 9p and needs its modules in the initramfs: that is the VM
// backend's test. This one checks the agent's own boot path on the custom kernel.
// /dev/kvm alone is not enough: some hosts have a paravirtual KVM (kvm-pvm) without vmx/svm
// that fails on these guests with "KVM internal error".
const kvmUsable = existsSync('/dev/kvm') && /\b(vmx|svm)\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
const vmTest = isRoot && haveMusl && haveBusybox && haveQemu && guest?.flavour === 'custom' ? test : test.skip;

vmTest('vm: the initramfs boots the guest kernel into the image with volumes, network and a session', async (t) => {
  const dir = join(work, 'vm');
  mkdirSync(join(dir, 'vol'), { recursive: true });
  writeFileSync(join(dir, 'vol', 'hello.txt'), 'from the host\n');
  const image = join(dir, 'root.ext4');
  const mk = spawnSync('mkfs.ext4', ['-q', '-d', rootfs, image, '64M'], { encoding: 'utf8' });
  if (mk.status !== 0) throw new Error(`mkfs.ext4 failed: ${mk.stderr}`);
  const b = spawnSync('bash', [resolve('guest-images/build-initramfs.sh')], { encoding: 'utf8', env: { ...process.env, HYBRIDBOX_CACHE: join(work, 'cache-vm') } });
  if (b.status !== 0) throw new Error(`build-initramfs.sh failed: ${b.stderr}`);
  const initrd = b.stdout.trim();
  const sock = join(dir, 'agent.sock');
  const consoleLog = join(dir, 'console.log');
  const mhz = cpus()[0]?.speed ?? 0;
  const append = [
    'console=ttyS0 reboot=t panic=-1 tsc=reliable no_timer_check i8042.noaux i8042.nokbd cryptomgr.notests',
    mhz > 0 ? `tsc_early_khz=${mhz * 1000}` : '',
    'hbx.agent=hbx.agent hbx.ip=10.89.0.5/24 hbx.gw=10.89.0.1 hbx.hostname=agent-vm',
    'hbx.vol=vol0:/mnt/ro:ro hbx.vol=vol0rw:/mnt/rw:rw',
  ].join(' ');
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      '-M',
      'microvm,acpi=off',
      '-accel',
      kvmUsable ? 'kvm' : 'tcg',
      '-m',
      '256',
      '-smp',
      '1',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-no-reboot',
      '-kernel',
      guest!.kernel,
      '-initrd',
      initrd,
      '-append',
      append,
      '-chardev',
      `file,id=con,path=${consoleLog}`,
      '-serial',
      'chardev:con',
      '-device',
      'virtio-serial-device',
      '-chardev',
      `socket,id=agent,path=${sock},server=on,wait=off`,
      '-device',
      'virtserialport,chardev=agent,name=hbx.agent',
      '-drive',
      `id=root,file=${image},format=raw,if=none,readonly=on`,
      '-device',
      'virtio-blk-device,drive=root',
      '-fsdev',
      `local,id=v0,path=${join(dir, 'vol')},security_model=none`,
      '-device',
      'virtio-9p-device,fsdev=v0,mount_tag=vol0',
      '-fsdev',
      `local,id=v1,path=${join(dir, 'vol')},security_model=none`,
      '-device',
      'virtio-9p-device,fsdev=v1,mount_tag=vol0rw',
      '-netdev',
      'user,id=n0,restrict=on',
      '-device',
      'virtio-net-device,netdev=n0',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let qemuErr = '';
  qemu.stderr!.on('data', (d: Buffer) => (qemuErr += d.toString()));
  const qemuExit = new Promise<number | null>((r) => qemu.on('exit', (code) => r(code)));
  t.teardown(() => void qemu.kill('SIGKILL'));
  const client = await AgentClient.connect(sock, 10_000);
  t.teardown(() => client.close());
  const ready = await client.waitReady(60_000).catch((e: Error) => {
    throw new Error(`${e.message}\nqemu: ${qemuErr}\nconsole: ${existsSync(consoleLog) ? readFileSync(consoleLog, 'utf8').slice(-3000) : ''}`);
  });
  t.is(ready.kernel, guest!.kernelRelease);
  const r = await run(
    client,
    1,
    spec(
      [
        'sh',
        '-c',
        'hostname; ip -4 addr show eth0 | grep -o "inet [0-9./]*"; ip route | grep default; grep -E " / | /mnt/r[ow] " /proc/mounts | cut -d" " -f1-4; cat /mnt/ro/hello.txt; echo guest > /mnt/rw/from-guest.txt; touch /mnt/ro/x; id -u',
      ],
      { uid: 0 },
    ),
    60_000,
  );
  t.is(r.exit.exitCode, 0, r.stderr);
  const lines = r.stdout.split('\n');
  t.deepEqual(lines.slice(0, 3), ['agent-vm', 'inet 10.89.0.5/24', 'default via 10.89.0.1 dev eth0 ']);
  t.regex(r.stdout, /^overlay \/ overlay rw,/m);
  t.regex(r.stdout, /^vol0 \/mnt\/ro 9p ro,/m);
  t.regex(r.stdout, /^vol0rw \/mnt\/rw 9p rw,/m);
  t.true(lines.includes('from the host'));
  t.regex(r.stderr, /Read-only file system/);
  t.is(readFileSync(join(dir, 'vol', 'from-guest.txt'), 'utf8'), 'guest\n');
  const big = await run(client, 2, spec(['sh', '-c', 'seq 1 50000']), 60_000);
  t.is(big.stdout, Array.from({ length: 50_000 }, (_, i) => `${i + 1}\n`).join(''));
  const main = await run(client, 0, spec(['sh', '-c', 'echo bye; exit 4']), 60_000);
  // In a guest the X carries the workload cgroup's counters: every session's so far.
  t.like(main.exit, { exitCode: 4, signal: null, oomKilled: false, cpuTimeLimitExceeded: false });
  t.true(main.exit.cpuTimeMs! > 0 && main.exit.peakMemoryBytes! > 0, JSON.stringify(main.exit));
  await client.waitClosed(30_000);
  t.is(await qemuExit, 0);
  t.notRegex(readFileSync(consoleLog, 'utf8'), /Kernel panic|hbx-agent:/);
});
