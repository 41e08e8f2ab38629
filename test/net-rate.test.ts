import test from 'ava';
import { execa } from 'execa';
import { readdirSync } from 'node:fs';
import type { Hybridbox } from '../src/index.js';
import { ensureBenchImage, ensureProbe, lastJson, PROBE_IN_IMAGE } from '../src/bench/isolation/context.js';
import { ifbName, tapName, vethName } from '../src/network/index.js';
import type { BackendKind } from '../src/spec/index.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { CLI, freshHybridbox, hostTraces } from './helpers.js';

// --net-rate on real veths, taps and IFB devices, shaped by the kernel's tbf: the qdiscs
// that hold the rate, transfers between two bridged sandboxes, and that nothing is left.

let hb: Hybridbox;
let cleanup: () => Promise<void>;
let image = '';

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, cleanup } = await freshHybridbox('hbx-netrate-'));
  image = await ensureBenchImage(hb, await ensureProbe());
});
test.after.always(async () => {
  await cleanup?.();
});

const tc = async (dev: string, what: 'qdisc' | 'filter' = 'qdisc'): Promise<string> =>
  (await execa('tc', what === 'qdisc' ? ['-s', 'qdisc', 'show', 'dev', dev] : ['filter', 'show', 'dev', dev, 'ingress'], { reject: false })).stdout;

/** The shaping of one sandbox as `tc` reports it; the rate as tc prints it ("10Mbit"). */
async function assertShaped(t: { true: (v: boolean, m?: string) => void; regex: (s: string, r: RegExp, m?: string) => void }, id: string, dev: string, tcRate: string): Promise<void> {
  const q = await tc(dev);
  t.regex(q, new RegExp(`qdisc tbf \\S+ root .*rate ${tcRate}`), `tbf on ${dev} egress:\n${q}`);
  t.regex(q, /qdisc ingress ffff:/, `ingress qdisc on ${dev}`);
  const f = await tc(dev, 'filter');
  t.regex(f, new RegExp(`mirred \\(Egress Redirect to device ${ifbName(id)}\\)`), `ingress redirected to the IFB:\n${f}`);
  const i = await tc(ifbName(id));
  t.regex(i, new RegExp(`qdisc tbf \\S+ root .*rate ${tcRate}`), `tbf on ${ifbName(id)}:\n${i}`);
}

interface Side {
  backend: BackendKind;
  kbit?: number;
}

/**
 * One bulk TCP transfer from `from` to `to`, both bridged: the sink's count of what crossed,
 * in Mbit/s. Returns the ids too, so the caller can look at their shaping while they run.
 */
async function transfer(from: Side, to: Side, seconds: number, whileRunning?: (ids: { sink: string; sender: string }) => Promise<void>): Promise<number> {
  const tag = `${from.backend}-${to.backend}-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
  let sinkOut = '';
  let sawReady: () => void = () => undefined;
  const ready = new Promise<void>((r) => (sawReady = r));
  const sink = hb.sandboxes.run(
    {
      name: `sink-${tag}`,
      image,
      command: [PROBE_IN_IMAGE, 'tcp-sink', String(seconds + 60), '5001'],
      isolation: to.backend,
      network: 'bridge',
      resources: to.kbit === undefined ? {} : { netRateKbit: to.kbit },
      timeoutMs: (seconds + 240) * 1000,
    },
    {
      remove: true,
      onStdout: (c) => {
        sinkOut += c.toString();
        if (sinkOut.includes('ready\n')) sawReady();
      },
    },
  );
  sink.then(sawReady, sawReady);
  await ready;
  const sinkInfo = hb.sandboxes.find(`sink-${tag}`);
  if (!sinkInfo?.ip) throw new Error(`the sink did not start: ${JSON.stringify(await sink.catch((e: Error) => e.message))}`);
  const sender = hb.sandboxes.run(
    {
      name: `send-${tag}`,
      image,
      command: [PROBE_IN_IMAGE, 'tcp-send', String(seconds), sinkInfo.ip, '5001'],
      isolation: from.backend,
      network: 'bridge',
      resources: from.kbit === undefined ? {} : { netRateKbit: from.kbit },
      timeoutMs: (seconds + 240) * 1000,
    },
    { remove: true },
  );
  if (whileRunning) {
    // The record exists before its interfaces do: look once the sender runs, while both do.
    let senderId: string | undefined;
    for (let i = 0; i < 1200; i++) {
      const s = hb.sandboxes.find(`send-${tag}`);
      if (s?.state === 'running') {
        senderId = s.id;
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    if (senderId) await whileRunning({ sink: sinkInfo.id, sender: senderId });
  }
  const s = await sender;
  if (s.exitCode !== 0) throw new Error(`sender: exit ${s.exitCode}: ${s.stderr}`);
  const r = await sink;
  const report = lastJson(r.stdout);
  if (r.exitCode !== 0 || !report) throw new Error(`sink: exit ${r.exitCode}: ${r.stderr}`);
  return Number(report.Mbitps);
}

test.serial('container to container: shaped on the sink side and on the sender side, 10mbit and 100mbit', async (t) => {
  // Into a shaped sandbox: the tbf on its veth's egress. Out of one: its ingress, redirected to the IFB.
  const intoShaped = await transfer({ backend: 'container' }, { backend: 'container', kbit: 10_000 }, 4, async ({ sink }) => assertShaped(t, sink, vethName(sink), '10Mbit'));
  const outOfShaped = await transfer({ backend: 'container', kbit: 10_000 }, { backend: 'container' }, 4, async ({ sender }) => assertShaped(t, sender, vethName(sender), '10Mbit'));
  const at100 = await transfer({ backend: 'container', kbit: 100_000 }, { backend: 'container', kbit: 100_000 }, 4);
  const free = await transfer({ backend: 'container' }, { backend: 'container' }, 2);
  t.log(`container→container: into a 10mbit sandbox ${intoShaped.toFixed(2)} Mbit/s, out of one ${outOfShaped.toFixed(2)}, both at 100mbit ${at100.toFixed(1)}, unshaped ${free.toFixed(0)}`);
  // Bounded, not timed: the unshaped transfer shows what the shaper holds back.
  for (const [rate, limit] of [
    [intoShaped, 10],
    [outOfShaped, 10],
    [at100, 100],
  ] as const) {
    t.true(rate > 0 && rate < limit * 1.25, `${rate} Mbit/s against a ${limit} Mbit/s limit`);
  }
  t.true(free > 100 * 1.25, `unshaped transfer: ${free} Mbit/s`);
});

test.serial('microvm: its tap is shaped both ways; transfers with a container are bounded', async (t) => {
  const into = await transfer({ backend: 'container' }, { backend: 'microvm', kbit: 10_000 }, 4, async ({ sink }) => assertShaped(t, sink, tapName(sink), '10Mbit'));
  const out = await transfer({ backend: 'microvm', kbit: 10_000 }, { backend: 'container' }, 4, async ({ sender }) => assertShaped(t, sender, tapName(sender), '10Mbit'));
  t.log(`container→microvm (10mbit) ${into.toFixed(2)} Mbit/s, microvm (10mbit)→container ${out.toFixed(2)} Mbit/s`);
  t.true(into > 0 && into < 12.5, `${into} Mbit/s into the microVM`);
  t.true(out > 0 && out < 12.5, `${out} Mbit/s out of the microVM`);
});

test.serial('vm (libvirt): its tap is shaped both ways and the VM still works', async (t) => {
  const rate = await transfer({ backend: 'container' }, { backend: 'vm', kbit: 10_000 }, 4, async ({ sink }) => assertShaped(t, sink, tapName(sink), '10Mbit'));
  t.log(`container→vm (10mbit) ${rate.toFixed(2)} Mbit/s`);
  t.true(rate > 0 && rate < 12.5, `${rate} Mbit/s into the VM`);
});

test.serial('inspect names the shaping; 20 create/rm cycles per backend leave no qdisc, IFB, tap or veth', async (t) => {
  const ids: string[] = [];
  for (const backend of ['container', 'microvm', 'vm'] as const) {
    for (let i = 0; i < 20; i++) {
      const s = await hb.sandboxes.create({ image, command: ['true'], isolation: backend, network: 'bridge', resources: { netRateKbit: 2_000 + i } });
      ids.push(s.id);
      const dev = backend === 'container' ? vethName(s.id) : tapName(s.id);
      if (i === 0) {
        const info = (await hb.sandboxes.inspect(s.id)) as { limits: { field: string; mechanism: string | null }[] };
        const net = info.limits.find((l) => l.field === 'resources.netRateKbit');
        t.regex(net?.mechanism ?? '', new RegExp(`tbf rate 2mbit on ${dev} egress.*${ifbName(s.id)}`), `${backend}: ${JSON.stringify(net)}`);
        await assertShaped(t, s.id, dev, '2Mbit');
      }
      await hb.sandboxes.remove(s.id, { force: true });
    }
  }
  const links = readdirSync('/sys/class/net');
  t.deepEqual(
    ids.flatMap((id) => [vethName(id), tapName(id), ifbName(id)]).filter((l) => links.includes(l)),
    [],
  );
  t.deepEqual(hostTraces(ids), []);
});

test.serial('bad rates exit 125 with one line naming the field, and create nothing', async (t) => {
  const env = { HYBRIDBOX_ROOT: hb.root };
  const before = (await hb.sandboxes.list({ all: true })).length;
  for (const [rate, field] of [
    ['-5mbit', '--net-rate'],
    ['10zbit', '--net-rate'],
    ['4kbit', 'resources.netRateKbit'],
  ] as const) {
    const r = await execa('node', [CLI, 'run', '--network', 'bridge', '--net-rate', rate, 'busybox', 'true'], { env, reject: false });
    t.is(r.exitCode, 125, `${rate}: ${r.stderr}`);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.true(r.stderr.includes(field), r.stderr);
  }
  t.is((await hb.sandboxes.list({ all: true })).length, before);
});

test.serial('a sandbox killed with its CLI (kill -9) leaves no IFB once the next command reconciles', async (t) => {
  const env = { HYBRIDBOX_ROOT: hb.root };
  const cli = execa('node', [CLI, 'run', '--name', `crash-${process.pid}`, '--network', 'bridge', '--net-rate', '1mbit', image, 'sleep', '60'], { env, reject: false });
  let id: string | undefined;
  for (let i = 0; i < 400 && !(id = hb.sandboxes.find(`crash-${process.pid}`)?.id); i++) await new Promise((r) => setTimeout(r, 50));
  t.truthy(id, 'the sandbox was created');
  for (let i = 0; i < 400 && !readdirSync('/sys/class/net').includes(ifbName(id ?? '')); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(readdirSync('/sys/class/net').includes(ifbName(id ?? '')), 'shaped while it runs');
  cli.kill('SIGKILL');
  await cli;
  // The next command reconciles the sandbox whose CLI died; rm then takes what it held.
  await execa('node', [CLI, 'ps', '-a'], { env, reject: false });
  await execa('node', [CLI, 'rm', '-f', `crash-${process.pid}`], { env, reject: false });
  t.false(readdirSync('/sys/class/net').includes(ifbName(id ?? '')), 'the IFB went with the sandbox');
  t.deepEqual(hostTraces([id ?? '']), []);
});
