import type { TestFn } from 'ava';
import { execa } from 'execa';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Hybridbox } from '../src/index.js';
import { ImageStore } from '../src/images/index.js';
import { StateStore } from '../src/store/index.js';
import { readMountinfo, type MountEntry } from '../src/util/mountinfo.js';
import { pollUntil } from '../src/util/proc.js';

export const REPO = new URL('..', import.meta.url).pathname.replace(/\/$/, '');
export const CLI = join(REPO, 'dist', 'cli.js');
/** The installed command (package.json bin): a CommonJS launcher that serves remote calls itself. */
export const BIN = join(REPO, 'dist', 'hybridbox.cjs');

/** Builds dist/ (CLI bundle + hbx-shim) once, if a previous step has not. */
export function ensureBuilt(): void {
  if (!existsSync(CLI) || !existsSync(join(REPO, 'dist', 'hbx-shim'))) {
    execFileSync('node', ['scripts/build.mjs'], { cwd: REPO, stdio: 'inherit' });
  }
}

/** A fresh state root with the busybox base image, and a Hybridbox opened on it. */
export async function freshHybridbox(prefix = 'hbx-test-'): Promise<{ hb: Hybridbox; root: string; cleanup: () => Promise<void> }> {
  ensureBuilt();
  const root = mkdtempSync(join(tmpdir(), prefix));
  const hb = await Hybridbox.open({ root });
  await hb.images.ensureBase();
  return {
    hb,
    root,
    cleanup: async () => {
      for (const s of await hb.sandboxes.list({ all: true })) await hb.sandboxes.remove(s.id, { force: true }).catch(() => undefined);
      hb.close();
      // A monitor's last step (`internal reap`) may still be writing under the root: on a
      // loaded CI host it outlasted 5 s of rm retries (ENOTEMPTY). Wait for every process
      // that works on this root to end first.
      await pollUntil(() => processesOnRoot(root).length === 0, { timeoutMs: 60_000, intervalMs: 100 });
      rmSync(root, { recursive: true, force: true, maxRetries: 50, retryDelay: 100 });
    },
  };
}

/** Pids of the processes whose environment names `root` as their state root (monitors, reaps). */
export function processesOnRoot(root: string): number[] {
  const mark = Buffer.from(`\0HYBRIDBOX_ROOT=${root}\0`);
  const pids: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (Buffer.concat([Buffer.from([0]), readFileSync(`/proc/${e}/environ`)]).includes(mark)) pids.push(Number(e));
    } catch {
      // Gone already, or a kernel thread.
    }
  }
  return pids;
}

/** Host resources that still carry a sandbox id: what a leak check looks for. */
export function hostTraces(ids: Iterable<string>): string[] {
  const found: string[] = [];
  const cgroupRoots = readdirSync('/sys/fs/cgroup').map((d) => join('/sys/fs/cgroup', d, 'hybridbox'));
  const mounts = readMountinfo();
  const netns = existsSync('/run/netns') ? readdirSync('/run/netns') : [];
  const links = readdirSync('/sys/class/net');
  for (const id of ids) {
    for (const r of cgroupRoots) if (existsSync(join(r, id))) found.push(`cgroup ${join(r, id)}`);
    if (mounts.some((m) => mentions(m, id))) found.push(`mount of ${id}`);
    if (netns.includes(`hbx-${id}`)) found.push(`netns hbx-${id}`);
    for (const prefix of ['hv', 'ht', 'hi']) if (links.includes(`${prefix}${id.slice(0, 12)}`)) found.push(`link ${prefix}${id.slice(0, 12)}`);
    for (const rt of ['crun', 'runc']) if (existsSync(`/run/${rt}/${id}`)) found.push(`/run/${rt}/${id}`);
  }
  return found;
}

/** Whether a mount names `text` in its mount point, its root, its source or its options (an overlay's upperdir=). */
export const mentions = (m: MountEntry, text: string): boolean => [m.mountPoint, m.root, m.source, ...m.superOptions].some((f) => f.includes(text));

export const waitFor = (cond: () => boolean | Promise<boolean>, ms: number, stepMs = 20): Promise<boolean> => pollUntil(cond, { timeoutMs: ms, intervalMs: stepMs });

/** The state database of a root, opened beside the library (tests look at leases and raw records). */
export function stateOf(root: string): StateStore {
  return new StateStore(root);
}

/** The blob store of a root's images (tests look at blobs directly). */
export function blobsOf(root: string): ImageStore['blobs'] {
  return new ImageStore(root).blobs;
}

/**
 * A state root for CLI tests: made and set up before the file's tests, every sandbox in it
 * removed after them. `hbx` runs the bundled CLI on it, as a user would.
 */
export function cliRoot(test: TestFn, prefix: string) {
  let root = '';
  const env = () => ({ HYBRIDBOX_ROOT: root });
  const hbx = (args: string[], input?: string) => execa('node', [CLI, ...args], { env: env(), reject: false, input });
  test.before(async () => {
    ensureBuilt();
    root = mkdtempSync(join(tmpdir(), prefix));
    // The language runtimes' images are left out: no CLI test runs them (test/languages does).
    const r = await hbx(['setup', '--no-runtimes']);
    if (r.exitCode !== 0) throw new Error(r.stderr);
  });
  test.after.always(async () => {
    const ps = await hbx(['ps', '-a', '--json']);
    for (const s of JSON.parse(ps.stdout || '[]') as { id: string }[]) await hbx(['rm', '-f', s.id]);
    rmSync(root, { recursive: true, force: true });
  });
  return { hbx, env, root: () => root };
}
