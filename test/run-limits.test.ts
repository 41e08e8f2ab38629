import test from 'ava';
import { execa } from 'execa';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Hybridbox, RunResult } from '../src/index.js';
import { openFilesCeiling } from '../src/runtimes/container/limits.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { CLI, REPO, freshHybridbox, hostTraces, waitFor } from './helpers.js';

// The limits a judge sets, on real crun and real QEMU (TCG here): CPU time of the whole group,
// file size, open files, tmpfs size, output per stream, a read-only root, the untrusted
// seccomp additions, and no process outliving its run. Every case runs on a container and on
// a microVM (the same guest agent serves libvirt VMs: one combined case checks that path).
// The workload side is test/support/limits-probe.c, built here with gcc -static and passed in
// by a read-only volume.

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;
let probeDir: string;
const PROBE = '/probe/limits-probe';

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, root, cleanup } = await freshHybridbox('hbx-limits-'));
  probeDir = mkdtempSync(join(tmpdir(), 'hbx-probe-'));
  // An untrusted container's root is an unmapped uid on the host: it must be able to walk in.
  chmodSync(probeDir, 0o755);
  execFileSync('sh', [join(REPO, 'scripts', 'cc-static.sh'), join(REPO, 'test', 'support', 'limits-probe.c'), join(probeDir, 'limits-probe'), 'gcc', '-O1']);
});
test.after.always(async () => {
  await cleanup?.();
  if (probeDir) rmSync(probeDir, { recursive: true, force: true });
});

const KINDS = ['container', 'microvm'] as const;
type Kind = (typeof KINDS)[number] | 'vm';

function spec(kind: Kind, command: string[], more: Record<string, unknown> = {}): Record<string, unknown> {
  const volumes = [{ hostPath: probeDir, guestPath: '/probe', readOnly: true }, ...((more.volumes as unknown[]) ?? [])];
  return { image: 'busybox', isolation: kind, command, ...more, volumes };
}
const sh = (kind: Kind, script: string, more: Record<string, unknown> = {}) => spec(kind, ['sh', '-c', script], more);
const run = (s: Record<string, unknown>, opts: Parameters<Hybridbox['sandboxes']['run']>[1] = {}): Promise<RunResult> => hb.sandboxes.run(s, { remove: true, ...opts });
const brief = (r: RunResult) =>
  JSON.stringify({
    exitCode: r.exitCode,
    signal: r.signal,
    cpuTimeMs: r.cpuTimeMs,
    cpu: r.cpuTimeLimitExceeded,
    out: r.stdout.slice(0, 300),
    err: r.stderr.slice(0, 300),
    crash: r.crash,
  });

/** Lines "NAME RESULT" of the probe's syscalls modes, as an object. */
const results = (stdout: string): Record<string, string> =>
  Object.fromEntries(
    stdout
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string]),
  );

const LIMIT_MS = 500;
// A check every 5 ms per CPU at the end, plus reading and killing: well under this.
const OVERSHOOT_MS = 150;

for (const kind of KINDS) {
  test.serial(`${kind}: a CPU spinner is killed at cpuTimeMs; a sleeper under the same limit, longer in wall time, is not`, async (t) => {
    const spun = await run(spec(kind, [PROBE, 'spin', '1'], { resources: { cpuTimeMs: LIMIT_MS } }));
    t.true(spun.cpuTimeLimitExceeded, brief(spun));
    t.is(spun.signal, 'SIGKILL', brief(spun));
    t.is(spun.crash, null);
    t.true(spun.cpuTimeMs! >= LIMIT_MS && spun.cpuTimeMs! < LIMIT_MS + OVERSHOOT_MS, `cpuTimeMs ${spun.cpuTimeMs}`);
    const slept = await run(sh(kind, 'sleep 1.5; echo woke', { resources: { cpuTimeMs: LIMIT_MS } }));
    t.false(slept.cpuTimeLimitExceeded, brief(slept));
    t.is(slept.exitCode, 0, brief(slept));
    t.is(slept.stdout, 'woke\n');
    t.true(slept.durationMs > 1500 && slept.cpuTimeMs! < LIMIT_MS, `${slept.durationMs} ms wall, ${slept.cpuTimeMs} ms CPU`);
    t.log(`${kind}: spinner killed at ${spun.cpuTimeMs} ms of CPU (limit ${LIMIT_MS}); sleeper used ${slept.cpuTimeMs} ms of CPU in ${slept.durationMs} ms`);
  });

  test.serial(`${kind}: the limit counts the whole group: two forked spinners under a shell that only waits`, async (t) => {
    // The process the sandbox started uses no CPU itself: a per-process RLIMIT_CPU would never fire.
    const r = await run(sh(kind, `${PROBE} spin 1 & ${PROBE} spin 1 & echo started; wait`, { resources: { cpuTimeMs: LIMIT_MS } }));
    t.true(r.cpuTimeLimitExceeded, brief(r));
    t.is(r.stdout, 'started\n');
    t.true(r.cpuTimeMs! >= LIMIT_MS && r.cpuTimeMs! < LIMIT_MS + OVERSHOOT_MS, `cpuTimeMs ${r.cpuTimeMs}`);
    // Both spinners were charged: one of them alone would have needed the whole limit in
    // wall time after the start; the group got there sooner where there were two CPUs.
    t.log(`${kind}: two spinners killed at ${r.cpuTimeMs} ms of CPU, ${r.durationMs - (r.startupMs ?? 0)} ms after the start`);
  });

  test.serial(`${kind}: a write past fileSizeBytes dies of SIGXFSZ with the flag set; the file stops at the limit`, async (t) => {
    const limits = { resources: { fileSizeBytes: 1048576 } };
    const dd = await run(spec(kind, ['dd', 'if=/dev/zero', 'of=/tmp/f', 'bs=1k', 'count=2048'], limits));
    t.true(dd.fileSizeLimitExceeded, brief(dd));
    t.is(dd.signal, 'SIGXFSZ');
    // The workload (root in its sandbox) cannot lift the limit first.
    const size = await run(sh(kind, 'ulimit -f unlimited 2>/dev/null && echo lifted; dd if=/dev/zero of=/tmp/f bs=1k count=2048 2>/dev/null; stat -c %s /tmp/f', limits));
    t.false(size.fileSizeLimitExceeded, 'the shell around dd lived on');
    t.is(size.stdout, '1048576\n', brief(size));
  });

  test.serial(`${kind}: openFiles holds, above the default and below it`, async (t) => {
    for (const n of [64, 4096]) {
      // Root in the sandbox tries to lift it first; stdin, stdout and stderr are open already.
      const r = await run(sh(kind, `ulimit -n 8192 2>/dev/null && echo lifted; ${PROBE} open-files`, { resources: { openFiles: n } }));
      t.is(r.stdout, `opened ${n - 3} EMFILE\n`, brief(r));
    }
  });

  test.serial(`${kind}: tmpfsMiB caps /tmp and /dev/shm (ENOSPC); with readOnlyRoot /etc refuses writes; nothing is left for the next run`, async (t) => {
    const r = await run(
      sh(
        kind,
        'dd if=/dev/zero of=/tmp/f bs=1M count=20 2>&1 | head -1; stat -c %s /tmp/f; dd if=/dev/zero of=/dev/shm/f bs=1M count=20 2>&1 | head -1; echo x > /etc/x; echo "etc=$?"; rm /tmp/f; echo y > /tmp/y; cat /tmp/y',
        {
          resources: { tmpfsMiB: 8 },
          readOnlyRoot: true,
        },
      ),
    );
    t.is(r.crash, null);
    const lines = r.stdout.trim().split('\n');
    t.regex(lines[0]!, /No space left on device/, r.stdout);
    t.is(lines[1], String(8 * 1048576));
    t.regex(lines[2]!, /No space left on device/, r.stdout);
    t.is(lines[3], 'etc=1', r.stdout);
    t.is(lines[4], 'y');
    t.regex(r.stderr, /can't create \/etc\/x: Read-only file system/);
    const next = await run(sh(kind, 'ls -A /tmp /dev/shm; test -e /etc/x && echo etc-kept; true'));
    t.is(next.stdout, '/dev/shm:\n\n/tmp:\n', brief(next));
    if (kind === 'container') {
      // Kept after its run, a read-only sandbox's writable layer holds nothing of the workload's:
      // at most the empty mount points made for it before it started.
      const kept = await hb.sandboxes.run(sh(kind, 'echo x > /tmp/x; (echo x > /etc/x) 2>/dev/null; true', { readOnlyRoot: true }));
      const upper = join(root, 'sandboxes', kept.id, 'overlay', 'upper');
      const files = execFileSync('find', [upper, '-mindepth', '1', '!', '-type', 'd'], { encoding: 'utf8' });
      const full = execFileSync('find', [upper, '-mindepth', '1', '-type', 'd', '!', '-empty'], { encoding: 'utf8' }).split('\n').filter(Boolean);
      t.is(files, '', 'files in the upper directory');
      t.true(
        full.every((d) => readdirSync(d).every((e) => statSync(join(d, e)).isDirectory())),
        full.join(' '),
      );
      await hb.sandboxes.remove(kept.id);
    }
  });

  test.serial(`${kind}: output past outputLimitBytes is cut at the cap, flagged with its stream, and the workload is killed at once`, async (t) => {
    for (const stream of ['stdout', 'stderr'] as const) {
      let seen = 0;
      let cappedAt = 0;
      const r = await run(sh(kind, `yes ${stream === 'stderr' ? '>&2' : ''}; sleep 60`, { outputLimitBytes: 65536 }), {
        [stream === 'stdout' ? 'onStdout' : 'onStderr']: (c: Buffer) => {
          seen += c.length;
          if (seen >= 65536 && !cappedAt) cappedAt = Date.now();
        },
      });
      const killedInMs = Date.now() - cappedAt;
      t.true(r.outputLimitExceeded, brief(r));
      t.is(r.outputLimitStream, stream);
      t.is(r[stream].length, 65536);
      t.is(r[stream], 'y\n'.repeat(32768));
      t.true(r[`${stream}Truncated`]);
      t.is(seen, 65536, 'the callback got what the result kept, not a byte more');
      t.is(r.signal, 'SIGKILL');
      t.false(r.aborted);
      t.true(killedInMs < 5000, `ended ${killedInMs} ms after the cap`);
      t.log(`${kind} ${stream}: ended ${killedInMs} ms after the cap was reached`);
    }
  });

  test.serial(`${kind}: untrusted runs refuse io_uring, keyrings and vsock sockets; trusted ones show what is there without the filter`, async (t) => {
    const untrusted = await run(spec(kind, [PROBE, 'syscalls'], { trust: 'untrusted' }));
    t.is(untrusted.exitCode, 0, brief(untrusted));
    t.deepEqual(results(untrusted.stdout), {
      io_uring_setup: 'EPERM',
      keyctl: 'EPERM',
      add_key: 'EPERM',
      request_key: 'EPERM',
      socket_vsock: 'EAFNOSUPPORT',
      socket_unix: 'ok',
    });
    const trusted = results((await run(spec(kind, [PROBE, 'syscalls']))).stdout);
    if (kind === 'container') {
      // The host kernel has io_uring and vsock: the untrusted profile is what refused them.
      // (keyrings are refused for every container.)
      t.like(trusted, { io_uring_setup: 'ok', keyctl: 'EPERM', socket_vsock: 'ok' });
      // A 32-bit call through int 0x80 gets the same answers; socketcall hides the family, so
      // its socket() is refused whatever the family.
      const i386 = results((await run(spec(kind, [PROBE, 'syscalls-i386'], { trust: 'untrusted' }))).stdout);
      t.deepEqual(i386, { i386_socket_vsock: 'EAFNOSUPPORT', i386_socketcall_vsock: 'EAFNOSUPPORT', i386_socketcall_unix: 'EAFNOSUPPORT' });
      t.like(results((await run(spec(kind, [PROBE, 'syscalls-i386']))).stdout), { i386_socket_vsock: 'ok', i386_socketcall_vsock: 'ok' });
    } else {
      // hybridbox's guest kernel has none of these (ENOSYS): EPERM above is the agent's filter,
      // which holds on a distro guest kernel that has them too.
      t.like(trusted, { io_uring_setup: 'ENOSYS', keyctl: 'ENOSYS', socket_vsock: 'EAFNOSUPPORT', socket_unix: 'ok' });
    }
  });

  test.serial(`${kind}: a daemonised child of the workload does not outlive the run; peakMemoryBytes is the whole group's`, async (t) => {
    const beat = mkdtempSync(join(tmpdir(), 'hbx-beat-'));
    const file = join(beat, 'beat');
    // setsid: its own session and process group, so no group signal reaches it.
    const r = await run(
      sh(kind, `setsid sh -c 'while :; do echo b >> /beat/beat; sleep 0.1; done' </dev/null >/dev/null 2>&1 & ${PROBE} hold 24 2 & a=$!; ${PROBE} hold 24 2 & b=$!; wait $a $b`, {
        volumes: [{ hostPath: beat, guestPath: '/beat' }],
      }),
    );
    t.is(r.exitCode, 0, brief(r));
    t.true(existsSync(file) && statSync(file).size > 0, 'the daemon ran');
    const size = statSync(file).size;
    await new Promise((res) => setTimeout(res, 1500));
    t.is(statSync(file).size, size, 'the daemon kept writing after the run');
    // Two holders of 24 MiB at once: the peak is the group's, not one process's.
    t.true(r.peakMemoryBytes! >= 48 * 1048576 && r.peakMemoryBytes! < 200 * 1048576, `peakMemoryBytes ${r.peakMemoryBytes}`);
    t.log(`${kind}: peak ${(r.peakMemoryBytes! / 1048576).toFixed(1)} MiB for two 24 MiB holders`);
    t.deepEqual(hostTraces([r.id]), []);
    if (kind === 'container') {
      const ps = (await execa('ps', ['-eo', 'args'])).stdout;
      t.false(ps.includes('/beat/beat'), 'no such process on the host');
    }
    rmSync(beat, { recursive: true, force: true });
  });

  test.serial(`${kind}: a detached sandbox is held to its CPU time limit too, with nobody watching`, async (t) => {
    const s = await hb.sandboxes.runDetached(spec(kind, [PROBE, 'spin', '2'], { resources: { cpuTimeMs: LIMIT_MS } }));
    t.true(await waitFor(async () => (await hb.sandboxes.get(s.id)).state === 'exited', 60_000), 'the spinner was not stopped');
    const info = await hb.sandboxes.get(s.id);
    t.is(info.signal, 'SIGKILL');
    t.regex(info.stateReason ?? '', /^killed: its CPU time limit ran out \(\d+ ms used\)$/);
    const used = Number(/\((\d+) ms used\)/.exec(info.stateReason!)![1]);
    t.true(used >= LIMIT_MS && used < LIMIT_MS + OVERSHOOT_MS, info.stateReason!);
    await hb.sandboxes.remove(s.id);
  });

  test.serial(`${kind}: place and inspect list each new limit with what enforces it`, async (t) => {
    const s = spec(kind, ['true'], { resources: { cpuTimeMs: 2000, fileSizeBytes: 1048576, openFiles: 256, tmpfsMiB: 16 }, readOnlyRoot: true, outputLimitBytes: 4096 });
    const fields = ['resources.cpuTimeMs', 'resources.fileSizeBytes', 'resources.openFiles', 'resources.tmpfsMiB', 'readOnlyRoot', 'outputLimitBytes'];
    const placed = hb.placement.place(s);
    t.is(placed.backend, kind);
    const created = await hb.sandboxes.create({ ...s, outputLimitBytes: undefined });
    const mechanisms = (limits: { field: string; mechanism: string | null }[]) => Object.fromEntries(limits.filter((l) => fields.includes(l.field)).map((l) => [l.field, l.mechanism]));
    const planned = mechanisms(placed.limits);
    const made = mechanisms((await hb.sandboxes.inspect(created.id)).limits as { field: string; mechanism: string }[]);
    t.deepEqual(Object.keys(planned).sort(), [...fields].sort());
    for (const f of fields) t.truthy(planned[f], `${f} has a mechanism`);
    if (kind === 'container') {
      t.regex(planned['resources.cpuTimeMs']!, /cpuacct\.usage|cpu\.stat usage_usec/);
      t.regex(planned['resources.fileSizeBytes']!, /RLIMIT_FSIZE = 1048576/);
      t.regex(planned['resources.openFiles']!, /RLIMIT_NOFILE = 256/);
      t.regex(planned['resources.tmpfsMiB']!, /size=16384k/);
      t.regex(planned.readOnlyRoot!, /root\.readonly/);
    } else {
      t.regex(planned['resources.cpuTimeMs']!, /\/sys\/fs\/cgroup\/hbx\/cpu\.stat usage_usec.*cgroup\.kill/);
      t.regex(planned['resources.fileSizeBytes']!, /RLIMIT_FSIZE = 1048576.*hbx\.fsize/);
      t.regex(planned['resources.tmpfsMiB']!, /size=16m/);
    }
    // The sandbox's own list names its cgroup; the output cap is the foreground run's (left out of create).
    t.deepEqual(Object.keys(made).sort(), fields.filter((f) => f !== 'outputLimitBytes').sort());
    if (kind === 'container') t.true(made['resources.cpuTimeMs']!.includes(created.id));
    t.deepEqual(created.warnings, []);
    await hb.sandboxes.remove(created.id);
  });
}

test.serial('vm (libvirt): the same agent holds the CPU time limit, the file size limit and the untrusted filter, and reports the guest cgroup', async (t) => {
  const r = await run(
    sh('vm', `dd if=/dev/zero of=/tmp/f bs=1k count=2048 2>/dev/null; stat -c %s /tmp/f; ${PROBE} syscalls; ${PROBE} spin 1`, {
      trust: 'untrusted',
      resources: { cpuTimeMs: LIMIT_MS, fileSizeBytes: 1048576 },
    }),
  );
  t.true(r.cpuTimeLimitExceeded, brief(r));
  t.true(r.cpuTimeMs! >= LIMIT_MS && r.cpuTimeMs! < LIMIT_MS + OVERSHOOT_MS, `cpuTimeMs ${r.cpuTimeMs}`);
  t.true(r.peakMemoryBytes! > 0);
  const [size, ...rest] = r.stdout.trim().split('\n');
  t.is(size, '1048576');
  t.like(results(rest.join('\n')), { io_uring_setup: 'EPERM', keyctl: 'EPERM', socket_vsock: 'EAFNOSUPPORT', socket_unix: 'ok' });
});

test.serial('bad values: one line naming the field, exit 125, nothing created', async (t) => {
  const env = { ...process.env, HYBRIDBOX_ROOT: root };
  const cases: [string[], RegExp][] = [
    [['--cpu-time', '5ms'], /^hybridbox: resources\.cpuTimeMs: 5 is not valid; allowed: an integer from 10 to \d+ \(ms of CPU time\)\n$/],
    [['--file-size', 'big'], /^hybridbox: --file-size: "big" is not valid; allowed: a size such as 10m, 512k, 1g or a plain number of bytes\n$/],
    [['--open-files', '3'], /^hybridbox: resources\.openFiles: 3 is not valid; allowed: an integer from 8 to 1048576 \(file descriptors per process\)\n$/],
    [['--tmpfs-size', '0'], /^hybridbox: resources\.tmpfsMiB: 0 is not valid; allowed: an integer from 1 to \d+ \(MiB\)\n$/],
    [['--output-limit', '0'], /^hybridbox: outputLimitBytes: 0 is not valid; allowed: an integer from 1 to \d+ \(bytes per stream\)\n$/],
    [['-d', '--output-limit', '1k'], /^hybridbox: outputLimitBytes: 1024 is not valid; allowed only for foreground runs/],
  ];
  const ceiling = openFilesCeiling().max;
  if (ceiling < 1_048_576)
    cases.push([['--isolation', 'container', '--open-files', String(ceiling + 1)], /^hybridbox: resources\.openFiles: \d+ is not valid; allowed for container sandboxes on this host: at most \d+ \(/]);
  const before = readdirSync(join(root, 'sandboxes')).length;
  for (const [flags, message] of cases) {
    const r = await execa('node', [CLI, 'run', ...flags, 'busybox', 'true'], { env, reject: false });
    t.is(r.exitCode, 125, `${flags.join(' ')}: ${r.stderr}`);
    t.regex(`${r.stderr}\n`, message);
    t.is(r.stderr.split('\n').length, 1, r.stderr);
  }
  t.is(readdirSync(join(root, 'sandboxes')).length, before);
});
