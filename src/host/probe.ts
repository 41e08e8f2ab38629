import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { run } from '../util/exec.js';
import { parseMountinfo } from '../util/mountinfo.js';
import type { CgroupLayout, HostInfo, ToolInfo } from './types.js';

type ToolName = keyof HostInfo['tools'];

/** Runs `file --version`; injectable so tests can count spawns. */
export type VersionRunner = (file: string, args: string[]) => Promise<{ stdout: string; stderr: string; failed: boolean; timedOut: boolean }>;

export interface ProbeOptions {
  /** Directory for the tool-version cache; without it every call runs the version commands. */
  cacheDir?: string;
  /** Directories searched for the tools, in order; default: $PATH plus the sbin directories. */
  searchPath?: string[];
  runVersion?: VersionRunner;
}

// First binary name found wins. tini-static first: the container backend bind-mounts the
// init into arbitrary image rootfs trees, where only a static binary is sure to run.
const TOOL_BINARIES: Record<ToolName, string[]> = {
  crun: ['crun'],
  runc: ['runc'],
  tini: ['tini-static', 'tini'],
  qemu: ['qemu-system-x86_64'],
  libvirtd: ['libvirtd'],
  virsh: ['virsh'],
};

const VERSION_TIMEOUT_MS = 3000;
const CACHE_FILE = 'tools.json';

interface CacheEntry {
  mtimeMs: number;
  size: number;
  version: string;
}

export async function probeHost(opts: ProbeOptions = {}): Promise<HostInfo> {
  const cpuinfo = readText('/proc/cpuinfo');
  const meminfo = readText('/proc/meminfo');
  const initComm = readText('/proc/1/comm').trim() || 'unknown';
  return {
    arch: os.machine(),
    kernelRelease: os.release(),
    cpuModel: cpuField(cpuinfo, 'model name') ?? os.cpus()[0]?.model ?? 'unknown',
    cpus: os.cpus().length,
    cpuMHz: parseMHz(cpuField(cpuinfo, 'cpu MHz')),
    memTotalBytes: meminfoBytes(meminfo, 'MemTotal') ?? os.totalmem(),
    memAvailableBytes: meminfoBytes(meminfo, 'MemAvailable') ?? os.freemem(),
    isRoot: process.geteuid?.() === 0,
    kvm: probeKvm(cpuinfo),
    cgroup: probeCgroups(readText('/proc/self/mountinfo')),
    init: { comm: initComm, systemd: initComm === 'systemd' },
    tools: await probeTools(opts),
    features: {
      userNamespaces: Number(readText('/proc/sys/user/max_user_namespaces').trim()) > 0,
      // overlay is often a module that the kernel loads on first mount, so it is absent
      // from /proc/filesystems until then.
      overlayfs: /\toverlay$/m.test(readText('/proc/filesystems')) || existsSync(`/lib/modules/${os.release()}/kernel/fs/overlayfs`),
    },
  };
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function cpuField(cpuinfo: string, key: string): string | null {
  const m = new RegExp(`^${key}\\s*:\\s*(.*)$`, 'm').exec(cpuinfo);
  return m?.[1]?.trim() || null;
}

function parseMHz(s: string | null): number | null {
  const n = Number(s);
  return s !== null && Number.isFinite(n) && n > 0 ? Math.round(n) : null;
}

function meminfoBytes(meminfo: string, key: string): number | null {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(meminfo);
  return m ? Number(m[1]) * 1024 : null;
}

function probeKvm(cpuinfo: string): HostInfo['kvm'] {
  const tcg = 'VMs will run under TCG software emulation';
  let fd: number;
  try {
    fd = openSync('/dev/kvm', 'r+');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { usable: false, reason: `/dev/kvm does not exist: ${tcg}` };
    if (code === 'EACCES' || code === 'EPERM') return { usable: false, reason: `/dev/kvm is not readable and writable by uid ${process.geteuid?.()} (join the kvm group or run as root): ${tcg}` };
    return { usable: false, reason: `/dev/kvm cannot be opened (${code}): ${tcg}` };
  }
  closeSync(fd);
  // A /dev/kvm without hardware virtualization (kvm-pvm, some nested set-ups) opens fine,
  // but QEMU's guests then die with "KVM internal error": the CPU flags tell.
  if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo)) {
    return { usable: false, reason: `/dev/kvm exists but the CPU has no vmx/svm (hardware virtualization is not exposed): ${tcg}` };
  }
  return { usable: true, reason: '/dev/kvm opens read-write and the CPU has hardware virtualization: VMs run with KVM' };
}

export function probeCgroups(mountinfo: string): HostInfo['cgroup'] {
  const v1: Record<string, string> = {};
  let unifiedMount: string | null = null;
  for (const m of parseMountinfo(mountinfo)) {
    if (m.fstype === 'cgroup2') {
      // The same hierarchy can be bind-mounted elsewhere too; the first mount is the host's.
      unifiedMount ??= m.mountPoint;
    } else if (m.fstype === 'cgroup') {
      for (const opt of m.superOptions) {
        // Named hierarchies (name=systemd) hold no controller; rw/ro/etc. are mount options.
        if (opt.startsWith('name=') || opt.startsWith('release_agent') || ['rw', 'ro', 'relatime', 'nosuid', 'nodev', 'noexec', 'clone_children', 'noprefix', 'xattr'].includes(opt)) continue;
        v1[opt] ??= m.mountPoint;
      }
    }
  }
  const layout: CgroupLayout = unifiedMount === '/sys/fs/cgroup' ? 'v2' : Object.keys(v1).length > 0 && unifiedMount !== null ? 'hybrid' : 'v1';
  const unifiedControllers = unifiedMount ? readText(join(unifiedMount, 'cgroup.controllers')).split(/\s+/).filter(Boolean) : [];
  return { layout, v1, unifiedMount, unifiedControllers };
}

function findBinary(names: string[], dirs: string[]): { path: string; mtimeMs: number; size: number } | null {
  for (const name of names) {
    for (const dir of dirs) {
      const path = join(dir, name);
      try {
        const st = statSync(path);
        if (st.isFile() && st.mode & 0o111) return { path, mtimeMs: st.mtimeMs, size: st.size };
      } catch {
        // not in this directory
      }
    }
  }
  return null;
}

/** The version-looking token of a tool's first output line ("crun version 1.8.1" -> "1.8.1"). */
export function parseVersion(output: string): string | null {
  const first = output.trim().split('\n')[0] ?? '';
  return /\b(\d+\.\d+(?:\.\d+)*[\w.+~-]*)/.exec(first)?.[1] ?? null;
}

const defaultRunVersion: VersionRunner = async (file, args) => {
  const r = await run(file, args, { timeoutMs: VERSION_TIMEOUT_MS, env: { LC_ALL: 'C' } });
  return { stdout: r.stdout, stderr: r.stderr, failed: r.failed, timedOut: r.timedOut };
};

async function probeTools(opts: ProbeOptions): Promise<HostInfo['tools']> {
  // libvirtd lives in /usr/sbin, which many users' $PATH lacks.
  const dirs = opts.searchPath ?? [...new Set([...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'])];
  const run = opts.runVersion ?? defaultRunVersion;
  const cachePath = opts.cacheDir ? join(opts.cacheDir, CACHE_FILE) : null;
  const cache = cachePath ? readCache(cachePath) : {};
  const next: Record<string, CacheEntry> = {};
  let changed = false;

  const found = await Promise.all(
    (Object.keys(TOOL_BINARIES) as ToolName[]).map(async (tool): Promise<[ToolName, ToolInfo] | null> => {
      const bin = findBinary(TOOL_BINARIES[tool], dirs);
      if (!bin) return null;
      const hit = cache[bin.path];
      if (hit && hit.mtimeMs === bin.mtimeMs && hit.size === bin.size) {
        next[bin.path] = hit;
        return [tool, { path: bin.path, version: hit.version }];
      }
      changed = true;
      const r = await run(bin.path, ['--version']);
      const version = parseVersion(`${r.stdout}\n${r.stderr}`.trim()) ?? 'unknown';
      // A timeout may be a loaded machine, not the binary: ask again next time.
      if (!r.timedOut) next[bin.path] = { mtimeMs: bin.mtimeMs, size: bin.size, version };
      return [tool, { path: bin.path, version }];
    }),
  );
  if (cachePath && (changed || Object.keys(next).length !== Object.keys(cache).length)) writeCache(cachePath, next);
  return Object.fromEntries(found.filter((x) => x !== null));
}

function readCache(path: string): Record<string, CacheEntry> {
  try {
    const data = JSON.parse(readFileSync(path, 'utf8')) as { v?: number; tools?: Record<string, CacheEntry> };
    return data.v === 1 && data.tools ? data.tools : {};
  } catch {
    return {};
  }
}

function writeCache(path: string, tools: Record<string, CacheEntry>): void {
  try {
    mkdirSync(dirname(path), { recursive: true });
    // Rename makes the update atomic for concurrent CLI calls.
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify({ v: 1, tools }));
    renameSync(tmp, path);
  } catch {
    // A read-only state directory only costs speed, never correctness.
  }
}
