// The classic attacks on a code-execution service, each sent as an untrusted request through
// real HTTP, each checked against what it tried to reach on the host.
import test from 'ava';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { readFileSync, statfsSync } from 'node:fs';
import { Client } from '../src/client/index.js';
import type { Hybridbox } from '../src/index.js';
import { type Service, startService } from '../src/service/index.js';
import { freshHybridbox, hostTraces } from './helpers.js';
import { watchAnswers } from './support/answers.js';

let hb: Hybridbox;
let cleanup: () => Promise<void>;
let svc: Service;
let client: Client;
const ids = new Set<string>();
const answers = watchAnswers();

test.before(async () => {
  ({ hb, cleanup } = await freshHybridbox('hbx-attack-'));
  svc = await startService({ hb, listen: '127.0.0.1:0', workTmpfsMiB: 64, version: 'test', extend: answers.extend });
  const { ServiceStore, createKey } = await import('../src/service/index.js');
  const store = new ServiceStore(hb.root);
  const key = createKey(store, { name: 'attacker', scope: 'run', quota: {} }).secret;
  store.close();
  client = new Client({ host: svc.address, apiKey: key });
});

test.after.always(async () => {
  await svc?.close();
  await cleanup?.();
});

test.after('every answer the service sent matched its OpenAPI document', () => {
  answers.assertClean();
});

async function run(script: string, extra: Record<string, unknown> = {}) {
  const r = await client.runs.create({ image: 'busybox', command: ['sh', '-c', script], ...extra }, { waitMs: 60_000 });
  const done = r.status === 'queued' || r.status === 'running' ? await client.runs.get(r.id, { waitMs: 60_000 }) : r;
  if (done.result) ids.add(done.result.sandboxId);
  return done;
}

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
const hostPids = () => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[3]!.split('/')[1]);

for (const isolation of ['container', 'microvm'] as const) {
  test.serial(`${isolation}: a fork bomb is held at the pids limit and ends with a verdict; the host and the service are unharmed`, async (t) => {
    const before = hostPids();
    const r = await run(':(){ :|:& };: ; sleep 2; echo survived', { isolation, limits: { pids: 64, wallTimeMs: 4000 } });
    t.is(r.status, 'completed');
    t.not(r.result!.verdict, 'internal-error', r.result!.message ?? '');
    t.true(hostPids() < before + 50, `host threads ${before} → ${hostPids()}`);
    t.true((await client.health()).ok);
  });
}

test.serial('disk fill: a compile step filling its box hits the service tmpfs, not the host disk; /tmp is bounded', async (t) => {
  const free = statfsSync('/').bavail * statfsSync('/').bsize;
  const r = await client.judge(
    {
      image: 'busybox',
      isolation: 'container',
      compile: ['sh', '-c', 'fallocate -l 8G /box/fill || dd if=/dev/zero of=/box/fill bs=1M count=8192'],
      run: ['true'],
      tests: [{ expected: '' }],
      limits: { memoryMiB: 512 },
    },
    { waitMs: 60_000 },
  );
  t.is(r.judge?.verdict, 'compile-error');
  t.regex(r.judge!.compile!.stderr, /No space left|space/i);
  const after = statfsSync('/').bavail * statfsSync('/').bsize;
  t.true(free - after < 512 * 1024 * 1024, `host disk went from ${free} to ${after}`);
  const tmp = await run('dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>&1; echo rc=$?', { isolation: 'container', limits: { tmpfsMiB: 16 } });
  t.regex(tmp.result!.stdout, /No space left on device/);
});

test.serial('runaway output is cut at the limit with output-limit, promptly', async (t) => {
  const r = await run('yes attack', { isolation: 'container', limits: { outputBytes: 4096, wallTimeMs: 20_000 } });
  t.is(r.result!.verdict, 'output-limit');
  t.true(r.result!.stdout.length <= 4096);
  t.true(r.result!.wallMs < 5000, `${r.result!.wallMs} ms`);
});

test.serial('nothing persists between runs: /tmp, the image root and /box start clean each time', async (t) => {
  const a = await run('echo x > /tmp/left; echo x > /etc/left 2>&1; echo x > /box/left 2>&1; echo x > /left 2>&1; true', { isolation: 'container', files: [{ path: 'f', content: 'f' }] });
  t.regex(a.result!.stdout + a.result!.stderr, /Read-only file system/);
  const b = await run('ls /tmp /box; ls /etc/left /left 2>&1 | grep -c "No such"', { isolation: 'container', files: [{ path: 'f', content: 'f' }] });
  t.is(b.result!.stdout.trim().split('\n').slice(-1)[0], '2');
  t.notRegex(b.result!.stdout, /left/);
});

test.serial('no network egress: neither the host service on loopback nor the host itself can be reached', async (t) => {
  const server = createServer((_q, s) => s.end('reached')).listen(0, '0.0.0.0');
  await new Promise((r) => server.once('listening', r));
  const port = (server.address() as { port: number }).port;
  const hostPort = new URL(svc.address).port;
  const r = await run(
    `ip -o link | grep -v ' lo:' | wc -l; wget -T 2 -qO- http://127.0.0.1:${port}/ 2>&1; wget -T 2 -qO- http://127.0.0.1:${hostPort}/v1/health 2>&1; wget -T 2 -qO- http://10.0.2.2:${port}/ 2>&1; true`,
    { isolation: 'container' },
  );
  server.close();
  t.notRegex(r.result!.stdout, /reached|"ok"/);
  t.is(r.result!.stdout.trim().split('\n')[0], '0', 'only loopback inside');
});

test.serial('/proc/self/exe overwrite (CVE-2019-5736 style) leaves the host runtime binaries unchanged', async (t) => {
  const crun = '/usr/bin/crun';
  const qemu = '/usr/bin/qemu-system-x86_64';
  const before = [sha(crun), sha(qemu)];
  for (const isolation of ['container', 'microvm'] as const) {
    const r = await run('for i in 1 2 3; do (echo pwned > /proc/self/exe) 2>&1; cat /proc/self/exe > /dev/null; done; (echo pwned > /proc/1/exe) 2>&1; true', { isolation });
    t.regex(r.result!.stdout + r.result!.stderr, /Permission denied|Text file busy|Read-only|denied/, isolation);
  }
  t.deepEqual([sha(crun), sha(qemu)], before);
});

test.serial('cgroup release_agent (CVE-2022-0492 style): mounting a cgroup hierarchy and writing release_agent are refused', async (t) => {
  const r = await run('mkdir -p /tmp/c; mount -t cgroup -o rdma cgroup /tmp/c 2>&1; echo rc=$?; echo /x > /sys/fs/cgroup/release_agent 2>&1; echo rc=$?; unshare -Urm true 2>&1; echo rc=$?', {
    isolation: 'container',
  });
  const out = r.result!.stdout;
  t.regex(out, /rc=[1-9]\d*\n[\s\S]*rc=[1-9]\d*/);
  t.notRegex(readFileSync('/proc/self/mountinfo', 'utf8'), /\/tmp\/c /);
});

test.serial('a leaked fd as the working directory (CVE-2024-21626 style) does not reach the host filesystem', async (t) => {
  // The API has no working-directory field; the library takes one, so try it there as a caller would.
  for (const fd of [3, 4, 5, 6, 7, 8]) {
    const r = await hb.sandboxes
      .run(
        { image: 'busybox', command: ['sh', '-c', 'ls -a ../../../ 2>&1; cat ../../../etc/hostname 2>&1'], workdir: `/proc/self/fd/${fd}`, trust: 'untrusted', isolation: 'container' },
        { remove: true },
      )
      .catch((e: Error) => e);
    if (r instanceof Error) continue;
    ids.add(r.id);
    t.notRegex(r.stdout, /\bwork\b|\.library/, `fd ${fd} shows the host root`);
  }
  t.pass();
});

test.serial('symlinks left in /box by a compile step are not followed by the service', async (t) => {
  const marker = readFileSync('/etc/hostname', 'utf8');
  const r = await client.judge(
    {
      image: 'busybox',
      isolation: 'container',
      compile: ['sh', '-c', 'ln -s /etc/hostname /box/out; ln -s /etc /box/etc; ln -s / /box/root; true'],
      run: ['sh', '-c', 'cat /box/out; echo hi > /box/etc/x 2>&1; true'],
      tests: [{ expected: '' }],
    },
    { waitMs: 60_000 },
  );
  t.truthy(r.judge);
  t.is(readFileSync('/etc/hostname', 'utf8'), marker);
  t.throws(() => readFileSync('/etc/x'));
});

test.after.always('nothing is left on the host', async (t) => {
  t.deepEqual(hostTraces(ids), []);
});
