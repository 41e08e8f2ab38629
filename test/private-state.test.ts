import test from 'ava';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Hybridbox, type SandboxInfo } from '../src/index.js';
import { InsecureFileError } from '../src/errors.js';
import { resolveRegistryConfig } from '../src/registry/index.js';
import { freshHybridbox, waitFor } from './helpers.js';

// Everything under the state root that holds a spec (env values), output, an exit record or a
// credential, checked as another local user (nobody) who knows every path in it.

const SECRET = `hbx-secret-${randomBytes(6).toString('hex')}`;
const NOBODY = 65534;

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;

test.before(async () => {
  ({ hb, root, cleanup } = await freshHybridbox('hbx-private-'));
});
test.after.always(async () => {
  await cleanup?.();
});

/** Runs argv as uid/gid 65534 with no supplementary groups. */
function asNobody(argv: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--', ...argv], { cwd: '/', encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every path under dir (as root), not following symlinks. */
function walk(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    out.push(p);
    if (e.isDirectory()) walk(p, out);
  }
  return out;
}

const mode = (p: string) => statSync(p).mode & 0o7777;
const sh = (script: string, more: Record<string, unknown> = {}) => ({ image: 'busybox', command: ['sh', '-c', script], env: { TOKEN: SECRET }, ...more });

async function waitEnded(id: string): Promise<SandboxInfo> {
  let info: SandboxInfo | undefined;
  await waitFor(
    async () => {
      info = (await hb.sandboxes.list({ all: true })).find((s) => s.id === id);
      return info !== undefined && info.state !== 'running';
    },
    30_000,
    50,
  );
  return info!;
}

/** What other users must not be able to open: every file a sandbox or the root holds. */
function sensitivePaths(): string[] {
  const paths = [join(root, 'state.db'), join(root, 'registry.json')];
  for (const suffix of ['-wal', '-shm']) if (existsSync(join(root, `state.db${suffix}`))) paths.push(join(root, `state.db${suffix}`));
  for (const id of readdirSync(join(root, 'sandboxes'))) {
    const dir = join(root, 'sandboxes', id);
    for (const name of readdirSync(dir)) if (statSync(join(dir, name)).isFile()) paths.push(join(dir, name));
  }
  return paths;
}

test.serial('another user can read nothing of a state root with sandboxes, and an untrusted container still runs', async (t) => {
  writeFileSync(join(root, 'registry.json'), JSON.stringify({ endpoint: 'http://127.0.0.1:9', accessKeyId: 'k', secretAccessKey: SECRET }), { mode: 0o600 });
  const fg = await hb.sandboxes.run(sh('echo "out $TOKEN"; echo "err $TOKEN" >&2; echo "$TOKEN" > /secret.txt', { isolation: 'container' }));
  t.is(fg.exitCode, 0, fg.stderr);
  t.true(fg.stdout.includes(SECRET));
  const ended = await hb.sandboxes.runDetached(sh('echo "out $TOKEN"; echo "err $TOKEN" >&2; echo "$TOKEN" > /secret.txt', { isolation: 'container' }));
  t.is((await waitEnded(ended.id)).state, 'exited');
  const running = await hb.sandboxes.runDetached(sh('echo "out $TOKEN"; echo "$TOKEN" > /secret.txt; exec sleep 600', { isolation: 'container' }));
  const runningDir = join(root, 'sandboxes', running.id);
  t.true(await waitFor(() => readFileSync(join(runningDir, 'stdout.log'), 'utf8').includes(SECRET), 10_000));
  const vm = await hb.sandboxes.run(sh('echo "out $TOKEN"', { isolation: 'microvm' }));
  t.is(vm.exitCode, 0, vm.stderr);
  t.true(vm.stdout.includes(SECRET));

  // The files that carry the secret (as root sees them), so the checks below are about something.
  const endedDir = join(root, 'sandboxes', ended.id);
  for (const f of ['config.json', 'stdout.log', 'stderr.log']) t.true(readFileSync(join(endedDir, f), 'utf8').includes(SECRET), f);
  t.true(existsSync(join(endedDir, 'exit.json')));
  t.true(existsSync(join(root, 'sandboxes', vm.id, 'console.log')));

  t.is(mode(root), 0o711);
  t.is(mode(join(root, 'sandboxes')), 0o711);
  t.is(mode(join(root, 'state.db')), 0o600);

  const paths = sensitivePaths();
  t.true(paths.length >= 20, paths.join(' '));
  for (const p of paths) {
    const r = asNobody(['cat', p]);
    t.not(r.code, 0, `nobody read ${p}`);
    t.regex(r.stderr, /Permission denied/, p);
  }
  const dirs = [root, join(root, 'sandboxes'), join(root, 'images'), join(root, 'cache'), runningDir, endedDir, join(root, 'sandboxes', vm.id)];
  for (const d of dirs) {
    const r = asNobody(['ls', d]);
    t.not(r.code, 0, `nobody listed ${d}`);
    t.regex(r.stderr, /Permission denied/, d);
  }
  // The workload's own files (the overlay's upper directory) are out of reach too.
  for (const id of [fg.id, ended.id, running.id]) {
    const r = asNobody(['cat', join(root, 'sandboxes', id, 'overlay', 'upper', 'secret.txt')]);
    t.regex(r.stderr, /Permission denied/, id);
  }
  // Knowing every path (a walk as root) is not enough: nobody finds the secret anywhere.
  const all = walk(root);
  for (let i = 0; i < all.length; i += 500) {
    const r = asNobody(['grep', '-s', '-l', '-F', '--directories=skip', '--', SECRET, ...all.slice(i, i + 500)]);
    t.is(r.stdout, '', `nobody found the secret in ${r.stdout}`);
  }
  t.is(asNobody(['grep', '-r', '-l', '-F', SECRET, root]).stdout, '');

  // What must stay traversable still is: a user-namespace container runs, and a non-root
  // user inside it still sees its "/".
  const u = await hb.sandboxes.run({ image: 'busybox', trust: 'untrusted', isolation: 'container', command: ['echo', 'ok'] }, { remove: true });
  t.is(u.exitCode, 0, u.stderr);
  t.is(u.stdout, 'ok\n');
  const u2 = await hb.sandboxes.run({ image: 'busybox', trust: 'untrusted', isolation: 'container', user: '1000', command: ['sh', '-c', 'ls / >/dev/null && echo listed'] }, { remove: true });
  t.is(u2.stdout, 'listed\n', u2.stderr);
  await hb.sandboxes.stop(running.id, { graceMs: 0 });
});

test.serial('a state root made with wide modes is made private when it is opened', async (t) => {
  const r = await hb.sandboxes.run(sh('echo "out $TOKEN"', { isolation: 'container' }));
  const dir = join(root, 'sandboxes', r.id);
  // What earlier versions (or a umask of 000) left: world-readable state, logs, spec and data.
  mkdirSync(join(root, 's3', 'hybridbox'), { recursive: true });
  writeFileSync(join(root, 's3', 'hybridbox', 'object'), SECRET);
  for (const p of [join(root, 'state.db'), join(dir, 'config.json'), join(dir, 'stdout.log'), join(dir, 'exit.json'), join(root, 's3', 'hybridbox', 'object')].filter(existsSync)) chmodSync(p, 0o644);
  for (const p of [join(root, 'images'), join(root, 'cache'), join(root, 's3'), join(root, 's3', 'hybridbox'), join(root, 'sandboxes'), dir]) chmodSync(p, 0o755);
  chmodSync(root, 0o755);
  t.true(asNobody(['cat', join(dir, 'config.json')]).stdout.includes(SECRET), 'the wide modes took effect');

  const again = await Hybridbox.open({ root, host: hb.host });
  try {
    t.is(mode(root), 0o711);
    t.is(mode(join(root, 'sandboxes')), 0o711);
    t.is(mode(join(root, 'state.db')), 0o600);
    t.is(mode(dir), 0o711);
    for (const p of [join(dir, 'config.json'), join(dir, 'stdout.log'), join(root, 's3', 'hybridbox', 'object'), join(root, 'images', 'oci', 'index.json')]) {
      t.regex(asNobody(['cat', p]).stderr, /Permission denied/, p);
    }
    for (const d of [root, join(root, 'images'), join(root, 'cache'), join(root, 's3'), dir]) t.regex(asNobody(['ls', d]).stderr, /Permission denied/, d);
    const u = await again.sandboxes.run({ image: 'busybox', trust: 'untrusted', isolation: 'container', command: ['echo', 'ok'] }, { remove: true });
    t.is(u.stdout, 'ok\n', u.stderr);
  } finally {
    again.close();
  }
});

test('registry.json is refused while other users can read or write it, like an ssh key', async (t) => {
  const file = join(root, 'registry-check', 'registry.json');
  mkdirSync(join(root, 'registry-check'), { recursive: true });
  writeFileSync(file, JSON.stringify({ endpoint: 'http://127.0.0.1:9', accessKeyId: 'k', secretAccessKey: SECRET }), { mode: 0o600 });
  for (const wide of [0o644, 0o640, 0o604, 0o620, 0o602]) {
    chmodSync(file, wide);
    const err = t.throws(() => resolveRegistryConfig({}, join(root, 'registry-check')), { instanceOf: InsecureFileError }, wide.toString(8));
    t.true(err!.message.includes(`chmod 600 ${file}`), err!.message);
    t.false(err!.message.includes(SECRET));
    t.false(err!.message.includes('\n'));
    t.throws(() => resolveRegistryConfig({ HYBRIDBOX_REGISTRY_CONFIG: file }, '/nonexistent'), { instanceOf: InsecureFileError });
  }
  chmodSync(file, 0o600);
  t.is(resolveRegistryConfig({}, join(root, 'registry-check')).credentials.secretAccessKey, SECRET);
  chmodSync(file, 0o400);
  t.is(resolveRegistryConfig({}, join(root, 'registry-check')).endpoint, 'http://127.0.0.1:9');
});

test.serial("the state root's own registry.json is refused by push before anything is sent", async (t) => {
  const file = join(root, 'registry.json');
  writeFileSync(file, JSON.stringify({ endpoint: 'http://127.0.0.1:9', accessKeyId: 'k', secretAccessKey: SECRET }));
  chmodSync(file, 0o644);
  const err = await t.throwsAsync(hb.images.push('busybox'), { instanceOf: InsecureFileError });
  t.true(err!.message.includes(`chmod 600 ${file}`), err!.message);
  t.is(err!.exitCode, 125);
  // Opening the root does not quietly fix the owner's file: it stays refused until chmod.
  (await Hybridbox.open({ root, host: hb.host })).close();
  t.is(mode(file), 0o644);
  chmodSync(file, 0o600);
});
