// Registry throughput benchmark: push and pull of an image of random (incompressible) layers
// through hybridbox's S3 registry, next to `rclone copy` of the same bytes up and down against
// the same server, interleaved; and the wall time of pushing the unchanged image again.
// See benchmarks/README.md.
//
//   node dist/benchmarks/registry.js [--size-mib N] [--layers N] [--rounds N] [--server s3rver|swift|url] [--url s3://b/p] [--json]
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { link, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { Header } from 'tar';
import { BlobStore, tagImage, writeImage, type Layer } from '../src/images/oci/index.js';
import { startEmbeddedServer } from '../src/registry/embedded.js';
import { openRegistry, resolveRegistryConfig, type Registry } from '../src/registry/index.js';
import { packageRoot } from '../src/util/paths.js';

const MiB = 1024 * 1024;
const SERVERS = ['s3rver', 'swift', 'url'] as const;
type ServerKind = (typeof SERVERS)[number];
const SCENARIOS = ['hybridbox-push', 'rclone-up', 'hybridbox-pull', 'rclone-down'] as const;
type Scenario = (typeof SCENARIOS)[number];

class BenchError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

interface Options {
  sizeMiB: number;
  layers: number;
  rounds: number;
  server: ServerKind;
  url: string | undefined;
  json: boolean;
}

const USAGE =
  'usage: node dist/benchmarks/registry.js [--size-mib N (512)] [--layers N (4)] [--rounds N (2)] [--server s3rver|swift|url (s3rver)] [--url s3://BUCKET/PREFIX (with --server url)] [--json]';

function parseOptions(argv: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        'size-mib': { type: 'string', default: '512' },
        layers: { type: 'string', default: '4' },
        rounds: { type: 'string', default: '2' },
        server: { type: 'string', default: 's3rver' },
        url: { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (e) {
    throw new BenchError(`${(e as Error).message}\n${USAGE}`, 2);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const int = (name: string, s: string, min: number, max: number) => {
    if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max) throw new BenchError(`--${name}: "${s}" is not valid; allowed: an integer from ${min} to ${max}`, 2);
    return Number(s);
  };
  if (!(SERVERS as readonly string[]).includes(values.server)) throw new BenchError(`--server: "${values.server}" is not valid; allowed: ${SERVERS.join(', ')}`, 2);
  const server = values.server as ServerKind;
  if (server === 'url' && !values.url) throw new BenchError('--server url needs --url s3://BUCKET/PREFIX (endpoint and credentials from AWS_* variables)', 2);
  const opts = {
    sizeMiB: int('size-mib', values['size-mib'], 1, 64 * 1024),
    layers: int('layers', values.layers, 1, 64),
    rounds: int('rounds', values.rounds, 1, 100),
    server,
    url: values.url,
    json: values.json,
  };
  if (opts.sizeMiB < opts.layers) throw new BenchError('--size-mib must be at least --layers (1 MiB a layer)', 2);
  return opts;
}

// ---------------------------------------------------------------------------------------
// The S3 server

interface Server {
  kind: ServerKind;
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** s3://bucket/prefix under which this run writes (a fresh prefix per round below it). */
  url: string;
  stop(): Promise<void>;
}

/** Child mode: serves s3rver on 127.0.0.1 until stdin closes (the benchmark ended or died). */
async function serveS3rver(dir: string): Promise<void> {
  const server = await startEmbeddedServer({ dataDir: dir, port: 0 }, ['bench']);
  process.stdout.write(`${JSON.stringify({ endpoint: server.endpoint })}\n`);
  process.stdin.resume();
  process.stdin.on('close', () => void server.stop().then(() => process.exit(0)));
}

/** s3rver in its own process: neither client shares an event loop with the server. */
async function startS3rverProcess(work: string): Promise<Server> {
  const dir = join(work, 's3rver');
  const child: ChildProcess = spawn(process.execPath, [...process.execArgv, process.argv[1]!, '--internal-s3rver', dir], { stdio: ['pipe', 'pipe', 'inherit'] });
  const endpoint = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n')) resolve((JSON.parse(line!) as { endpoint: string }).endpoint);
    });
    child.on('exit', (code) => reject(new BenchError(`the s3rver process exited (${code}) before it served`)));
  });
  return {
    kind: 's3rver',
    endpoint,
    region: 'us-east-1',
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    url: 's3://bench/run',
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.stdin!.end();
      await exited;
    },
  };
}

/** Swift with s3api through scripts/swift-s3.sh (docs/testing-s3.md). */
async function startSwiftServer(work: string): Promise<Server> {
  const script = join(packageRoot(), 'scripts', 'swift-s3.sh');
  const dir = join(work, 'swift');
  const run = (args: string[]) => tool('bash', [script, ...args], { HBX_SWIFT_OWNER_PID: String(process.pid) });
  const install = await run(['install']);
  if (install.code !== 0) throw new BenchError(`Swift cannot be installed: ${lastLine(install.stderr || install.stdout)}`);
  const r = await run(['start', dir]);
  if (r.code !== 0) throw new BenchError(`Swift did not start: ${lastLine(r.stderr || r.stdout)}`);
  const env: Record<string, string> = {};
  for (const m of r.stdout.matchAll(/^([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  return {
    kind: 'swift',
    endpoint: env.AWS_ENDPOINT_URL!,
    region: env.AWS_REGION!,
    accessKeyId: env.AWS_ACCESS_KEY_ID!,
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
    url: `s3://${env.HBX_S3_BUCKET!}/run`,
    stop: async () => void (await run(['stop', dir])),
  };
}

function urlServer(url: string): Server {
  const c = resolveRegistryConfig(process.env, '/nonexistent', { url });
  if (!c.endpoint) throw new BenchError('--server url needs AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and credentials in AWS_* variables');
  return {
    kind: 'url',
    endpoint: c.endpoint,
    region: c.region,
    accessKeyId: c.credentials.accessKeyId,
    secretAccessKey: c.credentials.secretAccessKey,
    url: `${c.url.url}/hbx-bench-${process.pid}`,
    stop: async () => {},
  };
}

// ---------------------------------------------------------------------------------------
// Tools

function tool(file: string, args: string[], env: Record<string, string> = {}, baseEnv: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...baseEnv, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const lastLine = (s: string) => s.trim().split('\n').pop() ?? '';

/** rclone sees the server as remote `hbx:` through RCLONE_CONFIG_HBX_* variables only. */
function rcloneEnv(s: Server): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  // AWS_* variables (e.g. AWS_CA_BUNDLE) would leak into rclone's S3 backend; it gets none.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AWS_') && !k.startsWith('RCLONE_')) env[k] = v;
  return {
    ...env,
    RCLONE_CONFIG: '/dev/null',
    RCLONE_CONFIG_HBX_TYPE: 's3',
    RCLONE_CONFIG_HBX_PROVIDER: 'Other',
    RCLONE_CONFIG_HBX_ENDPOINT: s.endpoint,
    RCLONE_CONFIG_HBX_REGION: s.region,
    RCLONE_CONFIG_HBX_ACCESS_KEY_ID: s.accessKeyId,
    RCLONE_CONFIG_HBX_SECRET_ACCESS_KEY: s.secretAccessKey,
    RCLONE_CONFIG_HBX_FORCE_PATH_STYLE: 'true',
  };
}

async function rclone(s: Server, args: string[]): Promise<void> {
  const r = await tool('rclone', ['--s3-no-check-bucket', ...args], {}, rcloneEnv(s));
  if (r.code !== 0) throw new BenchError(`rclone ${args.join(' ')} failed: ${lastLine(r.stderr)}`);
}

/** `s3://bucket/prefix` → `hbx:bucket/prefix` */
const rcloneRemote = (url: string) => `hbx:${url.slice('s3://'.length)}`;

// ---------------------------------------------------------------------------------------
// The image: N layers, each an uncompressed tar holding one file of random bytes.

async function randomTarLayer(store: BlobStore, bytes: number, n: number): Promise<Layer> {
  const header = Buffer.alloc(512);
  new Header({ path: `data/random-${n}`, type: 'File', mode: 0o644, uid: 0, gid: 0, size: bytes, mtime: new Date(0) }).encode(header, 0);
  async function* content() {
    yield header;
    for (let left = bytes; left > 0; left -= MiB) yield randomBytes(Math.min(MiB, left));
    yield Buffer.alloc(((512 - (bytes % 512)) % 512) + 1024);
  }
  const d = await store.putStream(Readable.from(content()), 'application/vnd.oci.image.layer.v1.tar');
  // An uncompressed layer's diff id is its own digest.
  return { descriptor: d, diffId: d.digest };
}

// ---------------------------------------------------------------------------------------

interface Stats {
  n: number;
  min: number;
  median: number;
  max: number;
}

function summarize(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  const r2 = (x: number) => Math.round(x * 100) / 100;
  return { n: s.length, min: r2(s[0]!), median: r2(median), max: r2(s.at(-1)!) };
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--internal-s3rver') {
    await serveS3rver(argv[1]!);
    return 0;
  }
  const opts = parseOptions(argv);
  const log = (s: string) => void process.stderr.write(`${s}\n`);
  const hasRclone = (await tool('rclone', ['version']).catch(() => ({ code: 127, stdout: '', stderr: '' }))).code === 0;
  if (!hasRclone) log('registry benchmark: rclone is not installed (apt-get install rclone): only the hybridbox scenarios run');

  // On disk, not tmpfs: the pulls write real files, as they would in use.
  const work = await mkdtemp(join('/var/tmp', 'hbx-bench-registry-'));
  let server: Server | undefined;
  let registry: Registry | undefined;
  try {
    server = opts.server === 's3rver' ? await startS3rverProcess(work) : opts.server === 'swift' ? await startSwiftServer(work) : urlServer(opts.url!);
    const srv = server;
    log(`registry benchmark: ${opts.sizeMiB} MiB in ${opts.layers} layers, ${opts.rounds} round(s), server ${srv.kind} at ${srv.endpoint}`);

    const store = new BlobStore(join(work, 'src'));
    await store.init();
    const layerBytes = Math.floor((opts.sizeMiB * MiB) / opts.layers);
    const layers: Layer[] = [];
    for (let i = 0; i < opts.layers; i++) layers.push(await randomTarLayer(store, layerBytes, i));
    const manifest = await writeImage(store, { layers, config: { Cmd: ['/bin/true'] } });
    await tagImage(store, 'bench:latest', manifest);
    const imageBytes = layers.reduce((n, l) => n + l.descriptor.size, 0);
    // rclone moves exactly the layer files (hard links to the same blobs).
    const upDir = join(work, 'rclone-up');
    await mkdir(upDir);
    for (const l of layers) await link(store.path(l.descriptor.digest), join(upDir, l.descriptor.digest.slice(7)));

    const samples: Record<Scenario, number[]> = { 'hybridbox-push': [], 'rclone-up': [], 'hybridbox-pull': [], 'rclone-down': [] };
    const bytesMoved: Record<Scenario, number> = { 'hybridbox-push': 0, 'rclone-up': imageBytes, 'hybridbox-pull': 0, 'rclone-down': imageBytes };
    const rePushMs: number[] = [];
    const rePushColdMs: number[] = [];

    const configFor = (url: string) =>
      resolveRegistryConfig({}, work, {
        url,
        overrides: { endpoint: srv.endpoint, region: srv.region, accessKeyId: srv.accessKeyId, secretAccessKey: srv.secretAccessKey },
      });
    for (let round = 0; round < opts.rounds; round++) {
      const url = `${srv.url}/r${round}`;
      registry = await openRegistry(configFor(url));
      const reg = registry;
      const pullDir = join(work, `pull-${round}`);
      const downDir = join(work, `rclone-down-${round}`);
      const run: Record<Scenario, () => Promise<void>> = {
        'hybridbox-push': async () => {
          const r = await reg.push({ blobs: store, ref: 'bench:latest' });
          bytesMoved['hybridbox-push'] = r.bytesUploaded;
        },
        'rclone-up': () => rclone(srv, ['copy', upDir, rcloneRemote(`${url}/rclone`)]),
        'hybridbox-pull': async () => {
          const r = await reg.pull({ blobs: new BlobStore(pullDir), ref: 'bench:latest' });
          bytesMoved['hybridbox-pull'] = r.bytesDownloaded;
        },
        'rclone-down': () => rclone(srv, ['copy', rcloneRemote(`${url}/rclone`), downDir]),
      };
      // Uploads before downloads; which tool goes first alternates between rounds.
      const order: Scenario[] = round % 2 === 0 ? ['hybridbox-push', 'rclone-up', 'hybridbox-pull', 'rclone-down'] : ['rclone-up', 'hybridbox-push', 'rclone-down', 'hybridbox-pull'];
      for (const s of order) {
        if (s.startsWith('rclone') && !hasRclone) continue;
        const ms = await timed(run[s]);
        samples[s].push(ms);
        log(`  round ${round + 1} ${s.padEnd(15)} ${(ms / 1000).toFixed(2)} s  ${((bytesMoved[s] / MiB) * (1000 / ms)).toFixed(1)} MiB/s`);
        if (s === 'hybridbox-push') {
          const again = await timed(() => reg.push({ blobs: store, ref: 'bench:latest' }));
          rePushMs.push(again);
          log(`  round ${round + 1} re-push (unchanged) ${again.toFixed(0)} ms`);
        }
      }
      await reg.close();
      // As a separate command would: open (SDK already loaded), push, close.
      rePushColdMs.push(
        await timed(async () => {
          const r = await openRegistry(configFor(url));
          await r.push({ blobs: store, ref: 'bench:latest' });
          await r.close();
        }),
      );
      registry = undefined;
      await rm(pullDir, { recursive: true, force: true });
      await rm(downDir, { recursive: true, force: true });
    }

    const throughput = (s: Scenario) => summarize(samples[s].map((ms) => (bytesMoved[s] / MiB) * (1000 / ms)));
    const scenarios: Partial<Record<Scenario, Stats & { seconds: Stats }>> = {};
    for (const s of SCENARIOS) if (samples[s].length) scenarios[s] = { ...throughput(s), seconds: summarize(samples[s].map((ms) => ms / 1000)) };
    const ratio = (a: Scenario, b: Scenario, target: number) => {
      const x = scenarios[a];
      const y = scenarios[b];
      if (!x || !y) return undefined;
      const value = Math.round((x.median / y.median) * 100) / 100;
      return { formula: `median MiB/s ${a} / ${b}`, value, target: `>= ${target}`, pass: value >= target };
    };
    const rePush = summarize(rePushMs);
    const rePushCold = summarize(rePushColdMs);
    const ratios = {
      'push/rclone-up': ratio('hybridbox-push', 'rclone-up', 0.9),
      'pull/rclone-down': ratio('hybridbox-pull', 'rclone-down', 0.9),
      'unchanged re-push ms': { formula: 'median ms of pushing the unchanged image again', value: rePush.median, target: '< 1000', pass: rePush.median < 1000 },
    };
    const result = {
      benchmark: 'registry',
      schemaVersion: 1,
      timestamp: new Date().toISOString(),
      options: opts,
      server: { kind: srv.kind, endpoint: srv.endpoint },
      image: { layers: opts.layers, layerBytes: layers.map((l) => l.descriptor.size), totalBytes: imageBytes },
      unit: 'MiB/s',
      scenarios,
      rePushMs: rePush,
      rePushWithOpenCloseMs: rePushCold,
      ratios,
      samplesMs: samples,
    };
    if (opts.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    const out = opts.json ? process.stderr : process.stdout;
    const lines = ['', `registry benchmark: ${(imageBytes / MiB).toFixed(0)} MiB image, ${opts.layers} layers, server ${srv.kind}, ${opts.rounds} round(s); MiB/s`];
    lines.push(`${'scenario'.padEnd(16)} ${'n'.padStart(2)} ${'min'.padStart(7)} ${'median'.padStart(7)} ${'max'.padStart(7)}`);
    for (const [name, st] of Object.entries(scenarios))
      lines.push(`${name.padEnd(16)} ${String(st.n).padStart(2)} ${st.min.toFixed(1).padStart(7)} ${st.median.toFixed(1).padStart(7)} ${st.max.toFixed(1).padStart(7)}`);
    lines.push(`re-push unchanged: median ${rePush.median.toFixed(0)} ms (with open and close: ${rePushCold.median.toFixed(0)} ms)`);
    for (const [name, r] of Object.entries(ratios)) if (r) lines.push(`${name.padEnd(22)} ${String(r.value).padStart(7)}  target ${r.target}  ${r.pass ? 'pass' : 'FAIL'}`);
    out.write(`${lines.join('\n')}\n`);
    return 0;
  } finally {
    await registry?.close().catch(() => undefined);
    // A server of the user's keeps its bucket: only what this run wrote goes.
    if (server?.kind === 'url' && hasRclone) await rclone(server, ['purge', rcloneRemote(server.url)]).catch(() => undefined);
    await server?.stop().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => {
    if (code) process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`registry benchmark: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = e instanceof BenchError ? e.exitCode : 1;
  },
);
