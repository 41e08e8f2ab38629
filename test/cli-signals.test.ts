import test from 'ava';
import { execa } from 'execa';
import { CLI, cliRoot, hostTraces, stateOf, waitFor } from './helpers.js';

// A foreground `hybridbox run` as a terminal user drives it: signals forwarded to the
// workload, standard input piped through, and the end recorded (or removed) afterwards.

const { hbx, env, root: rootOf } = cliRoot(test, 'hbx-cli-signals-');

/** Starts a foreground run and waits until its workload is up (its record is running). */
async function started(name: string, args: string[]) {
  const child = execa('node', [CLI, 'run', '--name', name, ...args], { env: env(), reject: false });
  const up = await waitFor(
    () => {
      const db = stateOf(rootOf());
      try {
        const rec = db.find(name);
        return rec?.state === 'running' && hostTraces([rec.id]).some((x) => x.startsWith('cgroup'));
      } finally {
        db.close();
      }
    },
    20_000,
    50,
  );
  return { child, up };
}

for (const [sig, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
] as const) {
  test.serial(`${sig} to a foreground run --rm reaches the workload; the exit is ${code} and nothing is left`, async (t) => {
    const name = `sig-${sig.toLowerCase()}`;
    const { child, up } = await started(name, ['--rm', 'busybox', '--', 'sleep', '30']);
    t.true(up, 'the workload started');
    const id = stateOf(rootOf()).find(name)!.id;
    const t0 = Date.now();
    child.kill(sig);
    const r = await child;
    t.is(r.exitCode, code, `${r.stderr} | ${r.stdout} | signal=${r.signal} | ${Date.now() - t0} ms`);
    t.true(Date.now() - t0 < 10_000, 'the workload ended promptly');
    t.is(stateOf(rootOf()).find(name), undefined, 'removed under --rm');
    t.deepEqual(hostTraces([id]), []);
  });
}

test.serial('SIGINT without --rm records the exit (130), not a crash', async (t) => {
  const { child, up } = await started('sig-keep', ['busybox', '--', 'sleep', '30']);
  t.true(up);
  child.kill('SIGINT');
  const r = await child;
  t.is(r.exitCode, 130, r.stderr);
  const rec = stateOf(rootOf()).find('sig-keep')!;
  t.is(rec.state, 'exited', rec.stateReason ?? '');
  t.is(rec.exitCode, 130);
  const ps = await hbx(['ps', '-a']);
  t.regex(ps.stdout, /sig-keep.*exited 130/);
});

test.serial('a workload that ignores SIGINT is killed by the third one', async (t) => {
  const { child, up } = await started('sig-stubborn', ['--rm', 'busybox', '--', 'sh', '-c', "trap '' INT; sleep 30"]);
  t.true(up);
  for (let i = 0; i < 3; i++) {
    child.kill('SIGINT');
    await new Promise((r) => setTimeout(r, 300));
  }
  const r = await child;
  t.is(r.exitCode, 137, r.stderr);
  t.is(stateOf(rootOf()).find('sig-stubborn'), undefined);
});

test.serial('run -i passes standard input through, with its EOF', async (t) => {
  const r = await hbx(['run', '-i', '--rm', 'busybox', '--', 'cat'], 'hello\nworld\n');
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stdout, 'hello\nworld');
  const wc = await hbx(['run', '-i', '--rm', 'busybox', '--', 'wc', '-c'], 'x'.repeat(100_000));
  t.is(wc.stdout.trim(), '100000');
});

test.serial('without -i the workload reads /dev/null', async (t) => {
  const r = await hbx(['run', '--rm', 'busybox', '--', 'cat'], 'not passed\n');
  t.is(r.exitCode, 0);
  t.is(r.stdout, '');
});

test.serial('-i with -d is refused with one line and exit 125', async (t) => {
  const r = await hbx(['run', '-i', '-d', 'busybox', '--', 'cat']);
  t.is(r.exitCode, 125);
  t.regex(r.stderr, /^hybridbox: interactive: .*drop -i or -d$/);
});
