// The `debian:bookworm` base image: a minbase root filesystem bootstrapped with mmdebstrap
// from a Debian apt mirror, made reproducible (the same mirror state and options give
// byte-identical trees, and so identical layer digests).

import { createHash } from 'node:crypto';
import {
  accessSync,
  chmodSync,
  constants as fsc,
  existsSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { HostCapabilityError } from '../../errors.js';
import { lastLine, LineTail, run, spawnChild } from '../../util/exec.js';
import { discardTree } from '../../util/fs.js';
import { cacheDir } from '../../util/paths.js';
import type { ImageConfig, ImageStore } from '../store.js';
import { createLayer } from '../oci/index.js';

export type DebianSuite = 'bookworm';

export interface DebianBaseOptions {
  suite?: DebianSuite;
  /** Debian archive URL. Default: the host's (from /etc/apt), else http://deb.debian.org/debian. */
  mirror?: string;
  /** Security archive URL. Default: the host's, else http://deb.debian.org/debian-security. */
  securityMirror?: string;
  /** Include `<suite>-updates` and `<suite>-security` (default true): a base image wants its fixes. */
  updates?: boolean;
  variant?: 'minbase';
  /**
   * Debian packages installed on top of the variant (mmdebstrap --include), with their hard
   * dependencies and without recommends. Part of the inputs key.
   */
  include?: readonly string[];
  /**
   * Seconds since the epoch stamped on every file and used by dpkg maintainer scripts.
   * Default: the newest `Date:` of the suites' Release files, so one mirror state gives one tree.
   */
  sourceDateEpoch?: number;
  /** Keeps downloaded .debs and package lists between builds (default: aptCacheDir()); `false` disables. */
  cacheDir?: string | false;
  /** Where the host's apt sources are read from (for the default mirrors). */
  aptEtcDir?: string;
  log?: (line: string) => void;
  timeoutMs?: number;
  /**
   * Asked with the inputs key once the mirror state is known: true when the caller already
   * holds the tree these inputs make (e.g. as a cached image), so nothing is built.
   */
  reuse?: (inputsKey: string) => boolean;
}

export interface DebianRootfs {
  /** `name=version`, sorted: what dpkg has installed. */
  packages: string[];
  sourceDateEpoch: number;
  mirror: string;
  /** The apt source lines written to the image's /etc/apt/sources.list. */
  sources: string[];
  /**
   * Hash of every input that decides the tree: the recipe, the options and the Release
   * files of the mirror state that was used. Equal keys must give equal trees.
   */
  inputsKey: string;
  /** True when `reuse` accepted the key: targetDir was left untouched. */
  reused: boolean;
}

export const DEFAULT_MIRROR = 'http://deb.debian.org/debian';
export const DEFAULT_SECURITY_MIRROR = 'http://deb.debian.org/debian-security';
/** Downloaded .debs and package lists, shared by every Debian build on this host. */
export function aptCacheDir(): string {
  return join(cacheDir(), 'apt');
}
const MERGED_USR_HOOKS = '/usr/share/mmdebstrap/hooks/merged-usr';
const APT_HELPER = '/usr/lib/apt/apt-helper';

// Files a container needs no copy of: dropping them keeps the image small (about a
// quarter of a minbase tree is documentation and translations). They persist in
// /etc/dpkg/dpkg.cfg.d, so packages installed later in the image stay slim as well.
const DPKG_EXCLUDES = [
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/locale/*',
  'path-include=/usr/share/locale/locale.alias',
  'path-exclude=/usr/share/lintian/*',
];

// Bumped whenever the recipe below changes what a build produces.
const RECIPE_VERSION = 1;

/**
 * Debian policy's package name syntax (5.6.1), without a trailing "-": the names reach apt as
 * arguments, which reads anything else as a pattern, a version pin or a removal ("pkg-").
 */
export function isDebianPackageName(name: string): boolean {
  return /^[a-z0-9][a-z0-9+.-]*[a-z0-9+]$/.test(name);
}

/** A package list as the recipe uses it: checked, sorted, each name once. */
export function normalizePackages(packages: readonly string[]): string[] {
  for (const p of packages) {
    if (!isDebianPackageName(p))
      throw new HostCapabilityError(`debian package ${JSON.stringify(p)} is not a valid package name; use lower-case letters, digits and + . -, not ending in - (Debian policy 5.6.1)`);
  }
  return [...new Set(packages)].sort();
}

/** What decides a Debian tree: equal inputs give byte-identical trees. */
export interface DebianInputs {
  /** `mmdebstrap --version`: it extracts the essential packages itself. */
  tool: string;
  suite: DebianSuite;
  variant: 'minbase';
  sources: string[];
  sourceDateEpoch: number;
  include: readonly string[];
  /** The Release files of the mirror state, in the order of `sources`. */
  releases: string[];
}

/**
 * The inputs key of a Debian tree. The package list enters only when it is not empty, so the
 * plain base keeps the key (and the cached archive) it had before packages could be added.
 */
export function debianInputsKey(i: DebianInputs): string {
  const include = normalizePackages(i.include);
  return createHash('sha256')
    .update(
      JSON.stringify({
        recipe: RECIPE_VERSION,
        tool: i.tool,
        suite: i.suite,
        variant: i.variant,
        sources: i.sources,
        sourceDateEpoch: i.sourceDateEpoch,
        excludes: DPKG_EXCLUDES,
        arch: process.arch,
        ...(include.length ? { include } : {}),
      }),
    )
    .update(i.releases.join('\0'))
    .digest('hex');
}

/** Runtime config of the image: what `docker run debian:bookworm` gives. */
export function debianImageConfig(): ImageConfig {
  return {
    cmd: ['bash'],
    entrypoint: [],
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
    workdir: '/',
    user: '',
    labels: {},
  };
}

// ---------------------------------------------------------------------------
// mirrors

export interface HostMirrors {
  mirror?: string;
  securityMirror?: string;
}

interface SourceEntry {
  uri: string;
  suites: string[];
}

/** The `deb` sources of an apt configuration directory (one-line and deb822 formats). */
function aptSources(aptEtcDir: string): SourceEntry[] {
  const entries: SourceEntry[] = [];
  const read = (p: string): string => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  };
  const oneLine = (text: string) => {
    for (const raw of text.split('\n')) {
      const line = raw.replace(/#.*/, '').trim();
      const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
      if (m) entries.push({ uri: m[1]!, suites: [m[2]!] });
    }
  };
  const deb822 = (text: string) => {
    for (const stanza of text.split(/\n\s*\n/)) {
      const fields = new Map<string, string>();
      let last = '';
      for (const raw of stanza.split('\n')) {
        if (raw.startsWith('#')) continue;
        if (/^\s/.test(raw) && last) fields.set(last, `${fields.get(last)} ${raw.trim()}`);
        const m = /^([A-Za-z-]+):\s*(.*)$/.exec(raw);
        if (m) fields.set((last = m[1]!.toLowerCase()), m[2]!.trim());
      }
      if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue;
      if (/^(no|false)$/i.test(fields.get('enabled') ?? 'yes')) continue;
      const suites = (fields.get('suites') ?? '').split(/\s+/).filter(Boolean);
      for (const uri of (fields.get('uris') ?? '').split(/\s+/).filter(Boolean)) entries.push({ uri, suites });
    }
  };
  oneLine(read(join(aptEtcDir, 'sources.list')));
  const dir = join(aptEtcDir, 'sources.list.d');
  let names: string[] = [];
  try {
    names = readdirSync(dir).sort();
  } catch {
    /* no sources.list.d */
  }
  for (const name of names) {
    if (name.endsWith('.list')) oneLine(read(join(dir, name)));
    else if (name.endsWith('.sources')) deb822(read(join(dir, name)));
  }
  return entries;
}

/** The host's Debian archive and security archive for `suite`, as apt is configured. */
export function hostDebianMirrors(suite: DebianSuite = 'bookworm', aptEtcDir = '/etc/apt'): HostMirrors {
  const entries = aptSources(aptEtcDir);
  const clean = (u: string) => u.replace(/\/+$/, '');
  const main = entries.find((e) => e.suites.includes(suite));
  const security = entries.find((e) => e.suites.includes(`${suite}-security`));
  const out: HostMirrors = {};
  if (main) out.mirror = clean(main.uri);
  if (security) out.securityMirror = clean(security.uri);
  return out;
}

function checkMirrorUrl(url: string, what: string): string {
  if (!/^(https?|file):\/\/[^\s'"]+$/.test(url)) {
    throw new HostCapabilityError(`${what} ${JSON.stringify(url)} is not a valid URL; give an http://, https:// or file:// Debian archive`);
  }
  return url.replace(/\/+$/, '');
}

/** Fetches `<mirror>/dists/<suite>/InRelease` with apt's own downloader (it honours apt's proxy settings). */
async function fetchInRelease(mirror: string, suite: string, workDir: string): Promise<string> {
  const url = `${mirror}/dists/${suite}/InRelease`;
  const dest = join(workDir, `${suite}.InRelease`);
  const r = await run(APT_HELPER, ['-o', 'Acquire::Retries=0', '-o', 'Acquire::http::Timeout=20', '-o', 'Acquire::https::Timeout=20', 'download-file', url, dest], { timeoutMs: 60_000 });
  if (r.exitCode !== 0 || !existsSync(dest)) {
    const out = `${r.stderr}\n${r.stdout}`;
    const why =
      /^E: Failed to fetch \S+\s+(.+)$/m.exec(out)?.[1]?.trim() ??
      out
        .split('\n')
        .find((l) => l.startsWith('E: '))
        ?.slice(3)
        .trim() ??
      (r.timedOut ? 'timed out' : r.exitCode === undefined ? lastLine(r.stderr) : `exit ${r.exitCode}`);
    throw new HostCapabilityError(`debian mirror ${mirror} is unreachable or has no ${suite} suite (${url}: ${why}); pass a reachable Debian mirror`);
  }
  return readFileSync(dest, 'utf8');
}

/** The `Date:` of a Release file, in seconds since the epoch. */
export function releaseDate(release: string): number {
  const m = /^Date:\s*(.+)$/m.exec(release);
  const t = m ? Date.parse(m[1]!.trim()) : NaN;
  if (!Number.isFinite(t)) throw new HostCapabilityError('debian mirror: its Release file has no valid Date: field');
  return Math.floor(t / 1000);
}

// ---------------------------------------------------------------------------
// build

function onPath(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    try {
      accessSync(join(dir, cmd), fsc.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

function checkHost(): void {
  if (!onPath('mmdebstrap')) throw new HostCapabilityError('mmdebstrap is missing; install it with `apt-get install mmdebstrap`');
  if (!existsSync(APT_HELPER)) throw new HostCapabilityError(`${APT_HELPER} is missing; install it with \`apt-get install apt\``);
  if (!existsSync(MERGED_USR_HOOKS)) throw new HostCapabilityError(`${MERGED_USR_HOOKS} is missing; reinstall mmdebstrap (\`apt-get install --reinstall mmdebstrap\`)`);
  if (process.getuid?.() !== 0) throw new HostCapabilityError('building the debian base image needs root (mmdebstrap --mode=root)');
}

// Hooks run by mmdebstrap under `sh -c` with the chroot as $1. Paths come in through the
// environment (mmdebstrap passes it on), so nothing is ever spliced into shell code.
const CACHE_IN_HOOK = [
  'set -eu',
  'a="$1/var/cache/apt/archives"; l="$1/var/lib/apt/lists"',
  'mkdir -p "$a/partial" "$l/partial"',
  // Hard links cost nothing; apt re-checks every .deb against the index hash before use.
  'for f in "$HBX_APT_CACHE"/archives/*.deb; do if [ -f "$f" ]; then ln "$f" "$a/" 2>/dev/null || cp "$f" "$a/"; fi; done',
  // Lists let `apt-get update` skip unchanged indices; copies, since apt rewrites them.
  'for f in "$HBX_APT_CACHE"/lists/*; do if [ -f "$f" ]; then cp -p "$f" "$l/"; fi; done',
].join('\n');

const CACHE_OUT_HOOK = [
  'set -eu',
  'mkdir -p "$HBX_APT_CACHE/archives"',
  'for f in "$1"/var/cache/apt/archives/*.deb; do',
  '  [ -f "$f" ] || continue',
  '  d="$HBX_APT_CACHE/archives/${f##*/}"',
  '  [ -e "$d" ] && continue',
  // Copy then rename: a concurrent build never sees half a .deb.
  '  cp "$f" "$d.tmp.$$" && mv -f "$d.tmp.$$" "$d"',
  'done',
].join('\n');

// The lists apt used, kept to check them against the Release files read before the build.
const LISTS_OUT_HOOK = ['set -eu', 'mkdir -p "$HBX_LISTS_OUT"', 'for f in "$1"/var/lib/apt/lists/*; do if [ -f "$f" ] && [ "${f##*/}" != lock ]; then cp -p "$f" "$HBX_LISTS_OUT/"; fi; done'].join(
  '\n',
);

/** Runs mmdebstrap, streaming its output to `log`; a failure becomes one line. */
async function runMmdebstrap(args: string[], env: NodeJS.ProcessEnv, log: (line: string) => void, timeoutMs: number): Promise<void> {
  const output = new LineTail(40, log);
  // SIGTERM lets mmdebstrap unmount /proc, /sys and /dev from the chroot before it exits.
  const r = await spawnChild('mmdebstrap', args, { env, stdout: output.push, stderr: output.push, timeoutMs, killSignal: 'SIGTERM' }).done.catch((err: Error) => {
    throw new HostCapabilityError(`mmdebstrap could not be started: ${err.message}`);
  });
  const tail = output.end();
  if (r.code === 0) return;
  const errors = tail.filter((l) => /^E: /.test(l) && !/mmdebstrap failed to run|received signal/.test(l));
  const why = (errors[0] ?? tail[tail.length - 1] ?? 'no output').replace(/^E: /, '').trim();
  const how = r.signal ? `was stopped by ${r.signal}${r.signal === 'SIGTERM' ? ` after ${Math.round(timeoutMs / 1000)} s` : ''}` : `failed (exit ${r.code})`;
  throw new HostCapabilityError(`mmdebstrap ${how}: ${why}`);
}

/**
 * Bootstraps a Debian `suite` minbase root filesystem into `targetDir` (absent or empty)
 * and normalises it so that the same inputs give a byte-identical tree.
 */
export async function buildDebianRootfs(targetDir: string, opts: DebianBaseOptions = {}): Promise<DebianRootfs> {
  const suite: DebianSuite = opts.suite ?? 'bookworm';
  const variant = opts.variant ?? 'minbase';
  const log = opts.log ?? (() => {});
  const updates = opts.updates ?? true;
  const host = hostDebianMirrors(suite, opts.aptEtcDir ?? '/etc/apt');
  const mirror = checkMirrorUrl(opts.mirror ?? host.mirror ?? DEFAULT_MIRROR, 'mirror');
  const securityMirror = checkMirrorUrl(opts.securityMirror ?? host.securityMirror ?? DEFAULT_SECURITY_MIRROR, 'security mirror');
  const target = resolve(targetDir);
  const aptCache = opts.cacheDir === false ? undefined : resolve(opts.cacheDir ?? aptCacheDir());
  const include = normalizePackages(opts.include ?? []);
  checkHost();

  if (existsSync(target) && readdirSync(target).length > 0) throw new HostCapabilityError(`${target} is not empty; the debian rootfs needs an empty directory`);

  const suites: { mirror: string; suite: string }[] = [{ mirror, suite }];
  if (updates) suites.push({ mirror, suite: `${suite}-updates` }, { mirror: securityMirror, suite: `${suite}-security` });
  const sources = suites.map((s) => `deb ${s.mirror} ${s.suite} main`);

  const work = mkdtempSync(join(tmpdir(), 'hbx-debian-'));
  try {
    // The mirror state pins everything: its Release files name every package version.
    const releases: string[] = [];
    for (const s of suites) releases.push(await fetchInRelease(s.mirror, s.suite, work));
    const sourceDateEpoch = opts.sourceDateEpoch ?? Math.max(...releases.map(releaseDate));
    if (!Number.isInteger(sourceDateEpoch) || sourceDateEpoch < 0) {
      throw new HostCapabilityError(`sourceDateEpoch: ${sourceDateEpoch} is not valid; give whole seconds since 1970`);
    }
    const tool = (await run('mmdebstrap', ['--version'])).stdout.trim();
    const inputsKey = debianInputsKey({ tool, suite, variant, sources, sourceDateEpoch, include, releases });
    if (opts.reuse?.(inputsKey)) return { packages: [], sourceDateEpoch, mirror, sources, inputsKey, reused: true };

    const listsOut = join(work, 'lists');
    const args = [
      '--mode=root',
      `--variant=${variant}`,
      '--format=directory',
      // The debootstrap way to merged /usr: no usrmerge package, so no perl in the image.
      // (The hook uses debootstrap's function when debootstrap is installed; both make the
      // same links, so the host having debootstrap or not does not change the tree.)
      `--hook-dir=${MERGED_USR_HOOKS}`,
      ...DPKG_EXCLUDES.map((o) => `--dpkgopt=${o}`),
    ];
    const extra = normalizePackages([...include, ...(sources.some((s) => s.includes('https://')) ? ['ca-certificates'] : [])]);
    if (extra.length) args.push(`--include=${extra.join(',')}`);
    if (aptCache) {
      mkdirSync(join(aptCache, 'archives'), { recursive: true });
      mkdirSync(join(aptCache, 'lists'), { recursive: true });
      // Keep downloaded .debs in the chroot until the customize hook has copied them out.
      args.push('--skip=essential/unlink', `--setup-hook=${CACHE_IN_HOOK}`, `--customize-hook=${CACHE_OUT_HOOK}`);
    }
    args.push(`--customize-hook=${LISTS_OUT_HOOK}`);
    args.push(suite, target, ...sources);

    const env: NodeJS.ProcessEnv = {
      // mmdebstrap calls chroot, mount and friends from the sbin directories.
      PATH: `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`,
      HOME: '/root',
      LC_ALL: 'C.UTF-8',
      SOURCE_DATE_EPOCH: String(sourceDateEpoch),
      HBX_LISTS_OUT: listsOut,
      ...(aptCache ? { HBX_APT_CACHE: aptCache } : {}),
      ...(process.env.http_proxy ? { http_proxy: process.env.http_proxy } : {}),
      ...(process.env.https_proxy ? { https_proxy: process.env.https_proxy } : {}),
    };
    log(`mmdebstrap ${suite} (${variant}${include.length ? ` + ${include.join(' ')}` : ''}) from ${sources.join(', ')}, SOURCE_DATE_EPOCH=${sourceDateEpoch}`);
    try {
      await runMmdebstrap(args, env, log, opts.timeoutMs ?? 20 * 60_000);
      checkSameMirrorState(suites, releases, listsOut);
    } catch (err) {
      discardTree(target);
      throw err;
    }
    if (aptCache) saveLists(listsOut, join(aptCache, 'lists'));

    normalizeTree(target, sourceDateEpoch);
    const packages = installedPackages(target);
    if (aptCache) pruneArchives(join(aptCache, 'archives'), packages);
    return { packages, sourceDateEpoch, mirror, sources, inputsKey, reused: false };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * The Release files apt used must be the ones SOURCE_DATE_EPOCH and the inputs key were
 * taken from; a mirror that was updated in between would make the key lie.
 */
function checkSameMirrorState(suites: { mirror: string; suite: string }[], releases: string[], listsOut: string): void {
  const names = childrenOf(listsOut);
  suites.forEach((s, i) => {
    // apt names the file after the URL (`host_path_dists_<suite>_InRelease`).
    const name = names.find((n) => n.endsWith(`_dists_${s.suite}_InRelease`));
    // A file:// mirror is read in place, without a copy in lists/.
    if (name === undefined) return;
    if (readFileSync(join(listsOut, name), 'utf8') !== releases[i]) {
      throw new HostCapabilityError(`debian mirror ${s.mirror} changed its ${s.suite} Release during the build; build again`);
    }
  });
}

function saveLists(from: string, to: string): void {
  for (const name of childrenOf(from)) {
    const tmp = join(to, `.${name}.${process.pid}`);
    writeFileSync(tmp, readFileSync(join(from, name)));
    const st = lstatSync(join(from, name));
    lutimesSync(tmp, st.atime, st.mtime);
    renameSync(tmp, join(to, name));
  }
}

/** Drops cached .debs of packages that this build installed at another version. */
function pruneArchives(dir: string, packages: string[]): void {
  const installed = new Map(packages.map((p) => p.split('=') as [string, string]));
  for (const name of readdirSync(dir)) {
    const m = /^([^_]+)_([^_]+)_[^_]+\.deb$/.exec(name);
    if (!m) continue;
    const version = installed.get(m[1]!);
    if (version !== undefined && version !== decodeURIComponent(m[2]!)) unlinkSync(join(dir, name));
  }
}

/** `name=version` of every installed package, from dpkg's status file. */
export function installedPackages(root: string): string[] {
  return [...dpkgVersions(readFileSync(join(root, 'var/lib/dpkg/status'), 'utf8'))].map(([name, version]) => `${name}=${version}`).sort();
}

/** Installed packages and their versions, from the text of a dpkg status file. */
export function dpkgVersions(status: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const stanza of status.split(/\n\n+/)) {
    const name = /^Package:\s*(\S+)/m.exec(stanza)?.[1];
    const version = /^Version:\s*(\S+)/m.exec(stanza)?.[1];
    if (name && version && /^Status:.*\binstalled$/m.test(stanza)) out.set(name, version);
  }
  return out;
}

// ---------------------------------------------------------------------------
// normalisation

function rmIfExists(p: string): void {
  rmSync(p, { recursive: true, force: true });
}

function childrenOf(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/**
 * Removes or rewrites what would differ between two builds from the same inputs, or
 * describe the build host, then stamps every entry with `epoch`. With SOURCE_DATE_EPOCH
 * set, mmdebstrap already drops the install logs, ldconfig's aux-cache and machine-ids;
 * those steps are repeated here so the tree does not rest on one mmdebstrap version's list.
 * What it leaves: mtimes (about 600 entries written by maintainer scripts carry the build's
 * wall-clock time), the host's resolv.conf and hostname, and the build's /dev nodes.
 */
export function normalizeTree(root: string, epoch: number): void {
  // Device nodes and /proc symlinks made for the build; the runtime mounts its own /dev.
  for (const name of childrenOf(join(root, 'dev'))) rmIfExists(join(root, 'dev', name));
  // Copied from the build host by mmdebstrap: host-specific. The runtime provides both.
  rmIfExists(join(root, 'etc/resolv.conf'));
  writeFileSync(join(root, 'etc/hostname'), 'sandbox\n');
  chmodSync(join(root, 'etc/hostname'), 0o644); // the host's copy may have had any mode
  // Identity of one machine: empty means "generate on first boot" to systemd.
  if (existsSync(join(root, 'etc/machine-id'))) writeFileSync(join(root, 'etc/machine-id'), '');
  rmIfExists(join(root, 'var/lib/dbus/machine-id'));
  // ldconfig's cache of file stats (inode numbers, times); ld.so.cache itself is stable.
  rmIfExists(join(root, 'var/cache/ldconfig/aux-cache'));
  // Logs hold wall-clock times. The files stay (login tools expect btmp/wtmp), empty.
  truncateFiles(join(root, 'var/log'));
  // apt's binary caches embed mtimes; package lists are dropped to keep the image small
  // (run `apt-get update` in the container before installing anything).
  for (const name of childrenOf(join(root, 'var/cache/apt'))) if (name.endsWith('.bin')) rmIfExists(join(root, 'var/cache/apt', name));
  for (const dir of ['var/lib/apt/lists', 'var/cache/apt/archives']) {
    for (const name of childrenOf(join(root, dir))) if (name !== 'partial' && name !== 'lock') rmIfExists(join(root, dir, name));
  }
  // Backups written by dpkg, debconf and the shadow tools during the install: the state
  // before the last step, of no use in an image.
  for (const name of childrenOf(join(root, 'var/lib/dpkg'))) if (name.endsWith('-old')) rmIfExists(join(root, 'var/lib/dpkg', name));
  for (const name of childrenOf(join(root, 'var/cache/debconf'))) if (name.endsWith('-old')) rmIfExists(join(root, 'var/cache/debconf', name));
  for (const name of ['passwd-', 'group-', 'shadow-', 'gshadow-', 'subuid-', 'subgid-']) rmIfExists(join(root, 'etc', name));
  // Keys and seeds that must be unique per machine, if any package made them.
  for (const name of childrenOf(join(root, 'etc/ssh'))) if (/^ssh_host_.*_key(\.pub)?$/.test(name)) rmIfExists(join(root, 'etc/ssh', name));
  rmIfExists(join(root, 'var/lib/systemd/random-seed'));
  rmIfExists(join(root, 'var/lib/urandom/random-seed'));
  // Byte-compiled Python records source mtimes.
  removeNamed(root, '__pycache__');
  // Nothing from the build belongs in the image's scratch space (/run keeps its lock dir).
  for (const dir of ['tmp', 'var/tmp']) for (const name of childrenOf(join(root, dir))) rmIfExists(join(root, dir, name));
  stampTree(root, epoch);
}

function truncateFiles(dir: string): void {
  for (const name of childrenOf(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (st.isDirectory()) truncateFiles(p);
    else if (st.isFile() && st.size > 0) truncateSync(p, 0);
  }
}

function removeNamed(dir: string, target: string): void {
  for (const name of childrenOf(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (!st.isDirectory()) continue;
    if (name === target) rmIfExists(p);
    else removeNamed(p, target);
  }
}

/** Sets every entry's atime and mtime (symlinks' own, not their targets') to `epoch`. */
function stampTree(dir: string, epoch: number): void {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (lstatSync(p).isDirectory()) stampTree(p, epoch);
    else lutimesSync(p, epoch, epoch);
  }
  lutimesSync(dir, epoch, epoch);
}

/** Where finished Debian images are kept as OCI archives, by inputs key, outside any state root. */
export function baseArchiveDir(): string {
  return join(cacheDir(), 'bases');
}

/** The label that records an image's added packages (absent on the plain base). */
export const PACKAGES_LABEL = 'dev.hybridbox.base.packages';

export interface DebianImageResult {
  digest: string;
  /** 'cache': imported from the archive of a build with the same inputs; 'built': bootstrapped now. */
  source: 'cache' | 'built';
}

/**
 * A Debian image (`debian:bookworm`, or it plus `opts.include`): one reproducible layer from
 * mmdebstrap. A finished image is kept as an OCI archive keyed by the inputs (recipe,
 * packages and mirror state), so another state root, or a rebuild while the mirror has not
 * changed, imports it instead of bootstrapping.
 */
export async function buildDebianImage(store: ImageStore, ref = 'debian:bookworm', opts: DebianBaseOptions = {}): Promise<DebianImageResult> {
  const dir = baseArchiveDir();
  // One archive series per image name; the base keeps its old file names.
  const series = ref.replace(/[^A-Za-z0-9._-]+/g, '-');
  const own = new RegExp(`^${series.replace(/[.]/g, '\\.')}-[0-9a-f]{64}\\.tar$`);
  const include = normalizePackages(opts.include ?? []);
  const work = mkdtempSync(join(store.dir, `.debian-${process.pid}-`));
  let archive = '';
  try {
    const root = join(work, 'rootfs');
    const r = await buildDebianRootfs(root, {
      ...opts,
      include,
      reuse: (key) => existsSync((archive = join(dir, `${series}-${key}.tar`))),
    });
    if (r.reused) {
      const imported = await store.import(archive, { ref });
      return { digest: imported.images[0]!.manifest.digest, source: 'cache' };
    }
    const layer = await createLayer(root, { store: store.blobs, mtime: r.sourceDateEpoch });
    const config = debianImageConfig();
    config.labels = {
      'org.opencontainers.image.created': new Date(r.sourceDateEpoch * 1000).toISOString(),
      'dev.hybridbox.base.inputs': r.inputsKey,
      ...(include.length ? { [PACKAGES_LABEL]: include.join(',') } : {}),
    };
    const manifest = await store.commit([ref], [layer], config, { created: new Date(r.sourceDateEpoch * 1000).toISOString() });
    mkdirSync(dir, { recursive: true });
    const tmp = `${archive}.${process.pid}.tmp`;
    await store.export([ref], tmp);
    renameSync(tmp, archive);
    // Older mirror states of this image are of no further use.
    for (const name of readdirSync(dir)) if (own.test(name) && join(dir, name) !== archive) rmSync(join(dir, name), { force: true });
    return { digest: manifest.digest, source: 'built' };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
