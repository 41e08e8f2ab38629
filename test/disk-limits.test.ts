import test from 'ava';
import { execa } from 'execa';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Hybridbox } from '../src/index.js';
import { devNumbers, diskBehind, isBlockDevice } from '../src/host/blockdev.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { vmFiles } from '../src/runtimes/vm/files.js';
import { QmpClient } from '../src/runtimes/vm/qmp.js';
import { CLI, freshHybridbox, hostTraces } from './helpers.js';

// --device-{read,write}-{bps,iops} where each backend enforces them: the container's cgroup
// files (written by crun), QEMU's -drive throttling and QMP's view of it, libvirt's <iotune>.
// The disks are this host's real ones; rates are printed, and only loosely bounded.

let hb: Hybridbox;
let cleanup: () => Promise<void>;
let disk = '';

const LIMITS = { deviceReadBps: [{ rate: 50 << 20 }], deviceWriteBps: [{ rate: 4 << 20 }], deviceReadIops: [{ rate: 500 }], deviceWriteIops: [{ rate: 400 }] };
/** What the sandbox's writable layer sits on, as the kernel numbers it. */
const V1_FILES = { read_bps_device: 50 << 20, write_bps_device: 4 << 20, read_iops_device: 500, write_iops_device: 400 };

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, cleanup } = await freshHybridbox('hbx-disklimits-'));
  const d = diskBehind(hb.root);
  if (!d) throw new Error(`${hb.root} is on no block device: disk limits have nothing to land on`);
  disk = devNumbers(d);
});
test.after.always(async () => {
  await cleanup?.();
});

/** Seconds a workload's 8 MiB O_DIRECT write took, measured inside it. */
const DIRECT_WRITE = 'read a _ < /proc/uptime; dd if=/dev/zero of=/ddtest bs=1M count=8 oflag=direct 2>/dev/null; read b _ < /proc/uptime; echo "took=$a:$b"';
const mibPerSec = (out: string): number => {
  const m = /took=([\d.]+):([\d.]+)/.exec(out);
  return m ? 8 / Math.max(0.01, Number(m[2]) - Number(m[1])) : NaN;
};

test.serial('container: each disk limit lands in its cgroup file on the disk behind the writable layer; direct writes are held', async (t) => {
  const s = await hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '60'], isolation: 'container', resources: LIMITS });
  const host = hb.host;
  const info = (await hb.sandboxes.inspect(s.id)) as { limits: { field: string; mechanism: string | null; note?: string }[]; warnings: string[] };
  if (host.cgroup.layout === 'v2') {
    const ioMax = readFileSync(`/sys/fs/cgroup/hybridbox/${s.id}/ctr/io.max`, 'utf8');
    t.regex(ioMax, new RegExp(`^${disk} rbps=${50 << 20} wbps=${4 << 20} riops=500 wiops=400$`, 'm'));
  } else {
    const blkio = host.cgroup.v1.blkio;
    t.truthy(blkio, 'a v1 blkio hierarchy');
    for (const [file, rate] of Object.entries(V1_FILES)) {
      t.is(readFileSync(join(blkio ?? '', 'hybridbox', s.id, 'ctr', `blkio.throttle.${file}`), 'utf8').trim(), `${disk} ${rate}`, file);
    }
    // v1 does not charge writeback to the writer: every write limit says so.
    t.is(info.warnings.filter((w) => w.includes('buffered writes')).length, 2, info.warnings.join('\n'));
  }
  for (const f of ['deviceReadBps', 'deviceWriteBps', 'deviceReadIops', 'deviceWriteIops']) {
    const l = info.limits.find((x) => x.field === `resources.${f}[0]`);
    t.truthy(l?.mechanism?.includes(disk), `${f}: ${JSON.stringify(l)}`);
  }
  const limited = await hb.sandboxes.exec(s.id, ['sh', '-c', DIRECT_WRITE]);
  t.is(limited.exitCode, 0, limited.stderr);
  await hb.sandboxes.remove(s.id, { force: true });
  const free = await hb.sandboxes.run({ image: 'busybox', command: ['sh', '-c', DIRECT_WRITE], isolation: 'container' }, { remove: true });
  const [l, f] = [mibPerSec(limited.stdout), mibPerSec(free.stdout)];
  t.log(`container O_DIRECT write: ${l.toFixed(2)} MiB/s under a 4 MiB/s limit, ${f.toFixed(1)} MiB/s without`);
  t.true(l > 0 && l < 4 * 1.5, `${l} MiB/s`);
});

test.serial('container: a limit naming another disk lands on that disk', async (t) => {
  if (!isBlockDevice('/dev/zram0')) return t.pass('no /dev/zram0 on this host');
  const s = await hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '30'], isolation: 'container', resources: { deviceReadBps: [{ path: '/dev/zram0', rate: 1 << 20 }] } });
  const zram = readFileSync('/sys/block/zram0/dev', 'utf8').trim();
  const blkio = hb.host.cgroup.v1.blkio;
  const file = hb.host.cgroup.layout === 'v2' ? `/sys/fs/cgroup/hybridbox/${s.id}/ctr/io.max` : join(blkio ?? '', 'hybridbox', s.id, 'ctr', 'blkio.throttle.read_bps_device');
  t.regex(readFileSync(file, 'utf8'), new RegExp(`^${zram} (rbps=)?${1 << 20}`, 'm'));
  await hb.sandboxes.remove(s.id, { force: true });
});

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

test.serial('bad disk limits exit 125 with one line naming the field, and create nothing', async (t) => {
  const env = { HYBRIDBOX_ROOT: hb.root };
  const before = readdirSync(join(hb.root, 'sandboxes')).length;
  for (const [flag, value, field] of [
    ['--device-write-bps', '-5mb', '--device-write-bps'],
    ['--device-write-bps', '5zb', '--device-write-bps'],
    ['--device-read-iops', '1.5', 'resources.deviceReadIops[0].rate'],
    ['--device-read-bps', '/dev/nonexistent:1mb', 'resources.deviceReadBps[0].path'],
  ] as const) {
    const r = await execa('node', [CLI, 'run', flag, value, 'busybox', 'true'], { env, reject: false });
    t.is(r.exitCode, 125, `${flag} ${value}: ${r.stderr}`);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.true(r.stderr.includes(field), `${field} in: ${r.stderr}`);
  }
  t.is(readdirSync(join(hb.root, 'sandboxes')).length, before);
});

test.serial('20 create/start/rm cycles with disk limits on each backend leave no cgroup, QEMU, domain or directory', async (t) => {
  const ids: string[] = [];
  for (const backend of ['container', 'microvm', 'vm'] as const) {
    for (let i = 0; i < 20; i++) {
      const s = await hb.sandboxes.create({ image: 'busybox', command: ['true'], isolation: backend, resources: LIMITS });
      ids.push(s.id);
      // Containers run each cycle (crun makes and removes the cgroup); VMs, whose boots cost seconds here, the first two.
      if (backend === 'container' || i < 2) await hb.sandboxes.start(s.id);
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
