import { Hybridbox, type RunResult } from '../api/index.js';
import { formatHostInfo } from '../host/format.js';
import { formatPlacement } from '../scheduler/index.js';

// A short guided tour of what hybridbox does on this host, with real sandboxes.

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s = ''): void => void process.stdout.write(s + '\n');
const step = (n: number, title: string): void => say(`\n${bold(`── ${n}. ${title} ${'─'.repeat(Math.max(0, 60 - title.length))}`)}`);
const indent = (s: string): string =>
  s
    .trimEnd()
    .split('\n')
    .map((l) => `   ${l}`)
    .join('\n');
const mib = (b: number | null): string => (b === null ? '?' : `${(b / 1048576).toFixed(1)} MiB`);

function outcome(r: RunResult): string {
  return `exit ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}, oomKilled=${r.oomKilled}, timedOut=${r.timedOut}, startup ${r.startupMs} ms, total ${r.durationMs} ms, peak memory ${mib(r.peakMemoryBytes)}`;
}

export async function runDemo(ociRuntime: 'crun' | 'runc' = 'crun'): Promise<void> {
  const hb = await Hybridbox.open({ ociRuntime });
  const made: string[] = [];
  try {
    await hb.images.ensureBase();

    step(1, 'The host, as hybridbox sees it');
    say(indent(formatHostInfo(hb.host)));

    step(2, 'Placement: where would each workload run, and why?');
    say('   A trusted build step that must start within 500 ms:');
    say(indent(formatPlacement(hb.placement.place({ image: 'busybox', command: ['make'], startupBudgetMs: 500 }))));
    say('\n   Untrusted code from a user:');
    say(indent(formatPlacement(hb.placement.place({ image: 'busybox', command: ['./submission'], trust: 'untrusted' }))));

    step(3, 'A container: its own PID tree, hostname, root filesystem, network');
    const tour = await hb.sandboxes.run(
      {
        image: 'busybox',
        isolation: 'container',
        name: `demo-tour-${process.pid}`,
        command: [
          'sh',
          '-c',
          'echo "hostname: $(hostname)"; echo "processes:"; ps -o pid,user,args; echo "network devices: $(ls /sys/class/net | tr "\\n" " ")"; echo "root fs: $(head -1 /proc/mounts)"',
        ],
      },
      { remove: true },
    );
    say(indent(tour.stdout));
    say(`   -> ${outcome(tour)}`);

    step(4, 'Limits hold for the whole group: memory');
    say('   memory limit 32 MiB, the workload tries to hold 200 MiB:');
    const oom = await hb.sandboxes.run(
      {
        image: 'busybox',
        isolation: 'container',
        command: ['sh', '-c', 'x=$(head -c 200000000 /dev/zero | tr "\\000" a); echo survived'],
        resources: { memoryMiB: 32 },
      },
      { remove: true },
    );
    say(`   -> ${outcome(oom)}`);

    step(5, 'Limits hold for the whole group: a fork bomb');
    say('   pids limit 64, a fork bomb runs for a second; the host keeps answering:');
    const t0 = Date.now();
    const bomb = await hb.sandboxes.run(
      {
        image: 'busybox',
        isolation: 'container',
        command: [
          'sh',
          '-c',
          'f=/sys/fs/cgroup/pids; [ -d $f ] || f=/sys/fs/cgroup; bomb() { while :; do bomb & done; }; bomb 2>/dev/null & i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; read cur < $f/pids.current; read max < $f/pids.max; read ev < $f/pids.events; echo "pids in use: $cur of $max; forks refused so far: ${ev#* }"',
        ],
        resources: { pids: 64 },
        timeoutMs: 3000,
      },
      { remove: true },
    );
    say(
      indent(
        bomb.stdout
          .split('\n')
          .filter((l) => l.startsWith('pids'))
          .join('\n') || '(no output)',
      ),
    );
    say(`   -> ${outcome(bomb)}; wall ${Date.now() - t0} ms`);

    step(6, "One workload, three isolation levels: its own kernel or the host's");
    const kinds = (['container', 'microvm', 'vm'] as const).filter((k) => {
      try {
        hb.placement.place({ image: 'busybox', command: ['true'], isolation: k });
        return true;
      } catch (e) {
        say(`   ${k}: not available here (${(e as Error).message})`);
        return false;
      }
    });
    const rows: string[][] = [['backend', 'kernel inside', 'startup', 'total', 'exit']];
    for (const k of kinds) {
      const r = await hb.sandboxes.run({ image: 'busybox', command: ['uname', '-r'], isolation: k }, { remove: true });
      rows.push([k, r.stdout.trim() || `(crashed: ${r.crash})`, `${r.startupMs} ms`, `${r.durationMs} ms`, String(r.exitCode)]);
    }
    rows.push(['(host)', hb.host.kernelRelease, '', '', '']);
    const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const r of rows) say('   ' + r.map((c, i) => c.padEnd(w[i]!)).join('  '));
    say(`   (VMs boot a kernel of their own${hb.host.kvm.usable ? ' with KVM' : ', here under TCG emulation: no usable KVM'}; a container shares the host's.)`);
    say("   A 1 s time limit on `sleep 30` means the same on each: counted from the workload's start (not the");
    say("   VM's boot), SIGTERM then SIGKILL after 2 s, exit 124, recorded as an exit, never a crash:");
    for (const k of kinds.filter((x) => x !== 'vm')) {
      const r = await hb.sandboxes.run({ image: 'busybox', command: ['sleep', '30'], isolation: k, timeoutMs: 1000 });
      const rec = await hb.sandboxes.get(r.id);
      say(`   ${k.padEnd(9)} exit ${r.exitCode}, signal ${r.signal}, timedOut ${r.timedOut}, crash ${r.crash}; recorded: ${rec.state} (${rec.stateReason})`);
      await hb.sandboxes.remove(r.id);
    }

    if (kinds.includes('microvm')) {
      step(7, 'A guest kernel panic stays inside its VM');
      const bystander = await hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '120'], isolation: 'container', name: `demo-bystander-${process.pid}` });
      made.push(bystander.id);
      const panic = await hb.sandboxes.run({ image: 'busybox', command: ['sh', '-c', 'echo c > /proc/sysrq-trigger'], isolation: 'microvm' }, { remove: true });
      say(`   microVM: ${panic.crash}`);
      const alive = await hb.sandboxes.exec(bystander.id, ['echo', 'still running']);
      say(`   container ${bystander.name}: ${alive.stdout.trim()}; host: still up`);
    }

    step(8, 'Sandboxes on the hbx0 bridge reach each other (and nothing else)');
    const serverKind = kinds.includes('microvm') ? 'microvm' : 'container';
    const server = await hb.sandboxes.runDetached({ image: 'busybox', name: `demo-server-${process.pid}`, command: ['sleep', '60'], network: 'bridge', isolation: serverKind });
    made.push(server.id);
    say(`   a ${serverKind} (${server.name}) runs detached at ${server.ip}; a container pings it:`);
    const ping = await hb.sandboxes.run(
      {
        image: 'busybox',
        command: ['sh', '-c', `ip -4 -o addr show eth0 | awk '{print "client address: "$4}'; ping -c 2 -W 2 ${server.ip} | tail -2; ip route`],
        network: 'bridge',
        isolation: 'container',
      },
      { remove: true },
    );
    say(indent(ping.stdout));
    say(`   -> ${outcome(ping)}`);

    step(9, 'An image from a Sandboxfile: built once, run as a container and a microVM, pushed to S3');
    await imagesTour(hb, kinds.includes('microvm'));

    step(10, 'Untrusted code as a service: a judge over HTTP, with verdicts');
    await serviceTour(hb);

    step(11, 'Measured on this host: start-up, isolation, and a report');
    say('   A short run (a few iterations each; `hybridbox bench startup` does 30), interleaved:');
    const { benchStartup } = await import('../bench/commands/startup.js');
    await benchStartup(hb, { runs: '8', warmup: '1', vmRuns: '3' });
    say('\n   Isolation: what a workload can see and do, noisy neighbours, and faults:');
    const { benchIsolation } = await import('../bench/commands/isolation.js');
    await benchIsolation(hb, { quick: true });
    const { report } = await import('../bench/commands/report.js');
    const { resolve } = await import('node:path');
    const out = resolve('hybridbox-report.html');
    await report(hb, { out });
    say(`\n   The report, with charts and the plain-language summary: ${out}`);
  } finally {
    for (const id of made) await hb.sandboxes.remove(id, { force: true }).catch(() => undefined);
    hb.close();
  }
  say(`\n${bold('Done.')} Every sandbox of this tour has been removed.`);
}

const SUBMISSION = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
  long a, b;
  if (scanf("%ld %ld", &a, &b) != 2) return 1;
  if (a < 0) for (;;) memset(malloc(1 << 20), 1, 1 << 20); /* a bug the memory limit catches */
  if (a == 0) for (;;);                           /* one the CPU time limit catches */
  printf("%ld\\n", a + b);
  return 0;
}
`;

/** `hybridbox serve` on a private socket, a C submission judged against four tests, through the typed client. */
async function serviceTour(hb: Hybridbox): Promise<void> {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { startService } = await import('../service/index.js');
  const { Client } = await import('../client/index.js');
  const { ensureRuntimeImages } = await import('../languages/index.js');
  await ensureRuntimeImages(hb, ['c']);
  const dir = mkdtempSync(join(tmpdir(), 'hbx-demo-serve-'));
  const svc = await startService({ hb, listen: join(dir, 'api.sock'), version: 'demo' });
  try {
    say(`   hybridbox serve listens on ${svc.address} (root-only socket: no key needed; TCP callers use API keys)`);
    const client = new Client({ host: `unix://${svc.address}` });
    const tests = [
      { stdin: '1 2\n', expected: '3\n' },
      { stdin: '20 22\n', expected: '43\n' },
      { stdin: '0 5\n', expected: '5\n', limits: { cpuTimeMs: 500 } },
      { stdin: '-1 5\n', expected: '4\n', limits: { memoryMiB: 32 } },
    ];
    say('   POST /v1/judge: a C program (gcc), compiled once, then four tests, untrusted (the default), isolation auto:');
    const r = await client.judge({ runtime: 'c', files: [{ path: 'main.c', content: SUBMISSION }], tests }, { waitMs: 120_000 });
    const j = r.status === 'completed' ? r : await client.runs.get(r.id, { waitMs: 120_000 });
    say(`   placed on ${j.placement?.backend}: ${j.placement?.reasons[0] ?? ''}`);
    for (const t of j.judge?.tests ?? [])
      say(
        `   test ${t.index + 1}: ${t.verdict.padEnd(14)} cpu ${String(t.cpuMs ?? '-').padStart(4)} ms, wall ${String(t.wallMs).padStart(5)} ms, peak ${mib(t.peakMemoryBytes)}${t.message ? `  (${t.message})` : ''}`,
      );
    say(`   -> overall: ${j.judge?.verdict ?? j.status}${j.reason ? ` (${j.reason})` : ''}`);
  } finally {
    await svc.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const SANDBOXFILE = `FROM debian:bookworm
ARG GREETING=hello
ENV GREETING=$GREETING
RUN useradd --create-home --uid 1000 judge
COPY grade.sh /usr/local/bin/grade
RUN chmod 755 /usr/local/bin/grade
USER judge
WORKDIR /home/judge
CMD ["grade"]
`;

const GRADE = `#!/bin/bash
echo "$GREETING from $(. /etc/os-release; echo "$PRETTY_NAME") as $(id -un), kernel $(uname -r)"
`;

async function imagesTour(hb: Hybridbox, withVm: boolean): Promise<void> {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  if (!(await hb.images.ensureBase('debian:bookworm').catch(() => false))) {
    say('   debian:bookworm could not be built here (no Debian mirror reachable); skipping the image tour');
    return;
  }
  const ctx = mkdtempSync(join(tmpdir(), 'hbx-demo-'));
  const tag = 'demo/grader:1';
  try {
    writeFileSync(join(ctx, 'Sandboxfile'), SANDBOXFILE);
    writeFileSync(join(ctx, 'grade.sh'), GRADE);
    say(indent(SANDBOXFILE));
    const first = await hb.images.build({ file: join(ctx, 'Sandboxfile'), contextDir: ctx, tags: [tag], noCache: true, onLog: (l) => say(`   ${l}`) });
    say(`   -> ${first.digest.slice(0, 19)} in ${(first.durationMs / 1000).toFixed(2)} s`);
    const again = await hb.images.build({ file: join(ctx, 'Sandboxfile'), contextDir: ctx, tags: [tag] });
    say(
      `   rebuilt unchanged: ${again.steps.filter((st) => st.cached).length} of ${again.steps.filter((st) => st.layerDigest).length} layer steps from the cache, ${again.durationMs} ms, same digest: ${again.digest === first.digest}`,
    );
    for (const isolation of withVm ? (['container', 'microvm'] as const) : (['container'] as const)) {
      const r = await hb.sandboxes.run({ image: tag, isolation }, { remove: true });
      say(`   ${isolation.padEnd(9)} ${r.stdout.trim()}`);
    }
    const pushed = await hb.images.push(tag, { progress: 'none' });
    say(`   push to the embedded S3 registry: ${pushed.blobsUploaded} blobs uploaded (${mib(pushed.bytesUploaded)}), ${pushed.blobsSkipped} already there, ${pushed.durationMs} ms`);
    const repushed = await hb.images.push(tag, { progress: 'none' });
    say(`   push again: ${repushed.blobsUploaded} uploaded, ${repushed.blobsSkipped} already there (${mib(repushed.bytesSkipped)} not sent), ${repushed.durationMs} ms`);
    // A second, empty image store stands in for another machine pulling from the same bucket.
    const other = await Hybridbox.open({ root: join(ctx, 'other-host') });
    try {
      const pulled = await other.images.pull(tag, { progress: 'none', registryConfig: { embeddedDataDir: join(hb.root, 's3') } });
      say(`   an empty store pulls it: ${pulled.blobsDownloaded} blobs downloaded (${mib(pulled.bytesDownloaded)}), each verified against its sha256 while streaming, ${pulled.durationMs} ms`);
      const r = await other.sandboxes.run({ image: tag, isolation: 'container' }, { remove: true });
      say(`   and runs it: ${r.stdout.trim()}`);
    } finally {
      other.close();
    }
  } finally {
    rmSync(ctx, { recursive: true, force: true });
  }
}
