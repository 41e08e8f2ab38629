// The S3 registry against real servers: every case runs against s3rver (in this process) and
// against OpenStack Swift with s3api (test/support/swift.ts), when Swift can run here.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { BlobStore, createLayer, readManifest, resolveTag, tagImage, writeImage, type Descriptor, type Layer } from '../src/images/oci/index.js';
import {
  BucketNotFoundError,
  DigestMismatchError,
  EndpointUnreachableError,
  LineProgress,
  RegistryAuthError,
  RegistryConfigError,
  RegistryError,
  RemoteTagNotFoundError,
  TransferAbortedError,
  TtyProgress,
  blobKey,
  openRegistry,
  parseRegistryUrl,
  resolveRegistryConfig,
  tagKey,
  vmDiskPointerKey,
  type ProgressReporter,
  type Registry,
  type RegistryConfigFile,
} from '../src/registry/index.js';
import { startEmbeddedServer } from '../src/registry/embedded.js';
import { S3Remote } from '../src/registry/s3.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

interface S3Server {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  /** Whether a wrong secret (with a known key id) is refused: s3rver checks only the key id. */
  checksSignatures: boolean;
  stop(): Promise<void>;
}

const tmp = (prefix: string) => mkdtemp(join(tmpdir(), `hbx-registry-${prefix}-`));
const cleanups: (() => Promise<unknown>)[] = [];

async function startS3rver(): Promise<S3Server> {
  const dir = await tmp('s3rver');
  const server = await startEmbeddedServer({ dataDir: dir, port: 0 }, ['hbx-test']);
  return {
    endpoint: server.endpoint,
    region: 'us-east-1',
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    bucket: 'hbx-test',
    checksSignatures: false,
    stop: async () => {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Swift, or the reason it cannot run here. */
async function startSwiftServer(): Promise<S3Server | string> {
  if (!existsSync(new URL('./support/swift.ts', import.meta.url))) return 'test/support/swift.ts does not exist';
  try {
    const { startSwift } = (await import('./support/swift.js')) as {
      startSwift: () => Promise<Omit<S3Server, 'checksSignatures'> | undefined>;
    };
    const s = await startSwift();
    if (!s) return 'startSwift() returned no server';
    return { ...s, checksSignatures: true };
  } catch (err) {
    return (err as Error).message.split('\n')[0]!;
  }
}

// Both servers start up front (Swift takes ~10 s), so the cases below can be declared per server.
// (ava wants every test and hook declared after this await, none before.)
const [s3rver, swift] = await Promise.all([startS3rver(), startSwiftServer()]);
test.after.always(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});
cleanups.push(() => s3rver.stop());
if (typeof swift !== 'string') cleanups.push(() => swift.stop());
const servers: { name: string; server: S3Server | string }[] = [
  { name: 's3rver', server: s3rver },
  { name: 'swift', server: swift },
];

// ---------------------------------------------------------------------------
// helpers

let counter = 0;
const uniquePrefix = () => `t${process.pid}-${++counter}-${randomBytes(3).toString('hex')}`;

function configFor(s: S3Server, overrides: RegistryConfigFile = {}, url = `s3://${s.bucket}/${uniquePrefix()}`) {
  return resolveRegistryConfig({}, '/nonexistent-state-root', {
    url,
    overrides: {
      endpoint: s.endpoint,
      region: s.region,
      accessKeyId: s.accessKeyId,
      secretAccessKey: s.secretAccessKey,
      connectTimeoutMs: 1000,
      maxAttempts: 2,
      ...overrides,
    },
  });
}

async function open(t: ExecutionContext, s: S3Server, overrides: RegistryConfigFile = {}, url?: string): Promise<Registry> {
  const r = await openRegistry(configFor(s, overrides, url));
  t.teardown(() => r.close());
  return r;
}

function rawClient(s: S3Server): S3Client {
  return new S3Client({
    endpoint: s.endpoint,
    region: s.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

async function newStore(t: ExecutionContext): Promise<BlobStore> {
  const dir = await tmp('layout');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = new BlobStore(dir);
  await store.init();
  return store;
}

/** A layer holding one file of random (incompressible) bytes. */
async function randomLayer(store: BlobStore, bytes: number): Promise<Layer> {
  const dir = await tmp('rootfs');
  try {
    await mkdir(join(dir, 'data'));
    await writeFile(join(dir, 'data', `blob-${randomBytes(4).toString('hex')}`), randomBytes(bytes));
    return await createLayer(dir, { store });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function makeImage(store: BlobStore, ref: string, layers: Layer[]): Promise<Descriptor> {
  const manifest = await writeImage(store, { layers, config: { Cmd: ['/bin/sh'], Env: [`REF=${ref}`] } });
  await tagImage(store, ref, manifest);
  return manifest;
}

/** Every blob of a tagged image: layers, config, manifest. */
async function imageBlobs(store: BlobStore, manifest: Descriptor): Promise<Descriptor[]> {
  const m = await readManifest(store, manifest);
  return [...m.layers, m.config, manifest];
}

const sumSizes = (ds: Descriptor[]) => ds.reduce((n, d) => n + d.size, 0);

async function tempFilesIn(store: BlobStore): Promise<string[]> {
  return (await readdir(store.layoutDir)).filter((n) => n.startsWith('.tmp-'));
}

/** A reporter that records events and can act on them. */
function recorder(onDone?: (digest: string) => void): ProgressReporter & { events: string[] } {
  const events: string[] = [];
  return {
    events,
    plan: (p) => void events.push(`plan ${p.blobsToTransfer}/${p.bytesToTransfer}`),
    skipped: (b) => void events.push(`skipped ${b.digest}`),
    start: (b) => void events.push(`start ${b.digest}`),
    bytes: () => {},
    done: (b) => {
      events.push(`done ${b.digest}`);
      onDone?.(b.digest);
    },
    finish: (s, err) => void events.push(s ? 'finish ok' : `finish ${(err as Error)?.name}`),
  };
}

async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

// ---------------------------------------------------------------------------
// the same cases against every server

for (const { name, server } of servers) {
  const it = (title: string, fn: (t: ExecutionContext, s: S3Server) => Promise<void>) => {
    if (typeof server === 'string') test.skip(`${name}: ${title} (skipped: ${server})`, () => {});
    else test(`${name}: ${title}`, (t) => fn(t, server));
  };

  it('push then pull into a fresh store gives the same image, blob for blob', async (t, s) => {
    const reg = await open(t, s);
    const src = await newStore(t);
    const manifest = await makeImage(src, 'app:1.0', [await randomLayer(src, 300_000), await randomLayer(src, 50_000)]);
    const blobs = await imageBlobs(src, manifest);

    const pushed = await reg.push({ blobs: src, ref: 'app:1.0' });
    t.is(pushed.blobsUploaded, 4);
    t.is(pushed.bytesUploaded, sumSizes(blobs));
    t.is(pushed.blobsSkipped, 0);
    t.is(pushed.manifest.digest, manifest.digest);
    t.true(pushed.durationMs >= 0);

    const dst = await newStore(t);
    const pulled = await reg.pull({ blobs: dst, ref: 'app:1.0' });
    t.is(pulled.manifest.digest, manifest.digest);
    t.is(pulled.blobsDownloaded, 4);
    t.is(pulled.bytesDownloaded, sumSizes(blobs));
    t.is((await resolveTag(dst, 'app:1.0'))?.digest, manifest.digest);
    for (const b of blobs) {
      t.true(await dst.verify(b.digest), `${b.digest} intact`);
      t.true((await dst.read(b.digest)).equals(await src.read(b.digest)));
    }
    t.deepEqual(await tempFilesIn(dst), []);

    // Everything is there already: nothing moves either way.
    const again = await reg.push({ blobs: src, ref: 'app:1.0' });
    t.is(again.blobsUploaded, 0);
    t.is(again.bytesSkipped, sumSizes(blobs));
    const again2 = await reg.pull({ blobs: dst, ref: 'app:1.0' });
    t.is(again2.blobsDownloaded, 0);
    t.is(again2.blobsSkipped, 4);

    // Under another name, both ways.
    await reg.push({ blobs: src, ref: 'app:1.0', remoteRef: 'team/app:stable' });
    const other = await newStore(t);
    const renamed = await reg.pull({ blobs: other, ref: 'mine:1', remoteRef: 'team/app:stable' });
    t.is((await resolveTag(other, 'mine:1'))?.digest, manifest.digest);
    t.is(renamed.remoteRef, 'team/app:stable');
  });

  it('an image sharing its base layer uploads only its new layer, config and manifest', async (t, s) => {
    const reg = await open(t, s);
    const store = await newStore(t);
    const base = await randomLayer(store, 400_000);
    await makeImage(store, 'base-a:1', [base, await randomLayer(store, 20_000)]);
    const newLayer = await randomLayer(store, 30_000);
    const b = await makeImage(store, 'base-b:1', [base, newLayer]);
    await reg.push({ blobs: store, ref: 'base-a:1' });

    const second = await reg.push({ blobs: store, ref: 'base-b:1' });
    const m = await readManifest(store, b);
    t.is(second.bytesUploaded, newLayer.descriptor.size + m.config.size + b.size);
    t.is(second.blobsUploaded, 3);
    t.is(second.blobsSkipped, 1);
    t.is(second.bytesSkipped, base.descriptor.size);
  });

  it('a corrupt blob on the server is refused on pull: no tag, nothing of it kept', async (t, s) => {
    const reg = await open(t, s);
    const src = await newStore(t);
    const layer = await randomLayer(src, 200_000);
    const manifest = await makeImage(src, 'corrupt:1', [layer]);
    await reg.push({ blobs: src, ref: 'corrupt:1' });

    // Same size, same metadata, other bytes: only hashing the content can tell.
    const url = parseRegistryUrl(reg.url);
    const key = blobKey(url.prefix, layer.descriptor.digest);
    const client = rawClient(s);
    t.teardown(() => client.destroy());
    const head = await client.send(new HeadObjectCommand({ Bucket: url.bucket, Key: key }));
    const bad = randomBytes(layer.descriptor.size);
    await client.send(new PutObjectCommand({ Bucket: url.bucket, Key: key, Body: bad, ContentLength: bad.length, Metadata: head.Metadata }));

    const dst = await newStore(t);
    const err = await t.throwsAsync(reg.pull({ blobs: dst, ref: 'corrupt:1' }), { instanceOf: DigestMismatchError });
    t.true(err!.message.includes(layer.descriptor.digest), err!.message);
    t.false(err!.message.includes('\n'));
    t.is(await resolveTag(dst, 'corrupt:1'), undefined);
    t.false(await dst.has(layer.descriptor.digest));
    t.false(await dst.has(manifest.digest));
    t.deepEqual(await tempFilesIn(dst), []);
  });

  it('an interrupted push, re-run, sends only what is not complete on the server', async (t, s) => {
    // One blob at a time, so the abort lands right after the first one completes.
    const reg = await open(t, s, { concurrency: 1 });
    const store = await newStore(t);
    const layers = [await randomLayer(store, 600_000), await randomLayer(store, 400_000), await randomLayer(store, 200_000)];
    const manifest = await makeImage(store, 'resume:1', layers);
    const all = await imageBlobs(store, manifest);

    const ac = new AbortController();
    const completed: string[] = [];
    const rec = recorder((d) => {
      completed.push(d);
      ac.abort();
    });
    await t.throwsAsync(reg.push({ blobs: store, ref: 'resume:1', progress: rec, signal: ac.signal }), { instanceOf: TransferAbortedError });
    t.is(completed.length, 1);
    t.is(rec.events.at(-1), 'finish TransferAbortedError');

    const url = parseRegistryUrl(reg.url);
    const client = rawClient(s);
    t.teardown(() => client.destroy());
    // The tag is written last, so a reader never saw this image.
    await t.throwsAsync(client.send(new HeadObjectCommand({ Bucket: url.bucket, Key: tagKey(url.prefix, 'resume:1') })));

    // What an interrupted PUT leaves on s3rver: a truncated object, metadata and all.
    const truncated = all.find((d) => d.digest !== completed[0] && d.size > 100_000)!;
    const half = (await store.read(truncated.digest)).subarray(0, truncated.size >> 1);
    await client.send(
      new PutObjectCommand({
        Bucket: url.bucket,
        Key: blobKey(url.prefix, truncated.digest),
        Body: half,
        ContentLength: half.length,
        Metadata: { sha256: truncated.digest.slice(7) },
      }),
    );

    const rerun = await reg.push({ blobs: store, ref: 'resume:1' });
    const first = all.find((d) => d.digest === completed[0])!;
    t.is(rerun.blobsSkipped, 1);
    t.is(rerun.bytesSkipped, first.size);
    t.is(rerun.bytesUploaded, sumSizes(all) - first.size);

    const dst = await newStore(t);
    const pulled = await reg.pull({ blobs: dst, ref: 'resume:1' });
    t.is(pulled.manifest.digest, manifest.digest);
    t.true(await dst.verify(truncated.digest));
  });

  it('a push killed mid-way (SIGKILL) is finished by a re-run that skips the complete blobs', async (t, s) => {
    const store = await newStore(t);
    const layers = [await randomLayer(store, 300_000), await randomLayer(store, 12 * 1024 * 1024)];
    const manifest = await makeImage(store, 'killed:1', layers);
    const all = await imageBlobs(store, manifest);
    const config = configFor(s, { concurrency: 1 });
    // The pusher reports each finished blob on stdout and is killed after the first one (the
    // 12 MiB layer: largest first), most likely while the next PUT is on the wire.
    const child = spawn(
      process.execPath,
      [
        '--import=tsx',
        '--input-type=module',
        '-e',
        `const { openRegistry } = await import(${JSON.stringify(new URL('../src/registry/index.ts', import.meta.url).pathname)});
         const { BlobStore } = await import(${JSON.stringify(new URL('../src/images/oci/index.ts', import.meta.url).pathname)});
         const reg = await openRegistry(JSON.parse(process.env.HBX_TEST_CONFIG));
         const progress = { plan() {}, skipped() {}, start() {}, bytes() {}, finish() {}, done: (b) => process.stdout.write('done ' + b.digest + '\\n') };
         await reg.push({ blobs: new BlobStore(process.env.HBX_TEST_LAYOUT), ref: 'killed:1', progress });
         process.stdout.write('finished\\n');`,
      ],
      { env: { ...process.env, HBX_TEST_CONFIG: JSON.stringify(config), HBX_TEST_LAYOUT: store.layoutDir }, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const done: string[] = [];
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_code, sig) => r(sig)));
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      for (const line of chunk.split('\n')) {
        if (!line.startsWith('done ')) continue;
        done.push(line.slice(5));
        child.kill('SIGKILL');
      }
    });
    t.is(await exited, 'SIGKILL');
    t.is(done.length, 1, 'killed after its first blob');

    const reg = await openRegistry(config);
    t.teardown(() => reg.close());
    const rerun = await reg.push({ blobs: store, ref: 'killed:1' });
    const first = all.find((d) => d.digest === done[0])!;
    t.true(rerun.blobsSkipped >= 1);
    t.true(rerun.bytesUploaded <= sumSizes(all) - first.size, 'the complete blob was not sent again');
    const dst = await newStore(t);
    t.is((await reg.pull({ blobs: dst, ref: 'killed:1' })).manifest.digest, manifest.digest);
    for (const d of all) t.true(await dst.verify(d.digest));
  });

  it('a VM disk travels with its image and lands atomically', async (t, s) => {
    const reg = await open(t, s);
    const src = await newStore(t);
    const manifest = await makeImage(src, 'vm:1', [await randomLayer(src, 10_000)]);
    const dir = await tmp('vmdisk');
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const disk = randomBytes(3 * 1024 * 1024 + 17);
    await writeFile(join(dir, 'base.qcow2'), disk);

    const pushed = await reg.push({ blobs: src, ref: 'vm:1', vmDisk: { path: join(dir, 'base.qcow2') } });
    t.is(pushed.vmDisk?.sizeBytes, disk.length);
    t.true(pushed.vmDisk?.uploaded);

    const url = parseRegistryUrl(reg.url);
    const client = rawClient(s);
    t.teardown(() => client.destroy());
    const pointer = await client.send(new GetObjectCommand({ Bucket: url.bucket, Key: vmDiskPointerKey(url.prefix, manifest.digest) }));
    t.deepEqual(JSON.parse(await pointer.Body!.transformToString()), { digest: pushed.vmDisk!.digest, size: disk.length });

    const dst = await newStore(t);
    const target = join(dir, 'pulled.qcow2');
    const pulled = await reg.pull({ blobs: dst, ref: 'vm:1', vmDiskPath: target });
    t.true(pulled.vmDisk?.downloaded);
    t.true((await readFile(target)).equals(disk)); // (t.deepEqual walks a Buffer byte by byte: seconds for 3 MiB)
    t.deepEqual((await readdir(dir)).sort(), ['base.qcow2', 'pulled.qcow2']);
    const again = await reg.pull({ blobs: dst, ref: 'vm:1', vmDiskPath: target });
    t.false(again.vmDisk?.downloaded);
    t.is(again.blobsDownloaded, 0);
  });

  it('a blob above the multipart threshold goes up in parts and comes back intact', async (t, s) => {
    const reg = await open(t, s, { multipartThresholdMiB: 5, partSizeMiB: 5, queueSize: 2 });
    const src = await newStore(t);
    const big = await randomLayer(src, 11 * 1024 * 1024);
    const manifest = await makeImage(src, 'parts:1', [big]);
    const pushed = await reg.push({ blobs: src, ref: 'parts:1' });
    t.is(pushed.blobsUploaded, 3);
    const dst = await newStore(t);
    await reg.pull({ blobs: dst, ref: 'parts:1' });
    t.is((await resolveTag(dst, 'parts:1'))?.digest, manifest.digest);
    t.true(await dst.verify(big.descriptor.digest));
    // A re-push recognises the multipart object as complete.
    t.is((await reg.push({ blobs: src, ref: 'parts:1' })).blobsUploaded, 0);
  });

  it('a corrupt local blob is not pushed, and not left on the server', async (t, s) => {
    const reg = await open(t, s);
    const store = await newStore(t);
    const layer = await randomLayer(store, 100_000);
    await makeImage(store, 'badlocal:1', [layer]);
    await writeFile(store.path(layer.descriptor.digest), randomBytes(layer.descriptor.size));
    const err = await t.throwsAsync(reg.push({ blobs: store, ref: 'badlocal:1' }), { instanceOf: DigestMismatchError });
    t.true(err!.message.includes(layer.descriptor.digest), err!.message);
    const url = parseRegistryUrl(reg.url);
    const client = rawClient(s);
    t.teardown(() => client.destroy());
    await t.throwsAsync(client.send(new HeadObjectCommand({ Bucket: url.bucket, Key: blobKey(url.prefix, layer.descriptor.digest) })));
    await t.throwsAsync(client.send(new HeadObjectCommand({ Bucket: url.bucket, Key: tagKey(url.prefix, 'badlocal:1') })));
  });

  it('a blob file that is shorter or longer than announced fails the upload at once', async (t, s) => {
    const config = configFor(s);
    const remote = await S3Remote.connect(config, config.endpoint);
    t.teardown(() => remote.destroy());
    const dir = await tmp('short');
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const bytes = randomBytes(100_000);
    await writeFile(join(dir, 'blob'), bytes);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    for (const sizeBytes of [200_000, 50_000]) {
      const t0 = Date.now();
      const err = await t.throwsAsync(
        remote.putBlob({ key: `${config.url.prefix}/x-${sizeBytes}`, open: () => createReadStream(join(dir, 'blob')), sizeBytes, sha256, contentType: 'application/octet-stream', label: 'layer x' }),
        { instanceOf: RegistryError },
      );
      t.regex(err!.message, /changed size/);
      t.true(Date.now() - t0 < 5000, 'the server was not left waiting for the missing bytes');
    }
  });

  it('wrong credentials fail with the auth error', async (t, s) => {
    const store = await newStore(t);
    await makeImage(store, 'auth:1', [await randomLayer(store, 1000)]);
    const wrongKey = await open(t, s, { accessKeyId: 'NOSUCHKEY0000', secretAccessKey: 'wrong-secret' });
    const err = await t.throwsAsync(wrongKey.push({ blobs: store, ref: 'auth:1' }), { instanceOf: RegistryAuthError });
    t.regex(err!.message, /credentials/);
    await t.throwsAsync(wrongKey.pull({ blobs: await newStore(t), ref: 'auth:1' }), { instanceOf: RegistryAuthError });
    if (!s.checksSignatures) {
      t.log(`${name} does not check secrets or signatures: the wrong-secret half is skipped`);
      return;
    }
    const wrongSecret = await open(t, s, { secretAccessKey: `${s.secretAccessKey}x` });
    await t.throwsAsync(wrongSecret.push({ blobs: store, ref: 'auth:1' }), { instanceOf: RegistryAuthError });
  });

  it('a missing bucket is named, for push and pull', async (t, s) => {
    const store = await newStore(t);
    await makeImage(store, 'nobucket:1', [await randomLayer(store, 1000)]);
    const bucket = `hbx-missing-${randomBytes(4).toString('hex')}`;
    const reg = await open(t, s, {}, `s3://${bucket}/x`);
    const err = await t.throwsAsync(reg.push({ blobs: store, ref: 'nobucket:1' }), { instanceOf: BucketNotFoundError });
    t.true(err!.message.includes(bucket));
    await t.throwsAsync(reg.pull({ blobs: await newStore(t), ref: 'nobucket:1' }), { instanceOf: BucketNotFoundError });
  });

  it('pulling a tag the registry does not have fails and tags nothing', async (t, s) => {
    const reg = await open(t, s);
    const dst = await newStore(t);
    const err = await t.throwsAsync(reg.pull({ blobs: dst, ref: 'nosuch:tag' }), { instanceOf: RemoteTagNotFoundError });
    t.true(err!.message.includes('nosuch:tag'));
    t.is(await resolveTag(dst, 'nosuch:tag'), undefined);
  });
}

// ---------------------------------------------------------------------------
// server-independent cases

test('an unreachable endpoint fails fast with a clear error', async (t) => {
  const port = await closedPort();
  const config = resolveRegistryConfig({}, '/nonexistent', {
    url: 's3://bucket/p',
    overrides: { endpoint: `http://127.0.0.1:${port}`, accessKeyId: 'a', secretAccessKey: 'b' },
  });
  const reg = await openRegistry(config);
  t.teardown(() => reg.close());
  const store = await newStore(t);
  await makeImage(store, 'down:1', [await randomLayer(store, 1000)]);
  const t0 = Date.now();
  const err = await t.throwsAsync(reg.push({ blobs: store, ref: 'down:1' }), { instanceOf: EndpointUnreachableError });
  t.true(err!.message.includes(`127.0.0.1:${port}`), err!.message);
  await t.throwsAsync(reg.pull({ blobs: store, ref: 'down:1' }), { instanceOf: EndpointUnreachableError });
  t.true(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
});

test('with no endpoint configured, the embedded server serves push and pull, and keeps the data', async (t) => {
  const root = await tmp('state');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const config = resolveRegistryConfig({ AWS_ACCESS_KEY_ID: 'ignored', AWS_SECRET_ACCESS_KEY: 'ignored' }, root);
  t.is(config.endpoint, undefined);
  t.is(config.embedded?.dataDir, join(root, 's3'));
  t.is(config.url.url, 's3://hybridbox');

  const src = await newStore(t);
  const manifest = await makeImage(src, 'local:1', [await randomLayer(src, 100_000)]);
  const first = await openRegistry(config);
  t.true(first.embedded);
  t.regex(first.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/);
  try {
    await first.push({ blobs: src, ref: 'local:1' });
  } finally {
    await first.close();
  }
  // A later command: a new server process on the same data.
  const second = await openRegistry(config);
  try {
    const dst = await newStore(t);
    const r = await second.pull({ blobs: dst, ref: 'local:1' });
    t.is(r.manifest.digest, manifest.digest);
  } finally {
    await second.close();
  }
});

test('registry URLs and config precedence', async (t) => {
  t.deepEqual(parseRegistryUrl('s3://my-bucket/team/a/'), { bucket: 'my-bucket', prefix: 'team/a', url: 's3://my-bucket/team/a' });
  t.deepEqual(parseRegistryUrl('s3://my-bucket'), { bucket: 'my-bucket', prefix: '', url: 's3://my-bucket' });
  for (const bad of ['http://x/y', 's3://', 's3://UPPER/x', 's3://ok-bucket/../x', 's3://ok-bucket/a b']) {
    const err = t.throws(() => parseRegistryUrl(bad), { instanceOf: RegistryConfigError });
    t.false(err!.message.includes('\n'));
  }

  const root = await tmp('config');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  await writeFile(
    join(root, 'registry.json'),
    JSON.stringify({ url: 's3://from-file/p', endpoint: 'http://127.0.0.1:9000', region: 'eu-west-1', accessKeyId: 'filekey', secretAccessKey: 'filesecret', partSizeMiB: 16 }),
    { mode: 0o600 },
  );
  const fromFile = resolveRegistryConfig({}, root);
  t.is(fromFile.endpoint, 'http://127.0.0.1:9000');
  t.is(fromFile.region, 'eu-west-1');
  t.is(fromFile.credentials.accessKeyId, 'filekey');
  t.is(fromFile.transfer.partSizeMiB, 16);
  t.true(fromFile.forcePathStyle);
  t.is(fromFile.url.bucket, 'from-file');

  const env = {
    AWS_ENDPOINT_URL: 'http://127.0.0.1:1111',
    AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:2222',
    AWS_DEFAULT_REGION: 'ap-south-1',
    AWS_ACCESS_KEY_ID: 'envkey',
    AWS_SECRET_ACCESS_KEY: 'envsecret',
    AWS_SESSION_TOKEN: 'tok',
  };
  const fromEnv = resolveRegistryConfig(env, root, { url: 's3://given/x' });
  t.is(fromEnv.endpoint, 'http://127.0.0.1:2222');
  t.is(fromEnv.region, 'ap-south-1');
  t.deepEqual(fromEnv.credentials, { accessKeyId: 'envkey', secretAccessKey: 'envsecret', sessionToken: 'tok' });
  t.is(fromEnv.url.url, 's3://given/x');
  t.false(resolveRegistryConfig({ ...env, AWS_ENDPOINT_URL_S3: 'https://s3.eu-west-1.amazonaws.com' }, root).forcePathStyle);

  await writeFile(join(root, 'other.json'), JSON.stringify({ endpoint: 'http://127.0.0.1:9', partSize: 3 }), { mode: 0o600 });
  const typo = t.throws(() => resolveRegistryConfig({ HYBRIDBOX_REGISTRY_CONFIG: join(root, 'other.json') }, root), { instanceOf: RegistryConfigError });
  t.regex(typo!.message, /"partSize"/);
  t.throws(() => resolveRegistryConfig({ HYBRIDBOX_REGISTRY_CONFIG: join(root, 'absent.json') }, root), { instanceOf: RegistryConfigError });
  const noCreds = t.throws(() => resolveRegistryConfig({ AWS_ENDPOINT_URL: 'http://127.0.0.1:9' }, '/nonexistent'), { instanceOf: RegistryConfigError });
  t.regex(noCreds!.message, /AWS_ACCESS_KEY_ID/);
});

test('progress: lines for pipes, bars redrawn in place for terminals, the summary alone when quiet', async (t) => {
  const reg = await open(t, s3rver);
  const store = await newStore(t);
  await makeImage(store, 'progress:1', [await randomLayer(store, 50_000)]);
  const sink = () => {
    const out = { text: '', columns: 100, write: (s: string) => void (out.text += s) };
    return out;
  };

  const lines = sink();
  await reg.push({ blobs: store, ref: 'progress:1', progress: new LineProgress(lines) });
  t.regex(lines.text, /^push progress:1 to s3:\/\/\S+: 3 blobs to upload/m);
  t.regex(lines.text, /^uploaded +layer +[0-9a-f]{12} /m);
  t.regex(lines.text, /^pushed progress:1 to s3:\/\/\S+: 3 blobs uploaded/m);
  t.false(lines.text.includes('\x1b'));

  const quiet = sink();
  await reg.push({ blobs: store, ref: 'progress:1', progress: new LineProgress(quiet, true) });
  t.regex(quiet.text, /^pushed progress:1 to \S+: 0 blobs uploaded \(0 B\), 3 already there \([\d.]+ KiB\) in [\d.]+ s\n$/);

  const tty = sink();
  await reg.pull({ blobs: await newStore(t), ref: 'progress:1', progress: new TtyProgress(tty) });
  t.true(tty.text.includes('\x1b['));
  t.regex(tty.text, /total .*\[#+\.*\]/);
  t.regex(tty.text, /pulled progress:1 from \S+: 3 blobs downloaded/);
});
