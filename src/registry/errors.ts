// Registry failures a caller can tell apart. Like every HybridboxError, each message is one
// line naming what went wrong and what to do about it.
import { HybridboxError } from '../errors.js';

export class RegistryError extends HybridboxError {}

/** A bad registry URL, config file or option. */
export class RegistryConfigError extends RegistryError {}

/** The server refused the credentials (unknown key, bad signature, access denied). */
export class RegistryAuthError extends RegistryError {}

export class BucketNotFoundError extends RegistryError {
  constructor(
    readonly bucket: string,
    where: string,
  ) {
    super(`bucket "${bucket}" does not exist at ${where}; create it on the server, or fix the bucket in the registry URL (s3://BUCKET/prefix)`);
  }
}

/** Nothing answered at the endpoint (connection refused, unknown host, timeout). */
export class EndpointUnreachableError extends RegistryError {}

export class RemoteTagNotFoundError extends RegistryError {
  constructor(
    readonly ref: string,
    readonly registry: string,
  ) {
    super(`tag "${ref}" is not in the registry ${registry}; push it there first, or check the name and the registry URL`);
  }
}

/** The registry lacks an object that a tag or manifest refers to (an incomplete or pruned upload). */
export class RemoteObjectMissingError extends RegistryError {}

/** Bytes whose sha256 differs from the digest that names them. Nothing of them is kept. */
export class DigestMismatchError extends RegistryError {
  constructor(
    message: string,
    readonly expectedDigest: string,
    readonly actualDigest: string,
  ) {
    super(message);
  }
}

/** The caller's AbortSignal fired; what was complete stays, and a re-run continues from there. */
export class TransferAbortedError extends RegistryError {}

/** Any other failed S3 request, with the server's error code. */
export class RegistryRequestError extends RegistryError {}

// ---------------------------------------------------------------------------
// Mapping of AWS SDK / Node network errors.

interface SdkErrorLike {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  errors?: unknown[];
  cause?: unknown;
}

const AUTH_CODES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AccessDenied',
  'InvalidToken',
  'ExpiredToken',
  'TokenRefreshRequired',
  'AuthorizationHeaderMalformed',
  'InvalidSecurity',
  'Forbidden',
]);
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'EPIPE']);

function networkCode(err: SdkErrorLike): string | undefined {
  if (err.code && NETWORK_CODES.has(err.code)) return err.code;
  if (err.name === 'TimeoutError') return 'timeout';
  for (const inner of [...(err.errors ?? []), err.cause]) {
    if (inner && typeof inner === 'object') {
      const c = networkCode(inner as SdkErrorLike);
      if (c) return c;
    }
  }
  return undefined;
}

export interface ErrorContext {
  /** What the registry was doing, e.g. "HEAD blobs/sha256/…". */
  operation: string;
  /** `s3://bucket/prefix` */
  registry: string;
  bucket: string;
  /** The endpoint as the user would recognise it. */
  endpoint: string;
  /** Where the credentials came from, for the fix in an auth error. */
  credentialsSource: string;
  /** Set for an object GET: NoSuchKey then becomes this error instead of a generic one. */
  missing?: () => RegistryError;
}

/** Turns whatever the SDK threw into one of the errors above; registry errors pass through. */
export function toRegistryError(err: unknown, ctx: ErrorContext): Error {
  if (err instanceof HybridboxError) return err;
  if (!err || typeof err !== 'object') return new RegistryRequestError(`${ctx.operation} on ${ctx.registry} failed: ${String(err)}`);
  const e = err as SdkErrorLike;
  if (e.name === 'AbortError') return err as Error;
  const status = e.$metadata?.httpStatusCode;
  const code = e.name ?? e.code ?? 'Error';
  const net = networkCode(e);
  if (net && status === undefined) {
    return new EndpointUnreachableError(
      `registry endpoint ${ctx.endpoint} is unreachable (${net}); start the S3 server or fix the endpoint ` +
        '(AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or "endpoint" in the registry config; with none set, hybridbox runs its own server)',
      { cause: err },
    );
  }
  if (code === 'NoSuchBucket') return new BucketNotFoundError(ctx.bucket, ctx.endpoint);
  if (AUTH_CODES.has(code) || status === 403) {
    return new RegistryAuthError(
      `${ctx.endpoint} refused the credentials for ${ctx.registry} (${code === 'Unknown' ? `HTTP ${status}` : code}: unknown access key, ` +
        `wrong secret, or no access to bucket "${ctx.bucket}"); check the key pair in ${ctx.credentialsSource}`,
      { cause: err },
    );
  }
  if (status === 301 || code === 'PermanentRedirect') {
    return new RegistryConfigError(`bucket "${ctx.bucket}" lives in another region than the one configured; set AWS_REGION (or "region" in the registry config) to the bucket's region`, {
      cause: err,
    });
  }
  if ((code === 'NoSuchKey' || code === 'NotFound' || status === 404) && ctx.missing) return ctx.missing();
  const detail = (e.message && e.message !== 'UnknownError' ? e.message : `HTTP ${status ?? '?'}`).split('\n')[0];
  return new RegistryRequestError(`${ctx.operation} on ${ctx.registry} failed: ${code}: ${detail}`, { cause: err });
}
