// A real S3 server for tests: a single-node OpenStack Swift with its s3api middleware,
// run by scripts/swift-s3.sh on 127.0.0.1. Every call gets its own state directory,
// ports, processes and credentials, so concurrent test files do not meet.
//
//   const s3 = await startSwift();
//   t.teardown(() => s3.stop());
//   new S3Client({ endpoint: s3.endpoint, region: s3.region, forcePathStyle: true,
//     credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
//     requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
//
// See docs/testing-s3.md for what this server does and does not accept.
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

export interface SwiftS3 {
  /** http://127.0.0.1:PORT (use path-style addressing) */
  endpoint: string;
  /** the region SigV4 signatures must name (us-east-1) */
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** an empty bucket created at start */
  bucket: string;
  /** the state directory: configs, rings, data, logs (log/*.log) */
  dir: string;
  /** AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, HBX_S3_BUCKET */
  env: Record<string, string>;
  /** Stops every process of this server and removes its state directory. Idempotent. */
  stop(): Promise<void>;
}

const SCRIPT = fileURLToPath(new URL('../../scripts/swift-s3.sh', import.meta.url));
const START_TIMEOUT_MS = 180_000;
let installing: Promise<void> | undefined;

function reason(result: { stderr?: unknown; stdout?: unknown; exitCode?: number; timedOut?: boolean }): string {
  if (result.timedOut) return `timed out after ${START_TIMEOUT_MS / 1000}s`;
  const lines = `${String(result.stdout ?? '')}\n${String(result.stderr ?? '')}`
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const last = lines.filter((l) => l.startsWith('swift-s3:')).pop() ?? lines.pop();
  return (last ?? `exit code ${result.exitCode ?? '?'}`).replace(/^swift-s3:\s*/, '');
}

async function run(args: string[], env: Record<string, string> = {}) {
  return execa('bash', [SCRIPT, ...args], { reject: false, timeout: START_TIMEOUT_MS, env, stdin: 'ignore' });
}

async function install(): Promise<void> {
  const r = await run(['install']);
  if (r.exitCode !== 0) throw new Error(`Swift S3 server unavailable: install: ${reason(r)}`);
}

/**
 * Starts a fresh Swift S3 server. Throws an Error with a one-line reason when Swift
 * cannot be installed or started. Should the test process die without calling stop(),
 * the server stops itself within about a second (it watches this process).
 */
export async function startSwift(): Promise<SwiftS3> {
  installing ??= install();
  try {
    await installing;
  } catch (e) {
    installing = undefined; // let a later call try again
    throw e;
  }

  const base = process.env.HBX_SWIFT_BASE ?? '/var/tmp';
  const dir = await mkdtemp(join(base, 'hybridbox-swift-')).catch((e: Error) => {
    throw new Error(`Swift S3 server unavailable: cannot make a state directory in ${base}: ${e.message}`);
  });
  const stopDir = async (): Promise<void> => {
    const r = await run(['stop', dir]);
    if (r.exitCode !== 0) throw new Error(`Swift S3 server: stop: ${reason(r)}`);
  };

  const r = await run(['start', dir], { HBX_SWIFT_OWNER_PID: String(process.pid) });
  if (r.exitCode !== 0) {
    await stopDir().catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    throw new Error(`Swift S3 server unavailable: ${reason(r)}`);
  }

  const env: Record<string, string> = {};
  for (const line of String(r.stdout).split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!;
  }
  const need = ['AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION', 'HBX_S3_BUCKET'];
  const missing = need.filter((k) => !env[k]);
  if (missing.length > 0) {
    await stopDir().catch(() => undefined);
    throw new Error(`Swift S3 server unavailable: start printed no ${missing.join(', ')}`);
  }

  let stopping: Promise<void> | undefined;
  return {
    endpoint: env.AWS_ENDPOINT_URL!,
    region: env.AWS_REGION!,
    accessKeyId: env.AWS_ACCESS_KEY_ID!,
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
    bucket: env.HBX_S3_BUCKET!,
    dir,
    env,
    stop: () => (stopping ??= stopDir()),
  };
}
