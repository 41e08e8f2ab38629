import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { timedSpawn } from '../src/bench/startup/proc.js';
import { SpecError } from '../src/errors.js';
import { probeCgroups } from '../src/host/probe.js';
import { lastLine, LineTail, run, runChecked, spawnChild, STDERR_CAP_CHARS, TextTail } from '../src/util/exec.js';
import { discardTree, mountsUnder } from '../src/util/fs.js';
import { parseMountinfo } from '../src/util/mountinfo.js';
import { connectUnixWithRetry } from '../src/util/net.js';
import { pollUntil, withDeadline } from '../src/util/proc.js';
import { formatBytes, parseKeyValue, splitKeyValue } from '../src/util/text.js';

// ------------------------------------------------------------------ lastLine and tails --

test('lastLine: the last non-blank line, or the fallback', (t) => {
  t.is(lastLine('first\nsecond\n\n  \n'), 'second');
  t.is(lastLine('only'), 'only');
  t.is(lastLine('a\r\nb\r\n'), 'b');
  t.is(lastLine(''), '');
  t.is(lastLine(' \n\n', '(no output)'), '(no output)');
});

test('TextTail keeps the end within its cap, from a line start', (t) => {
  const tail = new TextTail(20);
  tail.push('0123456789 early line\n');
  tail.push(Buffer.from('middle\nthe error\n'));
  t.true(tail.truncated);
  t.true(tail.text.length <= 20);
  t.is(tail.text, 'middle\nthe error\n');
  t.is(lastLine(tail.text), 'the error');
  // One line longer than the cap: its end is kept, cut mid-line.
  const long = new TextTail(8);
  long.push('abcdefghijklmnop');
  t.is(long.text, 'ijklmnop');
});

test('TextTail decodes a character split across chunks', (t) => {
  const tail = new TextTail();
  const bytes = Buffer.from('naïve\n');
  tail.push(bytes.subarray(0, 3));
  tail.push(bytes.subarray(3));
  t.is(tail.text, 'naïve\n');
  t.false(tail.truncated);
});

test('LineTail hands on complete lines and keeps the last ones', (t) => {
  const seen: string[] = [];
  const lines = new LineTail(2, (l) => seen.push(l));
  lines.push('one\ntw');
  lines.push('o\r\n\nprogress 10%\rprogress 99%\nunfinished');
  t.deepEqual(seen, ['one', 'two', 'progress 10%', 'progress 99%']);
  t.deepEqual(lines.end(), ['progress 99%', 'unfinished']);
});

// ------------------------------------------------------------------------ spawnChild --

// 20 KiB of warnings, then the line that says why: what a QEMU or crun failure looks like.
const NOISY = `i=0; while [ $i -lt 400 ]; do echo "warning $i: something harmless happened here" >&2; i=$((i+1)); done; echo "fatal: the real reason" >&2; exit 3`;

test('the stderr cap is bounded and keeps the last line', async (t) => {
  const r = await spawnChild('sh', ['-c', NOISY]).done;
  t.is(r.code, 3);
  t.true(r.stderr.length <= STDERR_CAP_CHARS, `${r.stderr.length} chars kept`);
  t.is(lastLine(r.stderr), 'fatal: the real reason');
  t.regex(r.stderr, /^warning \d+:/, 'the kept text starts at a line');
});

test('a timed benchmark spawn quotes the last line of a long stderr', async (t) => {
  const r = await timedSpawn('sh', ['-c', NOISY]);
  t.is(r.code, 3);
  t.true(r.stderr.length <= STDERR_CAP_CHARS);
  t.is(lastLine(r.stderr), 'fatal: the real reason');
});

test('spawnChild: stdout kept, stderr streamed and kept, input on stdin, timings', async (t) => {
  const chunks: Buffer[] = [];
  const r = await spawnChild('sh', ['-c', 'cat; echo oops >&2'], { input: 'hello\n', stdout: 'keep', stderr: (c) => chunks.push(c) }).done;
  t.is(r.code, 0);
  t.is(r.stdout, 'hello\n');
  t.is(r.stderr, 'oops\n');
  t.is(Buffer.concat(chunks).toString(), 'oops\n');
  t.false(r.timedOut);
  t.true(r.exitMs > 0 && r.closeMs >= r.exitMs);
});

test('spawnChild: a timeout sends its signal and says so', async (t) => {
  const t0 = performance.now();
  const r = await spawnChild('sleep', ['30'], { timeoutMs: 100, killSignal: 'SIGKILL' }).done;
  t.true(r.timedOut);
  t.is(r.signal, 'SIGKILL');
  t.is(r.code, null);
  t.true(performance.now() - t0 < 5000);
});

test('spawnChild: SIGKILL follows a timeout signal the child ignores', async (t) => {
  const r = await spawnChild('sh', ['-c', "trap '' TERM; while :; do :; done"], { timeoutMs: 100, forceKillAfterMs: 200 }).done;
  t.true(r.timedOut);
  t.is(r.signal, 'SIGKILL');
});

test('spawnChild: a stream on stdin ends with its EOF and is let go when the child ends', async (t) => {
  const from = new PassThrough();
  const c = spawnChild('cat', [], { input: from, stdout: 'keep' });
  from.end('streamed\n');
  t.is((await c.done).stdout, 'streamed\n');
  // A child that stops reading early: no EPIPE for the caller.
  const big = new PassThrough();
  const early = spawnChild('head', ['-c', '1'], { input: big, stdout: 'keep' });
  big.write(Buffer.alloc(1 << 20, 'x'));
  t.is((await early.done).stdout, 'x');
  // A child that ends while the caller's stream is idle (a terminal nobody types into): it is unpiped.
  const idle = new PassThrough();
  await spawnChild('true', [], { input: idle }).done;
  t.is(idle.listenerCount('data'), 0);
});

test('spawnChild: a detached child with an open stdin neither keeps its parent alive nor loses its EOF when the parent dies', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'hbx-util-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const exec = new URL('../src/util/exec.ts', import.meta.url).pathname;
  // The parent writes one line and has nothing left to do: it must exit at once, and the child sees EOF then.
  const script = `import { spawnChild } from ${JSON.stringify(exec)}; const c = spawnChild('sh', ['-c', 'cat > got; echo eof > ended'], { detached: true, openStdin: true, cwd: ${JSON.stringify(dir)} }); c.process.stdin.write('from the parent\\n');`;
  const t0 = performance.now();
  execFileSync('node', ['--import=tsx', '--input-type=module', '-e', script], { timeout: 20_000 });
  t.true(performance.now() - t0 < 15_000);
  t.true(await pollUntil(() => existsSync(join(dir, 'ended')), { timeoutMs: 5000 }));
  t.is(readFileSync(join(dir, 'got'), 'utf8'), 'from the parent\n');
});

test('spawnChild rejects when the command cannot be started; run never throws', async (t) => {
  const e = await t.throwsAsync(spawnChild('/nonexistent/hbx-tool', []).done);
  t.is((e as NodeJS.ErrnoException).code, 'ENOENT');
  const r = await run('/nonexistent/hbx-tool', []);
  t.true(r.failed);
  t.is(r.exitCode, undefined);
  t.regex(r.stderr, /ENOENT/);
});

test('run: output without its final newline, env added to the environment, exit codes', async (t) => {
  process.env.HBX_UTIL_TEST_OUTER = 'outer';
  t.teardown(() => delete process.env.HBX_UTIL_TEST_OUTER);
  const r = await run('sh', ['-c', 'echo "$HBX_UTIL_TEST_OUTER $HBX_UTIL_TEST_INNER"; exit 4'], { env: { HBX_UTIL_TEST_INNER: 'inner' } });
  t.is(r.stdout, 'outer inner');
  t.is(r.exitCode, 4);
  t.true(r.failed);
  const slow = await run('sleep', ['30'], { timeoutMs: 100 });
  t.true(slow.timedOut);
  t.is(slow.exitCode, undefined);
});

test('runChecked: a failure is one line, the last one the command printed', async (t) => {
  const e = await t.throwsAsync(runChecked('sh', ['-c', 'echo detail >&2; echo "cannot do it" >&2; exit 1'], 'the step'));
  t.is(e!.message, 'the step failed: cannot do it');
  const quiet = await t.throwsAsync(runChecked('sh', ['-c', 'exit 2'], 'the step'));
  t.is(quiet!.message, 'the step failed: exit 2');
});

// ------------------------------------------------------------------- polling, deadlines --

test('pollUntil: true as soon as the condition holds', async (t) => {
  let n = 0;
  t.true(await pollUntil(() => ++n === 3, { timeoutMs: 5000, intervalMs: 5 }));
  t.is(n, 3);
});

test('pollUntil: false once the time is up, after one last look', async (t) => {
  const looks: number[] = [];
  const t0 = performance.now();
  const ok = await pollUntil(
    async () => {
      looks.push(performance.now() - t0);
      return false;
    },
    { timeoutMs: 150, intervalMs: 20 },
  );
  const took = performance.now() - t0;
  t.false(ok);
  t.true(took >= 150, `took ${took} ms`);
  t.true(took < 1500, `took ${took} ms`);
  t.true(looks.at(-1)! >= 150, 'the last look is at or after the deadline');
  t.true(looks.length >= 3 && looks.length <= 9, `${looks.length} looks`);
});

test("withDeadline: the value in time, the caller's error when late", async (t) => {
  t.is(await withDeadline(Promise.resolve(7), 1000, () => new Error('late')), 7);
  const e = await t.throwsAsync(withDeadline(new Promise(() => undefined), 30, () => new Error('too slow')));
  t.is(e!.message, 'too slow');
});

test('connectUnixWithRetry hands the last connect error to onTimeout', async (t) => {
  const e = await t.throwsAsync(connectUnixWithRetry('/nonexistent/hbx.sock', 50, (err) => new Error(`gave up: ${(err as NodeJS.ErrnoException).code}`)));
  t.is(e!.message, 'gave up: ENOENT');
});

// ------------------------------------------------------------------------- mountinfo --

const MOUNTINFO = [
  '22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw',
  '95 29 0:48 / /srv/my\\040data rw,relatime shared:50 master:3 - tmpfs my\\040tmpfs rw,size=1024k',
  '96 29 0:49 /sub /mnt/tab\\011and\\134back\\012slash ro,relatime - ext4 /dev/vda1 rw',
  '31 25 0:27 / /sys/fs/cgroup/cpu\\040set rw,nosuid - cgroup cgroup rw,cpuset',
  'not a mount line',
  '',
].join('\n');

test('parseMountinfo undoes the escapes and skips optional fields', (t) => {
  const m = parseMountinfo(MOUNTINFO);
  t.is(m.length, 4);
  t.deepEqual(m[1], { majorMinor: '0:48', root: '/', mountPoint: '/srv/my data', options: ['rw', 'relatime'], fstype: 'tmpfs', source: 'my tmpfs', superOptions: ['rw', 'size=1024k'] });
  t.is(m[2]!.mountPoint, '/mnt/tab\tand\\back\nslash');
  t.is(m[2]!.root, '/sub');
  t.deepEqual(m[2]!.options, ['ro', 'relatime']);
  t.is(probeCgroups(MOUNTINFO).v1.cpuset, '/sys/fs/cgroup/cpu set');
});

test('mountsUnder sees a mount below a directory whose name the kernel escapes', (t) => {
  if (process.getuid?.() !== 0) return t.pass('needs root to mount');
  const dir = mkdtempSync(join(os.tmpdir(), 'hbx util\\dir '));
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'hbx-util-test', mnt]);
  t.teardown(() => {
    execFileSync('umount', [mnt]);
    rmSync(dir, { recursive: true, force: true });
  });
  writeFileSync(join(mnt, 'keep'), 'x');
  t.deepEqual(mountsUnder(dir), [mnt]);
  t.false(discardTree(dir), 'a tree with a mount inside is left alone');
  t.true(existsSync(join(mnt, 'keep')));
});

// ------------------------------------------------------------------ formatBytes, KEY=VALUE --

test('formatBytes: exact sizes and rounded figures', (t) => {
  t.is(formatBytes(0), '0 B');
  t.is(formatBytes(1023), '1023 B');
  t.is(formatBytes(1536), '1.5 KiB');
  t.is(formatBytes(5 * 1048576), '5.0 MiB');
  t.is(formatBytes(3 * 2 ** 40), '3.0 TiB');
  t.is(formatBytes(null), '-');
  t.is(formatBytes(Number.NaN), '-');
  t.is(formatBytes(50 * 1024, 'rounded'), '50 KiB');
  t.is(formatBytes(2.44 * 1048576, 'rounded'), '2.4 MiB');
  t.is(formatBytes(37.4 * 1048576, 'rounded'), '37 MiB');
  t.is(formatBytes(1.25 * 2 ** 30, 'rounded'), '1.3 GiB');
  t.is(formatBytes(undefined, 'rounded'), '-');
});

test('parseKeyValue splits at the first = and names the field when it cannot', (t) => {
  t.deepEqual(parseKeyValue('LANG=C.UTF-8', '--env'), ['LANG', 'C.UTF-8']);
  t.deepEqual(parseKeyValue('EQ=a=b', '--env'), ['EQ', 'a=b']);
  t.deepEqual(parseKeyValue('EMPTY=', '--build-arg'), ['EMPTY', '']);
  for (const [bad, field] of [
    ['FOO', '--env'],
    ['=value', '--build-arg'],
    ['', 'exec -e'],
  ] as const) {
    const e = t.throws(() => parseKeyValue(bad, field, `${field} A=1`), { instanceOf: SpecError });
    t.is(e!.field, field);
    t.is(e!.value, bad);
    t.is(e!.message, `${field}: ${JSON.stringify(bad)} is not valid; allowed: KEY=VALUE, e.g. ${field} A=1`);
    t.is(e!.exitCode, 125);
  }
  t.is(splitKeyValue('no-equals'), null);
  t.deepEqual(splitKeyValue('K=V'), ['K', 'V']);
});
