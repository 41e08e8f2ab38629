import test from 'ava';
import { execa } from 'execa';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isBlockDevice } from '../src/host/blockdev.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { vmFiles } from '../src/runtimes/vm/files.js';
import { readMountinfo } from '../src/util/mountinfo.js';
import { cliRoot, hostTraces, waitFor } from './helpers.js';

// A VM's CPU and disk limits as the host enforces them, driven through the bundled CLI: a
// microVM's QEMU in its own host cgroup under the cpu quota (and out of it with every kind of
// end), libvirt's <cputune> applied to the domain's cgroup, and what a guest's O_DIRECT
// writes get under a disk limit. The throttles' argv/QMP/<iotune> values are checked in
// test/disk-limits. Every boot costs seconds under TCG: few sandboxes, several checks each.

const { hbx, root } = cliRoot(test, 'hbx-vmlimits-');

test.before(() => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
});

/** The hierarchy with the cpu controller: cgroup v1's cpu mount, or the unified one on v2. */
const cpuHierarchy = ((): { dir: string; v2: boolean } => {
  const m = readMountinfo().find((x) => (x.fstype === 'cgroup' && x.superOptions.includes('cpu')) || (x.fstype === 'cgroup2' && x.mountPoint === '/sys/fs/cgroup'));
  if (!m) throw new Error('no cgroup hierarchy with the cpu controller');
  return { dir: m.mountPoint, v2: m.fstype === 'cgroup2' };
})();

/** Where a pid sits in the cpu hierarchy, as the kernel says (/proc/PID/cgroup). */
function cpuCgroupOf(pid: number): string {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n');
  const line = lines.find((l) => (cpuHierarchy.v2 ? l.startsWith('0::') : (l.split(':')[1] ?? '').split(',').includes('cpu')));
  return line?.split(':')[2] ?? '';
}

const readLines = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter(Boolean);

/** Every /hybridbox/<id> directory in any cgroup hierarchy. */
const cgroupsOf = (id: string): string[] =>
  readMountinfo()
    .filter((m) => m.fstype === 'cgroup' || m.fstype === 'cgroup2')
    .map((m) => join(m.mountPoint, 'hybridbox', id))
    .filter((d) => existsSync(d));

const qemuPidOf = (id: string): number => Number(readFileSync(vmFiles(join(root(), 'sandboxes', id)).pid, 'utf8').trim());

/** A running process (not a zombie). */
const alive = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
};

/** utime + stime of a process, in seconds (clock ticks of 1/100 s). */
const cpuSeconds = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};

async function detached(args: string[]): Promise<string> {
  const r = await hbx(['run', '-d', ...args]);
  if (r.exitCode !== 0) throw new Error(`run -d ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

async function inspect(id: string): Promise<{ state: string; stateReason: string | null; supervisorPid: number | null; warnings: string[]; limits: { field: string; mechanism: string | null }[] }> {
  const r = await hbx(['inspect', id]);
  if (r.exitCode !== 0) throw new Error(`inspect ${id}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const BUSY = ['sh', '-c', 'while :; do :; done'];

test.serial('microvm --cpus 0.5: all of QEMU runs in its host cgroup under the quota, which bites; rm removes the cgroup', async (t) => {
  const id = await detached(['--isolation', 'microvm', '--cpus', '0.5', 'busybox', '--', ...BUSY]);
  const qemu = qemuPidOf(id);
  const cg = cpuCgroupOf(qemu);
  t.regex(cg, new RegExp(`^/hybridbox/${id}(/|$)`), 'QEMU is in the sandbox cgroup');
  const dir = join(cpuHierarchy.dir, cg);
  if (cpuHierarchy.v2) t.is(readFileSync(join(dir, 'cpu.max'), 'utf8').trim(), '50000 100000');
  else t.deepEqual([readFileSync(join(dir, 'cpu.cfs_quota_us'), 'utf8').trim(), readFileSync(join(dir, 'cpu.cfs_period_us'), 'utf8').trim()], ['50000', '100000']);
  t.true(readLines(join(dir, 'cgroup.procs')).includes(String(qemu)), 'QEMU’s pid is in cgroup.procs');
  // Every thread, the vCPU and IO threads QEMU made after exec included.
  const threads = readdirSync(`/proc/${qemu}/task`);
  const tasks = readLines(join(dir, cpuHierarchy.v2 ? 'cgroup.threads' : 'tasks'));
  t.deepEqual(
    threads.filter((x) => !tasks.includes(x)),
    [],
  );
  const info = await inspect(id);
  t.true(info.limits.find((l) => l.field === 'resources.cpus')?.mechanism?.includes(`/hybridbox/${id}`), JSON.stringify(info.limits));
  // A spinning guest: QEMU gets no more than half a CPU, and the kernel says it throttled it.
  const stat = (): Record<string, number> => Object.fromEntries(readLines(join(dir, 'cpu.stat')).map((l) => [l.split(' ')[0], Number(l.split(' ')[1])]));
  const [c0, w0, n0] = [cpuSeconds(qemu), Date.now(), stat().nr_throttled ?? 0];
  await new Promise((r) => setTimeout(r, 4000));
  const used = (cpuSeconds(qemu) - c0) / ((Date.now() - w0) / 1000);
  t.log(`microvm --cpus 0.5, guest spinning: QEMU used ${used.toFixed(2)} CPUs`);
  t.true(used < 0.5 * 1.25, `${used} CPUs`);
  t.true((stat().nr_throttled ?? 0) > n0, 'throttled by the quota');
  const rm = await hbx(['rm', '-f', id]);
  t.is(rm.exitCode, 0, rm.stderr);
  t.false(alive(qemu));
  t.deepEqual(cgroupsOf(id), []);
});

test.serial('microvm: a QEMU killed with SIGKILL is a crash, and its cgroup goes with it', async (t) => {
  const id = await detached(['--isolation', 'microvm', '--cpus', '1', 'busybox', '--', 'sleep', '300']);
  const qemu = qemuPidOf(id);
  t.not(cgroupsOf(id), []);
  process.kill(qemu, 'SIGKILL');
  // The monitor records the end and tears the sandbox down by itself.
  t.true(await waitFor(async () => (await inspect(id)).state === 'crashed', 30_000, 200));
  t.true(await waitFor(() => cgroupsOf(id).length === 0, 10_000, 100), cgroupsOf(id).join(', '));
  await hbx(['rm', '-f', id]);
});

test.serial('microvm: a supervisor killed with SIGKILL takes QEMU with it; the next command tears the cgroup down', async (t) => {
  const id = await detached(['--isolation', 'microvm', '--cpus', '1', 'busybox', '--', 'sleep', '300']);
  const qemu = qemuPidOf(id);
  const monitor = (await inspect(id)).supervisorPid;
  t.truthy(monitor);
  process.kill(monitor!, 'SIGKILL');
  // Its parent-death signal: QEMU never outlives its supervisor.
  t.true(await waitFor(() => !alive(qemu), 10_000, 50));
  const ps = await hbx(['ps', '-a']);
  t.is(ps.exitCode, 0, ps.stderr);
  const after = await inspect(id);
  t.is(after.state, 'crashed', JSON.stringify(after));
  t.deepEqual(cgroupsOf(id), []);
  await hbx(['rm', '-f', id]);
});

test.serial('vm (libvirt) --cpus 0.5: <cputune> is in the domain and in the cgroup libvirt made for it; a limit on another host disk is listed as not applied', async (t) => {
  const zram = isBlockDevice('/dev/zram0') ? ['--device-read-bps', '/dev/zram0:1mb'] : [];
  const id = await detached(['--isolation', 'vm', '--cpus', '0.5', ...zram, 'busybox', '--', ...BUSY]);
  const xml = (await execa('virsh', ['-c', 'qemu:///system', 'dumpxml', `hbx-${id}`])).stdout;
  const cputune = /<cputune>([\s\S]*?)<\/cputune>/.exec(xml)?.[1] ?? '';
  t.regex(cputune, /<global_period>100000<\/global_period>/);
  t.regex(cputune, /<global_quota>50000<\/global_quota>/);
  // libvirt's QEMU: the process whose command line names the domain.
  const qemu = Number(
    readdirSync('/proc').find((p) => {
      try {
        return /^\d+$/.test(p) && readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`guest=hbx-${id},`);
      } catch {
        return false;
      }
    }),
  );
  t.true(qemu > 0, 'libvirt’s QEMU is running');
  // libvirt keeps QEMU's own threads in <domain>/emulator and each vCPU in <domain>/vcpuN: the
  // global quota is on <domain>, above them all.
  const domain = cpuCgroupOf(qemu).replace(/\/(emulator|vcpu\d+)$/, '');
  const quota = readFileSync(join(cpuHierarchy.dir, domain, cpuHierarchy.v2 ? 'cpu.max' : 'cpu.cfs_quota_us'), 'utf8').trim();
  t.is(quota, cpuHierarchy.v2 ? '50000 100000' : '50000', domain);
  const [c0, w0] = [cpuSeconds(qemu), Date.now()];
  await new Promise((r) => setTimeout(r, 4000));
  const used = (cpuSeconds(qemu) - c0) / ((Date.now() - w0) / 1000);
  t.log(`vm --cpus 0.5, guest spinning: QEMU used ${used.toFixed(2)} CPUs`);
  t.true(used < 0.5 * 1.25, `${used} CPUs`);
  if (zram.length) {
    const info = await inspect(id);
    t.true(
      info.warnings.some((w) => w.startsWith('resources.deviceReadBps[0] is not applied') && w.includes('/dev/zram0')),
      info.warnings.join('\n'),
    );
  } else t.log('no /dev/zram0 on this host: the other-disk case was not tried');
  const rm = await hbx(['rm', '-f', id]);
  t.is(rm.exitCode, 0, rm.stderr);
});

// 32 MiB: QEMU's throttle lets a first burst through, and an unlimited write of 8 MiB takes
// a few hundredths of a second, about what the guest's /proc/uptime resolves.
const WRITE_MIB = 32;
/** The MiB/s of an O_DIRECT write in the guest, timed there. */
const DIRECT_WRITE = `read a _ < /proc/uptime; dd if=/dev/zero of=/ddtest bs=1M count=${WRITE_MIB} oflag=direct 2>/dev/null; read b _ < /proc/uptime; echo "took=$a:$b"`;
const mibPerSec = (out: string): number => {
  const m = /took=([\d.]+):([\d.]+)/.exec(out);
  return m ? WRITE_MIB / Math.max(0.01, Number(m[2]) - Number(m[1])) : Number.NaN;
};

for (const kind of ['microvm', 'vm'] as const) {
  test.serial(`${kind}: a guest's O_DIRECT write under --device-write-bps 5mb, and without`, async (t) => {
    const rate = async (limit: string[]): Promise<number> => {
      const r = await hbx(['run', '--rm', '--isolation', kind, ...limit, 'busybox', '--', 'sh', '-c', DIRECT_WRITE]);
      t.is(r.exitCode, 0, r.stderr);
      return mibPerSec(r.stdout);
    };
    const limited = await rate(['--device-write-bps', '5mb']);
    const free = await rate([]);
    t.log(`${kind} O_DIRECT write in the guest: ${limited.toFixed(2)} MiB/s under a 5 MiB/s limit, ${free.toFixed(1)} MiB/s without`);
    t.true(limited > 0 && limited < 5 * 1.5, `${limited} MiB/s`);
  });
}

test.serial('microvm: 20 create/start/rm cycles with --cpus, disk limits and a bridged, rate-limited tap leave no QEMU, cgroup, tap or directory', async (t) => {
  const ids: string[] = [];
  for (let i = 0; i < 20; i++) {
    const c = await hbx([
      'create',
      '--isolation',
      'microvm',
      '--cpus',
      '1',
      '--device-write-bps',
      '5mb',
      '--device-read-iops',
      '500',
      '--network',
      'bridge',
      '--net-rate',
      '10mbit',
      'busybox',
      '--',
      'sleep',
      '60',
    ]);
    t.is(c.exitCode, 0, c.stderr);
    const id = c.stdout.trim();
    ids.push(id);
    const s = await hbx(['start', id]);
    t.is(s.exitCode, 0, s.stderr);
    if (i === 0) t.not(cgroupsOf(id), [], 'a started microVM has its cgroup');
    const r = await hbx(['rm', '-f', id]);
    t.is(r.exitCode, 0, r.stderr);
  }
  const procs = (await execa('ps', ['-eo', 'args'])).stdout;
  t.deepEqual(
    ids.flatMap((id) => [...cgroupsOf(id), ...(procs.includes(id) ? [`process of ${id}`] : []), ...(existsSync(join(root(), 'sandboxes', id)) ? [`directory of ${id}`] : [])]),
    [],
  );
  // hostTraces: cgroups, mounts, netns, the tap (ht<id>) and IFB (hi<id>).
  t.deepEqual(hostTraces(ids), []);
});
