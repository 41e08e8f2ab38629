import { run } from '../util/exec.js';
import { existsSync, readdirSync } from 'node:fs';
import { HostCapabilityError, RuntimeError, SpecError } from '../errors.js';
import type { StateStore } from '../store/index.js';
import { applyRate, removeShaping } from './shaping.js';
import { netnsName, tapName, vethName } from './names.js';

export interface BridgeConfig {
  /** Bridge device name on the host. */
  name: string;
  /** IPv4 subnet in CIDR form; the bridge takes the first address, sandboxes the rest. */
  subnet: string;
}

export const DEFAULT_BRIDGE: BridgeConfig = {
  name: process.env.HYBRIDBOX_BRIDGE ?? 'hbx0',
  subnet: process.env.HYBRIDBOX_SUBNET ?? '10.89.0.0/24',
};

export interface Attachment {
  /** Path of the sandbox's network namespace, for the OCI `linux.namespaces[].path`. */
  netnsPath: string;
  netnsName: string;
  hostVeth: string;
  ip: string;
  prefix: number;
  gateway: string;
}

const LEASE_KIND = 'ipv4';

function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}
function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
}

export function parseSubnet(cidr: string): { base: number; prefix: number; size: number } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  const prefix = m ? Number(m[5]) : NaN;
  if (!m || m.slice(1, 5).some((o) => Number(o) > 255) || !(prefix >= 16 && prefix <= 29)) {
    throw new SpecError('HYBRIDBOX_SUBNET', cidr, 'allowed: an IPv4 CIDR with a prefix from /16 to /29, e.g. 10.89.0.0/24');
  }
  const size = 2 ** (32 - prefix);
  const base = ipToInt(m.slice(1, 5).join('.')) & (~(size - 1) >>> 0);
  return { base: base >>> 0, prefix, size };
}

/** A stable, locally administered unicast MAC for a VM's NIC. */
export function macFor(sandboxId: string): string {
  let h = 0x811c9dc5;
  for (const c of sandboxId) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  const b = [0x52, 0x54, 0x00, (h >>> 16) & 255, (h >>> 8) & 255, h & 255];
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

async function ip(args: string[], input?: string): Promise<void> {
  const r = await run('ip', args, { input });
  if (r.exitCode !== 0) throw new RuntimeError(`ip ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim().split('\n')[0]}`);
}

/**
 * The host side of `--network bridge`: one Linux bridge with an address, no NAT and no
 * route out, so sandboxes reach each other and the host and nothing else.
 */
export class BridgeNetwork {
  readonly subnet: ReturnType<typeof parseSubnet>;
  constructor(
    private readonly store: StateStore,
    readonly config: BridgeConfig = DEFAULT_BRIDGE,
  ) {
    this.subnet = parseSubnet(config.subnet);
  }

  get gateway(): string {
    return intToIp(this.subnet.base + 1);
  }

  async ensureBridge(): Promise<void> {
    if (existsSync(`/sys/class/net/${this.config.name}`)) return;
    const r = await run('ip', ['-b', '-'], {
      input: [`link add ${this.config.name} type bridge`, `addr add ${this.gateway}/${this.subnet.prefix} dev ${this.config.name}`, `link set ${this.config.name} up`].join('\n'),
    });
    // Another process may have created it between the check and now.
    if (r.exitCode !== 0 && !existsSync(`/sys/class/net/${this.config.name}`)) {
      throw new RuntimeError(`cannot create bridge ${this.config.name}: ${r.stderr.trim().split('\n')[0]}`);
    }
  }

  /** Leases an address atomically: concurrent CLI processes never get the same one. */
  allocate(sandboxId: string): string {
    const { base, size } = this.subnet;
    const candidates = function* () {
      for (let i = 2; i < size - 1; i++) yield intToIp(base + i);
    };
    const got = this.store.tx(() => this.store.lease(LEASE_KIND, sandboxId, candidates()));
    if (!got) throw new HostCapabilityError(`no free address left in ${this.config.subnet}; remove sandboxes or set HYBRIDBOX_SUBNET to a larger subnet`);
    return got;
  }

  /**
   * Creates the sandbox's network namespace with a veth on the bridge and its address,
   * shaped to `rateKbit` each way when given.
   */
  async attach(sandboxId: string, address: string, rateKbit?: number): Promise<Attachment> {
    await this.ensureBridge();
    const ns = netnsName(sandboxId);
    const veth = vethName(sandboxId);
    try {
      await ip(['-b', '-'], [`netns add ${ns}`, `link add ${veth} type veth peer name eth0 netns ${ns}`, `link set ${veth} master ${this.config.name} up`].join('\n'));
      await ip(['-n', ns, '-b', '-'], [`addr add ${address}/${this.subnet.prefix} dev eth0`, 'link set eth0 up', 'link set lo up'].join('\n'));
      // Unprivileged ICMP sockets, so `ping` works in the sandbox without CAP_NET_RAW.
      await ip(['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.ping_group_range=0 2147483647']);
      if (rateKbit !== undefined) await applyRate(sandboxId, 'veth', rateKbit);
    } catch (e) {
      await this.detach(sandboxId);
      throw e;
    }
    return { netnsPath: `/run/netns/${ns}`, netnsName: ns, hostVeth: veth, ip: address, prefix: this.subnet.prefix, gateway: this.gateway };
  }

  /** A tap device on the bridge for a VM's NIC, shaped like a veth; the guest sets the address itself. */
  async attachTap(sandboxId: string, rateKbit?: number): Promise<string> {
    await this.ensureBridge();
    const tap = tapName(sandboxId);
    try {
      await ip(['-b', '-'], [`tuntap add dev ${tap} mode tap`, `link set ${tap} master ${this.config.name} up`].join('\n'));
      if (rateKbit !== undefined) await applyRate(sandboxId, 'tap', rateKbit);
    } catch (e) {
      await this.detach(sandboxId);
      throw e;
    }
    return tap;
  }

  /** Removes the namespace (its veth pair goes with it), the tap and the shaper's IFB. Safe when nothing exists. */
  async detach(sandboxId: string): Promise<void> {
    await removeShaping(sandboxId);
    const tap = tapName(sandboxId);
    if (existsSync(`/sys/class/net/${tap}`)) await run('ip', ['link', 'del', tap]);
    const ns = netnsName(sandboxId);
    if (existsSync(`/run/netns/${ns}`)) await run('ip', ['netns', 'del', ns]);
    const veth = vethName(sandboxId);
    if (existsSync(`/sys/class/net/${veth}`)) await run('ip', ['link', 'del', veth]);
  }

  /** Sandbox ids that own a network namespace on this host (for orphan clean-up). */
  static existingNamespaces(): string[] {
    try {
      return readdirSync('/run/netns')
        .filter((n) => n.startsWith('hbx-'))
        .map((n) => n.slice(4));
    } catch {
      return [];
    }
  }
}
