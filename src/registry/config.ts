// Where the registry is and how to talk to it: the registry URL, then the endpoint, region and
// credentials from the standard AWS variables or a JSON config file (docs/registry.md).
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InsecureFileError } from '../errors.js';
import { RegistryConfigError } from './errors.js';

/** `s3://bucket/prefix`, split. `prefix` has no leading or trailing slash ('' for none). */
export interface RegistryUrl {
  bucket: string;
  prefix: string;
  /** Normalised: `s3://bucket` or `s3://bucket/prefix`. */
  url: string;
}

export const DEFAULT_REGISTRY_URL = 's3://hybridbox';

// S3's bucket naming rules (lowercase, 3-63, no leading/trailing dot or dash).
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const PREFIX_PART_RE = /^[A-Za-z0-9._-]+$/;

export function parseRegistryUrl(url: string): RegistryUrl {
  const m = /^s3:\/\/([^/]*)(?:\/(.*))?$/.exec(url);
  const hint = 'use s3://BUCKET or s3://BUCKET/PREFIX, e.g. s3://images/team-a';
  if (!m) throw new RegistryConfigError(`registry URL "${url}" is not an s3:// URL; ${hint}`);
  const bucket = m[1]!;
  if (!BUCKET_RE.test(bucket) || bucket.includes('..')) {
    throw new RegistryConfigError(`registry URL "${url}": "${bucket}" is not a valid bucket name (3-63 characters: a-z 0-9 . -); ${hint}`);
  }
  const parts = (m[2] ?? '').split('/').filter((p) => p !== '');
  for (const p of parts) {
    if (!PREFIX_PART_RE.test(p) || p === '.' || p === '..') {
      throw new RegistryConfigError(`registry URL "${url}": prefix part "${p}" is not allowed (letters, digits, . _ - between slashes); ${hint}`);
    }
  }
  const prefix = parts.join('/');
  return { bucket, prefix, url: prefix ? `s3://${bucket}/${prefix}` : `s3://${bucket}` };
}

export interface RegistryCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** How blobs are moved. Defaults suit the local servers this was measured on (docs/registry.md). */
export interface TransferSettings {
  /** Blobs moved at the same time. */
  concurrency: number;
  /** Blobs at least this large are uploaded in parts; smaller ones with one PUT (max 5 GiB). */
  multipartThresholdMiB: number;
  partSizeMiB: number;
  /** Parts of one blob in flight at once (each buffers partSizeMiB in memory). */
  queueSize: number;
}

export const DEFAULT_TRANSFER: TransferSettings = { concurrency: 4, multipartThresholdMiB: 1024, partSizeMiB: 32, queueSize: 4 };

export interface EmbeddedServerSettings {
  /** s3rver's data directory (objects persist there between commands). */
  dataDir: string;
  /** 0: an ephemeral port. The server only listens on 127.0.0.1. */
  port: number;
}

export interface RegistryConfig {
  url: RegistryUrl;
  /** The S3 endpoint; undefined with `embedded` set (hybridbox runs s3rver itself). */
  endpoint?: string;
  embedded?: EmbeddedServerSettings;
  region: string;
  credentials: RegistryCredentials;
  /** Where the credentials came from, named in auth errors. */
  credentialsSource: string;
  forcePathStyle: boolean;
  transfer: TransferSettings;
  /** Per connection attempt. */
  connectTimeoutMs: number;
  /** A socket idle this long is abandoned. */
  idleTimeoutMs: number;
  /** Attempts per request (1 = no retry); streamed bodies are never retried. */
  maxAttempts: number;
}

/** The JSON file's fields (all optional). Environment variables win over the file. */
export interface RegistryConfigFile {
  url?: string;
  /** An http(s) URL, "embedded" (the default when nothing sets one) or "aws" (AWS's own endpoints). */
  endpoint?: string;
  region?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
  forcePathStyle?: boolean;
  embeddedPort?: number;
  embeddedDataDir?: string;
  concurrency?: number;
  multipartThresholdMiB?: number;
  partSizeMiB?: number;
  queueSize?: number;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  maxAttempts?: number;
}

const STRING_KEYS = ['url', 'endpoint', 'region', 'accessKeyId', 'secretAccessKey', 'sessionToken', 'embeddedDataDir'] as const;
// [key, min, max]
const NUMBER_KEYS = [
  ['embeddedPort', 0, 65535],
  ['concurrency', 1, 64],
  ['multipartThresholdMiB', 5, 5 * 1024],
  ['partSizeMiB', 5, 5 * 1024],
  ['queueSize', 1, 64],
  ['connectTimeoutMs', 100, 600_000],
  ['idleTimeoutMs', 1000, 3_600_000],
  ['maxAttempts', 1, 10],
] as const;

/** The embedded s3rver accepts only this key pair (it checks the key id, not the secret). */
export const EMBEDDED_CREDENTIALS: RegistryCredentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export function configFilePath(env: Record<string, string | undefined>, stateRoot: string): { path: string; explicit: boolean } {
  const p = env.HYBRIDBOX_REGISTRY_CONFIG;
  return p ? { path: p, explicit: true } : { path: join(stateRoot, 'registry.json'), explicit: false };
}

export function readConfigFile(path: string, mustExist: boolean): RegistryConfigFile {
  const unreadable = (err: unknown) =>
    new RegistryConfigError(`registry config ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)}); fix HYBRIDBOX_REGISTRY_CONFIG or create the file`);
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !mustExist) return {};
    throw unreadable(err);
  }
  let text: string;
  try {
    // It holds credentials: like ssh with a private key, refuse it while others can read or
    // change it (checked on the open file, so a swap after the check is not read instead).
    const mode = fstatSync(fd).mode;
    if (mode & 0o077) throw new InsecureFileError(path, mode);
    try {
      text = readFileSync(fd, 'utf8');
    } catch (err) {
      throw unreadable(err);
    }
  } finally {
    closeSync(fd);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new RegistryConfigError(`registry config ${path} is not valid JSON (${(err as Error).message}); fix the file`);
  }
  return checkConfigFile(data, path);
}

export function checkConfigFile(data: unknown, where: string): RegistryConfigFile {
  if (!data || typeof data !== 'object' || Array.isArray(data)) throw new RegistryConfigError(`registry config ${where} must be a JSON object`);
  const known = new Set<string>([...STRING_KEYS, ...NUMBER_KEYS.map(([k]) => k), 'forcePathStyle']);
  const obj = data as Record<string, unknown>;
  for (const [key, value] of Object.entries(obj)) {
    const bad = (allowed: string) => new RegistryConfigError(`registry config ${where}: "${key}" is ${JSON.stringify(value)}; allowed: ${allowed}`);
    if (!known.has(key)) throw bad(`one of the keys ${[...known].join(', ')}`);
    if ((STRING_KEYS as readonly string[]).includes(key) && (typeof value !== 'string' || value === '')) throw bad('a non-empty string');
    if (key === 'forcePathStyle' && typeof value !== 'boolean') throw bad('true or false');
    const range = NUMBER_KEYS.find(([k]) => k === key);
    if (range && (!Number.isInteger(value) || (value as number) < range[1] || (value as number) > range[2])) {
      throw bad(`an integer from ${range[1]} to ${range[2]}`);
    }
  }
  return obj as RegistryConfigFile;
}

export interface ResolveOptions {
  /** The registry URL given on the command line; otherwise the file's `url`, else s3://hybridbox. */
  url?: string;
  /** Applied last: for callers and tests that configure in code. */
  overrides?: RegistryConfigFile;
}

/**
 * Precedence, highest first: `overrides`, environment variables, the config file
 * (HYBRIDBOX_REGISTRY_CONFIG, else `<stateRoot>/registry.json` if present), defaults.
 * No endpoint anywhere (or "embedded") means the embedded s3rver under `<stateRoot>/s3`.
 */
export function resolveRegistryConfig(env: Record<string, string | undefined>, stateRoot: string, opts: ResolveOptions = {}): RegistryConfig {
  const file = configFilePath(env, stateRoot);
  const fromFile = readConfigFile(file.path, file.explicit);
  const overrides = opts.overrides ? checkConfigFile(opts.overrides, 'overrides') : {};
  const fromEnv: RegistryConfigFile = {};
  const endpointEnv = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL;
  if (endpointEnv) fromEnv.endpoint = endpointEnv;
  const regionEnv = env.AWS_REGION || env.AWS_DEFAULT_REGION;
  if (regionEnv) fromEnv.region = regionEnv;
  if (env.AWS_ACCESS_KEY_ID) fromEnv.accessKeyId = env.AWS_ACCESS_KEY_ID;
  if (env.AWS_SECRET_ACCESS_KEY) fromEnv.secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
  if (env.AWS_SESSION_TOKEN) fromEnv.sessionToken = env.AWS_SESSION_TOKEN;
  const c: RegistryConfigFile = { ...fromFile, ...fromEnv, ...overrides };

  const url = parseRegistryUrl(opts.url ?? c.url ?? DEFAULT_REGISTRY_URL);
  const transfer: TransferSettings = {
    concurrency: c.concurrency ?? DEFAULT_TRANSFER.concurrency,
    multipartThresholdMiB: c.multipartThresholdMiB ?? DEFAULT_TRANSFER.multipartThresholdMiB,
    partSizeMiB: c.partSizeMiB ?? DEFAULT_TRANSFER.partSizeMiB,
    queueSize: c.queueSize ?? DEFAULT_TRANSFER.queueSize,
  };
  const common = {
    url,
    region: c.region ?? 'us-east-1',
    transfer,
    connectTimeoutMs: c.connectTimeoutMs ?? 3000,
    idleTimeoutMs: c.idleTimeoutMs ?? 60_000,
    maxAttempts: c.maxAttempts ?? 3,
  };

  if (c.endpoint === undefined || c.endpoint === 'embedded') {
    return {
      ...common,
      embedded: { dataDir: c.embeddedDataDir ?? join(stateRoot, 's3'), port: c.embeddedPort ?? 0 },
      credentials: EMBEDDED_CREDENTIALS,
      credentialsSource: 'the embedded server (fixed key pair)',
      forcePathStyle: true,
    };
  }

  const aws = c.endpoint === 'aws';
  let endpoint: string | undefined;
  if (!aws) {
    let parsed: URL;
    try {
      parsed = new URL(c.endpoint);
    } catch {
      throw new RegistryConfigError(`registry endpoint "${c.endpoint}" is not a URL; use e.g. http://127.0.0.1:9000, "embedded" or "aws"`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new RegistryConfigError(`registry endpoint "${c.endpoint}" must be http:// or https://`);
    }
    endpoint = c.endpoint.replace(/\/+$/, '');
  }
  const credentialsSource =
    overrides.accessKeyId || overrides.secretAccessKey
      ? 'the registry settings given to hybridbox'
      : fromEnv.accessKeyId || fromEnv.secretAccessKey
        ? 'AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY'
        : `${file.path} (accessKeyId / secretAccessKey)`;
  if (!c.accessKeyId || !c.secretAccessKey) {
    throw new RegistryConfigError(`no credentials for ${endpoint ?? 'AWS'}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or accessKeyId and secretAccessKey in ${file.path}`);
  }
  const credentials: RegistryCredentials = { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey };
  if (c.sessionToken) credentials.sessionToken = c.sessionToken;
  const isAwsHost = aws || /(^|\.)amazonaws\.com(\.cn)?$/.test(new URL(endpoint!).hostname);
  const config: RegistryConfig = { ...common, credentials, credentialsSource, forcePathStyle: c.forcePathStyle ?? !isAwsHost };
  if (endpoint !== undefined) config.endpoint = endpoint;
  return config;
}
