import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { Header, list as tarList } from 'tar';
import { BlobStore, MEDIA_TYPES, applyLayer, createLayer, readConfig, readManifest, resolveTag, tagImage, untag, writeImage, LayerEscapeError } from '../src/images/oci/index.js';

const tmp = (prefix: string) => mkdtemp(join(tmpdir(), `hbx-oci-${prefix}-`));

/** Everything that must survive a layer round-trip, mtimes excluded (layers pin them). */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = join(root, r);
      const st = fs.lstatSync(p);
      const meta = `mode=${(st.mode & 0o7777).toString(8)} uid=${st.uid} gid=${st.gid}`;
      if (st.isDirectory()) {
        out[r] = `dir ${meta}`;
        walk(r);
      } else if (st.isSymbolicLink()) out[r] = `symlink -> ${fs.readlinkSync(p)} uid=${st.uid} gid=${st.gid}`;
      else out[r] = `file ${meta} sha256=${createHash('sha256').update(fs.readFileSync(p)).digest('hex')}`;
    }
  };
  walk('');
  return out;
}

function populate(root: string): void {
  fs.mkdirSync(join(root, 'etc/conf.d'), { recursive: true });
  fs.mkdirSync(join(root, 'usr/bin'), { recursive: true });
  fs.mkdirSync(join(root, 'var/cache/pkg'), { recursive: true });
  fs.writeFileSync(join(root, 'etc/hostname'), 'box\n');
  fs.writeFileSync(join(root, 'etc/conf.d/app.conf'), 'a=1\n');
  fs.writeFileSync(join(root, 'usr/bin/tool'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  fs.writeFileSync(join(root, 'var/cache/pkg/index'), 'x'.repeat(5000));
  fs.symlinkSync('tool', join(root, 'usr/bin/tool-alias'));
  fs.linkSync(join(root, 'usr/bin/tool'), join(root, 'usr/bin/tool-hard'));
  // Exercises the pax path (>100 bytes, non-ASCII) and numeric ownership.
  const deep = join(root, 'deep', 'd'.repeat(60), 'e'.repeat(60));
  fs.mkdirSync(deep, { recursive: true });
  fs.writeFileSync(join(deep, 'naïve-fïle.txt'), 'unicode\n');
  fs.writeFileSync(join(root, 'etc/owned'), 'owned\n');
  fs.chownSync(join(root, 'etc/owned'), 1234, 5678);
  fs.chmodSync(join(root, 'etc'), 0o750);
}

async function layerPaths(file: string): Promise<string[]> {
  const paths: string[] = [];
  await tarList({ file, onReadEntry: (e) => void paths.push(e.path) });
  return paths;
}

/** A hand-made hostile layer; node-tar's Header does no path sanitising on encode. */
function hostileLayer(entries: { path: string; type: 'File' | 'SymbolicLink'; body?: string; linkpath?: string }[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    const h = Buffer.alloc(512);
    new Header({ path: e.path, type: e.type, mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: new Date(0), linkpath: e.linkpath ?? '' }).encode(h, 0);
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(blocks));
}

test('blob put/has/verify and never overwrite', async (t) => {
  const dir = await tmp('blobs');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = new BlobStore(dir);
  await store.init();
  await store.init(); // idempotent
  t.deepEqual(JSON.parse(fs.readFileSync(join(dir, 'oci-layout'), 'utf8')), { imageLayoutVersion: '1.0.0' });
  t.deepEqual(JSON.parse(fs.readFileSync(join(dir, 'index.json'), 'utf8')).manifests, []);

  const d = await store.putBytes(Buffer.from('hello'), 'text/plain');
  t.is(d.digest, `sha256:${createHash('sha256').update('hello').digest('hex')}`);
  t.is(d.size, 5);
  t.is(d.mediaType, 'text/plain');
  t.true(await store.has(d.digest));
  t.true(await store.verify(d.digest));

  // A second put of the same content must leave the original inode alone.
  const inode = fs.statSync(store.path(d.digest)).ino;
  const src = join(dir, '..', `${dir.split('/').pop()}-src`);
  fs.writeFileSync(src, 'hello');
  t.teardown(() => rm(src, { force: true }));
  t.deepEqual(await store.putFile(src), { ...d, mediaType: MEDIA_TYPES.octet });
  t.is(fs.statSync(store.path(d.digest)).ino, inode);
  const streamed = await store.putStream(fs.createReadStream(src));
  t.is(streamed.digest, d.digest);
  t.is(fs.statSync(store.path(d.digest)).ino, inode);

  // No temp files are left behind in the layout.
  t.deepEqual(fs.readdirSync(dir).sort(), ['blobs', 'index.json', 'oci-layout']);

  fs.chmodSync(store.path(d.digest), 0o644);
  fs.writeFileSync(store.path(d.digest), 'HELLO');
  t.false(await store.verify(d.digest));
  t.false(await store.has(`sha256:${'0'.repeat(64)}`));
  t.false(await store.verify(`sha256:${'0'.repeat(64)}`));
  t.throws(() => store.path('sha256:../../etc/passwd'));
});

test('layers are reproducible regardless of mtimes and target store', async (t) => {
  const root = await tmp('repro');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const tree = join(root, 'tree');
  populate(tree);
  const a = new BlobStore(join(root, 'a'));
  const b = new BlobStore(join(root, 'b'));
  await a.init();
  await b.init();
  const first = await createLayer(tree, { store: a });
  fs.utimesSync(join(tree, 'etc/hostname'), new Date(), new Date(2001, 1, 1));
  fs.utimesSync(join(tree, 'usr/bin'), new Date(), new Date(2011, 1, 1));
  const second = await createLayer(tree, { store: b });
  t.deepEqual(second, first);
  t.is(first.descriptor.mediaType, MEDIA_TYPES.layerGzip);
  t.true(await a.verify(first.descriptor.digest));
  t.not(first.diffId, first.descriptor.digest);
  const other = await createLayer(tree, { store: a, mtime: 1700000000 });
  t.not(other.descriptor.digest, first.descriptor.digest);
});

test('diff layer with add/change/delete applied on base reproduces the new tree', async (t) => {
  const root = await tmp('diff');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const base = join(root, 'base');
  const next = join(root, 'next');
  populate(base);
  await execa('cp', ['-a', base, next]);
  fs.writeFileSync(join(next, 'etc/added'), 'new file\n');
  fs.writeFileSync(join(next, 'etc/hostname'), 'xyz\n'); // same size: only the content hash differs
  fs.rmSync(join(next, 'etc/conf.d/app.conf'));
  fs.rmSync(join(next, 'var/cache'), { recursive: true });
  fs.chmodSync(join(next, 'usr/bin/tool'), 0o700);
  fs.utimesSync(join(next, 'etc/owned'), new Date(), new Date(2020, 0, 1)); // mtime alone is no change

  const store = new BlobStore(join(root, 'layout'));
  await store.init();
  const l1 = await createLayer(base, { store });
  const l2 = await createLayer(next, { store, base });

  const paths = await layerPaths(store.path(l2.descriptor.digest));
  t.true(paths.includes('etc/added'));
  t.true(paths.includes('etc/hostname'));
  t.true(paths.includes('etc/conf.d/.wh.app.conf'));
  t.true(paths.includes('var/.wh.cache'));
  t.false(paths.includes('etc/owned'));
  t.false(paths.some((p) => p.startsWith('var/cache/')));
  t.false(paths.some((p) => p.startsWith('deep')));

  const out = join(root, 'out');
  await applyLayer(store.path(l1.descriptor.digest), out);
  t.deepEqual(snapshot(out), snapshot(base));
  await applyLayer(store.path(l2.descriptor.digest), out);
  t.deepEqual(snapshot(out), snapshot(next));
  t.is(fs.statSync(join(out, 'etc/owned')).uid, 1234);
});

test('layer entries that escape the target are refused', async (t) => {
  const root = await tmp('escape');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const outside = join(root, 'outside');
  fs.mkdirSync(outside);
  const cases: [string, Buffer][] = [
    [
      'dotdot',
      hostileLayer([
        { path: 'ok', type: 'File', body: 'fine' },
        { path: '../outside/pwned', type: 'File', body: 'x' },
      ]),
    ],
    ['absolute', hostileLayer([{ path: join(outside, 'pwned'), type: 'File', body: 'x' }])],
    [
      'symlink',
      hostileLayer([
        { path: 'lnk', type: 'SymbolicLink', linkpath: outside },
        { path: 'lnk/pwned', type: 'File', body: 'x' },
      ]),
    ],
  ];
  for (const [name, buf] of cases) {
    const file = join(root, `${name}.tar.gz`);
    fs.writeFileSync(file, buf);
    await t.throwsAsync(applyLayer(file, join(root, `target-${name}`)), { instanceOf: LayerEscapeError }, name);
  }
  t.deepEqual(fs.readdirSync(outside), []);
});

test('whiteouts and opaque directories', async (t) => {
  const root = await tmp('wh');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const target = join(root, 't');
  fs.mkdirSync(join(target, 'd'), { recursive: true });
  fs.writeFileSync(join(target, 'd/old'), 'old');
  fs.writeFileSync(join(target, 'gone'), 'bye');
  const file = join(root, 'l.tar.gz');
  fs.writeFileSync(
    file,
    hostileLayer([
      { path: 'd/-first', type: 'File', body: 'kept: same layer as the opaque marker' },
      { path: 'd/.wh..wh..opq', type: 'File' },
      { path: 'd/new', type: 'File', body: 'new' },
      { path: '.wh.gone', type: 'File' },
    ]),
  );
  await applyLayer(file, target);
  t.deepEqual(fs.readdirSync(join(target, 'd')).sort(), ['-first', 'new']);
  t.false(fs.existsSync(join(target, 'gone')));
});

test('zero-filled files survive the round trip', async (t) => {
  const root = await tmp('zeros');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  fs.mkdirSync(join(root, 'tree'));
  fs.writeFileSync(join(root, 'tree/disk.img'), Buffer.alloc(32 << 20));
  const store = new BlobStore(join(root, 'layout'));
  await store.init();
  const layer = await createLayer(join(root, 'tree'), { store });
  t.true(layer.descriptor.size < 1 << 20);
  await applyLayer(store.path(layer.descriptor.digest), join(root, 'out'));
  t.deepEqual(snapshot(join(root, 'out')), snapshot(join(root, 'tree')));
});

test('image write, tag and resolve; accepted by skopeo and umoci', async (t) => {
  const root = await tmp('image');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const base = join(root, 'base');
  const next = join(root, 'next');
  populate(base);
  await execa('cp', ['-a', base, next]);
  fs.writeFileSync(join(next, 'etc/added'), 'added\n');
  fs.rmSync(join(next, 'etc/hostname'));

  const layout = join(root, 'layout');
  const store = new BlobStore(layout);
  await store.init();
  const l1 = await createLayer(base, { store });
  const l2 = await createLayer(next, { store, base });
  const manifest = await writeImage(store, {
    layers: [l1, l2],
    config: { Cmd: ['/usr/bin/tool'], Env: ['PATH=/usr/bin:/bin'], WorkingDir: '/', Labels: { 'io.hybridbox.test': '1' } },
  });
  t.is(manifest.mediaType, MEDIA_TYPES.manifest);
  // Same inputs, same image: the default `created` is pinned.
  t.deepEqual(await writeImage(store, { layers: [l1, l2], config: { Cmd: ['/usr/bin/tool'], Env: ['PATH=/usr/bin:/bin'], WorkingDir: '/', Labels: { 'io.hybridbox.test': '1' } } }), manifest);

  const m = await readManifest(store, manifest);
  t.deepEqual(
    m.layers.map((l) => l.digest),
    [l1.descriptor.digest, l2.descriptor.digest],
  );
  const cfg = await readConfig(store, m);
  t.deepEqual(cfg.rootfs, { type: 'layers', diff_ids: [l1.diffId, l2.diffId] });
  t.is(cfg.architecture, 'amd64');
  t.is(cfg.os, 'linux');

  await tagImage(store, 'v1', manifest);
  await tagImage(store, 'scratch', manifest);
  t.deepEqual((await resolveTag(store, 'v1'))?.digest, manifest.digest);
  t.true(await untag(store, 'scratch'));
  t.false(await untag(store, 'scratch'));
  t.is(await resolveTag(store, 'scratch'), undefined);
  await t.throwsAsync(tagImage(store, '../bad', manifest));
  const index = JSON.parse(fs.readFileSync(join(layout, 'index.json'), 'utf8'));
  t.is(index.manifests.length, 1);
  t.is(index.manifests[0].annotations['org.opencontainers.image.ref.name'], 'v1');

  const { stdout } = await execa('skopeo', ['inspect', `oci:${layout}:v1`]);
  const info = JSON.parse(stdout);
  t.is(info.Digest, manifest.digest);
  t.deepEqual(info.Layers, [l1.descriptor.digest, l2.descriptor.digest]);
  t.is(info.Os, 'linux');
  t.is(info.Architecture, 'amd64');

  const bundle = join(root, 'bundle');
  await execa('umoci', ['unpack', '--image', `${layout}:v1`, bundle]);
  t.deepEqual(snapshot(join(bundle, 'rootfs')), snapshot(next));
});
