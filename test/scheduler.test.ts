import test from 'ava';
import { PlacementError } from '../src/errors.js';
import type { HostInfo, HostLoad } from '../src/host/types.js';
import type { BackendDescriptor } from '../src/runtimes/descriptor.js';
import { DESCRIPTORS } from '../src/runtimes/registry.js';
import { formatPlacement, place } from '../src/scheduler/index.js';
import { WorkloadSpecSchema, type BackendKind, type WorkloadSpecInput } from '../src/spec/schema.js';

const GiB = 1024 ** 3;
const tool = (path: string, version: string) => ({ path, version });

const fullHost: HostInfo = {
  arch: 'x86_64',
  kernelRelease: '6.1.0-18-amd64',
  cpuModel: 'AMD EPYC',
  cpus: 2,
  cpuMHz: 2445,
  memTotalBytes: 24 * GiB,
  memAvailableBytes: 20 * GiB,
  isRoot: true,
  kvm: { usable: true, reason: '/dev/kvm opens read-write: VMs run with KVM hardware acceleration' },
  cgroup: {
    layout: 'hybrid',
    v1: { cpu: '/sys/fs/cgroup/cpu', memory: '/sys/fs/cgroup/memory', pids: '/sys/fs/cgroup/pids' },
    unifiedMount: '/sys/fs/cgroup/unified',
    unifiedControllers: ['hugetlb'],
  },
  init: { comm: 'process_api', systemd: false },
  tools: {
    crun: tool('/usr/bin/crun', '1.8.1'),
    runc: tool('/usr/sbin/runc', '1.1.5'),
    tini: tool('/usr/bin/tini-static', '0.19.0'),
    qemu: tool('/usr/bin/qemu-system-x86_64', '7.2.19'),
    libvirtd: tool('/usr/sbin/libvirtd', '9.0.0'),
    virsh: tool('/usr/bin/virsh', '9.0.0'),
  },
  features: { userNamespaces: true, overlayfs: true },
};

const withTools = (drop: (keyof HostInfo['tools'])[], extra: Partial<HostInfo> = {}): HostInfo => ({
  ...fullHost,
  ...extra,
  tools: Object.fromEntries(Object.entries(fullHost.tools).filter(([k]) => !drop.includes(k as keyof HostInfo['tools']))),
});

const hosts = {
  full: fullHost,
  noKvm: { ...fullHost, kvm: { usable: false, reason: '/dev/kvm does not exist: VMs will run under TCG software emulation' } },
  noOciRuntime: withTools(['crun', 'runc']),
  runcOnly: withTools(['crun']),
  noQemu: withTools(['qemu', 'libvirtd', 'virsh']),
  noLibvirt: withTools(['libvirtd', 'virsh']),
  notRoot: { ...fullHost, isRoot: false },
} satisfies Record<string, HostInfo>;

// The real descriptors, as the backends export them: the table below must follow them.
const byKind = (k: BackendKind): BackendDescriptor => DESCRIPTORS.find((d) => d.kind === k)!;
const container = byKind('container');
const microvm = byKind('microvm');
const vm = byKind('vm');
const all = [container, microvm, vm];
const idle: HostLoad = { running: { container: 0, microvm: 0, vm: 0 }, committedMemoryMiB: 0 };

interface Row {
  name: string;
  spec?: Partial<WorkloadSpecInput>;
  host?: HostInfo;
  load?: HostLoad;
  backends?: BackendDescriptor[];
  stats?: Partial<Record<BackendKind, { median: number; p95: number; samples: number }>>;
  /** Expected backend, a pattern one reason must match, and optionally one rejected entry. */
  expect?: { backend: BackendKind; reason: RegExp; rejected?: [BackendKind, RegExp]; source?: 'measured' | 'default' };
  throws?: RegExp;
}

const rows: Row[] = [
  {
    name: 'trusted on a full host: the fastest start-up wins',
    expect: { backend: 'container', reason: /trusted.*fastest predicted start-up.*container at 60 ms/, rejected: ['microvm', /slower predicted start-up \(400 ms/] },
  },
  {
    name: 'untrusted on a full host: microvm, not the full machine',
    spec: { trust: 'untrusted' },
    expect: { backend: 'microvm', reason: /microvm is preferred over vm: .*full machine/, rejected: ['container', /untrusted and a VM backend is available/] },
  },
  {
    name: 'untrusted without QEMU: hardened container',
    spec: { trust: 'untrusted' },
    host: hosts.noQemu,
    expect: {
      backend: 'container',
      reason: /^no VM backend available on this host: running untrusted code in a hardened container \(user namespace, strict seccomp\)\.$/,
      rejected: ['microvm', /QEMU is not installed/],
    },
  },
  {
    name: 'untrusted when VMs are not implemented: hardened container',
    spec: { trust: 'untrusted' },
    backends: [container],
    expect: { backend: 'container', reason: /no VM backend available on this host/, rejected: ['vm', /not implemented in this version of hybridbox/] },
  },
  {
    name: 'untrusted without KVM: microvm under TCG, said so',
    spec: { trust: 'untrusted' },
    host: hosts.noKvm,
    expect: { backend: 'microvm', reason: /KVM is not usable \(\/dev\/kvm does not exist.*TCG/ },
  },
  {
    name: 'untrusted without libvirt: microvm still fits',
    spec: { trust: 'untrusted' },
    host: hosts.noLibvirt,
    expect: { backend: 'microvm', reason: /untrusted/, rejected: ['vm', /libvirt is not installed/] },
  },
  {
    name: 'untrusted with only the full-machine VM implemented',
    spec: { trust: 'untrusted' },
    backends: [container, vm],
    expect: { backend: 'vm', reason: /untrusted/, rejected: ['microvm', /not implemented/] },
  },
  {
    name: 'own kernel: VM class only',
    spec: { kernel: { ownKernel: true } },
    expect: { backend: 'microvm', reason: /kernel of its own.*only VM backends/, rejected: ['container', /needs its own kernel.*shares the host's kernel/] },
  },
  {
    name: 'own kernel without QEMU: nothing fits',
    spec: { kernel: { ownKernel: true } },
    host: hosts.noQemu,
    throws: /no backend can run this workload: container: the workload needs its own kernel.*microvm: QEMU is not installed/,
  },
  {
    name: 'trusted without crun or runc: next fastest',
    host: hosts.noOciRuntime,
    expect: { backend: 'microvm', reason: /fastest predicted start-up: microvm/, rejected: ['container', /neither crun nor runc is installed/] },
  },
  { name: 'trusted with runc only: container still fits', host: hosts.runcOnly, expect: { backend: 'container', reason: /fastest/ } },
  { name: 'not root: no backend (containers and VMs both need root here)', host: hosts.notRoot, throws: /container: container sandboxes need root.*microvm: VM sandboxes need root/ },
  {
    name: 'explicit vm on a full host',
    spec: { isolation: 'vm' },
    expect: { backend: 'vm', reason: /You asked for isolation: vm.*libvirt domain XML/, rejected: ['container', /isolation: vm was requested/] },
  },
  { name: 'explicit vm without libvirt', spec: { isolation: 'vm' }, host: hosts.noLibvirt, throws: /^isolation: vm was requested, but vm cannot be used: libvirt is not installed/ },
  { name: 'explicit container without an OCI runtime', spec: { isolation: 'container' }, host: hosts.noOciRuntime, throws: /isolation: container was requested.*neither crun nor runc is installed/ },
  {
    name: 'explicit vm when not implemented',
    spec: { isolation: 'vm' },
    backends: [container, microvm],
    throws: /isolation: vm was requested, but vm cannot be used: not implemented in this version of hybridbox/,
  },
  { name: 'explicit container for an own-kernel workload', spec: { isolation: 'container', kernel: { ownKernel: true } }, throws: /container cannot be used: the workload needs its own kernel/ },
  { name: 'explicit microvm without KVM', spec: { isolation: 'microvm' }, host: hosts.noKvm, expect: { backend: 'microvm', reason: /KVM is not usable/ } },
  {
    name: 'untrusted with a tight budget: VMs ruled out, hardened container',
    spec: { trust: 'untrusted', startupBudgetMs: 200 },
    expect: { backend: 'container', reason: /No VM backend fits this workload.*hardened container/, rejected: ['microvm', /p95 of 900 ms \(default estimate\) is over the start-up budget of 200 ms/] },
  },
  {
    name: 'budget below every p95: nothing fits',
    spec: { startupBudgetMs: 100 },
    throws: /container: its predicted start-up p95 of 120 ms \(default estimate\) is over the start-up budget of 100 ms/,
  },
  {
    name: 'measured stats beat the defaults',
    stats: { container: { median: 900, p95: 1500, samples: 20 }, microvm: { median: 300, p95: 500, samples: 20 } },
    expect: { backend: 'microvm', reason: /fastest predicted start-up: microvm at 300 ms median \(vs container 900 ms/, source: 'measured' },
  },
  { name: 'too few samples: defaults stay', stats: { container: { median: 900, p95: 1500, samples: 2 } }, expect: { backend: 'container', reason: /60 ms/, source: 'default' } },
  {
    name: 'measured p95 decides the budget',
    spec: { startupBudgetMs: 1300 },
    stats: { container: { median: 700, p95: 1400, samples: 10 } },
    expect: { backend: 'microvm', reason: /fastest/, rejected: ['container', /p95 of 1400 ms \(measured on this host\).*budget of 1300 ms/] },
  },
  { name: 'memory that fits next to the committed load', spec: { resources: { memoryMiB: 4096 } }, load: { ...idle, committedMemoryMiB: 8192 }, expect: { backend: 'container', reason: /fastest/ } },
  {
    name: 'memory over what is available',
    spec: { resources: { memoryMiB: 8192 } },
    load: { ...idle, committedMemoryMiB: 16384 },
    throws: /asks for 8192 MiB of memory; with the 16384 MiB already promised.*24576 MiB, more than the 20480 MiB this host has available/,
  },
];

for (const row of rows) {
  test(`place: ${row.name}`, (t) => {
    const spec = WorkloadSpecSchema.parse({ image: 'busybox', ...row.spec });
    const run = () => place(spec, row.host ?? hosts.full, row.load ?? idle, row.backends ?? all, row.stats);
    if (row.throws) {
      const err = t.throws(run, { instanceOf: PlacementError });
      t.regex(err!.message, row.throws);
      t.false(err!.message.includes('\n'), 'the error is one line');
      t.true(err!.rejected.length > 0);
      return;
    }
    const p = run();
    t.is(p.backend, row.expect!.backend, formatPlacement(p));
    t.true(
      p.reasons.some((r) => row.expect!.reason.test(r)),
      `no reason matches ${row.expect!.reason}:\n${formatPlacement(p)}`,
    );
    if (row.expect!.rejected) {
      const [backend, re] = row.expect!.rejected;
      t.regex(p.rejected.find((r) => r.backend === backend)?.reason ?? '(not rejected)', re);
    }
    if (row.expect!.source) t.is(p.predictedStartupMs.source, row.expect!.source);
    // Every backend is accounted for: chosen or rejected with a reason.
    t.deepEqual([p.backend, ...p.rejected.map((r) => r.backend)].sort(), ['container', 'microvm', 'vm']);
  });
}

test('place is pure: same inputs, same answer, inputs untouched', (t) => {
  const spec = WorkloadSpecSchema.parse({ image: 'busybox', trust: 'untrusted' });
  const host = structuredClone(hosts.noKvm);
  const a = place(spec, host, idle, all);
  t.deepEqual(place(spec, host, idle, all), a);
  t.deepEqual(host, hosts.noKvm);
});

test('formatPlacement shows the choice, bullets, start-up and the alternatives', (t) => {
  const spec = WorkloadSpecSchema.parse({ image: 'busybox', trust: 'untrusted' });
  const out = formatPlacement(place(spec, hosts.noLibvirt, idle, all));
  t.regex(out, /^backend: microvm\n/);
  t.regex(out, /\n {2}• The workload is untrusted/);
  t.regex(out, /predicted start-up: 400 ms median, 900 ms p95 \(default estimate\)/);
  t.regex(out, /not chosen:\n {2}- container: .*\n {2}- vm: libvirt is not installed/);
});
