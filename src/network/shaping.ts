import { existsSync } from 'node:fs';
import { RuntimeError } from '../errors.js';
import { run } from '../util/exec.js';
import { ifbName, tapName, vethName } from './names.js';

/**
 * `--net-rate` on a bridged sandbox's host-side interface (its veth, or a VM's tap), the
 * same on every backend. The host side's egress is the sandbox's ingress: a tbf there
 * shapes what reaches the sandbox. The host side's ingress (what the sandbox sends) is
 * redirected to a per-sandbox IFB device whose egress has the same tbf, so both
 * directions are shaped by one mechanism, and a sandbox cannot change either from inside.
 */
export type ShapedInterface = 'veth' | 'tap';

export const hostInterface = (sandboxId: string, kind: ShapedInterface): string => (kind === 'veth' ? vethName(sandboxId) : tapName(sandboxId));

const rateWords = (kbit: number): string => (kbit % 1000 === 0 ? `${kbit / 1000}mbit` : `${kbit}kbit`);

/** What enforces a net rate, in the words `place` and `inspect` show. */
export function describeShaping(o: { id?: string | undefined; kind: ShapedInterface; kbit: number }): string {
  const dev = o.id ? hostInterface(o.id, o.kind) : `the sandbox's host-side ${o.kind}`;
  const ifb = o.id ? ifbName(o.id) : 'an ifb device';
  const r = rateWords(o.kbit);
  return `tc: tbf rate ${r} on ${dev} egress (into the sandbox); ${dev} ingress redirected (mirred) to ${ifb}, tbf rate ${r} there (out of the sandbox)`;
}

/**
 * The tbf for a rate. The bucket holds 10 ms of traffic (at least 8 KiB, so a full-size
 * frame always fits); the queue holds 50 ms more (at least 192 KiB), enough for TCP to
 * keep the link busy at low rates without a standing queue that would add seconds of
 * latency at high ones. Larger buckets let bursts through above the nominal rate.
 */
function tbf(kbit: number): string {
  const bytesPerSec = (kbit * 1000) / 8;
  const burst = Math.max(8192, Math.ceil(bytesPerSec * 0.01));
  const limit = Math.max(196_608, Math.ceil(bytesPerSec * 0.05) + burst);
  return `tbf rate ${kbit}kbit burst ${burst} limit ${limit}`;
}

async function batch(cmd: 'ip' | 'tc', lines: string[]): Promise<void> {
  const r = await run(cmd, ['-b', '-'], { input: `${lines.join('\n')}\n` });
  if (r.exitCode !== 0) throw new RuntimeError(`${cmd}: cannot shape the sandbox's interface: ${(r.stderr || r.stdout).trim().split('\n')[0]}`);
}

/**
 * Shapes a sandbox's host-side interface to `kbit` each way. Idempotent: applying it again
 * (after libvirt reset the tap's root qdisc, say) leaves the same qdiscs, not two. The IFB
 * device is the only thing that outlives the interface: `removeShaping` deletes it, and the
 * qdiscs on the interface go with the device itself.
 */
export async function applyRate(sandboxId: string, kind: ShapedInterface, kbit: number): Promise<void> {
  const dev = hostInterface(sandboxId, kind);
  const ifb = ifbName(sandboxId);
  if (!existsSync(`/sys/class/net/${ifb}`)) await batch('ip', [`link add ${ifb} type ifb`]);
  await batch('ip', [`link set ${ifb} up`]);
  // Re-made rather than replaced: a second filter would redirect every packet twice.
  if ((await run('tc', ['qdisc', 'show', 'dev', dev, 'ingress'])).stdout.includes('ingress')) await batch('tc', [`qdisc del dev ${dev} ingress`]);
  // u32 with an empty match takes every packet: this tc has no matchall classifier.
  await batch('tc', [
    `qdisc replace dev ${dev} root ${tbf(kbit)}`,
    `qdisc replace dev ${ifb} root ${tbf(kbit)}`,
    `qdisc add dev ${dev} handle ffff: ingress`,
    `filter add dev ${dev} parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ${ifb}`,
  ]);
}

/** Removes a sandbox's IFB device; safe when there is none. */
export async function removeShaping(sandboxId: string): Promise<void> {
  const ifb = ifbName(sandboxId);
  if (existsSync(`/sys/class/net/${ifb}`)) await run('ip', ['link', 'del', ifb]);
}
