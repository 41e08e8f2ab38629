// A connection to one registry: the S3 client, and the embedded server when hybridbox runs
// its own. Open it, push and pull through it (several operations may share it), close it.
import type { RegistryConfig } from './config.js';
import { startEmbeddedServer, type EmbeddedServer } from './embedded.js';
import { pull, type PullOptions, type PullResult } from './pull.js';
import { push, type PushOptions, type PushResult } from './push.js';
import { S3Remote } from './s3.js';

export interface Registry {
  /** s3://bucket/prefix */
  readonly url: string;
  /** The S3 endpoint in use (the embedded server's address when `embedded`). */
  readonly endpoint: string;
  readonly embedded: boolean;
  push(opts: PushOptions): Promise<PushResult>;
  pull(opts: PullOptions): Promise<PullResult>;
  /** Closes connections and stops the embedded server. Idempotent. */
  close(): Promise<void>;
}

/** Starts the embedded server if the config asks for it, and connects. */
export async function openRegistry(config: RegistryConfig): Promise<Registry> {
  let server: EmbeddedServer | undefined;
  if (config.embedded) server = await startEmbeddedServer(config.embedded, [config.url.bucket]);
  let remote: S3Remote;
  try {
    remote = await S3Remote.connect(config, server?.endpoint ?? config.endpoint);
  } catch (err) {
    await server?.stop();
    throw err;
  }
  let closed: Promise<void> | undefined;
  return {
    url: config.url.url,
    endpoint: remote.endpointLabel,
    embedded: server !== undefined,
    push: (opts) => push(remote, opts),
    pull: (opts) => pull(remote, opts),
    close: () =>
      (closed ??= (async () => {
        remote.destroy();
        await server?.stop();
      })()),
  };
}
