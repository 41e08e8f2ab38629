// The registry's view of an S3 bucket: a handful of object operations over the AWS SDK, with
// every SDK error turned into a registry error. The SDK is loaded on first use only.
import { createHash } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import type { RegistryConfig } from './config.js';
import { BucketNotFoundError, DigestMismatchError, RegistryError, RegistryRequestError, toRegistryError, type ErrorContext } from './errors.js';

const MiB = 1024 * 1024;

export interface RemoteObjectInfo {
  size: number;
  /** x-amz-meta-sha256, when the object has it. */
  sha256?: string;
}

export interface PutBlobOptions {
  key: string;
  /** Opens the content; called once. */
  open: () => Readable;
  sizeBytes: number;
  /** Hex sha256 the content must have; stored as metadata and checked while uploading. */
  sha256: string;
  contentType: string;
  /** What the content is, for error messages (e.g. "layer sha256:…"). */
  label: string;
  onBytes?: (bytes: number) => void;
  signal?: AbortSignal;
}

type Sdk = typeof import('@aws-sdk/client-s3');

const ignore = () => {};
const QUIET_LOGGER = { trace: ignore, debug: ignore, info: ignore, warn: ignore, error: ignore };

/**
 * A CommonJS package through import(): Node's loader gives its exports as named exports (and
 * as `default`); the bundled CLI's chunk for it has only `default`.
 */
async function importCommonJs<T extends object>(load: () => Promise<T>): Promise<T> {
  const m = (await load()) as T & { default?: T };
  return m.default ?? m;
}

/** A stream carried more (or, where exactly `limit` is required, fewer) bytes than declared. */
export class ExcessBytesError extends Error {
  readonly code = 'ERR_EXCESS_BYTES';
  constructor(
    readonly limit: number,
    readonly short = false,
  ) {
    super(short ? `fewer than the expected ${limit} bytes` : `more than the expected ${limit} bytes`);
  }
}

/**
 * Counts (and with `hash`, hashes) what passes through it; fails as soon as more than `limit`
 * bytes arrive, so a wrong or hostile object cannot fill the disk. With `coalesceBytes` it
 * passes data on in chunks of at least that size: a file written from an HTTP response in
 * 1 MiB writes instead of 64 KiB ones costs the event loop a sixteenth of the fs calls.
 */
export class ByteCounter extends Transform {
  private readonly hash;
  private readonly coalesceBytes: number;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  bytes = 0;
  constructor(
    private readonly limit: number,
    private readonly onBytes?: (bytes: number) => void,
    opts: { hash?: boolean; coalesceBytes?: number; exact?: boolean } = {},
  ) {
    super({ highWaterMark: MiB });
    this.hash = opts.hash ? createHash('sha256') : undefined;
    this.coalesceBytes = opts.coalesceBytes ?? 0;
    this.exact = opts.exact ?? false;
  }
  private readonly exact: boolean;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limit) return cb(new ExcessBytesError(this.limit));
    this.hash?.update(chunk);
    this.onBytes?.(chunk.length);
    if (this.coalesceBytes === 0) return cb(null, chunk);
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (this.pendingBytes < this.coalesceBytes) return cb();
    cb(null, this.takePending());
  }
  override _flush(cb: (err?: Error | null, data?: Buffer) => void): void {
    // An upload announced its Content-Length: ending short would leave the server waiting.
    if (this.exact && this.bytes < this.limit) return cb(new ExcessBytesError(this.limit, true));
    cb(null, this.pendingBytes > 0 ? this.takePending() : undefined);
  }
  private takePending(): Buffer {
    const out = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    return out;
  }
  /** The sha256 of what passed (with `hash` only). */
  hex(): string {
    if (!this.hash) throw new Error('ByteCounter was made without hash');
    return this.hash.digest('hex');
  }
}

export class S3Remote {
  private constructor(
    private readonly sdk: Sdk,
    private readonly client: S3Client,
    readonly config: RegistryConfig,
    /** The endpoint as shown in messages. */
    readonly endpointLabel: string,
  ) {}

  /** `endpoint` overrides the config's (the embedded server's address). */
  static async connect(config: RegistryConfig, endpoint: string | undefined): Promise<S3Remote> {
    // The SDK warns on every process about Node < 22 support ending; hybridbox pins its SDK.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const sdk = await importCommonJs(() => import('@aws-sdk/client-s3'));
    const client = new sdk.S3Client({
      ...(endpoint ? { endpoint } : {}),
      region: config.region,
      credentials: config.credentials,
      forcePathStyle: config.forcePathStyle,
      // Without these the SDK streams bodies as aws-chunked with trailing checksums, which
      // s3rver stores verbatim and Swift rejects; blobs carry their own sha256 instead.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: config.maxAttempts,
      // Errors reach the caller as registry errors; the SDK's own console warnings (it prints
      // one for every failed streaming upload unless a logger is set) would only repeat them.
      logger: QUIET_LOGGER,
      requestHandler: {
        connectionTimeout: config.connectTimeoutMs,
        socketTimeout: config.idleTimeoutMs,
        httpAgent: { keepAlive: true, maxSockets: 32 },
        httpsAgent: { keepAlive: true, maxSockets: 32 },
      },
    });
    return new S3Remote(sdk, client, config, endpoint ?? `the AWS S3 endpoint of ${config.region}`);
  }

  get bucket(): string {
    return this.config.url.bucket;
  }

  errorContext(operation: string, missing?: () => RegistryError): ErrorContext {
    const ctx: ErrorContext = {
      operation,
      registry: this.config.url.url,
      bucket: this.bucket,
      endpoint: this.endpointLabel,
      credentialsSource: this.config.credentialsSource,
    };
    if (missing) ctx.missing = missing;
    return ctx;
  }

  private async call<T>(operation: string, fn: () => Promise<T>, missing?: () => RegistryError): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw toRegistryError(err, this.errorContext(operation, missing));
    }
  }

  /** Fails early, with the clearest error, when the endpoint, the credentials or the bucket are wrong. */
  async checkBucket(signal?: AbortSignal): Promise<void> {
    const { HeadBucketCommand } = this.sdk;
    await this.call(
      'HEAD bucket',
      () => this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: signal }),
      () => new BucketNotFoundError(this.bucket, this.endpointLabel),
    );
  }

  async head(key: string, signal?: AbortSignal): Promise<RemoteObjectInfo | undefined> {
    const { HeadObjectCommand } = this.sdk;
    const absent = Symbol('absent');
    const r = await this.call(`HEAD ${key}`, async () => {
      try {
        return await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
      } catch (err) {
        const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
        if (e.name === 'NotFound' || e.name === 'NoSuchKey' || e.$metadata?.httpStatusCode === 404) return absent;
        throw err;
      }
    });
    if (r === absent) return undefined;
    const info: RemoteObjectInfo = { size: r.ContentLength ?? -1 };
    const sha = r.Metadata?.sha256;
    if (sha) info.sha256 = sha;
    return info;
  }

  /** The body of an object, streamed. `missing` makes the error for an absent key. */
  async getStream(key: string, missing: () => RegistryError, signal?: AbortSignal): Promise<{ body: Readable; size: number | undefined }> {
    const { GetObjectCommand } = this.sdk;
    const r = await this.call(`GET ${key}`, () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal }), missing);
    if (!r.Body) throw new RegistryRequestError(`GET ${key} on ${this.config.url.url} returned no body; the server is misbehaving`);
    return { body: r.Body as Readable, size: r.ContentLength };
  }

  /** A small object read whole, refused beyond `maxBytes`. */
  async getSmall(key: string, maxBytes: number, missing: () => RegistryError, signal?: AbortSignal): Promise<Buffer> {
    const { body, size } = await this.getStream(key, missing, signal);
    if (size !== undefined && size > maxBytes) {
      body.destroy();
      throw new RegistryRequestError(`${key} on ${this.config.url.url} is ${size} bytes, more than the ${maxBytes} expected; push the image again`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of body) {
        total += (chunk as Buffer).length;
        if (total > maxBytes) throw new RegistryRequestError(`${key} on ${this.config.url.url} is larger than the ${maxBytes} bytes expected; push the image again`);
        chunks.push(chunk as Buffer);
      }
    } catch (err) {
      body.destroy();
      throw toRegistryError(err, this.errorContext(`GET ${key}`));
    }
    return Buffer.concat(chunks);
  }

  async putSmall(key: string, body: Buffer, contentType: string, metadata?: Record<string, string>, signal?: AbortSignal): Promise<void> {
    const { PutObjectCommand } = this.sdk;
    await this.call(`PUT ${key}`, () =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ContentType: contentType, Metadata: metadata }), { abortSignal: signal }),
    );
  }

  async delete(key: string): Promise<void> {
    const { DeleteObjectCommand } = this.sdk;
    await this.call(`DELETE ${key}`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })));
  }

  /**
   * Uploads a blob under its content address, hashing it on the way: content that does not
   * match `sha256` (a corrupt local blob) is deleted from the server again and refused. Blobs
   * from `multipartThresholdMiB` up go in parts through lib-storage's Upload.
   */
  async putBlob(o: PutBlobOptions): Promise<void> {
    const { transfer } = this.config;
    const source = o.open();
    const counter = new ByteCounter(o.sizeBytes, o.onBytes, { hash: true, exact: true });
    // The SDK pipes the body without watching it: a failed read (or a file that changed size)
    // must abort the request itself, or the server would wait for the missing bytes.
    const controller = new AbortController();
    const onAbort = () => controller.abort(o.signal?.reason);
    if (o.signal?.aborted) onAbort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    counter.on('error', (err) => controller.abort(err));
    source.on('error', (err) => counter.destroy(err));
    source.pipe(counter);
    const metadata = { sha256: o.sha256 };
    const multipart = o.sizeBytes >= transfer.multipartThresholdMiB * MiB;
    try {
      await this.call(`PUT ${o.key}`, async () => {
        if (!multipart) {
          await this.client.send(
            new this.sdk.PutObjectCommand({
              Bucket: this.bucket,
              Key: o.key,
              Body: counter,
              ContentLength: o.sizeBytes,
              ContentType: o.contentType,
              Metadata: metadata,
            }),
            { abortSignal: controller.signal },
          );
          return;
        }
        const { Upload } = await importCommonJs(() => import('@aws-sdk/lib-storage'));
        await new Upload({
          client: this.client,
          params: { Bucket: this.bucket, Key: o.key, Body: counter, ContentType: o.contentType, Metadata: metadata },
          partSize: transfer.partSizeMiB * MiB,
          queueSize: transfer.queueSize,
          leavePartsOnError: false,
          abortController: controller,
        }).done();
      });
    } catch (err) {
      const local = counter.errored;
      if (local instanceof ExcessBytesError) {
        throw new RegistryError(`local ${o.label} changed size while it was being pushed (${o.sizeBytes} bytes expected); push again once nothing writes to it`);
      }
      if (local && !o.signal?.aborted) {
        throw new RegistryError(`local ${o.label} cannot be read (${(local as NodeJS.ErrnoException).code ?? local.message}); rebuild or re-pull the image`, { cause: local });
      }
      throw err;
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      source.destroy();
      counter.destroy();
    }
    const actual = counter.hex();
    if (actual !== o.sha256) {
      await this.delete(o.key).catch(() => undefined);
      throw new DigestMismatchError(`local ${o.label} is corrupt (it hashes to sha256:${actual}); it was not pushed; rebuild or re-pull the image`, `sha256:${o.sha256}`, `sha256:${actual}`);
    }
  }

  destroy(): void {
    this.client.destroy();
  }
}
