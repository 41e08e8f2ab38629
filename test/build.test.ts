import test from 'ava';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Hybridbox } from '../src/index.js';
import { blobsOf, freshHybridbox } from './helpers.js';

let hb: Hybridbox;
let root: string;
let cleanup: () => Promise<void>;

test.before(async () => {
  ({ hb, root, cleanup } = await freshHybridbox('hbx-build-'));
});
test.after.always(async () => cleanup?.());

/** A build context with the given files; `Sandboxfile` among them. */
function context(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'hbx-ctx-'));
  for (const [name, body] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), body);
  }
  return dir;
}

const build = (dir: string, tags: string[], extra: { noCache?: boolean; logs?: string[] } = {}) =>
  hb.images.build({ file: join(dir, 'Sandboxfile'), contextDir: dir, tags, noCache: extra.noCache, onLog: (l) => extra.logs?.push(l) });

const APP = `# comment
FROM busybox
ARG NAME=world
ENV GREETING="hello \${NAME}"
WORKDIR /app
COPY greeting.txt ./
COPY conf /app/conf/
RUN echo "$GREETING" > /app/out.txt && \\
    rm /etc/hostname && \\
    echo step-output
USER nobody
CMD ["cat", "/app/out.txt"]
`;

test.serial('a build makes one layer per RUN/COPY, the image runs, and an unchanged rebuild is all cache hits', async (t) => {
  const dir = context({ Sandboxfile: APP, 'greeting.txt': 'hi there\n', 'conf/a.conf': 'a=1\n' });
  const logs: string[] = [];
  const first = await build(dir, ['app:1'], { logs });
  t.is(first.steps.filter((s) => s.layerDigest).length, 3);
  t.is(first.steps.filter((s) => s.cached).length, 0);
  const details = await hb.images.inspect('app:1');
  t.is(details.manifest.layers.length, 4, 'busybox + COPY + COPY + RUN');
  t.deepEqual(details.config.config.Cmd, ['cat', '/app/out.txt']);
  t.is(details.config.config.User, 'nobody');
  t.true(details.config.config.Env!.includes('GREETING=hello world'));

  const r = await hb.sandboxes.run({ image: 'app:1' }, { remove: true });
  t.is(r.stdout, 'hello world\n');
  const look = await hb.sandboxes.run({ image: 'app:1', command: ['sh', '-c', 'id -u; pwd; cat greeting.txt conf/a.conf; test -e /etc/hostname && echo present || echo deleted'] }, { remove: true });
  t.is(look.stdout, '65534\n/app\nhi there\na=1\ndeleted\n');

  const again: string[] = [];
  const second = await build(dir, ['app:1'], { logs: again });
  t.is(second.digest, first.digest, 'same inputs, same image');
  t.is(second.steps.filter((s) => s.cached).length, 3);
  t.true(again.some((l) => l.includes('RUN') && l.endsWith('CACHED')));

  // An edited source file misses the cache from its step on.
  writeFileSync(join(dir, 'conf/a.conf'), 'a=2\n');
  const third = await build(dir, ['app:2']);
  t.not(third.digest, first.digest);
  t.deepEqual(
    third.steps.filter((s) => s.layerDigest).map((s) => s.cached),
    [true, false, false],
  );
  t.is((await hb.sandboxes.run({ image: 'app:2', command: ['cat', '/app/conf/a.conf'] }, { remove: true })).stdout, 'a=2\n');
  rmSync(dir, { recursive: true, force: true });
});

test.serial('the same image runs as a microVM, with every layer applied', async (t) => {
  const dir = context({ Sandboxfile: APP, 'greeting.txt': 'hi there\n', 'conf/a.conf': 'a=1\n' });
  await build(dir, ['app:vm']);
  const r = await hb.sandboxes.run({ image: 'app:vm', isolation: 'microvm', command: ['sh', '-c', 'cat /app/out.txt /app/conf/a.conf; id -u; uname -r'] }, { remove: true });
  t.is(r.exitCode, 0, r.stderr);
  const [out, conf, uid, kernel] = r.stdout.trim().split('\n');
  t.is(out, 'hello world');
  t.is(conf, 'a=1');
  t.is(uid, '65534');
  t.not(kernel, hb.host.kernelRelease, 'the guest runs its own kernel');
  rmSync(dir, { recursive: true, force: true });
});

test.serial('a build FROM debian:bookworm (made locally by mmdebstrap) runs as a container and as a microVM', async (t) => {
  const dir = context({
    Sandboxfile: [
      'FROM debian:bookworm',
      'RUN useradd --create-home --uid 1234 app && dpkg-query -W -f "${Package}\\n" | wc -l > /etc/package-count',
      'COPY hello.sh /usr/local/bin/hello',
      'RUN chmod 755 /usr/local/bin/hello',
      'USER app',
      'WORKDIR /home/app',
      'CMD ["hello"]',
      '',
    ].join('\n'),
    'hello.sh': '#!/bin/bash\necho "hello from $(. /etc/os-release; echo $VERSION_CODENAME) as $(id -un) in $PWD, $(cat /etc/package-count) packages"\n',
  });
  await build(dir, ['deb-app:1']);
  const c = await hb.sandboxes.run({ image: 'deb-app:1' }, { remove: true });
  t.is(c.exitCode, 0, c.stderr);
  t.regex(c.stdout, /^hello from bookworm as app in \/home\/app, \d+ packages\n$/);
  const vm = await hb.sandboxes.run({ image: 'deb-app:1', isolation: 'microvm', resources: { memoryMiB: 256 } }, { remove: true });
  t.is(vm.exitCode, 0, vm.stderr);
  t.is(vm.stdout, c.stdout, 'the same image, the same answer, in a VM');
  rmSync(dir, { recursive: true, force: true });
});

const ERRORS: [string, Record<string, string>, RegExp][] = [
  ['an unknown instruction', { Sandboxfile: 'FROM busybox\nRUN true\nFROBNICATE x\n' }, /\/Sandboxfile:3: FROBNICATE: unknown instruction/],
  ['a COPY source outside the context', { Sandboxfile: 'FROM busybox\nCOPY ../x /x\n' }, /\/Sandboxfile:2: COPY: source "\.\.\/x" is outside the build context/],
  ['a failing RUN', { Sandboxfile: 'FROM busybox\nRUN echo first; echo second >&2; exit 3\n' }, /\/Sandboxfile:2: RUN: the command exited with code 3; last output: first \| second$/],
  ['a missing FROM image', { Sandboxfile: 'FROM nosuch:1.0\nRUN true\n' }, /\/Sandboxfile:1: FROM: image "nosuch:1\.0" is not in the local store/],
  ['a missing COPY source', { Sandboxfile: 'FROM busybox\nCOPY nothere.txt /\n' }, /\/Sandboxfile:2: COPY: source "nothere\.txt" does not exist/],
];

for (const [what, files, message] of ERRORS) {
  test.serial(`build error: ${what} names file and line, and leaves no image, tag or sandbox`, async (t) => {
    const dir = context(files);
    const before = hb.images.list();
    const err = await t.throwsAsync(build(dir, ['broken:1']));
    t.regex(err!.message, message);
    t.false(err!.message.includes('\n'), 'one line');
    t.deepEqual(hb.images.list(), before);
    t.deepEqual(await hb.sandboxes.list({ all: true }), []);
    rmSync(dir, { recursive: true, force: true });
  });
}

test.serial('build error: a symlink in the context that leads outside it is refused', async (t) => {
  const dir = context({ Sandboxfile: 'FROM busybox\nCOPY leak /leak\n' });
  symlinkSync('/etc/shadow', join(dir, 'leak'));
  const err = await t.throwsAsync(build(dir, ['broken:2']));
  t.regex(err!.message, /\/Sandboxfile:2: COPY: source "leak" is a symlink that leads outside the build context/);
  t.false(hb.images.has('broken:2'));
  rmSync(dir, { recursive: true, force: true });
});

test.serial('ADD unpacks a tar archive from the context; COPY keeps the mode of existing parents', async (t) => {
  const src = context({ 'pkg/bin/tool': '#!/bin/sh\necho tool-ran\n' });
  const dir = context({ Sandboxfile: 'FROM busybox\nADD pkg.tar.gz /opt/\nCOPY note.txt /tmp/note.txt\nRUN chmod 755 /opt/pkg/bin/tool\n', 'note.txt': 'n\n' });
  const { execFileSync } = await import('node:child_process');
  execFileSync('tar', ['-czf', join(dir, 'pkg.tar.gz'), '-C', src, 'pkg']);
  await build(dir, ['added:1']);
  const r = await hb.sandboxes.run({ image: 'added:1', command: ['/opt/pkg/bin/tool'] }, { remove: true });
  t.is(r.stdout, 'tool-ran\n');
  // The COPY layer holds /tmp with the image's own mode (1777), not a default 0755.
  const d = await hb.images.inspect('added:1');
  const copyLayer = d.manifest.layers[2]!;
  const listing = execFileSync('tar', ['-tvzf', blobsOf(root).path(copyLayer.digest)], { encoding: 'utf8' });
  t.regex(listing, /^drwxrwxrwt .* tmp\/$/m);
  rmSync(dir, { recursive: true, force: true });
  rmSync(src, { recursive: true, force: true });
});

test.serial('the busybox base image is reproducible: a fresh store makes the same digest', async (t) => {
  const other = await freshHybridbox('hbx-build-repro-');
  try {
    t.is(other.hb.images.digestOf('busybox'), hb.images.digestOf('busybox'));
  } finally {
    await other.cleanup();
  }
});

test.serial('tag, image rm and prune: data in use by a sandbox survives, the rest goes', async (t) => {
  const dir = context({ Sandboxfile: 'FROM busybox\nRUN echo unique-$RANDOM > /marker\n' });
  await build(dir, ['prune-me:1'], { noCache: true });
  await hb.images.tag('prune-me:1', 'prune-me:alias');
  const digest = hb.images.digestOf('prune-me:1')!;
  t.is(hb.images.digestOf('prune-me:alias'), digest);
  const kept = await hb.sandboxes.create({ image: 'prune-me:1', command: ['cat', '/marker'] });

  await hb.images.remove('prune-me:alias');
  await t.throwsAsync(hb.images.remove('prune-me:1'), { message: /is used by sandbox/ });
  await hb.images.remove('prune-me:1', { force: true });
  t.false(hb.images.has('prune-me:1'));

  const layersBefore = readdirSync(join(root, 'images', 'layers')).length;
  await hb.images.prune();
  t.true(existsSync(blobsOf(root).path(digest)), 'a created sandbox keeps its image');
  t.is(readdirSync(join(root, 'images', 'layers')).length, layersBefore);
  await hb.sandboxes.start(kept.id);
  await hb.sandboxes.remove(kept.id, { force: true });

  const pruned = await hb.images.prune();
  t.false(existsSync(blobsOf(root).path(digest)));
  t.true(pruned.blobs >= 3, `manifest, config and the RUN layer (removed ${pruned.blobs})`);
  t.true(pruned.layers >= 1);
  t.true(hb.images.has('busybox'), 'tagged images stay');
  rmSync(dir, { recursive: true, force: true });
});

test.serial('interop: an image built by buildah imports through the CLI and runs; our export passes skopeo inspect', async (t) => {
  const { execa } = await import('execa');
  const { CLI } = await import('./helpers.js');
  const work = mkdtempSync(join(tmpdir(), 'hbx-interop-'));
  const storage = ['--root', join(work, 'root'), '--runroot', join(work, 'runroot'), '--storage-driver', 'vfs'];
  try {
    // A rootfs of one static binary and a file, assembled by buildah from scratch.
    const rootfs = join(work, 'rootfs');
    mkdirSync(join(rootfs, 'bin'), { recursive: true });
    mkdirSync(join(rootfs, 'etc'));
    writeFileSync(join(rootfs, 'etc/greeting'), 'made by buildah\n');
    await execa('cp', ['/bin/busybox', join(rootfs, 'bin/busybox')]);
    const ctr = (await execa('buildah', [...storage, 'from', 'scratch'])).stdout.trim();
    await execa('buildah', [...storage, 'copy', ctr, rootfs, '/']);
    await execa('buildah', [...storage, 'config', '--cmd', '/bin/busybox cat /etc/greeting', '--env', 'FROM_BUILDAH=1', ctr]);
    await execa('buildah', [...storage, 'commit', ctr, 'localhost/fromb:1']);
    const archive = join(work, 'fromb.tar');
    await execa('buildah', [...storage, 'push', 'localhost/fromb:1', `oci-archive:${archive}:fromb:1`]);

    const env = { ...process.env, HYBRIDBOX_ROOT: root };
    const imp = await execa('node', [CLI, 'image', 'import', archive, '-t', 'fromb:1'], { env });
    t.regex(imp.stdout, /imported fromb:1 \(sha256:/);
    const ran = await execa('node', [CLI, 'run', '--rm', 'fromb:1'], { env });
    t.is(ran.stdout, 'made by buildah');
    const vm = await execa('node', [CLI, 'run', '--rm', '--isolation', 'microvm', 'fromb:1', '/bin/busybox', 'sh', '-c', 'echo $FROM_BUILDAH; cat /etc/greeting'], { env });
    t.is(vm.stdout, '1\nmade by buildah');

    const out = join(work, 'export.tar');
    await execa('node', [CLI, 'image', 'export', 'fromb:1', '-o', out], { env });
    const inspected = JSON.parse((await execa('skopeo', ['inspect', `oci-archive:${out}:fromb:1`])).stdout) as { Digest: string; Layers: string[] };
    t.is(hb.images.digestOf('fromb:1'), inspected.Digest);
    t.is(inspected.Layers.length, 1);

    // Bad input: a file that is no archive, and an archive without a name.
    writeFileSync(join(work, 'junk.tar'), 'not a tar at all');
    const junk = await execa('node', [CLI, 'image', 'import', join(work, 'junk.tar')], { env, reject: false });
    t.is(junk.exitCode, 125);
    t.is(junk.stderr.trim().split('\n').length, 1, junk.stderr);
  } finally {
    await execa('buildah', [...storage, 'rm', '--all'], { reject: false });
    await execa('buildah', [...storage, 'rmi', '--all', '--force'], { reject: false });
    rmSync(work, { recursive: true, force: true });
  }
});

test.serial('kill -9 of a build half-way leaves no tag, and the next build or prune sweeps its leftovers', async (t) => {
  const { execa } = await import('execa');
  const { CLI, waitFor } = await import('./helpers.js');
  const dir = context({ Sandboxfile: 'FROM busybox\nCOPY big.bin /big.bin\nRUN touch /started && sleep 30\n', 'big.bin': 'x'.repeat(1 << 20) });
  const env = { ...process.env, HYBRIDBOX_ROOT: root };
  const child = execa('node', [CLI, 'build', '-t', 'killed:1', dir], { env, reject: false });
  // Wait until the RUN step's sandbox is up, then kill the CLI outright.
  t.true(await waitFor(async () => (await hb.sandboxes.list()).some((s) => s.name.startsWith('build-')), 20_000));
  child.kill('SIGKILL');
  await child;
  t.false(hb.images.has('killed:1'));
  // The build sandbox dies with its CLI and is cleaned up by the next call.
  t.true(await waitFor(async () => (await hb.sandboxes.list()).length === 0, 10_000));
  // What a writer killed in the middle of a COPY or a blob write leaves behind.
  const dead = (await execa('sh', ['-c', 'echo $$'])).stdout.trim();
  mkdirSync(join(root, 'images', `.stage-${dead}-0a1b`, 'app'), { recursive: true });
  writeFileSync(join(root, 'images', 'oci', `.tmp-${dead}-0a1b2c3d`), 'half a blob');
  await hb.images.prune();
  const temps = [join(root, 'images'), join(root, 'images', 'oci'), join(root, 'images', 'layers')].flatMap((d) =>
    existsSync(d) ? readdirSync(d).filter((n) => n.startsWith('.') && n !== '.' && /-\d+-/.test(n)) : [],
  );
  t.deepEqual(temps, []);
  rmSync(dir, { recursive: true, force: true });
});
