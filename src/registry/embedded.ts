// The registry that works out of the box: with no endpoint configured, hybridbox runs s3rver
// inside its own process for the length of one push or pull, on 127.0.0.1 only, with its
// data under the state root (<stateRoot>/s3), so objects persist between commands. Nothing is
// left running after the command, and nothing can be orphaned by a crash.
import { mkdir } from 'node:fs/promises';
import type { EmbeddedServerSettings } from './config.js';
import { RegistryConfigError } from './errors.js';

export interface EmbeddedServer {
  endpoint: string;
  port: number;
  stop(): Promise<void>;
}

export async function startEmbeddedServer(settings: EmbeddedServerSettings, buckets: string[]): Promise<EmbeddedServer> {
  await mkdir(settings.dataDir, { recursive: true, mode: 0o700 });
  // Loaded here only: s3rver (koa, winston, ...) costs far more to load than the CLI itself.
  const { default: S3rver } = await import('s3rver');
  const server = new S3rver({
    address: '127.0.0.1',
    port: settings.port,
    silent: true,
    directory: settings.dataDir,
    // Path-style requests only: a vhost lookup would turn "127.0.0.1" into a bucket name.
    vhostBuckets: false,
    configureBuckets: buckets.map((name) => ({ name })),
  });
  let address;
  try {
    address = await server.run();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') {
      throw new RegistryConfigError(`embedded registry port ${settings.port} on 127.0.0.1 is in use; set "embeddedPort" in the registry config to a free port, or 0 for any`, { cause: err });
    }
    throw err;
  }
  let stopped: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    port: address.port,
    stop: () => (stopped ??= server.close().catch(() => undefined)),
  };
}
