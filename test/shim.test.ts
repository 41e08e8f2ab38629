import test from 'ava';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { readMountinfo } from '../src/util/mountinfo.js';
import { mentions } from './helpers.js';

// These tests mount for real (namespaces, overlayfs), so they need root; they need no crun.
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test : test.skip;

const buildScript = resolve('src/runtimes/container/shim/build.sh');
const work = mkdtempSync(join(tmpdir(), 'hbx-shim-test-'));
const shim = join(work, 'hbx-shim');

test.before(() => {
  const r = spawnSync('sh', [buildScript, shim], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`build.sh failed (${r.status}): ${r.stderr}`);
});

test.after.always(() => {
  rmSync(work, { recursive: true, force: true });
});

const run = (args: string[]): SpawnSyncReturns<string> => spawnSync(shim, args, { encoding: 'utf8', timeout: 20_000 });

const hostMountsNaming = (dir: string): string[] =>
  readMountinfo()
    .filter((m) => mentions(m, dir))
    .map((m) => m.mountPoint);

let seq = 0;
const freshDir = (name: string): string => {
  const d = join(work, `${name}-${++seq}`);
  mkdirSync(d, { recursive: true });
  return d;
};

const readExitFile = (path: string): { exitCode: number | null; signal: string | null; finishedAtMs: number; timedOut: boolean; cpuTimeLimitExceeded: boolean } => {
  const text = readFileSync(path, 'utf8');
  if (!/^\{[^\n]*\}\n$/.test(text)) throw new Error(`exit file is not one JSON line: ${JSON.stringify(text)}`);
  return JSON.parse(text);
};

/** True once pid is gone or a zombie: this host's PID 1 reaps orphans slowly, so a dead process can linger as Z. */
const deadOrZombie = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
};

const waitFor = async (cond: () => boolean, ms: number): Promise<boolean> => {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return cond();
};

test('build.sh skips the compile when the binary is newer than the source', (t) => {
  const before = readFileSync(shim);
  const r = spawnSync('sh', [buildScript, shim], { encoding: 'utf8' });
  t.is(r.status, 0);
  t.deepEqual(readFileSync(shim), before);
  t.false(readdirSync(work).some((f) => f.startsWith('hbx-shim.tmp')));
});

test('exit code of PROGRAM passes through', (t) => {
  t.is(run(['--', 'sh', '-c', 'exit 3']).status, 3);
  t.is(run(['--', 'true']).status, 0);
  t.is(run(['--', 'sh', '-c', 'exit 125']).status, 125);
});

test('PROGRAM is found on PATH and gets its arguments unchanged', (t) => {
  const r = run(['--', 'printf', '%s|', 'a b', '', '--x']);
  t.is(r.status, 0);
  t.is(r.stdout, 'a b||--x|');
});

test('exec failure: 127 for a missing program, 126 otherwise, with one message line', (t) => {
  const missing = run(['--', '/nonexistent/prog']);
  t.is(missing.status, 127);
  t.is(missing.stderr, 'hbx-shim: cannot exec /nonexistent/prog: No such file or directory\n');
  const notExecutable = join(freshDir('noexec'), 'script');
  writeFileSync(notExecutable, 'echo hi\n', { mode: 0o644 });
  const denied = run(['--', notExecutable]);
  t.is(denied.status, 126);
  t.is(denied.stderr, `hbx-shim: cannot exec ${notExecutable}: Permission denied\n`);
});

test('bad usage exits 125 with one line and never runs PROGRAM', (t) => {
  const marker = join(freshDir('usage'), 'ran');
  const cases: [string[], RegExp][] = [
    [['--bogus', '--', 'touch', marker], /^hbx-shim: unknown option --bogus; usage: hbx-shim /],
    [['touch', marker], /^hbx-shim: unknown option touch; usage: /],
    [['--stdin-null', 'touch', marker], /^hbx-shim: unknown option touch; usage: /],
    [['--stdout'], /^hbx-shim: missing value for --stdout; usage: /],
    [['--stdout', '--', 'touch', marker], /^hbx-shim: missing value for --stdout; usage: /],
    [['--overlay', 'a', 'b', 'c', '--', 'touch', marker], /^hbx-shim: missing value for --overlay; usage: /],
    [['--pdeathsig', 'NOPE', '--', 'touch', marker], /^hbx-shim: unknown signal NOPE; usage: /],
    [['--stdin-null'], /^hbx-shim: missing --; usage: /],
    [['--'], /^hbx-shim: missing PROGRAM; usage: /],
    [['--mask-dir', '/sys/fs/cgroup/unified', '--', 'touch', marker], /--private-mounts is required by --mask-dir/],
    [['--ro-self', '/usr/bin/env', '--', 'touch', marker], /--private-mounts is required by --ro-self/],
    [['--on-exit', 'true', '--', 'touch', marker], /--exit-file is required by --on-exit/],
    [['--stdout', 'a', '--stdout', 'b', '--', 'touch', marker], /repeated option --stdout/],
    [['--exit-file', 'x', '--grace-ms', '10', '--', 'touch', marker], /--timeout-ms is required by --grace-ms/],
    [['--exit-file', 'x', '--pid-file', 'y', '--', 'touch', marker], /--timeout-ms is required by --pid-file/],
    [['--exit-file', 'x', '--timeout-ms', '10', '--grace-ms', '-1', '--', 'touch', marker], /not a number of milliseconds -1/],
    [['--exit-file', 'x', '--timeout-ms', '0', '--', 'touch', marker], /not a positive number of milliseconds 0/],
    [['--cpu-limit-ms', '10', '--cpu-usage', 'u', '--', 'touch', marker], /--exit-file is required by --cpu-limit-ms/],
    [['--exit-file', 'x', '--cpu-limit-ms', '10', '--', 'touch', marker], /--cpu-usage is required by --cpu-limit-ms/],
    [['--exit-file', 'x', '--cpu-usage', 'u', '--', 'touch', marker], /--cpu-limit-ms is required by --cpu-usage/],
    [['--nofile', 'many', '--', 'touch', marker], /not a number of files many/],
  ];
  for (const [args, message] of cases) {
    const r = run(args);
    t.is(r.status, 125, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
    t.is(r.stderr.split('\n').length, 2, `exactly one line for: ${args.join(' ')}`);
  }
  t.false(existsSync(marker));
});

rootTest('private mounts + overlay: visible to PROGRAM, gone from the host after exit', (t) => {
  const d = freshDir('ov');
  const [lower1, lower2, upper, wk, target] = ['lower1', 'lower2', 'upper', 'work', 'rootfs'].map((n) => join(d, n));
  for (const p of [lower1, lower2, upper, wk, target]) mkdirSync(p!);
  writeFileSync(join(lower1!, 'a'), 'from-lower1');
  writeFileSync(join(lower2!, 'b'), 'from-lower2');
  const before = readMountinfo().length;

  const script = `grep -q " ${target} .* - overlay " /proc/self/mountinfo && cat ${target}/a ${target}/b && echo new > ${target}/c`;
  const r = run(['--private-mounts', '--mask-dir', d, '--overlay', `${lower1}:${lower2}`, upper!, wk!, target!, '--', 'sh', '-c', script]);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, 'from-lower1from-lower2');

  t.deepEqual(hostMountsNaming(d), []);
  t.is(readMountinfo().length, before);
  t.deepEqual(readdirSync(target!), []);
  t.is(readFileSync(join(upper!, 'c'), 'utf8'), 'new\n');
});

rootTest('--ro-self makes the path read-only inside only; a missing path is skipped', (t) => {
  const d = freshDir('ro');
  const file = join(d, 'bin');
  writeFileSync(file, 'x');
  const r = run(['--private-mounts', '--ro-self', join(d, 'missing'), '--ro-self', file, '--', 'sh', '-c', `echo y > ${file}`]);
  t.not(r.status, 0);
  t.regex(r.stderr, /Read-only file system/);
  t.is(readFileSync(file, 'utf8'), 'x');
  writeFileSync(file, 'z'); // still writable on the host
  t.deepEqual(hostMountsNaming(d), []);
});

rootTest('--mask-dir covers a cgroup2 mount point and ignores anything else', (t) => {
  const cg2 = readMountinfo().find((m) => m.fstype === 'cgroup2')?.mountPoint;
  const plain = freshDir('plain');
  writeFileSync(join(plain, 'keep'), '');
  const probe = cg2 ? `ls -A ${cg2} | wc -l; ` : '';
  const r = run(['--private-mounts', '--mask-dir', plain, '--mask-dir', join(plain, 'missing'), ...(cg2 ? ['--mask-dir', cg2] : []), '--', 'sh', '-c', `${probe}ls ${plain}`]);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, `${cg2 ? '0\n' : ''}keep\n`);
  if (!cg2) t.log('no cgroup2 mount on this host: only the skip path was tested');
});

rootTest('--join-cgroup: PROGRAM runs in the cgroup from its start; a missing cgroup fails before PROGRAM runs', (t) => {
  // A real cgroup in whichever hierarchy has the cpu controller (the unified one on cgroup v2).
  const m = readMountinfo().find((x) => (x.fstype === 'cgroup' && x.superOptions.includes('cpu')) || (x.fstype === 'cgroup2' && x.mountPoint === '/sys/fs/cgroup'));
  if (!m) return t.fail('no cpu cgroup hierarchy');
  const dir = join(m.mountPoint, `hbx-shim-test-${process.pid}`);
  mkdirSync(dir);
  try {
    // PROGRAM reads its own /proc/self/cgroup: had it been moved after exec, it would still show the old one.
    const r = run(['--join-cgroup', join(dir, 'cgroup.procs'), '--', 'cat', '/proc/self/cgroup']);
    t.is(r.status, 0, r.stderr);
    const line = r.stdout.split('\n').find((l) => (m.fstype === 'cgroup2' ? l.startsWith('0::') : (l.split(':')[1] ?? '').split(',').includes('cpu')));
    t.is(line?.split(':')[2], `/hbx-shim-test-${process.pid}`, r.stdout);
    const marker = join(freshDir('cg'), 'ran');
    const bad = run(['--join-cgroup', join(dir, 'nope', 'cgroup.procs'), '--', 'touch', marker]);
    t.is(bad.status, 125);
    t.is(bad.stderr, `hbx-shim: join cgroup ${join(dir, 'nope', 'cgroup.procs')}: No such file or directory\n`);
    t.false(existsSync(marker));
  } finally {
    rmdirSync(dir);
  }
});

/** A cgroup that counts CPU time (cpuacct on v1, the unified hierarchy on v2), and the file that counts it. */
function cpuCountingCgroup(name: string): { dir: string; usage: string } | null {
  const m = readMountinfo().find((x) => (x.fstype === 'cgroup' && x.superOptions.includes('cpuacct')) || (x.fstype === 'cgroup2' && x.mountPoint === '/sys/fs/cgroup'));
  if (!m) return null;
  const dir = join(m.mountPoint, `hbx-shim-${name}-${process.pid}`);
  mkdirSync(dir);
  return { dir, usage: join(dir, m.fstype === 'cgroup2' ? 'cpu.stat' : 'cpuacct.usage') };
}

/** Removes a test's own cgroup, killing what a failed test left spinning in it first. */
const removeCgroup = (dir: string): Promise<boolean> =>
  waitFor(() => {
    try {
      for (const pid of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
      rmdirSync(dir);
      return true;
    } catch {
      return false;
    }
  }, 5000);

rootTest('monitor mode: --cpu-limit-ms kills PROGRAM once the cgroup has used that much CPU, counting every process; a sleeper is left alone', async (t) => {
  const cg = cpuCountingCgroup('cpu');
  const idle = cpuCountingCgroup('idle');
  if (!cg || !idle) return t.fail('no cpuacct or cgroup2 hierarchy');
  try {
    const exitFile = join(freshDir('cpu'), 'exit.json');
    const under = (c: { dir: string; usage: string }) => ['--join-cgroup', join(c.dir, 'cgroup.procs'), '--exit-file', exitFile, '--cpu-limit-ms', '400', '--cpu-usage', c.usage, '--'];
    const cpu = under(cg);
    // Two spinners: the limit is the group's, so they reach it in about half the wall time one
    // would. The second dies with the first, as a container's init dies with its runtime.
    const t0 = Date.now();
    const r = run([...cpu, 'sh', '-c', `${shim} --pdeathsig KILL -- sh -c 'while :; do :; done' & while :; do :; done`]);
    const wallMs = Date.now() - t0;
    t.is(r.status, 137, r.stderr);
    t.like(readExitFile(exitFile), { exitCode: 137, signal: 'SIGKILL', timedOut: false, cpuTimeLimitExceeded: true });
    const raw = readFileSync(cg.usage, 'utf8');
    const usedMs = /usage_usec (\d+)/.test(raw) ? Number(/usage_usec (\d+)/.exec(raw)![1]) / 1000 : Number(raw) / 1e6;
    t.log(`two spinners under --cpu-limit-ms 400: killed at ${usedMs.toFixed(0)} ms of CPU after ${wallMs} ms`);
    t.true(usedMs >= 400 && usedMs < 400 + 150, `used ${usedMs} ms`);
    // The spinner the shell left behind died with it (a v1 cgroup outlives its processes only empty).
    t.true(await waitFor(() => readFileSync(join(cg.dir, 'cgroup.procs'), 'utf8').trim() === '', 2000), 'a spinner survived');
    // Wall time is not CPU time: longer than the limit, asleep.
    const slept = run([...under(idle), 'sleep', '0.6']);
    t.is(slept.status, 0, slept.stderr);
    t.like(readExitFile(exitFile), { exitCode: 0, signal: null, cpuTimeLimitExceeded: false });
  } finally {
    await removeCgroup(cg.dir);
    await removeCgroup(idle.dir);
  }
});

test('--nofile raises the hard RLIMIT_NOFILE for PROGRAM where the host lets it, and never lowers it', (t) => {
  const hard = Number(/^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))![1]);
  const lower = run(['--nofile', '64', '--', 'sh', '-c', 'ulimit -Hn']);
  t.is(lower.status, 0, lower.stderr);
  t.is(lower.stdout.trim(), String(hard));
  const caps = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
  const higher = run(['--nofile', String(hard + 1000), '--', 'sh', '-c', 'ulimit -Hn']);
  if ((caps >> 24n) & 1n) {
    t.is(higher.status, 0, higher.stderr);
    t.is(higher.stdout.trim(), String(hard + 1000));
  } else {
    // Without CAP_SYS_RESOURCE (this host) the raise is refused, in one line, before PROGRAM runs.
    t.is(higher.status, 125);
    t.is(higher.stderr, 'hbx-shim: setrlimit RLIMIT_NOFILE (more than /proc/sys/fs/nr_open?): Operation not permitted\n');
  }
});

rootTest('a failing setup step prints one line and exits 125 before PROGRAM runs', (t) => {
  const d = freshDir('fail');
  const marker = join(d, 'ran');
  const r = run(['--private-mounts', '--overlay', join(d, 'nolower'), d, d, d, '--', 'touch', marker]);
  t.is(r.status, 125);
  t.is(r.stderr, `hbx-shim: overlay ${join(d, 'nolower')}: No such file or directory\n`);
  t.false(existsSync(marker));
  const s = run(['--stdout', join(d, 'no', 'such', 'dir'), '--', 'touch', marker]);
  t.is(s.status, 125);
  t.is(s.stderr, `hbx-shim: stdout ${join(d, 'no', 'such', 'dir')}: No such file or directory\n`);
  t.false(existsSync(marker));
});

test('--stdout/--stderr append to files, --stdin-null reads nothing', (t) => {
  const d = freshDir('io');
  const out = join(d, 'out.log');
  const err = join(d, 'err.log');
  writeFileSync(out, 'old\n');
  const args = ['--stdout', out, '--stderr', err, '--stdin-null', '--', 'sh', '-c', 'echo o; echo e >&2; cat; echo "stdin:$?"'];
  const r = spawnSync(shim, args, { encoding: 'utf8', input: 'must not be read\n' });
  t.is(r.status, 0);
  t.is(r.stdout, '');
  t.is(readFileSync(out, 'utf8'), 'old\no\nstdin:0\n');
  t.is(readFileSync(err, 'utf8'), 'e\n');
});

test('monitor mode: exit file for a normal exit, then --on-exit runs', (t) => {
  const d = freshDir('mon');
  const exitFile = join(d, 'exit.json');
  const r = run(['--exit-file', exitFile, '--on-exit', `test -s ${exitFile} && echo cleaned > ${d}/on-exit`, '--', 'sh', '-c', 'exit 3']);
  t.is(r.status, 0, r.stderr);
  const e = readExitFile(exitFile);
  t.is(e.exitCode, 3);
  t.is(e.signal, null);
  t.true(Math.abs(Date.now() - e.finishedAtMs) < 10_000);
  t.is(readFileSync(join(d, 'on-exit'), 'utf8'), 'cleaned\n');
  t.false(existsSync(`${exitFile}.tmp`));
});

test('monitor mode: exit file for a signal death; without --on-exit the monitor exits 128+N', (t) => {
  const d = freshDir('sig');
  const exitFile = join(d, 'exit.json');
  const r = run(['--exit-file', exitFile, '--', 'sh', '-c', 'kill -9 $$']);
  t.is(r.status, 137);
  const e = readExitFile(exitFile);
  t.deepEqual([e.exitCode, e.signal], [null, 'SIGKILL']);
  const r2 = run(['--exit-file', exitFile, '--', 'sh', '-c', 'kill -USR1 $$']);
  t.is(r2.status, 128 + 10);
  t.is(readExitFile(exitFile).signal, 'SIGUSR1');
});

test('monitor mode: --timeout-ms sends SIGTERM at the deadline; exit code 124, the signal and timedOut say so', (t) => {
  const d = freshDir('timeout');
  const exitFile = join(d, 'exit.json');
  const t0 = Date.now();
  const r = run(['--exit-file', exitFile, '--timeout-ms', '300', '--', 'sleep', '30']);
  const took = Date.now() - t0;
  t.true(took >= 300 && took < 1500, `took ${took} ms`);
  t.is(r.status, 124);
  t.deepEqual(JSON.parse(readFileSync(exitFile, 'utf8')), {
    exitCode: 124,
    signal: 'SIGTERM',
    finishedAtMs: readExitFile(exitFile).finishedAtMs,
    timedOut: true,
    cpuTimeLimitExceeded: false,
  });
  const quick = run(['--exit-file', exitFile, '--timeout-ms', '5000', '--', 'true']);
  t.is(quick.status, 0);
  t.false((JSON.parse(readFileSync(exitFile, 'utf8')) as { timedOut: boolean }).timedOut);
});

test('monitor mode: a timed-out PROGRAM that exits by itself after SIGTERM: 124, no signal', (t) => {
  const d = freshDir('timeout-trap');
  const exitFile = join(d, 'exit.json');
  const r = run(['--exit-file', exitFile, '--timeout-ms', '400', '--grace-ms', '5000', '--', 'sh', '-c', "trap 'exit 0' TERM; while :; do sleep 0.05; done"]);
  t.is(r.status, 124);
  t.like(readExitFile(exitFile), { exitCode: 124, signal: null, timedOut: true });
  // A runtime reports its container's death by signal N as 128+N: that is the signal.
  const viaCode = run(['--exit-file', exitFile, '--timeout-ms', '400', '--', 'sh', '-c', "trap 'exit 143' TERM; while :; do sleep 0.05; done"]);
  t.is(viaCode.status, 124);
  t.like(readExitFile(exitFile), { exitCode: 124, signal: 'SIGTERM', timedOut: true });
});

test('monitor mode: a PROGRAM that ignores SIGTERM gets SIGKILL after --grace-ms', (t) => {
  const d = freshDir('timeout-kill');
  const exitFile = join(d, 'exit.json');
  const t0 = Date.now();
  const r = run(['--exit-file', exitFile, '--timeout-ms', '300', '--grace-ms', '600', '--', 'sh', '-c', "trap '' TERM; exec sleep 30"]);
  const took = Date.now() - t0;
  t.true(took >= 900 && took < 2500, `took ${took} ms`);
  t.is(r.status, 124);
  t.like(readExitFile(exitFile), { exitCode: 124, signal: 'SIGKILL', timedOut: true });
  // No grace: SIGKILL at the deadline.
  const t1 = Date.now();
  const now = run(['--exit-file', exitFile, '--timeout-ms', '300', '--grace-ms', '0', '--', 'sh', '-c', "trap '' TERM; exec sleep 30"]);
  t.true(Date.now() - t1 < 1500);
  t.is(now.status, 124);
  t.like(readExitFile(exitFile), { exitCode: 124, signal: 'SIGKILL', timedOut: true });
});

test("monitor mode: with --pid-file the limit counts from the workload's start, not from PROGRAM's", (t) => {
  const d = freshDir('timeout-from');
  const exitFile = join(d, 'exit.json');
  const pidFile = join(d, 'pid');
  const stray = join(d, 'stray');
  // PROGRAM "sets up" for 400 ms, then writes its pid, with a child leading its own process
  // group as a started init has: the workload still gets its 600 ms, and TERM goes out at once.
  const t0 = Date.now();
  const r = run([
    '--exit-file',
    exitFile,
    '--timeout-ms',
    '600',
    '--pid-file',
    pidFile,
    '--',
    'sh',
    '-c',
    `sleep 0.4; setsid sleep 30 >/dev/null 2>&1 & echo $! > ${stray}; echo $$ > ${pidFile}.tmp; mv ${pidFile}.tmp ${pidFile}; wait`,
  ]);
  const took = Date.now() - t0;
  process.kill(Number(readFileSync(stray, 'utf8')), 'SIGKILL');
  t.is(r.status, 124);
  t.like(readExitFile(exitFile), { exitCode: 124, signal: 'SIGTERM', timedOut: true });
  t.true(took >= 1000 && took < 1800, `took ${took} ms`);
});

test('monitor mode: with --pid-file TERM waits (up to 1 s) until the init can pass it on', (t) => {
  const d = freshDir('timeout-ready');
  const exitFile = join(d, 'exit.json');
  const pidFile = join(d, 'pid');
  // An "init" without a child: it never becomes ready, so TERM goes out after 1 s of waiting.
  const t0 = Date.now();
  const r = run(['--exit-file', exitFile, '--timeout-ms', '300', '--pid-file', pidFile, '--', 'sh', '-c', `echo $$ > ${pidFile}; exec sleep 30`]);
  const took = Date.now() - t0;
  t.is(r.status, 124);
  t.like(readExitFile(exitFile), { exitCode: 124, signal: 'SIGTERM', timedOut: true });
  t.true(took >= 1250 && took < 2500, `took ${took} ms`);
});

test('monitor mode: with --pid-file the deadline waits for the workload to start', async (t) => {
  const d = freshDir('timeout-unstarted');
  const exitFile = join(d, 'exit.json');
  const pidFile = join(d, 'pid');
  const child = spawn(shim, ['--exit-file', exitFile, '--timeout-ms', '300', '--pid-file', pidFile, '--', 'sleep', '30'], { stdio: 'ignore' });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  await new Promise((r) => setTimeout(r, 1000));
  t.false(existsSync(exitFile), 'not timed out before the start');
  // An init that is already gone cannot be waited for: TERM goes out at the deadline.
  writeFileSync(pidFile, '999999999\n');
  const t0 = Date.now();
  t.is(await exited, 124);
  t.true(Date.now() - t0 < 1500);
  t.like(readExitFile(exitFile), { exitCode: 124, signal: 'SIGTERM', timedOut: true });
});

test('monitor mode: exec failure and setup failure are recorded too', (t) => {
  const d = freshDir('monfail');
  const exitFile = join(d, 'exit.json');
  const r = run(['--exit-file', exitFile, '--on-exit', `touch ${d}/on-exit`, '--', '/nonexistent/prog']);
  t.is(r.stderr, 'hbx-shim: cannot exec /nonexistent/prog: No such file or directory\n');
  t.is(readExitFile(exitFile).exitCode, 127);
  t.true(existsSync(join(d, 'on-exit')));
  const s = run(['--exit-file', exitFile, '--stdout', join(d, 'no', 'dir'), '--', 'true']);
  t.is(s.status, 125);
  t.is(readExitFile(exitFile).exitCode, 125);
});

test('monitor forwards SIGTERM to PROGRAM and records how it ended', async (t) => {
  const d = freshDir('term');
  const exitFile = join(d, 'exit.json');
  const ready = join(d, 'ready');
  const child = spawn(shim, ['--exit-file', exitFile, '--', 'sh', '-c', `trap 'exit 7' TERM; touch ${ready}; while :; do sleep 0.05; done`], { stdio: 'ignore' });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  t.true(await waitFor(() => existsSync(ready), 5000));
  child.kill('SIGTERM');
  t.is(await exited, 7);
  t.is(readExitFile(exitFile).exitCode, 7);
});

test('monitor survives the death of its parent and still writes the exit file', async (t) => {
  const d = freshDir('orphan');
  const exitFile = join(d, 'exit.json');
  const pidFile = join(d, 'monitor.pid');
  // The parent shell starts the monitor in the background, then SIGKILLs itself.
  const r = spawnSync('sh', ['-c', `"$0" --pdeathsig KILL --exit-file ${exitFile} --on-exit 'touch ${d}/on-exit' -- sleep 0.4 & echo $! > ${pidFile}; kill -9 $$`, shim], { stdio: 'ignore' });
  t.is(r.signal, 'SIGKILL');
  const monitorPid = Number(readFileSync(pidFile, 'utf8'));
  t.false(deadOrZombie(monitorPid), 'monitor died with its parent');
  t.true(await waitFor(() => existsSync(join(d, 'on-exit')), 5000));
  t.is(readExitFile(exitFile).exitCode, 0);
});

test('--pdeathsig kills PROGRAM when the process that started it dies', async (t) => {
  const d = freshDir('pdeath');
  const pidFile = join(d, 'pid');
  const r = spawnSync('sh', ['-c', `"$0" --pdeathsig KILL -- sleep 30 & echo $! > ${pidFile}; sleep 0.2; kill -9 $$`, shim], { stdio: 'ignore' });
  t.is(r.signal, 'SIGKILL');
  const pid = Number(readFileSync(pidFile, 'utf8'));
  t.true(await waitFor(() => deadOrZombie(pid), 2000));
});
