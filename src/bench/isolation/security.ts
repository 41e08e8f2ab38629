// Security isolation: one probe program (src/bench/probe/hbx-probe.c) runs on the host and
// inside each backend and reports what it can see and do; the rows compare each column
// with the host. A cell is "safe" when the outcome gives the workload no reach into the host:
// on a kernel of its own (a VM), what root may do inside the guest touches only the guest.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Hybridbox } from '../../api/index.js';
import { seccompProfile } from '../../runtimes/container/seccomp.js';
import type { BackendKind, Trust } from '../../spec/schema.js';
import { lastLine, spawnChild } from '../../util/exec.js';
import { sleep } from '../../util/proc.js';
import type { SecurityCell, SecurityRow } from '../../measurements/index.js';
import { PROBE_IN_IMAGE, describeQemu, findQemuPid, lastJson, procIdentity, withTimeout, type Log, type QemuProcess, type SandboxRegister } from './context.js';

export interface ProbeOutput {
  kernelRelease: string;
  bootId: string | null;
  pidCount: number;
  pid1: string | null;
  pid1IsHostInit: boolean;
  hostPidVisible: boolean;
  interfaces: { name: string; mac: string }[];
  sysfsInterfaces: { name: string; mac: string }[];
  markerVisible: boolean;
  uidMap: string | null;
  uid: number;
  capEff: string | null;
  seccomp: string | null;
  noNewPrivs: string | null;
  procSysWrite: string;
  devEntries: number;
  devBlock: number;
  devKmsg: string;
  devMem: string;
  mount: string;
  unshareUserMount: string;
  initModule: string;
  finitModule: string;
  ptraceTarget: string;
  ptrace: string;
  rawSocket: string;
  addKey: string;
  keyctl: string;
}

/** One column of the matrix: the host, a backend, or a backend with other settings. */
interface Column {
  key: string;
  backend: BackendKind | 'host';
  probe: ProbeOutput;
  qemu: QemuProcess | null;
  details: Record<string, unknown> | null;
  trust: Trust | null;
}

export interface SecurityContext {
  hb: Hybridbox;
  image: string;
  probe: string;
  register: SandboxRegister;
  log: Log;
}

export interface SecurityOutcome {
  rows: SecurityRow[];
  probes: Record<string, Record<string, unknown>>;
  /** Column keys in display order. */
  columns: string[];
  hostSyscalls: HostSyscalls;
}

// ------------------------------------------------------------------ host syscalls --

export interface HostSyscalls {
  names: Set<string>;
  source: string;
}

const UNISTD = ['/usr/include/x86_64-linux-gnu/asm/unistd_64.h', '/usr/include/asm/unistd_64.h'];

/**
 * The host kernel's x86_64 system calls: the table of the installed kernel headers, kept to
 * those the running kernel implements (a real `__x64_sys_*` symbol in /proc/kallsyms, not a
 * weak stub for a feature built out). Calls newer than the headers are not counted.
 */
export function hostSyscalls(): HostSyscalls {
  const header = UNISTD.find((p) => existsSync(p));
  if (!header) return { names: new Set(), source: 'no kernel headers (linux-libc-dev) installed' };
  const table = [...readFileSync(header, 'utf8').matchAll(/^#define __NR_(\w+)\s+\d+/gm)].map((m) => m[1]!);
  let implemented: Set<string> | null = null;
  try {
    implemented = new Set();
    for (const line of readFileSync('/proc/kallsyms', 'utf8').split('\n')) {
      const [, type, sym] = line.split(' ');
      if ((type === 'T' || type === 't') && sym?.startsWith('__x64_sys_') && !sym.includes('.')) implemented.add(sym.slice(10));
    }
    if (implemented.size === 0) implemented = null;
  } catch {
    implemented = null;
  }
  // The kernel's own names for a few table entries.
  const alias: Record<string, string> = { umount2: 'umount' };
  const names = new Set(implemented ? table.filter((n) => implemented!.has(n) || implemented!.has(alias[n] ?? '')) : table);
  return {
    names,
    source: implemented ? `${table.length} x86_64 calls in ${header}, of which ${names.size} are implemented by the running kernel (/proc/kallsyms)` : `${table.length} x86_64 calls in ${header}`,
  };
}

/** Syscall names a container's seccomp profile refuses outright (argument-filtered ones stay reachable). */
function seccompDenied(seccomp: unknown): string[] {
  const s = seccomp as { defaultAction?: string; syscalls?: { names: string[]; action: string; args?: unknown[] }[] } | undefined;
  if (s?.defaultAction !== 'SCMP_ACT_ALLOW') return [];
  return [...new Set((s.syscalls ?? []).filter((r) => r.action !== 'SCMP_ACT_ALLOW' && !r.args?.length).flatMap((r) => r.names))];
}

// ------------------------------------------------------------------------ running --

async function runOnHost(probe: string, env: Record<string, string>): Promise<ProbeOutput> {
  // No HBX_PTRACE_TARGET: on the host the probe ptraces a child of its own, never PID 1.
  const r = await spawnChild(probe, ['probe'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdout: 'keep', timeoutMs: 30_000 }).done.catch((e: Error) => {
    throw new Error(`the probe failed on the host: ${e.message}`);
  });
  const j = lastJson(r.stdout);
  if (!j) throw new Error(`the probe failed on the host (${r.timedOut ? 'timed out after 30 s' : `exit ${r.code ?? r.signal}`}): ${lastLine(r.stderr)}`);
  return j as unknown as ProbeOutput;
}

async function runInSandbox(ctx: SecurityContext, backend: BackendKind, trust: Trust, env: Record<string, string>): Promise<Column> {
  const { hb, register } = ctx;
  const key = trust === 'untrusted' ? `${backend}:untrusted` : backend;
  const name = register.name(`probe-${backend}${trust === 'untrusted' ? '-untr' : ''}`);
  let qemu: QemuProcess | null = null;
  let done = false;
  // A VM's QEMU lives only while the probe runs: catch it to see its owner, seccomp and argv.
  // Sampled until the end: QEMU turns its seccomp sandbox on only once it has set itself up.
  const watch =
    backend === 'container'
      ? Promise.resolve()
      : (async () => {
          let pid: number | null = null;
          while (!done) {
            const id = hb.sandboxes.find(name)?.id;
            pid ??= id ? findQemuPid(id) : null;
            const seen = pid ? describeQemu(pid) : null;
            // An exiting QEMU has no command line any more: keep what was seen while it ran.
            if (seen?.argv.length) qemu = seen;
            await sleep(40);
          }
        })();
  try {
    ctx.log(`security: probe in ${key}`);
    const r = await withTimeout(
      hb.sandboxes.run({ name, image: ctx.image, command: [PROBE_IN_IMAGE, 'probe'], env: { ...env, HBX_PTRACE_TARGET: '1' }, isolation: backend, trust }),
      300_000,
      `the probe in ${key}`,
    );
    done = true;
    await watch;
    const j = lastJson(r.stdout);
    if (!j) throw new Error(`the probe failed in ${key} (exit ${r.exitCode ?? r.signal}${r.crash ? `, ${r.crash}` : ''}): ${lastLine(r.stderr)}`);
    const info = (await hb.sandboxes.inspect(r.id)) as { backendDetails?: Record<string, unknown> };
    return { key, backend, probe: j as unknown as ProbeOutput, qemu, details: info.backendDetails ?? null, trust };
  } finally {
    done = true;
    await register.remove(name);
  }
}

export async function runSecurity(ctx: SecurityContext, backends: BackendKind[], opts: { untrustedContainer: boolean }): Promise<SecurityOutcome> {
  // A marker file at a random host path: a sandbox that can read it reaches the host's files.
  const markerDir = mkdtempSync(join(tmpdir(), 'hbx-marker-'));
  const marker = join(markerDir, randomBytes(8).toString('hex'));
  const token = randomBytes(16).toString('hex');
  writeFileSync(marker, token + '\n', { mode: 0o644 });
  try {
    const env = {
      HBX_HOST_INIT: procIdentity(1) ?? '',
      HBX_HOST_PID: `${process.pid}:${procIdentity(process.pid) ?? ''}`,
      HBX_MARKER: marker,
      HBX_MARKER_TOKEN: token,
    };
    const host: Column = { key: 'host', backend: 'host', probe: await runOnHost(ctx.probe, env), qemu: null, details: null, trust: null };
    const cols: Column[] = [host];
    for (const b of backends) {
      cols.push(await runInSandbox(ctx, b, 'trusted', env));
      if (b === 'container' && opts.untrustedContainer) cols.push(await runInSandbox(ctx, b, 'untrusted', env));
    }
    const sys = hostSyscalls();
    return {
      rows: buildRows(host, cols.slice(1), sys),
      probes: Object.fromEntries(cols.map((c) => [c.key, { ...c.probe, ...(c.qemu ? { qemu: { uid: c.qemu.uid, seccomp: c.qemu.seccomp } } : {}) } as Record<string, unknown>])),
      columns: cols.map((c) => c.key),
      hostSyscalls: sys,
    };
  } finally {
    rmSync(markerDir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------------- matrix --

const CAP_NAMES = [
  'CHOWN',
  'DAC_OVERRIDE',
  'DAC_READ_SEARCH',
  'FOWNER',
  'FSETID',
  'KILL',
  'SETGID',
  'SETUID',
  'SETPCAP',
  'LINUX_IMMUTABLE',
  'NET_BIND_SERVICE',
  'NET_BROADCAST',
  'NET_ADMIN',
  'NET_RAW',
  'IPC_LOCK',
  'IPC_OWNER',
  'SYS_MODULE',
  'SYS_RAWIO',
  'SYS_CHROOT',
  'SYS_PTRACE',
  'SYS_PACCT',
  'SYS_ADMIN',
  'SYS_BOOT',
  'SYS_NICE',
  'SYS_RESOURCE',
  'SYS_TIME',
  'SYS_TTY_CONFIG',
  'MKNOD',
  'LEASE',
  'AUDIT_WRITE',
  'AUDIT_CONTROL',
  'SETFCAP',
  'MAC_OVERRIDE',
  'MAC_ADMIN',
  'SYSLOG',
  'WAKE_ALARM',
  'BLOCK_SUSPEND',
  'AUDIT_READ',
  'PERFMON',
  'BPF',
  'CHECKPOINT_RESTORE',
];
/** Capabilities that, held against the host kernel, have carried escapes. */
const DANGEROUS_CAPS = ['SYS_ADMIN', 'SYS_MODULE', 'SYS_RAWIO', 'SYS_PTRACE', 'NET_ADMIN', 'DAC_READ_SEARCH', 'SYS_BOOT', 'SYS_TIME', 'BPF', 'PERFMON', 'MAC_ADMIN'];

export function decodeCaps(hex: string | null): string[] {
  if (!hex) return [];
  const v = BigInt(`0x${hex}`);
  return CAP_NAMES.filter((_, i) => (v >> BigInt(i)) & 1n);
}

const ok = (e: string): boolean => e === 'ok';
const outcome = (e: string): string => (ok(e) ? 'yes' : `no (${e})`);

/** The driver of each `-device` and the machine type, from a QEMU command line. */
export function qemuDevices(argv: string[]): { machine: string | null; devices: string[] } {
  let machine: string | null = null;
  const devices: string[] = [];
  for (let i = 0; i < argv.length - 1; i++) {
    const a = argv[i];
    const v = argv[i + 1]!;
    if (a === '-M' || a === '-machine') machine = v.startsWith('{') ? ((JSON.parse(v) as { type?: string }).type ?? null) : (v.split(',')[0] ?? null);
    if (a === '-device') {
      try {
        devices.push(v.startsWith('{') ? String((JSON.parse(v) as { driver: string }).driver) : v.split(',')[0]!);
      } catch {
        devices.push(v.split(',')[0]!);
      }
    }
  }
  return { machine, devices };
}

function deviceModel(c: Column): SecurityCell {
  const argv = c.qemu?.argv ?? (c.details?.qemuCommandLine as string[] | undefined) ?? null;
  if (!argv) {
    const xml = c.details?.domainXml as string | undefined;
    const devs = xml
      ? [...xml.matchAll(/<(disk|interface|serial|console|channel|controller|input|video|rng|memballoon|filesystem)\b[^>]*?(?:type|model)='([^']+)'/g)].map((m) => `${m[1]}:${m[2]}`)
      : [];
    return { value: `QEMU (owner not seen): ${devs.length} devices in the domain XML: ${devs.join(', ')}`, safe: null };
  }
  const { machine, devices } = qemuDevices(argv);
  // `-sandbox on`: QEMU's own seccomp filter (seen in /proc once QEMU has set itself up).
  const sandboxArg = argv.indexOf('-sandbox');
  const seccomp = c.qemu?.seccomp === 2 || (sandboxArg >= 0 && /^on\b/.test(argv[sandboxArg + 1] ?? ''));
  const confined = c.qemu ? c.qemu.uid !== 0 || seccomp : null;
  const owner = c.qemu ? `QEMU as uid ${c.qemu.uid}, seccomp ${seccomp ? 'on' : 'off'}` : 'QEMU (owner not seen)';
  const counted = [...new Set(devices)].map((d) => {
    const n = devices.filter((x) => x === d).length;
    return n > 1 ? `${d} x${n}` : d;
  });
  return { value: `${owner}; ${machine ?? '?'} with ${devices.length} devices: ${counted.join(', ')}`, safe: confined };
}

function buildRows(host: Column, cols: Column[], sys: HostSyscalls): SecurityRow[] {
  const h = host.probe;
  const hostIfaces = new Set(h.interfaces.filter((i) => i.name !== 'lo').map((i) => `${i.name} ${i.mac}`));
  const shared = (c: Column): boolean => !!c.probe.bootId && c.probe.bootId === h.bootId;
  /** Root inside is root outside: no user namespace on the host kernel. */
  const hostRoot = (c: Column): boolean => shared(c) && c.probe.uid === 0 && /^0 0 /.test(c.probe.uidMap ?? '0 0 ');
  const privileged = (c: Column, e: string, what = 'yes'): SecurityCell => (ok(e) ? { value: shared(c) ? what : `${what}; guest kernel`, safe: !shared(c) } : { value: `no (${e})`, safe: true });
  const total = sys.names.size;

  const rows: { probe: string; host: SecurityCell; cell: (c: Column) => SecurityCell }[] = [
    {
      probe: 'kernel shared with host (boot id)',
      host: { value: h.kernelRelease, safe: null },
      cell: (c) => ({ value: `${shared(c) ? 'yes' : 'no'}: ${c.probe.kernelRelease}`, safe: !shared(c) }),
    },
    {
      probe: 'host processes visible',
      host: { value: `${h.pidCount} pids`, safe: null },
      cell: (c) => {
        const seen = c.probe.hostPidVisible || c.probe.pid1IsHostInit;
        const pid1 = (c.probe.pid1 ?? '?').split(':')[0];
        return { value: `${seen ? 'yes' : 'no'} (${c.probe.pidCount} pids, PID 1 ${pid1})`, safe: !seen };
      },
    },
    {
      probe: 'host network interfaces visible',
      host: { value: h.interfaces.map((i) => i.name).join(' '), safe: null },
      cell: (c) => {
        const seen = c.probe.interfaces.filter((i) => hostIfaces.has(`${i.name} ${i.mac}`)).map((i) => i.name);
        return { value: seen.length ? `yes: ${seen.join(' ')}` : `no (${c.probe.interfaces.map((i) => i.name).join(' ') || 'none'})`, safe: seen.length === 0 };
      },
    },
    {
      probe: 'host /sys visible',
      host: { value: 'yes', safe: null },
      cell: (c) => {
        const seen = c.probe.sysfsInterfaces.filter((i) => hostIfaces.has(`${i.name} ${i.mac}`)).map((i) => i.name);
        return { value: seen.length ? `yes: /sys/class/net lists ${seen.join(' ')}` : 'no (a sysfs of its own)', safe: seen.length === 0 };
      },
    },
    {
      probe: 'host file reachable (marker)',
      host: { value: h.markerVisible ? 'yes' : 'no', safe: null },
      cell: (c) => ({ value: c.probe.markerVisible ? 'yes' : 'no', safe: !c.probe.markerVisible }),
    },
    {
      probe: 'root inside = root on host',
      host: { value: `uid ${h.uid}`, safe: null },
      cell: (c) => {
        if (!shared(c)) return { value: `no: uid ${c.probe.uid} of the guest kernel`, safe: true };
        if (hostRoot(c)) return { value: `yes (uid_map ${c.probe.uidMap})`, safe: false };
        const m = /^0 (\d+) (\d+)/.exec(c.probe.uidMap ?? '');
        return { value: m ? `no: root is host uid ${m[1]} (${m[2]} ids)` : `no: uid ${c.probe.uid}`, safe: true };
      },
    },
    {
      probe: 'effective capabilities',
      host: { value: `${decodeCaps(h.capEff).length} caps`, safe: null },
      cell: (c) => {
        const caps = decodeCaps(c.probe.capEff);
        const bad = caps.filter((x) => DANGEROUS_CAPS.includes(x));
        const inUserNs = shared(c) && !hostRoot(c) && c.probe.uid === 0;
        const value = `${caps.length} caps${bad.length ? `, incl. ${bad.join(' ')}` : ', none dangerous'}${!shared(c) ? ' (guest)' : inUserNs ? ' (in a user ns)' : ''}`;
        return { value, safe: !shared(c) || inUserNs || bad.length === 0 };
      },
    },
    {
      probe: 'seccomp filter',
      host: { value: `mode ${h.seccomp ?? '?'}`, safe: null },
      cell: (c) => {
        const m = c.probe.seccomp;
        const v = m === null ? 'n/a (guest kernel has none)' : m === '2' ? 'mode 2 (filter)' : `mode ${m}`;
        return { value: v, safe: !shared(c) || m === '2' };
      },
    },
    {
      probe: '/proc/sys writable',
      host: { value: outcome(h.procSysWrite), safe: null },
      cell: (c) => privileged(c, c.probe.procSysWrite),
    },
    {
      probe: 'device nodes (/dev, kmsg, mem)',
      host: { value: `${h.devEntries} (${h.devBlock} block); kmsg ${h.devKmsg}, mem ${h.devMem}`, safe: null },
      cell: (c) => {
        const p = c.probe;
        const exposed = ok(p.devKmsg) || ok(p.devMem) || p.devBlock > 0;
        return { value: `${p.devEntries} (${p.devBlock} block); kmsg ${p.devKmsg}, mem ${p.devMem}`, safe: !shared(c) || !exposed };
      },
    },
    { probe: 'mount succeeds', host: { value: outcome(h.mount), safe: null }, cell: (c) => privileged(c, c.probe.mount) },
    { probe: 'unshare(USER|NS) succeeds', host: { value: outcome(h.unshareUserMount), safe: null }, cell: (c) => privileged(c, c.probe.unshareUserMount) },
    {
      probe: 'init/finit_module reach the loader',
      host: { value: `${h.initModule}/${h.finitModule}`, safe: null },
      cell: (c) => {
        const p = c.probe;
        const refused = (e: string) => e === 'EPERM' || e === 'ENOSYS';
        const reached = !refused(p.initModule) || !refused(p.finitModule);
        const why = reached ? 'reached' : p.initModule === 'ENOSYS' && p.finitModule === 'ENOSYS' ? 'no module support' : 'refused';
        return { value: `${why} (${p.initModule}/${p.finitModule})${!shared(c) && reached ? ' (guest)' : ''}`, safe: !shared(c) || !reached };
      },
    },
    {
      probe: 'ptrace(PID 1) permitted',
      host: { value: `${outcome(h.ptrace)} (${h.ptraceTarget})`, safe: null },
      cell: (c) => privileged(c, c.probe.ptrace, c.probe.pid1IsHostInit ? 'yes: the host init' : "yes (the sandbox's PID 1)"),
    },
    { probe: 'raw socket', host: { value: outcome(h.rawSocket), safe: null }, cell: (c) => privileged(c, c.probe.rawSocket) },
    {
      probe: 'add_key/keyctl',
      host: { value: `${h.addKey}/${h.keyctl}`, safe: null },
      cell: (c) => {
        const any = ok(c.probe.addKey) || ok(c.probe.keyctl);
        return { value: `${any ? 'yes' : 'no'} (${c.probe.addKey}/${c.probe.keyctl})${any && !shared(c) ? ' (guest)' : ''}`, safe: !shared(c) || !any };
      },
    },
    {
      probe: 'host syscalls reachable',
      host: { value: `${total} (all)`, safe: null },
      cell: (c) => {
        if (c.backend !== 'container') return { value: '0: guest syscalls end in the guest kernel', safe: true };
        const oci = c.details?.ociConfig as { linux?: { seccomp?: unknown } } | null | undefined;
        const profile = oci?.linux?.seccomp ?? seccompProfile(c.trust ?? 'trusted');
        const denied = seccompDenied(profile).filter((n) => sys.names.has(n));
        return { value: `${total - denied.length} of ${total} (seccomp refuses ${denied.length})`, safe: false };
      },
    },
    {
      probe: 'device model on the host',
      host: { value: 'n/a', safe: null },
      cell: (c) => (c.backend === 'container' ? { value: 'none (no VMM)', safe: null } : deviceModel(c)),
    },
  ];

  return rows.map((r) => {
    const row: SecurityRow = { probe: r.probe, values: { host: r.host } };
    for (const c of cols) {
      const cell = r.cell(c);
      if (c.key.includes(':')) (row.variants ??= {})[c.key] = cell;
      else row.values[c.backend] = cell;
    }
    return row;
  });
}
