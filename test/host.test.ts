import test from 'ava';
import { execa } from 'execa';
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { formatHostInfo } from '../src/host/format.js';
import { parseVersion, probeCgroups, probeHost, type VersionRunner } from '../src/host/probe.js';

const tmp = (): string => mkdtempSync(join(os.tmpdir(), 'hbx-host-'));

/** The real runner, counting how often it is asked to spawn. */
function countingRunner(): { run: VersionRunner; calls: string[] } {
  const calls: string[] = [];
  const run: VersionRunner = async (file, args) => {
    calls.push(file);
    const r = await execa(file, args, { reject: false, timeout: 5000 });
    return { stdout: String(r.stdout), stderr: String(r.stderr), failed: r.failed, timedOut: r.timedOut };
  };
  return { run, calls };
}

test('probeHost matches this machine', async (t) => {
  const dir = tmp();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const info = await probeHost({ cacheDir: dir });

  t.is(info.cpus, os.cpus().length);
  t.is(info.kernelRelease, os.release());
  t.is(info.arch, (await execa('uname', ['-m'])).stdout.trim());
  t.is(info.isRoot, process.getuid!() === 0);
  t.true(Math.abs(info.memTotalBytes - os.totalmem()) <= os.totalmem() * 0.01);
  t.true(info.memAvailableBytes > 0 && info.memAvailableBytes <= info.memTotalBytes);
  t.is(info.init.comm, readFileSync('/proc/1/comm', 'utf8').trim());
  t.is(info.init.systemd, info.init.comm === 'systemd');
  t.is(info.features.userNamespaces, Number(readFileSync('/proc/sys/user/max_user_namespaces', 'utf8')) > 0);
  if (/\toverlay\n/.test(readFileSync('/proc/filesystems', 'utf8'))) t.true(info.features.overlayfs);

  // KVM: usable exactly when /dev/kvm exists, opens read-write, and the CPU has vmx/svm.
  if (!existsSync('/dev/kvm')) {
    t.false(info.kvm.usable);
    t.regex(info.kvm.reason, /\/dev\/kvm does not exist: VMs will run under TCG/);
  } else {
    let opens = true;
    try {
      closeSync(openSync('/dev/kvm', 'r+'));
    } catch {
      opens = false;
    }
    const hw = /^flags\s*:.*\b(vmx|svm)\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));
    t.is(info.kvm.usable, opens && hw, info.kvm.reason);
  }

  // cgroups, from /proc/mounts rather than the mountinfo the probe reads.
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .trim()
    .split('\n')
    .map((l) => l.split(' '));
  const cg2 = mounts.filter((m) => m[2] === 'cgroup2').map((m) => m[1]);
  const cg1 = mounts.filter((m) => m[2] === 'cgroup');
  const layout = cg2.includes('/sys/fs/cgroup') ? 'v2' : cg1.length && cg2.length ? 'hybrid' : 'v1';
  t.is(info.cgroup.layout, layout);
  t.is(info.cgroup.unifiedMount, cg2[0] ?? null);
  for (const [, mountPoint, , opts] of cg1) {
    for (const c of opts!.split(',').filter((o) => ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'blkio', 'devices', 'freezer'].includes(o))) {
      t.is(info.cgroup.v1[c], mountPoint, `v1 controller ${c}`);
    }
  }
  if (cg2[0]) t.deepEqual(info.cgroup.unifiedControllers, readFileSync(join(cg2[0], 'cgroup.controllers'), 'utf8').split(/\s+/).filter(Boolean));

  // Tools: each one the shell finds is reported, with the version it prints.
  const names = { crun: ['crun'], runc: ['runc'], tini: ['tini-static', 'tini'], qemu: ['qemu-system-x86_64'], libvirtd: ['libvirtd'], virsh: ['virsh'] };
  const env = { PATH: `${process.env.PATH}:/usr/local/sbin:/usr/sbin:/sbin` };
  for (const [tool, bins] of Object.entries(names)) {
    const found = (await execa('sh', ['-c', `command -v ${bins.join(' || command -v ')}`], { reject: false, env })).stdout.trim().split('\n')[0];
    const got = info.tools[tool as keyof typeof info.tools];
    if (!found) {
      t.is(got, undefined, `${tool} is not installed`);
      continue;
    }
    t.truthy(got, `${tool} at ${found}`);
    const r = await execa(got!.path, ['--version'], { reject: false });
    t.is(got!.version, parseVersion(`${r.stdout}\n${r.stderr}`.trim()) ?? 'unknown', tool);
  }
});

test('a second probe with the same cacheDir spawns nothing and is fast', async (t) => {
  const dir = tmp();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const first = countingRunner();
  const a = await probeHost({ cacheDir: dir, runVersion: first.run });
  t.is(first.calls.length, Object.keys(a.tools).length, 'one version command per installed tool');

  const second = countingRunner();
  const started = performance.now();
  const b = await probeHost({ cacheDir: dir, runVersion: second.run });
  const elapsed = performance.now() - started;
  t.deepEqual(second.calls, []);
  t.deepEqual(b.tools, a.tools);
  t.true(elapsed < 250, `cached probe took ${elapsed.toFixed(1)} ms`);

  // Without a cache, every call asks the tools again.
  const uncached = countingRunner();
  await probeHost({ runVersion: uncached.run });
  t.is(uncached.calls.length, Object.keys(a.tools).length);
});

test('the cache is keyed by each binary: a changed binary is asked again', async (t) => {
  const bin = tmp();
  const cache = tmp();
  t.teardown(() => [bin, cache].forEach((d) => rmSync(d, { recursive: true, force: true })));
  const fake = (version: string) => {
    writeFileSync(join(bin, 'crun'), `#!/bin/sh\necho "crun version ${version}"\necho "commit: fake"\n`);
    chmodSync(join(bin, 'crun'), 0o755);
  };
  const probe = async () => {
    const c = countingRunner();
    const info = await probeHost({ cacheDir: cache, searchPath: [bin], runVersion: c.run });
    return { tools: info.tools, spawns: c.calls.length };
  };

  fake('9.9.9');
  t.deepEqual(await probe(), { tools: { crun: { path: join(bin, 'crun'), version: '9.9.9' } }, spawns: 1 });
  t.deepEqual(await probe(), { tools: { crun: { path: join(bin, 'crun'), version: '9.9.9' } }, spawns: 0 });
  fake('9.9.10'); // a different size
  t.deepEqual(await probe(), { tools: { crun: { path: join(bin, 'crun'), version: '9.9.10' } }, spawns: 1 });
  rmSync(join(bin, 'crun'));
  t.deepEqual(await probe(), { tools: {}, spawns: 0 });
});

test('cgroup layout from mountinfo: v2, hybrid, v1', (t) => {
  const line = (id: number, mp: string, type: string, opts: string) => `${id} 23 0:${id} / ${mp} rw,relatime - ${type} ${type} ${opts}`;
  const v2 = probeCgroups(line(30, '/sys/fs/cgroup', 'cgroup2', 'rw,nsdelegate'));
  t.like(v2, { layout: 'v2', v1: {}, unifiedMount: '/sys/fs/cgroup' });

  const v1Lines = [
    line(32, '/sys/fs/cgroup/cpu,cpuacct', 'cgroup', 'rw,cpu,cpuacct'),
    line(35, '/sys/fs/cgroup/memory', 'cgroup', 'rw,memory'),
    line(40, '/sys/fs/cgroup/systemd', 'cgroup', 'rw,xattr,name=systemd'),
  ];
  const v1 = probeCgroups(v1Lines.join('\n'));
  t.is(v1.layout, 'v1');
  t.deepEqual(v1.v1, { cpu: '/sys/fs/cgroup/cpu,cpuacct', cpuacct: '/sys/fs/cgroup/cpu,cpuacct', memory: '/sys/fs/cgroup/memory' });
  t.is(v1.unifiedMount, null);

  const hybrid = probeCgroups([...v1Lines, line(41, '/sys/fs/cgroup/unified', 'cgroup2', 'rw')].join('\n'));
  t.like(hybrid, { layout: 'hybrid', unifiedMount: '/sys/fs/cgroup/unified' });
});

test("parseVersion reads the tools' version lines", (t) => {
  t.is(parseVersion('crun version 1.8.1\ncommit: f8a0'), '1.8.1');
  t.is(parseVersion('runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1'), '1.1.5+ds1');
  t.is(parseVersion('tini version 0.19.0 - git.de40ad0'), '0.19.0');
  t.is(parseVersion('QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)'), '7.2.19');
  t.is(parseVersion('libvirtd (libvirt) 9.0.0'), '9.0.0');
  t.is(parseVersion('9.0.0'), '9.0.0');
  t.is(parseVersion('garbage'), null);
});

test('formatHostInfo lists KVM, cgroups, every runtime, CPUs, memory and kernel', async (t) => {
  const dir = tmp();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const info = await probeHost({ cacheDir: dir });
  const out = formatHostInfo({ ...info, tools: { crun: { path: '/usr/bin/crun', version: '1.8.1' } } });
  t.regex(out, new RegExp(`^KVM +${info.kvm.usable ? 'yes' : 'no'}: `, 'm'));
  t.regex(out, new RegExp(`^cgroups +${info.cgroup.layout}`, 'm'));
  t.regex(out, /^crun +1\.8\.1 \(\/usr\/bin\/crun\)$/m);
  for (const missing of ['runc', 'tini', 'qemu', 'libvirtd', 'virsh']) t.regex(out, new RegExp(`^${missing} +not installed$`, 'm'));
  t.regex(out, new RegExp(`^CPUs +${info.cpus} x `, 'm'));
  t.regex(out, /^memory +\d+\.\d GiB total, \d+\.\d GiB available$/m);
  t.true(out.includes(info.kernelRelease));
  // The layout by name, then where the controllers are.
  const row = (cgroup: typeof info.cgroup) => /^cgroups +(.*)$/m.exec(formatHostInfo({ ...info, cgroup }))![1];
  t.is(
    row({ layout: 'v2', v1: {}, unifiedMount: '/sys/fs/cgroup', unifiedControllers: ['cpu', 'io', 'memory', 'pids'] }),
    'v2 (unified hierarchy only): cgroup2 at /sys/fs/cgroup, controllers cpu io memory pids',
  );
  t.is(
    row({ layout: 'hybrid', v1: { pids: '/sys/fs/cgroup/pids', memory: '/sys/fs/cgroup/memory' }, unifiedMount: '/sys/fs/cgroup/unified', unifiedControllers: [] }),
    'hybrid (v1 controllers memory pids; cgroup2 at /sys/fs/cgroup/unified, controllers none, hidden from the container runtime)',
  );
  t.is(row({ layout: 'v1', v1: {}, unifiedMount: null, unifiedControllers: [] }), 'v1 (controllers none)');
});
