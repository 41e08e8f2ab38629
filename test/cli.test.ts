import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliRoot } from './helpers.js';

// The bundled CLI, end to end, as a user calls it.

const { hbx } = cliRoot(test, 'hbx-cli-');

test.serial('--version prints the package version', async (t) => {
  const r = await hbx(['--version']);
  t.is(r.exitCode, 0);
  t.regex(r.stdout, /^\d+\.\d+\.\d+/);
});

test.serial('run streams output and exits with the workload exit code', async (t) => {
  const r = await hbx(['run', '--rm', 'busybox', '--', 'sh', '-c', 'echo hello; echo oops >&2; exit 42']);
  t.is(r.exitCode, 42);
  t.is(r.stdout, 'hello');
  t.is(r.stderr, 'oops');
});

test.serial('run --json prints one result object', async (t) => {
  const r = await hbx(['run', '--rm', '--json', '-m', '64m', 'busybox', '--', 'echo', 'hi']);
  t.is(r.exitCode, 0);
  const o = JSON.parse(r.stdout) as Record<string, unknown>;
  for (const k of [
    'id',
    'backend',
    'placement',
    'exitCode',
    'signal',
    'timedOut',
    'oomKilled',
    'durationMs',
    'startupMs',
    'stdout',
    'stderr',
    'stdoutTruncated',
    'stderrTruncated',
    'peakMemoryBytes',
  ]) {
    t.true(k in o, `result has ${k}`);
  }
  t.is(o.stdout, 'hi\n');
  t.is((o.placement as { backend: string }).backend, 'container');
});

test.serial('a command that is not found exits 127', async (t) => {
  const r = await hbx(['run', '--rm', 'busybox', '--', 'no-such-command']);
  t.is(r.exitCode, 127);
});

test.serial('--timeout kills the workload and says so', async (t) => {
  const r = await hbx(['run', '--rm', '--json', '--timeout', '300ms', 'busybox', '--', 'sleep', '10']);
  const o = JSON.parse(r.stdout) as { timedOut: boolean; durationMs: number };
  t.true(o.timedOut);
  t.true(o.durationMs < 5000);
});

const BAD: [string, string[], RegExp][] = [
  ['negative memory', ['run', '-m', '-5m', 'busybox', 'true'], /memory/],
  ['unknown isolation', ['run', '--isolation', 'hypervisor', 'busybox', 'true'], /isolation/],
  ['relative volume', ['run', '-v', 'data:/data', 'busybox', 'true'], /volume/],
  ['volume onto /proc', ['run', '-v', '/tmp:/proc', 'busybox', 'true'], /guestPath/],
  ['unknown image', ['run', 'nosuchimage', 'true'], /image/],
  ['cpus above host', ['run', '--cpus', '999', 'busybox', 'true'], /cpus/],
  ['no backend fits: own kernel within 10 ms', ['run', '--own-kernel', '--startup-budget', '10ms', 'busybox', 'true'], /no backend can run this workload/],
  ['unknown sandbox', ['rm', 'no-such-sandbox'], /no-such-sandbox/],
  ['run -e without =', ['run', '-e', 'NOEQUALS', 'busybox', 'true'], /^hybridbox: --env: "NOEQUALS" is not valid; allowed: KEY=VALUE, e\.g\. --env LANG=C\.UTF-8$/],
  ['exec -e without =', ['exec', '-e', 'NOEQUALS', 'no-such-sandbox', '--', 'true'], /^hybridbox: --env: "NOEQUALS" is not valid; allowed: KEY=VALUE, e\.g\. --env LANG=C\.UTF-8$/],
  ['build --build-arg without =', ['build', '--build-arg', '=1.2', tmpdir()], /^hybridbox: --build-arg: "=1\.2" is not valid; allowed: KEY=VALUE, e\.g\. --build-arg VERSION=1\.2$/],
];
for (const [title, args, field] of BAD) {
  test.serial(`bad input: ${title} → one line, exit 125, nothing created`, async (t) => {
    const r = await hbx(args);
    t.is(r.exitCode, 125);
    t.is(r.stderr.split('\n').length, 1, r.stderr);
    t.regex(r.stderr, /^hybridbox: /);
    t.regex(r.stderr, field);
    const ps = await hbx(['ps', '-a', '--json']);
    t.deepEqual(JSON.parse(ps.stdout), []);
  });
}

test.serial('a spec file, with a flag overriding it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hbx-spec-'));
  const f = join(dir, 'spec.yaml');
  writeFileSync(f, 'image: busybox\ncommand: [sh, -c, "echo $WHO"]\nenv:\n  WHO: file\n');
  const r = await hbx(['run', '--rm', '-f', f, '-e', 'WHO=flag']);
  t.is(r.stdout, 'flag');
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'image: busybox\nmemory: 5\n');
  const b = await hbx(['run', '-f', bad]);
  t.is(b.exitCode, 125);
  t.regex(b.stderr, /memory/);
});

test.serial('place explains its choice without running anything', async (t) => {
  const r = await hbx(['place', '--json', '--trust', 'untrusted', 'busybox', '--', 'true']);
  t.is(r.exitCode, 0);
  const p = JSON.parse(r.stdout) as { backend: string; reasons: string[]; rejected: { backend: string; reason: string }[] };
  // Untrusted code goes behind a VM boundary when this host can run VMs.
  const { findGuestBoot } = await import('../src/runtimes/vm/boot.js');
  t.is(p.backend, findGuestBoot() ? 'microvm' : 'container');
  t.true(p.reasons.some((x) => /untrusted/.test(x)));
  t.deepEqual(
    p.rejected.map((x) => x.backend).sort(),
    ['container', 'microvm', 'vm'].filter((b) => b !== p.backend),
  );
  const ps = await hbx(['ps', '-a', '--json']);
  t.deepEqual(JSON.parse(ps.stdout), []);
});

test.serial('detached lifecycle through the CLI: run -d, ps, logs, exec, stop, rm', async (t) => {
  const d = await hbx(['run', '-d', '--name', 'cli-life', 'busybox', '--', 'sh', '-c', 'echo ready; exec sleep 60']);
  t.is(d.exitCode, 0, d.stderr);
  const ps = await hbx(['ps']);
  t.regex(ps.stdout, /cli-life .* running/);
  await new Promise((r) => setTimeout(r, 300));
  t.is((await hbx(['logs', 'cli-life'])).stdout, 'ready');
  t.is((await hbx(['exec', 'cli-life', '--', 'hostname'])).stdout, 'cli-life');
  const rmRunning = await hbx(['rm', 'cli-life']);
  t.is(rmRunning.exitCode, 125);
  t.regex(rmRunning.stderr, /running/);
  t.is((await hbx(['stop', '-t', '2s', 'cli-life'])).exitCode, 0);
  t.regex((await hbx(['ps', '-a'])).stdout, /cli-life .* exited/);
  t.is((await hbx(['rm', 'cli-life'])).exitCode, 0);
});

test.serial('concurrent CLI processes never get the same address', async (t) => {
  const runs = await Promise.all(Array.from({ length: 6 }, () => hbx(['run', '-d', '--network', 'bridge', 'busybox', '--', 'sleep', '30'])));
  for (const r of runs) t.is(r.exitCode, 0, r.stderr);
  const list = JSON.parse((await hbx(['ps', '--json'])).stdout) as { id: string; ip: string }[];
  const ips = list.map((s) => s.ip);
  t.is(ips.length, 6);
  t.is(new Set(ips).size, 6);
  await hbx(['rm', '-f', ...list.map((s) => s.id)]);
});

test.serial('logs -f follows a detached sandbox to its end; inspect shows the OCI config', async (t) => {
  const d = await hbx(['run', '-d', '--name', 'follow-me', 'busybox', '--', 'sh', '-c', 'echo first; sleep 0.5; echo second']);
  t.is(d.exitCode, 0, d.stderr);
  const logs = await hbx(['logs', '-f', 'follow-me']);
  t.is(logs.stdout, 'first\nsecond');
  const info = JSON.parse((await hbx(['inspect', 'follow-me'])).stdout) as { state: string; backendDetails: { ociConfig: { linux: { namespaces: { type: string }[] } } } };
  t.is(info.state, 'exited');
  t.deepEqual(info.backendDetails.ociConfig.linux.namespaces.map((n) => n.type).sort(), ['cgroup', 'ipc', 'mount', 'network', 'pid', 'uts']);
  await hbx(['rm', 'follow-me']);
});

test.serial('--runtime runc: the same verbs, and later calls find the runtime by themselves', async (t) => {
  const d = await hbx(['--runtime', 'runc', 'run', '-d', '--name', 'on-runc', 'busybox', '--', 'sleep', '30']);
  t.is(d.exitCode, 0, d.stderr);
  t.is((await hbx(['exec', 'on-runc', '--', 'echo', 'via-runc'])).stdout, 'via-runc');
  t.is((await hbx(['rm', '-f', 'on-runc'])).exitCode, 0);
  const r = await hbx(['--runtime', 'runc', 'run', '--rm', 'busybox', '--', 'sh', '-c', 'exit 9']);
  t.is(r.exitCode, 9);
});

test.serial('info --json: the host and each backend, available or why not', async (t) => {
  const r = await hbx(['info', '--json']);
  t.is(r.exitCode, 0, r.stderr);
  const info = JSON.parse(r.stdout) as { host: { kvm: { usable: boolean }; cgroup: { layout: string } }; backends: { kind: string; available: boolean; reason: string | null }[] };
  t.is(typeof info.host.kvm.usable, 'boolean');
  t.regex(info.host.cgroup.layout, /^(v1|hybrid|v2)$/);
  t.deepEqual(
    info.backends.map((b) => b.kind),
    ['container', 'microvm', 'vm'],
  );
  for (const b of info.backends) t.is(b.available, b.reason === null);
});
