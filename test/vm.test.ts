import test from 'ava';
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Hybridbox } from '../src/index.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { CLI, freshHybridbox, hostTraces, waitFor, stateOf } from './helpers.js';

// Real VMs: QEMU microvm and libvirt, booting hybridbox's guest kernel (under TCG on hosts
// without usable KVM). Few tests, each doing several checks: every boot costs seconds.

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, root, cleanup } = await freshHybridbox('hbx-vm-'));
});
test.after.always(async () => {
  await cleanup?.();
});

const sh = (script: string, more: Record<string, unknown> = {}) => ({ image: 'busybox', command: ['sh', '-c', script], ...more });
const KINDS = ['microvm', 'vm'] as const;

/** Host traces of a VM sandbox: QEMU processes, libvirt domains, taps, files, leases. */
async function vmTraces(ids: string[]): Promise<string[]> {
  const found = hostTraces(ids);
  const procs = (await execa('ps', ['-eo', 'pid,args'])).stdout;
  const domains = (await execa('virsh', ['-c', 'qemu:///system', 'list', '--all', '--name'], { reject: false })).stdout;
  const links = readdirSync('/sys/class/net');
  for (const id of ids) {
    for (const line of procs.split('\n')) if (line.includes(id)) found.push(`process: ${line.trim().slice(0, 160)}`);
    if (domains.includes(`hbx-${id}`)) found.push(`libvirt domain hbx-${id}`);
    if (links.includes(`ht${id.slice(0, 12)}`)) found.push(`tap ht${id}`);
    if (existsSync(join(root, 'sandboxes', id))) found.push(`directory of ${id}`);
  }
  return found;
}

for (const kind of KINDS) {
  test.serial(`${kind}: exit code, streams kept apart, env, workdir, its own kernel, volumes`, async (t) => {
    const input = mkdtempSync(join(tmpdir(), 'hbx-vin-'));
    const output = mkdtempSync(join(tmpdir(), 'hbx-vout-'));
    writeFileSync(join(input, 'f'), 'from host\n');
    const r = await hb.sandboxes.run(
      sh('echo out; echo err >&2; echo "$GREETING"; pwd; uname -r; cat /in/f; (echo x > /in/new) 2>/dev/null || echo ro-refused; echo written > /out/r; exit 3', {
        isolation: kind,
        env: { GREETING: 'hello vm' },
        workdir: '/work',
        volumes: [
          { hostPath: input, guestPath: '/in', readOnly: true },
          { hostPath: output, guestPath: '/out' },
        ],
      }),
      { remove: true },
    );
    t.is(r.backend, kind);
    t.is(r.crash, null);
    t.is(r.exitCode, 3, r.stderr);
    t.is(r.stderr, 'err\n');
    const [out, greeting, cwd, kernel, fromHost, ro] = r.stdout.trim().split('\n');
    t.deepEqual([out, greeting, cwd, fromHost, ro], ['out', 'hello vm', '/work', 'from host', 'ro-refused']);
    t.not(kernel, release(), 'the VM runs its own kernel');
    t.is(readFileSync(join(output, 'r'), 'utf8'), 'written\n');
    t.true(r.startupMs !== null && r.startupMs > 0);
  });

  test.serial(`${kind}: detached, exec into the running VM, logs, stop; the description is valid`, async (t) => {
    const d = await hb.sandboxes.runDetached(sh('trap "echo bye; exit 0" TERM; echo started; while :; do sleep 0.2; done', { isolation: kind, name: `${kind}-life-${process.pid}` }));
    t.is(d.state, 'running');
    const e = await hb.sandboxes.exec(d.id, ['sh', '-c', 'hostname; echo to-stderr >&2; exit 5']);
    t.is(e.exitCode, 5);
    t.is(e.stdout, `${kind}-life-${process.pid}\n`);
    t.is(e.stderr, 'to-stderr\n');
    const info = (await hb.sandboxes.inspect(d.id)) as { backendDetails: { domainXml?: string; qemuCommandLine?: string[] } };
    if (kind === 'vm') {
      const xml = join(mkdtempSync(join(tmpdir(), 'hbx-xml-')), 'domain.xml');
      writeFileSync(xml, info.backendDetails.domainXml!);
      const v = await execa('virt-xml-validate', [xml, 'domain'], { reject: false });
      t.is(v.exitCode, 0, v.stderr || v.stdout);
    } else {
      t.true(info.backendDetails.qemuCommandLine!.join(' ').includes('-M microvm'));
    }
    const stopped = await hb.sandboxes.stop(d.id, { graceMs: 20_000 });
    t.is(stopped.state, 'exited');
    let logs = '';
    await hb.sandboxes.logs(d.id, { onStdout: (c) => (logs += c), onStderr: () => undefined });
    t.is(logs, 'started\nbye\n');
    await hb.sandboxes.remove(d.id);
    t.deepEqual(await vmTraces([d.id]), []);
  });
}

test.serial('a guest kernel panic crashes only its own VM: a container and the other VMs keep running', async (t) => {
  const bystanders = [
    await hb.sandboxes.runDetached(sh('sleep 300')),
    await hb.sandboxes.runDetached(sh('sleep 300', { isolation: 'microvm' })),
    await hb.sandboxes.runDetached(sh('sleep 300', { isolation: 'vm' })),
  ];
  for (const kind of KINDS) {
    // A panic takes down whatever the agent has not yet forwarded: give "before" a moment to leave the guest.
    const r = await hb.sandboxes.run(sh('echo before; sleep 0.5; echo c > /proc/sysrq-trigger; echo after', { isolation: kind }));
    t.regex(r.crash ?? '', /kernel panic/, `${kind} reports its panic`);
    t.is(r.stdout, 'before\n');
    t.is(hb.sandboxes.find(r.id)!.state, 'crashed');
    await hb.sandboxes.remove(r.id);
    for (const b of bystanders) {
      const e = await hb.sandboxes.exec(b.id, ['echo', 'alive']);
      t.is(e.stdout, 'alive\n', `${b.backend} ${b.id} survived the ${kind} panic`);
    }
  }
  for (const b of bystanders) await hb.sandboxes.remove(b.id, { force: true });
  t.deepEqual(await vmTraces(bystanders.map((b) => b.id)), []);
});

test.serial('VMs and a container reach each other over the hbx0 bridge', async (t) => {
  const ctr = await hb.sandboxes.runDetached(sh('echo from-container > /tmp/index.html; httpd -f -p 8080 -h /tmp', { network: 'bridge' }));
  const vm = await hb.sandboxes.runDetached(sh('echo from-microvm > /tmp/index.html; httpd -f -p 8080 -h /tmp', { network: 'bridge', isolation: 'microvm' }));
  t.truthy(ctr.ip);
  t.truthy(vm.ip);
  // The servers start right after their sandboxes report ready: give them a moment.
  const fetch = (ip: string) => `for i in $(seq 50); do wget -q -O- http://${ip}:8080/ 2>/dev/null && break; sleep 0.2; done`;
  const fromCtr = await hb.sandboxes.exec(ctr.id, ['sh', '-c', fetch(vm.ip!)]);
  t.is(fromCtr.stdout, 'from-microvm\n');
  const fromVm = await hb.sandboxes.exec(vm.id, ['sh', '-c', `${fetch(ctr.ip!)}; ping -c 1 -W 5 ${ctr.ip} >/dev/null && echo ping-ok`]);
  t.is(fromVm.stdout, 'from-container\nping-ok\n');
  const lv = await hb.sandboxes.run(sh(`wget -q -O- http://${ctr.ip}:8080/; wget -q -O- http://${vm.ip}:8080/`, { network: 'bridge', isolation: 'vm' }), { remove: true });
  t.is(lv.stdout, 'from-container\nfrom-microvm\n', lv.stderr);
  for (const s of [ctr, vm]) await hb.sandboxes.remove(s.id, { force: true });
  t.deepEqual(await vmTraces([ctr.id, vm.id, lv.id]), []);
  t.deepEqual(stateOf(root).leases(), []);
});

test.serial('10 create/rm cycles per VM backend, and removing running VMs, leave nothing', async (t) => {
  const ids: string[] = [];
  for (const kind of KINDS) {
    for (let i = 0; i < 10; i++) {
      const c = await hb.sandboxes.create(sh('true', { isolation: kind, network: i % 2 ? 'bridge' : 'none' }));
      ids.push(c.id);
      await hb.sandboxes.remove(c.id);
    }
    const running = await hb.sandboxes.runDetached(sh('sleep 300', { isolation: kind, network: 'bridge' }));
    ids.push(running.id);
    await hb.sandboxes.remove(running.id, { force: true });
  }
  t.deepEqual(await vmTraces(ids), []);
  t.deepEqual(stateOf(root).leases(), []);
});

test.serial('kill -9 of the CLI during a foreground microVM run: the VM dies too, the next call cleans up', async (t) => {
  const name = `vm-victim-${process.pid}`;
  const child = spawn('node', [CLI, 'run', '--name', name, '--isolation', 'microvm', '--network', 'bridge', 'busybox', '--', 'sleep', '300'], {
    env: { ...process.env, HYBRIDBOX_ROOT: root },
    stdio: 'ignore',
  });
  const started = await waitFor(() => existsSync(join(root, 'sandboxes', hb.sandboxes.find(name)?.id ?? 'none', 'ready.json')), 60_000, 100);
  t.true(started, 'the VM came up');
  const id = hb.sandboxes.find(name)!.id;
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  await waitFor(async () => (await hb.sandboxes.list({ all: true })).find((s) => s.id === id)?.state !== 'running', 20_000, 200);
  t.not((await hb.sandboxes.list({ all: true })).find((s) => s.id === id)?.state, 'running');
  await hb.sandboxes.remove(id);
  t.deepEqual(await vmTraces([id]), []);
});
