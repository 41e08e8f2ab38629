import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { Header } from 'tar';
import {
  ArchiveError,
  BlobStore,
  MEDIA_TYPES,
  REF_NAME_ANNOTATION,
  applyLayer,
  createLayer,
  exportArchive,
  importArchive,
  listTags,
  normalizeImageName,
  readConfig,
  readManifest,
  resolveTag,
  tagImage,
  writeImage,
  type Descriptor,
} from '../src/images/oci/index.js';
import { ImageNotFoundError } from '../src/errors.js';

// Fixtures built once by the real tools: an umoci layout, a buildah image pushed as
// oci-archive and docker-archive, and skopeo's docker-archive of the umoci image.
interface Fixtures {
  root: string;
  umociLayout: string;
  umociManifest: Descriptor;
  buildahOci: string;
  buildahDocker: string;
  buildahImageId: string;
  skopeoDocker: string;
}

let fx: Fixtures;
const sha256 = (buf: Buffer | string) => `sha256:${createHash('sha256').update(buf).digest('hex')}`;
const json = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8'));

test.before(async () => {
  const root = await mkdtemp(join(tmpdir(), 'hbx-archive-'));
  const rootfs = join(root, 'rootfs');
  fs.mkdirSync(join(rootfs, 'etc'), { recursive: true });
  fs.mkdirSync(join(rootfs, 'bin'));
  fs.writeFileSync(join(rootfs, 'etc/greeting'), 'hello from umoci\n');
  fs.writeFileSync(join(rootfs, 'bin/tool'), '#!/bin/sh\necho tool\n', { mode: 0o755 });

  const umociLayout = join(root, 'umoci');
  await execa('umoci', ['init', '--layout', umociLayout]);
  await execa('umoci', ['new', '--image', `${umociLayout}:t1`]);
  await execa('umoci', ['insert', '--image', `${umociLayout}:t1`, rootfs, '/']);
  await execa('umoci', ['config', '--image', `${umociLayout}:t1`, '--config.cmd', '/bin/tool', '--config.env', 'FOO=bar']);
  const umociManifest = json(join(umociLayout, 'index.json')).manifests[0] as Descriptor;

  const skopeoDocker = join(root, 'skopeo-docker.tar');
  await execa('skopeo', ['copy', `oci:${umociLayout}:t1`, `docker-archive:${skopeoDocker}:umoci/img:2`]);

  // buildah with a private store, so the host's containers storage is never touched.
  const b = ['--root', join(root, 'buildah'), '--runroot', join(root, 'buildah-run'), '--storage-driver', 'vfs'];
  const src = join(root, 'app.txt');
  fs.writeFileSync(src, 'built by buildah\n');
  const ctr = (await execa('buildah', [...b, 'from', 'scratch'])).stdout.trim();
  await execa('buildah', [...b, 'copy', ctr, src, '/etc/app.txt']);
  await execa('buildah', [...b, 'config', '--cmd', '/bin/app --flag', '--env', 'A=1', ctr]);
  await execa('buildah', [...b, 'commit', '--quiet', ctr, 'bimg:1']);
  await execa('buildah', [...b, 'rm', ctr]);
  const buildahImageId = (await execa('buildah', [...b, 'inspect', '--type', 'image', '--format', '{{.FromImageID}}', 'bimg:1'])).stdout.trim();
  const buildahOci = join(root, 'buildah-oci.tar');
  const buildahDocker = join(root, 'buildah-docker.tar');
  await execa('buildah', [...b, 'push', '--quiet', 'bimg:1', `oci-archive:${buildahOci}:bname:btag`]);
  await execa('buildah', [...b, 'push', '--quiet', 'bimg:1', `docker-archive:${buildahDocker}:bname:btag`]);
  await execa('buildah', [...b, 'rmi', '--all', '--force']);

  fx = { root, umociLayout, umociManifest, buildahOci, buildahDocker, buildahImageId, skopeoDocker };
});

test.after.always(async () => {
  if (fx) await rm(fx.root, { recursive: true, force: true });
});

async function freshStore(name: string): Promise<BlobStore> {
  const store = new BlobStore(await mkdtemp(join(fx.root, `store-${name}-`)));
  await store.init();
  return store;
}

/** A directory made into a tar archive by GNU tar (entries start with `./`). */
async function tarDir(dir: string, out: string, gzip = false): Promise<string> {
  await execa('tar', ['-C', dir, gzip ? '-czf' : '-cf', out, '.']);
  return out;
}

async function untar(file: string, name: string): Promise<string> {
  const dir = await mkdtemp(join(fx.root, `${name}-`));
  await execa('tar', ['-C', dir, '-xf', file]);
  return dir;
}

/** Applies the image's layers in order and returns the directory. */
async function unpack(store: BlobStore, manifest: Descriptor, name: string): Promise<string> {
  const target = join(await mkdtemp(join(fx.root, `rootfs-${name}-`)), 'rootfs');
  for (const l of (await readManifest(store, manifest)).layers) await applyLayer(store.path(l.digest), target);
  return target;
}

/** What every import must leave: no staging directory or temp file in the layout. */
function layoutEntries(store: BlobStore): string[] {
  return fs.readdirSync(store.layoutDir).sort();
}

test('umoci image as a gzip OCI archive: needs a name, then imports byte for byte', async (t) => {
  const store = await freshStore('umoci');
  const archive = await tarDir(fx.umociLayout, join(fx.root, 'umoci.tgz'), true);

  // umoci's ref.name is the bare tag "t1": it names no image.
  const unnamed = await t.throwsAsync(importArchive(store, archive), { instanceOf: ArchiveError });
  t.regex(unnamed!.message, /does not name its image; pass a name with --tag/);
  t.notRegex(unnamed!.message, /\n/);
  t.deepEqual(await listTags(store), []);
  t.deepEqual(fs.readdirSync(store.blobsDir), []);

  const { format, images } = await importArchive(store, archive, { ref: 'umoci/img:1' });
  t.is(format, 'oci');
  t.deepEqual(
    images.map((i) => i.ref),
    ['umoci/img:1'],
  );
  t.is(images[0]!.manifest.digest, fx.umociManifest.digest);
  t.is((await resolveTag(store, 'umoci/img:1'))?.digest, fx.umociManifest.digest);

  const manifest = await readManifest(store, images[0]!.manifest);
  const original = json(join(fx.umociLayout, 'blobs/sha256', fx.umociManifest.digest.slice(7)));
  t.deepEqual(
    manifest.layers.map((l) => l.digest),
    original.layers.map((l: Descriptor) => l.digest),
  );
  for (const l of manifest.layers) t.true(await store.verify(l.digest));
  const config = await readConfig(store, manifest);
  t.deepEqual(config.config.Cmd, ['/bin/tool']);
  t.true(config.config.Env?.includes('FOO=bar'));
  t.is(config.rootfs.diff_ids.length, manifest.layers.length);

  const rootfs = await unpack(store, images[0]!.manifest, 'umoci');
  t.is(fs.readFileSync(join(rootfs, 'etc/greeting'), 'utf8'), 'hello from umoci\n');
  t.is(fs.statSync(join(rootfs, 'bin/tool')).mode & 0o777, 0o755);
  t.deepEqual(layoutEntries(store), ['blobs', 'index.json', 'oci-layout']);
});

test('buildah oci-archive imports under its name with its config and layers', async (t) => {
  const store = await freshStore('buildah-oci');
  const { format, images } = await importArchive(store, fx.buildahOci);
  t.is(format, 'oci');
  t.deepEqual(
    images.map((i) => i.ref),
    ['bname:btag'],
  );
  const inspected = JSON.parse((await execa('skopeo', ['inspect', `oci-archive:${fx.buildahOci}`])).stdout);
  t.is(images[0]!.manifest.digest, inspected.Digest);

  const manifest = await readManifest(store, images[0]!.manifest);
  t.deepEqual(
    manifest.layers.map((l) => l.digest),
    inspected.Layers,
  );
  t.is(manifest.config.digest, `sha256:${fx.buildahImageId}`);
  const config = await readConfig(store, manifest);
  t.deepEqual(config.config.Cmd, ['/bin/app', '--flag']);
  t.true(config.config.Env?.includes('A=1'));
  const rootfs = await unpack(store, images[0]!.manifest, 'buildah-oci');
  t.is(fs.readFileSync(join(rootfs, 'etc/app.txt'), 'utf8'), 'built by buildah\n');
});

test('buildah docker-archive: every RepoTag, normalized; uncompressed layers whose digest is the diff_id', async (t) => {
  const store = await freshStore('buildah-docker');
  const { format, images } = await importArchive(store, fx.buildahDocker);
  t.is(format, 'docker');
  // RepoTags are docker.io/library/bname:btag and localhost/bimg:1.
  t.deepEqual(images.map((i) => i.ref).sort(), ['bimg:1', 'bname:btag']);
  t.is(images[0]!.manifest.digest, images[1]!.manifest.digest);

  const manifest = await readManifest(store, images[0]!.manifest);
  t.is(manifest.mediaType, MEDIA_TYPES.manifest);
  t.is(manifest.config.mediaType, MEDIA_TYPES.config);
  t.is(manifest.config.digest, `sha256:${fx.buildahImageId}`);
  const config = await readConfig(store, manifest);
  t.deepEqual(
    manifest.layers.map((l) => l.mediaType),
    [MEDIA_TYPES.layerTar],
  );
  t.deepEqual(
    manifest.layers.map((l) => l.digest),
    config.rootfs.diff_ids,
  );
  t.deepEqual(config.config.Cmd, ['/bin/app', '--flag']);
  const rootfs = await unpack(store, images[0]!.manifest, 'buildah-docker');
  t.is(fs.readFileSync(join(rootfs, 'etc/app.txt'), 'utf8'), 'built by buildah\n');

  // The same archive imported twice gives the same manifest: the conversion is deterministic.
  const again = await importArchive(await freshStore('buildah-docker-2'), fx.buildahDocker);
  t.is(again.images[0]!.manifest.digest, images[0]!.manifest.digest);
});

test('skopeo docker-archive of the umoci image: same config and layer content', async (t) => {
  const store = await freshStore('skopeo-docker');
  const { images } = await importArchive(store, fx.skopeoDocker);
  t.deepEqual(
    images.map((i) => i.ref),
    ['umoci/img:2'],
  );
  const manifest = await readManifest(store, images[0]!.manifest);
  const original = json(join(fx.umociLayout, 'blobs/sha256', fx.umociManifest.digest.slice(7)));
  t.is(manifest.config.digest, original.config.digest);
  const config = await readConfig(store, manifest);
  t.deepEqual(
    manifest.layers.map((l) => l.digest),
    config.rootfs.diff_ids,
  );
  t.deepEqual(config.config.Cmd, ['/bin/tool']);
  const rootfs = await unpack(store, images[0]!.manifest, 'skopeo-docker');
  t.is(fs.readFileSync(join(rootfs, 'etc/greeting'), 'utf8'), 'hello from umoci\n');

  // A --tag replaces the archive's names.
  const renamed = await importArchive(await freshStore('skopeo-renamed'), fx.skopeoDocker, { ref: 'docker.io/library/other' });
  t.deepEqual(
    renamed.images.map((i) => i.ref),
    ['other:latest'],
  );
});

test('export: skopeo inspects it, podman loads it (OCI and docker formats), output is reproducible', async (t) => {
  const store = await freshStore('export');
  await importArchive(store, await tarDir(fx.umociLayout, join(fx.root, 'umoci-plain.tar')), { ref: 'umoci/img:1' });
  await importArchive(store, fx.buildahDocker);

  const oci = join(fx.root, 'export-oci.tar');
  const res = await exportArchive(store, ['umoci/img:1'], oci);
  t.deepEqual(
    res.images.map((i) => i.ref),
    ['umoci/img:1'],
  );
  t.is(res.images[0]!.manifest.digest, fx.umociManifest.digest);
  t.is(res.bytes, fs.statSync(oci).size);
  const inspected = JSON.parse((await execa('skopeo', ['inspect', `oci-archive:${oci}`])).stdout);
  t.is(inspected.Digest, fx.umociManifest.digest);
  const manifest = await readManifest(store, res.images[0]!.manifest);
  t.deepEqual(
    inspected.Layers,
    manifest.layers.map((l) => l.digest),
  );
  t.is(inspected.Architecture, 'amd64');
  // Only the blobs this image needs are in the archive.
  const listed = (await execa('tar', ['-tf', oci])).stdout.split('\n').filter((p) => p.startsWith('blobs/sha256/') && p.length > 13);
  t.is(listed.length, 2 + manifest.layers.length);

  const again = join(fx.root, 'export-oci-2.tar');
  await exportArchive(store, ['umoci/img:1'], again);
  t.is(sha256(fs.readFileSync(again)), sha256(fs.readFileSync(oci)));

  const docker = join(fx.root, 'export-docker.tar');
  await exportArchive(store, ['umoci/img:1', 'bname:btag', 'bimg:1'], docker, { format: 'docker' });
  const dockerInspect = JSON.parse((await execa('skopeo', ['inspect', `docker-archive:${docker}:umoci/img:1`])).stdout);
  t.deepEqual(dockerInspect.Layers, (await readConfig(store, manifest)).rootfs.diff_ids);

  // podman with a private store; removed at the end, the host's podman store stays untouched.
  const p = [
    '--root',
    join(fx.root, 'podman'),
    '--runroot',
    join(fx.root, 'podman-run'),
    '--tmpdir',
    join(fx.root, 'podman-tmp'),
    '--storage-driver',
    'vfs',
    '--events-backend',
    'none',
    '--cgroup-manager',
    'cgroupfs',
  ];
  t.teardown(() => rm(join(fx.root, 'podman'), { recursive: true, force: true }));
  const podmanInspect = async (ref: string) => JSON.parse((await execa('podman', [...p, 'image', 'inspect', ref])).stdout)[0];

  t.regex((await execa('podman', [...p, 'load', '-i', oci])).stdout, /Loaded image: localhost\/umoci\/img:1/);
  const loaded = await podmanInspect('localhost/umoci/img:1');
  t.is(`sha256:${loaded.Id}`, manifest.config.digest);
  t.is(loaded.Digest, fx.umociManifest.digest);
  t.deepEqual(loaded.Config.Cmd, ['/bin/tool']);
  await execa('podman', [...p, 'rmi', 'localhost/umoci/img:1']);

  const dockerLoad = (await execa('podman', [...p, 'load', '-i', docker])).stdout;
  t.regex(dockerLoad, /umoci\/img:1/);
  t.regex(dockerLoad, /bname:btag/);
  t.is(`sha256:${(await podmanInspect('umoci/img:1')).Id}`, manifest.config.digest);
  const bimg = await podmanInspect('bimg:1');
  t.is(bimg.Id, fx.buildahImageId);
  t.deepEqual(bimg.Config.Cmd, ['/bin/app', '--flag']);
  await execa('podman', [...p, 'rmi', '--all', '--force']);
  t.is((await execa('podman', [...p, 'images', '-q'])).stdout.trim(), '');
});

test('round trip: export then import into a fresh store gives the same manifest', async (t) => {
  const store = await freshStore('rt-src');
  const [imported] = (await importArchive(store, fx.buildahOci)).images;
  const oci = join(fx.root, 'rt.tar');
  await exportArchive(store, ['bname:btag'], oci);
  const back = await importArchive(await freshStore('rt-dst'), oci);
  t.deepEqual(back.images, [{ ref: 'bname:btag', manifest: imported!.manifest }]);

  // docker-archive holds uncompressed layers: the config (image id) survives; an image whose
  // layers are already uncompressed survives whole.
  const docker = join(fx.root, 'rt-docker.tar');
  await exportArchive(store, ['bname:btag'], docker, { format: 'docker' });
  const fromDocker = await importArchive(await freshStore('rt-docker'), docker);
  const m = await readManifest(store, imported!.manifest);
  const dstStore = await freshStore('rt-docker-2');
  const again = await importArchive(dstStore, docker);
  t.is(again.images[0]!.manifest.digest, fromDocker.images[0]!.manifest.digest);
  t.is((await readManifest(dstStore, again.images[0]!.manifest)).config.digest, m.config.digest);

  const dockerStore = await freshStore('rt-docker-src');
  const [fromBuildahDocker] = (await importArchive(dockerStore, fx.buildahDocker)).images;
  const docker2 = join(fx.root, 'rt-docker-2.tar');
  await exportArchive(dockerStore, ['bname:btag'], docker2, { format: 'docker' });
  t.is((await importArchive(await freshStore('rt-docker-dst'), docker2)).images[0]!.manifest.digest, fromBuildahDocker!.manifest.digest);
});

test('a corrupted blob fails the import naming the blob, and leaves no tag and no blob', async (t) => {
  // OCI: one byte of the gzip layer changed, same size.
  const dir = await untar(fx.buildahOci, 'corrupt-oci');
  const manifest = json(join(dir, 'index.json')).manifests[0] as Descriptor;
  const layer = json(join(dir, 'blobs/sha256', manifest.digest.slice(7))).layers[0] as Descriptor;
  const layerFile = join(dir, 'blobs/sha256', layer.digest.slice(7));
  const bytes = fs.readFileSync(layerFile);
  bytes[bytes.length - 10]! ^= 0xff;
  fs.writeFileSync(layerFile, bytes);
  const store = await freshStore('corrupt');
  const err = await t.throwsAsync(importArchive(store, await tarDir(dir, join(fx.root, 'corrupt-oci.tar'))), { instanceOf: ArchiveError });
  t.true(err!.message.includes(layer.digest.slice(7)));
  t.regex(err!.message, /corrupt/);
  t.is(err!.exitCode, 125);
  t.deepEqual(await listTags(store), []);
  t.deepEqual(fs.readdirSync(store.blobsDir), []);
  t.deepEqual(layoutEntries(store), ['blobs', 'index.json', 'oci-layout']);

  // A blob the manifest needs but the archive lacks.
  fs.rmSync(layerFile);
  const missing = await t.throwsAsync(importArchive(store, await tarDir(dir, join(fx.root, 'missing-oci.tar'))), { instanceOf: ArchiveError });
  t.regex(missing!.message, new RegExp(`layer ${layer.digest} is missing`));

  // docker-archive: the layer's content no longer matches the config's diff_id.
  const ddir = await untar(fx.buildahDocker, 'corrupt-docker');
  const entry = json(join(ddir, 'manifest.json'))[0];
  const tarPath = join(ddir, entry.Layers[0]);
  const tarBytes = fs.readFileSync(tarPath);
  const at = tarBytes.indexOf('built by buildah');
  t.true(at > 0);
  tarBytes.write('BUILT', at);
  fs.writeFileSync(tarPath, tarBytes);
  const derr = await t.throwsAsync(importArchive(store, await tarDir(ddir, join(fx.root, 'corrupt-docker.tar'))), { instanceOf: ArchiveError });
  t.regex(derr!.message, new RegExp(`layer ${entry.Layers[0]} is corrupt`));
  t.deepEqual(await listTags(store), []);
  t.deepEqual(fs.readdirSync(store.blobsDir), []);
  t.deepEqual(layoutEntries(store), ['blobs', 'index.json', 'oci-layout']);
});

/** A tar written entry by entry; node-tar's Header does no path sanitising on encode. */
function rawTar(entries: { path: string; body?: string; linkpath?: string }[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    const h = Buffer.alloc(512);
    const type = e.linkpath !== undefined ? 'SymbolicLink' : 'File';
    new Header({ path: e.path, type, mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: new Date(0), linkpath: e.linkpath ?? '' }).encode(h, 0);
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

test('entries that point outside the archive are refused', async (t) => {
  const store = await freshStore('traversal');
  const layout = { path: 'oci-layout', body: '{"imageLayoutVersion":"1.0.0"}' };
  const cases: [string, Buffer][] = [
    ['dotdot', rawTar([layout, { path: '../evil', body: 'x' }])],
    ['absolute', rawTar([layout, { path: '/tmp/evil', body: 'x' }])],
    ['symlink', rawTar([layout, { path: `blobs/sha256/${'a'.repeat(64)}`, linkpath: '../../../etc/passwd' }])],
  ];
  for (const [name, buf] of cases) {
    const file = join(fx.root, `traversal-${name}.tar`);
    fs.writeFileSync(file, buf);
    const err = await t.throwsAsync(importArchive(store, file), { instanceOf: ArchiveError }, name);
    t.regex(err!.message, /points outside the archive/, name);
  }
  t.false(fs.existsSync(join(fx.root, 'evil')));
  t.deepEqual(await listTags(store), []);
  t.deepEqual(layoutEntries(store), ['blobs', 'index.json', 'oci-layout']);
});

test('files that are not image archives get one-line errors', async (t) => {
  const store = await freshStore('garbage');
  const write = (name: string, buf: Buffer | string) => {
    const file = join(fx.root, name);
    fs.writeFileSync(file, buf);
    return file;
  };
  const cases: [string, RegExp][] = [
    [write('garbage.bin', 'this is not a tar archive at all\n'.repeat(64)), /is not a tar archive/],
    [write('empty.tar', ''), /is empty/],
    [write('zstd.tar.zst', Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4])), /zstd-compressed/],
    [write('truncated.tgz', fs.readFileSync(await tarDir(fx.umociLayout, join(fx.root, 'whole.tgz'), true)).subarray(0, 300)), /gzip|tar/],
    [write('other.tar', rawTar([{ path: 'README', body: 'hi' }])), /neither an OCI archive .* nor a docker-archive/],
    [join(fx.root, 'does-not-exist.tar'), /cannot read archive/],
  ];
  for (const [file, re] of cases) {
    const err = await t.throwsAsync(importArchive(store, file), { instanceOf: ArchiveError }, file);
    t.regex(err!.message, re, file);
    t.notRegex(err!.message, /\n/);
  }
  t.deepEqual(await listTags(store), []);
  t.deepEqual(layoutEntries(store), ['blobs', 'index.json', 'oci-layout']);
});

test('image indexes: linux/amd64 is picked from a nested index; other-only and unsupported layers are refused', async (t) => {
  // An OCI layout made by hand with our own writer: an amd64 image and an arm64 one.
  const tree = join(fx.root, 'idx-tree');
  fs.mkdirSync(join(tree, 'etc'), { recursive: true });
  fs.writeFileSync(join(tree, 'etc/platform'), 'amd64\n');
  const make = async (name: string, mutate: (l: BlobStore, amd64: Descriptor, arm64: Descriptor) => Promise<Descriptor[]>) => {
    const l = new BlobStore(join(fx.root, `idx-${name}`));
    await l.init();
    const layer = await createLayer(tree, { store: l });
    const amd64 = await writeImage(l, { layers: [layer], config: { Cmd: ['/bin/true'] } });
    const armConfig = await l.putBytes(JSON.stringify({ architecture: 'arm64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [layer.diffId] } }), MEDIA_TYPES.config);
    const arm64 = await l.putBytes(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.manifest, config: armConfig, layers: [layer.descriptor] }), MEDIA_TYPES.manifest);
    const top = await mutate(l, amd64, arm64);
    fs.writeFileSync(l.indexPath, JSON.stringify({ schemaVersion: 2, manifests: top }));
    return { file: await tarDir(l.layoutDir, join(fx.root, `idx-${name}.tar`)), amd64 };
  };
  const named = (d: Descriptor, ref = 'multi:1') => ({ ...d, annotations: { [REF_NAME_ANNOTATION]: ref } });
  const platform = (d: Descriptor, architecture: string) => ({ ...d, platform: { os: 'linux', architecture } });
  const nested = async (l: BlobStore, manifests: object[]) => l.putBytes(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.index, manifests }), MEDIA_TYPES.index);

  const multi = await make('multi', async (l, amd64, arm64) => [named(await nested(l, [platform(arm64, 'arm64'), platform(amd64, 'amd64')]))]);
  const store = await freshStore('index');
  const { images } = await importArchive(store, multi.file);
  t.deepEqual(images, [{ ref: 'multi:1', manifest: multi.amd64 }]);
  const rootfs = await unpack(store, images[0]!.manifest, 'index');
  t.is(fs.readFileSync(join(rootfs, 'etc/platform'), 'utf8'), 'amd64\n');

  const armOnly = await make('arm', async (l, _amd64, arm64) => [named(await nested(l, [platform(arm64, 'arm64')]))]);
  const other = await freshStore('index-arm');
  const err = await t.throwsAsync(importArchive(other, armOnly.file), { instanceOf: ArchiveError });
  t.regex(err!.message, /has no linux\/amd64 image \(it has linux\/arm64\)/);
  const plainArm = await make('arm-plain', async (_l, _amd64, arm64) => [named(arm64)]);
  t.regex((await t.throwsAsync(importArchive(other, plainArm.file)))!.message, /is a linux\/arm64 image/);

  const zstd = await make('zstd', async (l, amd64) => {
    const m = await readManifest(l, amd64);
    const layers = m.layers.map((x) => ({ ...x, mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' }));
    return [named(await l.putBytes(JSON.stringify({ ...m, layers }), MEDIA_TYPES.manifest))];
  });
  t.regex((await t.throwsAsync(importArchive(other, zstd.file), { instanceOf: ArchiveError }))!.message, /unsupported media type "application\/vnd\.oci\.image\.layer\.v1\.tar\+zstd"/);
  t.deepEqual(await listTags(other), []);
  t.deepEqual(fs.readdirSync(other.blobsDir), []);

  // Several images: each under its own name; one --tag cannot name them all.
  const two = await make('two', async (l, amd64) => {
    const second = await writeImage(l, { layers: [await createLayer(tree, { store: l })], config: { Cmd: ['/bin/false'] } });
    return [named(amd64, 'a:1'), named(amd64, 'a:2'), named(second, 'b:1')];
  });
  const both = await importArchive(await freshStore('index-two'), two.file);
  t.deepEqual(
    both.images.map((i) => i.ref),
    ['a:1', 'a:2', 'b:1'],
  );
  t.is(both.images[0]!.manifest.digest, both.images[1]!.manifest.digest);
  t.not(both.images[0]!.manifest.digest, both.images[2]!.manifest.digest);
  t.regex((await t.throwsAsync(importArchive(other, two.file, { ref: 'x:1' }), { instanceOf: ArchiveError }))!.message, /holds 2 images/);
  t.deepEqual(await listTags(other), []);
});

test('export refuses unknown images and a corrupt store, leaving no file', async (t) => {
  const store = await freshStore('export-fail');
  await importArchive(store, fx.buildahOci);
  const outDir = await mkdtemp(join(fx.root, 'out-'));
  const target = join(outDir, 'image.tar');
  await t.throwsAsync(exportArchive(store, ['nope:1'], target), { instanceOf: ImageNotFoundError });
  await t.throwsAsync(exportArchive(store, [], target), { instanceOf: ArchiveError });
  await t.throwsAsync(exportArchive(store, ['bname:btag'], join(outDir, 'no/such/dir.tar')), { instanceOf: ArchiveError });

  const manifest = await readManifest(store, (await resolveTag(store, 'bname:btag'))!);
  const layerPath = store.path(manifest.layers[0]!.digest);
  const bytes = fs.readFileSync(layerPath);
  bytes[bytes.length - 10]! ^= 0xff;
  fs.writeFileSync(layerPath, bytes);
  for (const format of ['oci', 'docker'] as const) {
    const err = await t.throwsAsync(exportArchive(store, ['bname:btag'], target, { format }), { instanceOf: ArchiveError });
    t.regex(err!.message, new RegExp(`blob ${manifest.layers[0]!.digest}|not a valid gzip|gzip`), format);
  }
  t.deepEqual(fs.readdirSync(outDir), []);
});

test('names from archives become local refs', (t) => {
  const pinned = `app@sha256:${'a'.repeat(64)}`;
  const cases: [string, string][] = [
    ['docker.io/library/busybox', 'busybox:latest'],
    ['docker.io/library/busybox:1.36', 'busybox:1.36'],
    ['docker.io/me/app:2', 'me/app:2'],
    ['localhost/app:1', 'app:1'],
    ['quay.io/org/app:3', 'quay.io/org/app:3'],
    ['localhost:5000/app', 'localhost:5000/app:latest'],
    [pinned, pinned],
  ];
  for (const [name, ref] of cases) t.is(normalizeImageName(name), ref, name);
});

test('tagImage refs from an import resolve like any other tag', async (t) => {
  // An image imported by name can be re-tagged and exported under the new name.
  const store = await freshStore('retag');
  const [img] = (await importArchive(store, fx.buildahOci)).images;
  await tagImage(store, 'copy:1', img!.manifest);
  const out = join(fx.root, 'retag.tar');
  const res = await exportArchive(store, ['copy:1', 'bname:btag', 'copy:1'], out);
  t.deepEqual(
    res.images.map((i) => i.ref),
    ['copy:1', 'bname:btag'],
  );
  const index = JSON.parse((await execa('tar', ['-xOf', out, 'index.json'])).stdout);
  t.deepEqual(
    index.manifests.map((d: Descriptor) => d.annotations?.[REF_NAME_ANNOTATION]),
    ['copy:1', 'bname:btag'],
  );
  const back = await importArchive(await freshStore('retag-back'), out);
  t.deepEqual(
    back.images.map((i) => i.ref),
    ['copy:1', 'bname:btag'],
  );
});

test('applyLayer takes a layer that ends right after its last file (umoci 0.4), never one cut inside it', async (t) => {
  const dir = await mkdtemp(join(fx.root, 'short-'));
  const whole = rawTar([{ path: 'etc/motd', body: 'hello\n' }]);
  const dataEnd = 512 + 'hello\n'.length;
  const cases: [string, Buffer, boolean][] = [
    ['no padding, no trailer', whole.subarray(0, dataEnd), true],
    ['gzip, no padding, no trailer', gzipSync(whole.subarray(0, dataEnd)), true],
    ['cut inside the data', whole.subarray(0, dataEnd - 2), false],
    ['gzip, cut inside the data', gzipSync(whole.subarray(0, dataEnd - 2)), false],
  ];
  for (const [name, buf, ok] of cases) {
    const file = join(dir, `${name}.tar`);
    fs.writeFileSync(file, buf);
    const target = join(dir, `${name}-out`);
    if (ok) {
      await applyLayer(file, target);
      t.is(fs.readFileSync(join(target, 'etc/motd'), 'utf8'), 'hello\n', name);
    } else {
      await t.throwsAsync(applyLayer(file, target), { message: /truncated/ }, name);
    }
  }
});
