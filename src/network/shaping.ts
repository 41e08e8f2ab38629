import { tapName, vethName } from './bridge.js';

/**
 * `--net-rate` on a bridged sandbox's host-side interface (its veth, or a VM's tap), the
 * same on every backend. The host side's egress is the sandbox's ingress: a tbf there
 * shapes what reaches the sandbox. The host side's ingress (what the sandbox sends) is
 * redirected to a per-sandbox IFB device whose egress has the same tbf, so both
 * directions are shaped by one mechanism, and a sandbox cannot change either from inside.
 */
export type ShapedInterface = 'veth' | 'tap';

/** The IFB device that carries a sandbox's outgoing traffic through its shaper. */
export const ifbName = (sandboxId: string): string => `hi${sandboxId.slice(0, 12)}`;

export const hostInterface = (sandboxId: string, kind: ShapedInterface): string => (kind === 'veth' ? vethName(sandboxId) : tapName(sandboxId));

const rateWords = (kbit: number): string => (kbit % 1000 === 0 ? `${kbit / 1000}mbit` : `${kbit}kbit`);

/** What enforces a net rate, in the words `place` and `inspect` show. */
export function describeShaping(o: { id?: string | undefined; kind: ShapedInterface; kbit: number }): string {
  const dev = o.id ? hostInterface(o.id, o.kind) : `the sandbox's host-side ${o.kind}`;
  const ifb = o.id ? ifbName(o.id) : 'an ifb device';
  const r = rateWords(o.kbit);
  return `tc: tbf rate ${r} on ${dev} egress (into the sandbox); ${dev} ingress redirected (mirred) to ${ifb}, tbf rate ${r} there (out of the sandbox)`;
}
