import test from 'ava';
import { execa } from 'execa';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Hybridbox } from '../src/index.js';
import { isBlockDevice } from '../src/host/blockdev.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { vmFiles } from '../src/runtimes/vm/files.js';
import { QmpClient } from '../src/runtimes/vm/qmp.js';
import { readMountinfo } from '../src/util/mountinfo.js';
import { CLI, freshHybridbox, hostTraces, waitFor } from './helpers.js';

// --device-{read,write}-{bps,iops} where each backend enforces them: the container's cgroup
// files (written by crun), QEMU's -drive throttling and QMP's view of it, libvirt's <iotune>.
// The disks are this host's real ones; rates are printed, and only loosely bounded.
// Containers go through the bundled CLI, as a user would: flags, plan and cgroup files.

let hb: Hybridbox;
let cleanup: () => Promise<void>;
/** The state directory's disk as lsblk numbers it ("254:0"), and its node. */
let disk = '';
let diskNode = '';

const LIMITS = { deviceReadBps: [{ rate: 50 << 20 }], deviceWriteBps: [{ rate: 4 << 20 }], deviceReadIops: [{ rate: 500 }], deviceWriteIops: [{ rate: 400 }] };

/** The kernel's numbers of a block device and of the disk it is part of, from lsblk: not from hybridbox's own lookup. */
async function lsblkDisk(node: string): Promise<{ node: string; numbers: string }> {
  const pairs = async (dev: string) => Object.fromEntries([...(await execa('lsblk', ['-ndP', '-o', 'PKNAME,MAJ:MIN', dev])).stdout.matchAll(/([\w:]+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
  const p = await pairs(node);
  return p.PKNAME ? { node: `/dev/${p.PKNAME}`, numbers: (await pairs(`/dev/${p.PKNAME}`))['MAJ:MIN']! } : { node, numbers: p['MAJ:MIN']! };
}

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, cleanup } = await freshHybridbox('hbx-disklimits-'));
  const source = (await execa('findmnt', ['-no', 'SOURCE', '-T', join(hb.root, 'sandboxes')])).stdout.trim();
  if (!source.startsWith('/dev/')) throw new Error(`${hb.root} is on ${source}, no block device: disk limits have nothing to land on`);
  ({ node: diskNode, numbers: disk } = await lsblkDisk(source));
});
test.after.always(async () => {
  await cleanup?.();
});

/** A workload's MiB written with O_DIRECT, and the seconds it took, measured inside it. */
const directWrite = (mib: number) => `read a _ < /proc/uptime; dd if=/dev/zero of=/ddtest bs=1M count=${mib} oflag=direct 2>/dev/null; read b _ < /proc/uptime; echo "took=$a:$b"`;
const DIRECT_WRITE = directWrite(8);
const mibPerSec = (out: string, mib = 8, key = 'took'): number => {
  const m = new RegExp(`${key}=([\\d.]+):([\\d.]+)`).exec(out);
  return m ? mib / Math.max(0.01, Number(m[2]) - Number(m[1])) : NaN;
};

// --- containers, through the CLI ------------------------------------------------------------

const hbx = (...args: string[]) => execa('node', [CLI, ...args], { env: { HYBRIDBOX_ROOT: hb.root }, reject: false });
const ALL_FOUR = ['--device-read-bps', '50mb', '--device-write-bps', '4mb', '--device-read-iops', '500', '--device-write-iops', '400'];
/** What ALL_FOUR writes in each cgroup file (blkio.throttle.<file> on v1; the io.max key on v2). */
const EXPECTED = [
  { field: 'deviceReadBps', v1: 'read_bps_device', v2: 'rbps', rate: 50 << 20 },
  { field: 'deviceWriteBps', v1: 'write_bps_device', v2: 'wbps', rate: 4 << 20 },
  { field: 'deviceReadIops', v1: 'read_iops_device', v2: 'riops', rate: 500 },
  { field: 'deviceWriteIops', v1: 'write_iops_device', v2: 'wiops', rate: 400 },
] as const;

/** Where the host has cgroup2 alone at /sys/fs/cgroup; otherwise the v1 blkio hierarchy's mount point. */
const mounts = readMountinfo();
const pureV2 = mounts.some((m) => m.mountPoint === '/sys/fs/cgroup' && m.fstype === 'cgroup2');
const blkioMount = mounts.find((m) => m.fstype === 'cgroup' && m.superOptions.includes('blkio'))?.mountPoint;
/** Every hierarchy's hybridbox parent: the v1 controllers' and cgroup2's. */
const cgroupParents = (): string[] => mounts.filter((m) => m.fstype === 'cgroup' || m.fstype === 'cgroup2').map((m) => join(m.mountPoint, 'hybridbox'));
const sandboxCgroups = (): string[] =>
  cgroupParents().flatMap((p) =>
    existsSync(p)
      ? readdirSync(p, { withFileTypes: true })
          .filter((d) => d.isDirectory())
          .map((d) => join(p, d.name))
      : [],
  );
/** Whether a cgroup or one below it has a process (a sandbox's processes are in its ctr leaf). */
function holdsProcesses(dir: string): boolean {
  try {
    if (readFileSync(join(dir, 'cgroup.procs'), 'utf8').trim() !== '') return true;
    return readdirSync(dir, { withFileTypes: true }).some((d) => d.isDirectory() && holdsProcesses(join(dir, d.name)));
  } catch {
    return false;
  }
}
/** The sandbox's leaf cgroup, where crun writes its limits, in the blkio (v1) or unified (v2) hierarchy. */
const leaf = (id: string): string => (pureV2 ? `/sys/fs/cgroup/hybridbox/${id}/ctr` : join(blkioMount ?? '/no-blkio-hierarchy', 'hybridbox', id, 'ctr'));

interface Inspected {
  limits: { field: string; value: string; mechanism: string | null; note?: string }[];
  warnings: string[];
}
async function runDetached(t: { is: (a: unknown, b: unknown, m?: string) => void }, ...args: string[]): Promise<{ id: string; info: Inspected }> {
  const r = await hbx('run', '-d', '--isolation', 'container', ...args, 'busybox', 'sleep', '60');
  t.is(r.exitCode, 0, r.stderr);
  const id = r.stdout.trim();
  const i = await hbx('inspect', id);
  t.is(i.exitCode, 0, i.stderr);
  return { id, info: JSON.parse(i.stdout) as Inspected };
}

test.serial('container: each disk limit lands in its cgroup file on the state directory’s disk, inspect names the file, and the sandbox still runs', async (t) => {
  const { id, info } = await runDetached(t, ...ALL_FOUR);
  try {
    if (pureV2) {
      t.is(readFileSync(join(leaf(id), 'io.max'), 'utf8').trim(), `${disk} ${EXPECTED.map((e) => `${e.v2}=${e.rate}`).join(' ')}`);
    } else {
      for (const e of EXPECTED) t.is(readFileSync(join(leaf(id), `blkio.throttle.${e.v1}`), 'utf8').trim(), `${disk} ${e.rate}`, e.v1);
    }
    for (const e of EXPECTED) {
      const l = info.limits.find((x) => x.field === `resources.${e.field}[0]`);
      const file = pureV2 ? `${leaf(id)}/io.max = "${disk} ${e.v2}=${e.rate}"` : `${leaf(id)}/blkio.throttle.${e.v1} = "${disk} ${e.rate}"`;
      t.truthy(l?.mechanism?.endsWith(file), `${e.field}: ${JSON.stringify(l)} should name ${file}`);
      t.true(l?.value.includes(`(${disk})`), `${e.field}: ${l?.value}`);
      // v1 does not charge writeback to the writer: each write limit says so, in its note and in warnings.
      const caveat = !pureV2 && e.field.startsWith('deviceWrite');
      t.is(l?.note?.includes('buffered writes') ?? false, caveat, `${e.field} note: ${l?.note}`);
      t.is(
        info.warnings.some((w) => w.startsWith(`resources.${e.field}[0]: `) && w.includes('buffered writes')),
        caveat,
        info.warnings.join('\n'),
      );
    }
    const r = await hbx('exec', id, 'sh', '-c', 'echo still here; ls /');
    t.is(r.exitCode, 0, r.stderr);
    t.regex(r.stdout, /^still here\n/);
  } finally {
    await hbx('rm', '-f', id);
  }
});

test.serial('container: two limits of one field on the same disk: the lower holds and the other is listed as not applied', async (t) => {
  const { id, info } = await runDetached(t, '--device-write-bps', `${diskNode}:5mb`, '--device-write-bps', '10mb');
  try {
    const file = pureV2 ? join(leaf(id), 'io.max') : join(leaf(id), 'blkio.throttle.write_bps_device');
    t.is(readFileSync(file, 'utf8').trim(), pureV2 ? `${disk} rbps=max wbps=${5 << 20} riops=max wiops=max` : `${disk} ${5 << 20}`);
    t.like(
      info.limits.find((l) => l.field === 'resources.deviceWriteBps[1]'),
      { mechanism: null },
    );
    t.true(
      info.warnings.some((w) => w.startsWith('resources.deviceWriteBps[1] is not applied: resources.deviceWriteBps[0]')),
      info.warnings.join('\n'),
    );
  } finally {
    await hbx('rm', '-f', id);
  }
});

const zram = isBlockDevice('/dev/zram0');
(zram ? test.serial : test.serial.skip)(
  zram
    ? 'container: a limit naming another disk (/dev/zram0) lands with that disk’s numbers, beside the writable layer’s'
    : 'container: a named device (skipped: /dev/zram0 is not a block device on this host)',
  async (t) => {
    const z = (await lsblkDisk('/dev/zram0')).numbers;
    const { id, info } = await runDetached(t, '--device-read-bps', '/dev/zram0:1mb', '--device-read-bps', '2mb');
    try {
      const lines = readFileSync(join(leaf(id), pureV2 ? 'io.max' : 'blkio.throttle.read_bps_device'), 'utf8')
        .trim()
        .split('\n')
        .sort();
      const want = pureV2 ? [`${z} rbps=${1 << 20} wbps=max riops=max wiops=max`, `${disk} rbps=${2 << 20} wbps=max riops=max wiops=max`] : [`${z} ${1 << 20}`, `${disk} ${2 << 20}`];
      t.deepEqual(lines, want.sort());
      t.true(info.limits.find((l) => l.field === 'resources.deviceReadBps[0]')?.mechanism?.includes(`"${z} `), JSON.stringify(info.limits));
    } finally {
      await hbx('rm', '-f', id);
    }
  },
);

test.serial('container: an O_DIRECT write under --device-write-bps 5mb is bounded; a buffered one is on cgroup v2 only', async (t) => {
  // A buffered write made durable by a global sync: the kernel's flusher writes it, which
  // cgroup v1 does not charge to the sandbox (the warning the plan gives), and v2 does.
  const flushed = 'read a _ < /proc/uptime; dd if=/dev/zero of=/buffered bs=1M count=10 2>/dev/null; sync; read b _ < /proc/uptime; echo "flushed=$a:$b"';
  const run = async (...limit: string[]) => {
    const r = await hbx('run', '--rm', '--isolation', 'container', ...limit, 'busybox', 'sh', '-c', `${directWrite(10)}; ${flushed}`);
    t.is(r.exitCode, 0, r.stderr);
    return { direct: mibPerSec(r.stdout, 10), buffered: mibPerSec(r.stdout, 10, 'flushed') };
  };
  const limited = await run('--device-write-bps', '5mb');
  const free = await run();
  t.log(`container O_DIRECT write of 10 MiB: ${limited.direct.toFixed(2)} MiB/s under a 5 MiB/s limit, ${free.direct.toFixed(1)} MiB/s without`);
  t.log(`container buffered write + sync of 10 MiB: ${limited.buffered.toFixed(1)} MiB/s under the limit, ${free.buffered.toFixed(1)} MiB/s without (${pureV2 ? 'v2' : 'v1'})`);
  t.true(limited.direct > 0 && limited.direct < 2 * 5, `${limited.direct} MiB/s`);
  if (pureV2) t.true(limited.buffered > 0 && limited.buffered < 2 * 5, `buffered ${limited.buffered} MiB/s`);
});

test.serial('container: bad disk limits exit 125 with one line naming the field, and create nothing', async (t) => {
  const dirs = () => readdirSync(join(hb.root, 'sandboxes')).sort();
  const [dirsBefore, cgroupsBefore] = [dirs(), new Set(sandboxCgroups())];
  for (const [flag, value, field] of [
    ['--device-write-bps', '-5mb', '--device-write-bps'],
    ['--device-write-bps', '5zb', '--device-write-bps'],
    ['--device-read-iops', '1.5', 'resources.deviceReadIops[0].rate'],
    ['--device-read-bps', '/dev/nonexistent:1mb', 'resources.deviceReadBps[0].path'],
  ] as const) {
    for (const cmd of ['run', 'create']) {
      const r = await hbx(cmd, '--isolation', 'container', flag, value, 'busybox', 'true');
      t.is(r.exitCode, 125, `${cmd} ${flag} ${value}: ${r.stderr}`);
      t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
      t.true(r.stderr.includes(field), `${field} in: ${r.stderr}`);
      t.is(r.stdout, '', 'no sandbox id');
    }
  }
  t.deepEqual(dirs(), dirsBefore);
  // Other tests' sandboxes may come and go meanwhile: a cgroup left by a refused command is one
  // that stays, with no process in it.
  const stray = () => sandboxCgroups().filter((c) => !cgroupsBefore.has(c) && existsSync(c) && !holdsProcesses(c));
  if (stray().length > 0) await waitFor(() => stray().length === 0, 2000, 100);
  t.deepEqual(stray(), []);
});

test.serial('container: 20 create/start/rm cycles with all four disk limits leave no cgroup in any hierarchy and no sandbox directory', async (t) => {
  const ids: string[] = [];
  for (let i = 0; i < 20; i++) {
    const c = await hbx('create', '--isolation', 'container', ...ALL_FOUR, 'busybox', 'true');
    t.is(c.exitCode, 0, c.stderr);
    const id = c.stdout.trim();
    ids.push(id);
    const s = await hbx('start', id);
    t.is(s.exitCode, 0, s.stderr);
    const r = await hbx('rm', '-f', id);
    t.is(r.exitCode, 0, r.stderr);
  }
  t.deepEqual(
    sandboxCgroups().filter((c) => ids.some((id) => c.endsWith(`/hybridbox/${id}`))),
    [],
  );
  t.deepEqual(hostTraces(ids), []);
  t.deepEqual(
    ids.filter((id) => existsSync(join(hb.root, 'sandboxes', id))),
    [],
  );
});

// --- VMs --------------------------------------------------------------------------------------

test.serial('microvm: the throttles are on QEMU’s -drive and in QMP query-block; direct writes in the guest are held', async (t) => {
  const s = await hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '120'], isolation: 'microvm', resources: { ...LIMITS, cpus: 0.5 } });
  const dir = join(hb.root, 'sandboxes', s.id);
  const qemu = readdirSync('/proc').find(
    (p) =>
      /^\d+$/.test(p) &&
      (() => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`sandboxes/${s.id}/disk.qcow2`);
        } catch {
          return false;
        }
      })(),
  );
  t.truthy(qemu, 'QEMU is running');
  const drive =
    readFileSync(`/proc/${qemu}/cmdline`, 'utf8')
      .split('\0')
      .find((a) => a.startsWith('id=root,')) ?? '';
  for (const o of [`throttling.bps-read=${50 << 20}`, `throttling.bps-write=${4 << 20}`, 'throttling.iops-read=500', 'throttling.iops-write=400']) t.true(drive.includes(o), `${o} in ${drive}`);
  // --cpus: all of QEMU's threads in its host cgroup, under the quota.
  const cpuLine =
    readFileSync(`/proc/${qemu}/cgroup`, 'utf8')
      .split('\n')
      .find((l) => /^\d+:([^:]*\bcpu\b[^:]*)?:/.test(l) || l.startsWith('0::')) ?? '';
  t.true(cpuLine.endsWith(`/hybridbox/${s.id}/vm`), cpuLine);
  const cpuDir = hb.host.cgroup.layout === 'v2' ? '/sys/fs/cgroup' : (hb.host.cgroup.v1.cpu ?? '');
  const quotaFile = hb.host.cgroup.layout === 'v2' ? 'cpu.max' : 'cpu.cfs_quota_us';
  t.is(readFileSync(join(cpuDir, 'hybridbox', s.id, 'vm', quotaFile), 'utf8').trim(), hb.host.cgroup.layout === 'v2' ? '50000 100000' : '50000');
  const threads = readdirSync(`/proc/${qemu}/task`).length;
  t.true(
    readFileSync(join(cpuDir, 'hybridbox', s.id, 'vm', hb.host.cgroup.layout === 'v2' ? 'cgroup.threads' : 'tasks'), 'utf8')
      .trim()
      .split('\n').length >= threads,
    'every QEMU thread is in it',
  );
  const qmp = await QmpClient.connect(vmFiles(dir).qmpSock);
  const blocks = await qmp.execute<{ device: string; qdev?: string; inserted?: Record<string, unknown> }[]>('query-block');
  qmp.close();
  const root = blocks.find((b) => b.inserted?.file && String(b.inserted.file).endsWith('disk.qcow2'))?.inserted ?? {};
  t.like(root, { bps_rd: 50 << 20, bps_wr: 4 << 20, iops_rd: 500, iops_wr: 400 });
  const limited = await hb.sandboxes.exec(s.id, ['sh', '-c', DIRECT_WRITE]);
  t.is(limited.exitCode, 0, limited.stderr);
  await hb.sandboxes.remove(s.id, { force: true });
  const free = await hb.sandboxes.run({ image: 'busybox', command: ['sh', '-c', DIRECT_WRITE], isolation: 'microvm' }, { remove: true });
  const [l, f] = [mibPerSec(limited.stdout), mibPerSec(free.stdout)];
  t.log(`microvm O_DIRECT write in the guest: ${l.toFixed(2)} MiB/s under a 4 MiB/s limit, ${f.toFixed(1)} MiB/s without`);
  t.true(l > 0 && l < 4 * 1.5, `${l} MiB/s`);
});

test.serial('vm (libvirt): the throttles are the disk’s <iotune>; a limit on another host disk is listed as not applied', async (t) => {
  const resources = { ...LIMITS, cpus: 0.5, ...(isBlockDevice('/dev/zram0') ? { deviceWriteBps: [{ rate: 4 << 20 }, { path: '/dev/zram0', rate: 1 << 20 }] } : {}) };
  const s = await hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '120'], isolation: 'vm', resources });
  const xml = (await execa('virsh', ['-c', 'qemu:///system', 'dumpxml', `hbx-${s.id}`])).stdout;
  const iotune = /<iotune>([\s\S]*?)<\/iotune>/.exec(xml)?.[1] ?? '';
  for (const [el, v] of [
    ['read_bytes_sec', 50 << 20],
    ['write_bytes_sec', 4 << 20],
    ['read_iops_sec', 500],
    ['write_iops_sec', 400],
  ] as const) {
    t.regex(iotune, new RegExp(`<${el}>${v}</${el}>`), `${el} in ${iotune}`);
  }
  t.regex(xml, /<global_quota>50000<\/global_quota>/, 'all of the domain under the CPU quota');
  const info = (await hb.sandboxes.inspect(s.id)) as { warnings: string[] };
  if (isBlockDevice('/dev/zram0'))
    t.true(
      info.warnings.some((w) => w.startsWith('resources.deviceWriteBps[1] is not applied') && w.includes('/dev/zram0')),
      info.warnings.join('\n'),
    );
  const limited = await hb.sandboxes.exec(s.id, ['sh', '-c', DIRECT_WRITE]);
  t.is(limited.exitCode, 0, limited.stderr);
  t.log(`vm O_DIRECT write in the guest: ${mibPerSec(limited.stdout).toFixed(2)} MiB/s under a 4 MiB/s limit`);
  t.true(mibPerSec(limited.stdout) < 4 * 1.5);
  await hb.sandboxes.remove(s.id, { force: true });
});

test.serial('20 create/start/rm cycles with disk limits on each VM backend leave no cgroup, QEMU, domain or directory', async (t) => {
  const ids: string[] = [];
  for (const backend of ['microvm', 'vm'] as const) {
    for (let i = 0; i < 20; i++) {
      const s = await hb.sandboxes.create({ image: 'busybox', command: ['true'], isolation: backend, resources: LIMITS });
      ids.push(s.id);
      // VM boots cost seconds here: the first two of each start.
      if (i < 2) await hb.sandboxes.start(s.id);
      await hb.sandboxes.remove(s.id, { force: true });
    }
  }
  const procs = (await execa('ps', ['-eo', 'args'])).stdout;
  const domains = (await execa('virsh', ['-c', 'qemu:///system', 'list', '--all', '--name'], { reject: false })).stdout;
  t.deepEqual(hostTraces(ids), []);
  t.deepEqual(
    ids.filter((id) => procs.includes(id) || domains.includes(id) || existsSync(join(hb.root, 'sandboxes', id))),
    [],
  );
});
