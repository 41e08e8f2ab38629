// The HTTP service for untrusted code (`hybridbox serve`): its one entry point.
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus as hostCpus } from 'node:os';
import { dirname, join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Hybridbox } from '../api/index.js';
import { HostCapabilityError } from '../errors.js';
import { run } from '../util/exec.js';
import { readMountinfo } from '../util/mountinfo.js';
import { isSameProcessAlive, processStartTime } from '../util/proc.js';
import { Admission } from './admission.js';
import { Callbacks } from './callbacks.js';
import { ServiceStore } from './db.js';
import { RunManager } from './runs.js';
import { buildApp } from './server.js';
import { type RuntimeProvider, serviceRuntimes } from './runtimes.js';

export { createKey, SCOPES, type KeyQuota, type Scope } from './auth.js';
export { sign as signCallback, SIGNATURE_HEADER, TIMESTAMP_HEADER } from './callbacks.js';
export { ServiceStore } from './db.js';
export { check, checkExact, checkFloat, checkTrailingWhitespace } from './checkers.js';
export * from './schemas.js';
export { verdictOf } from './steps.js';

export const DEFAULT_SOCKET = '/run/hybridbox/api.sock';

export interface ServiceOptions {
  hb: Hybridbox;
  /** A unix socket path, or host:port for TCP. @default /run/hybridbox/api.sock */
  listen?: string;
  /** Group that may use the unix socket (mode 0660). @default root */
  socketGroup?: number;
  tls?: { certFile: string; keyFile: string };
  /** Runs waiting for capacity at most; past it a POST gets 503. @default 256 */
  maxQueued?: number;
  /** CPU slots per host core (a run holds ceil(cpus) slots). @default 2 */
  cpuOvercommit?: number;
  /** Share of host memory runs may hold, overheads included. @default 0.75 */
  memoryFraction?: number;
  /**
   * Size of the tmpfs that holds every request's /box while it runs: a compile step that
   * fills its box fills this, never the host's disk. @default 1024
   */
  workTmpfsMiB?: number;
  /** host or host:port entries that callbacks may go to. @default none */
  callbackAllow?: string[];
  /** The language runtimes requests may name. @default the installed ones (languages/) */
  runtimes?: RuntimeProvider;
  /**
   * Registers the embedder's own hooks or plugins (metrics, logging, response checks) on the
   * HTTP app, after the service's hooks and before it listens. @default none
   */
  extend?: (app: FastifyInstance) => void | Promise<void>;
  version: string;
}

export interface Service {
  app: FastifyInstance;
  /** Where it listens: the socket path or http(s)://host:port. */
  address: string;
  recovered: { requeued: number; failed: number };
  /** Stops accepting, lets running runs finish, and closes. */
  close(opts?: { drain?: boolean }): Promise<void>;
}

export async function startService(o: ServiceOptions): Promise<Service> {
  // One service per state root: a second would settle the first one's runs as its leftovers.
  const releaseRoot = claimRoot(o.hb.root);
  try {
    return await start(o, releaseRoot);
  } catch (e) {
    releaseRoot();
    throw e;
  }
}

async function start(o: ServiceOptions, releaseRoot: () => void): Promise<Service> {
  const runtimes = o.runtimes ?? (await serviceRuntimes(o.hb));
  const root = o.hb.root;
  const store = new ServiceStore(root);
  const cpus = o.hb.host.cpus || hostCpus().length;
  const admission = new Admission({ cpuSlots: cpus * (o.cpuOvercommit ?? 2), memoryMiB: Math.floor((o.hb.host.memTotalBytes / 1048576) * (o.memoryFraction ?? 0.75)) }, o.maxQueued ?? 256);
  let callbacks: Callbacks | null = null;
  const workRoot = join(root, 'service', 'work');
  await mountWorkTmpfs(workRoot, o.workTmpfsMiB ?? 1024);
  const runs = new RunManager({
    hb: o.hb,
    store,
    admission,
    runtimes: (name) => runtimes.resolve(name),
    workRoot,
    onFinished: (run) => callbacks?.deliver(run.id),
  });
  callbacks = new Callbacks(store, { allow: o.callbackAllow ?? [], secret: callbackSecret(root) }, (id) => {
    const r = store.getRun(id);
    return r && runs.view(r);
  });
  const listen = o.listen ?? DEFAULT_SOCKET;
  const unix = listen.startsWith('/');
  const app = await buildApp(
    {
      store,
      runs,
      admission,
      runtimes: () => runtimes.list(),
      keylessSocket: unix && (o.socketGroup ?? 0) === 0,
      callbackAllow: o.callbackAllow ?? [],
      version: o.version,
    },
    o.tls ? { https: { cert: readFileSync(o.tls.certFile), key: readFileSync(o.tls.keyFile) } } : undefined,
  );
  await o.extend?.(app);
  // Settle the last process's runs before anyone can ask about them.
  const recovered = await runs.recover();
  callbacks.resume();
  let address: string;
  if (unix) {
    await clearStaleSocket(listen);
    mkdirSync(dirname(listen), { recursive: true, mode: 0o755 });
    await app.listen({ path: listen });
    chmodSync(listen, 0o660);
    chownSync(listen, 0, o.socketGroup ?? 0);
    address = listen;
  } else {
    const m = /^(.+):(\d+)$/.exec(listen);
    if (!m) throw new HostCapabilityError(`--listen: ${listen} is not a socket path or HOST:PORT`);
    await app.listen({ host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) });
    const a = app.server.address();
    address = `${o.tls ? 'https' : 'http'}://${m[1]}:${typeof a === 'object' && a ? a.port : m[2]}`;
  }
  return {
    app,
    address,
    recovered,
    async close(opts = {}) {
      callbacks?.stop();
      await app.close();
      if (opts.drain !== false) await runs.drain();
      store.close();
      if (unix) rmSync(listen, { force: true });
      await run('umount', [workRoot]);
      releaseRoot();
    },
  };
}

/** `<root>/service.pid` names the live service of a root; a dead one's file is taken over. */
function claimRoot(root: string): () => void {
  const f = join(root, 'service.pid');
  const me = `${process.pid} ${processStartTime(process.pid) ?? ''}`;
  for (let i = 0; i < 2; i++) {
    try {
      writeFileSync(f, me, { flag: 'wx', mode: 0o600 });
      return () => {
        if (existsSync(f) && readFileSync(f, 'utf8') === me) rmSync(f, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const [pid, st] = readFileSync(f, 'utf8').split(' ');
      if (pid && isSameProcessAlive(Number(pid), st ? Number(st) : null)) throw new HostCapabilityError(`another hybridbox serve (pid ${pid}) uses the state root ${root}; stop it first`);
      rmSync(f, { force: true });
    }
  }
  throw new HostCapabilityError(`cannot claim the state root ${root} for the service`);
}

/** A size-bounded tmpfs at `dir` (kept if a previous service left it mounted: it is emptied at recovery). */
async function mountWorkTmpfs(dir: string, sizeMiB: number): Promise<void> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (readMountinfo().some((m) => m.mountPoint === dir)) return;
  const r = await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,nr_inodes=65536,mode=0700,nosuid,nodev`, 'hbx-service-work', dir]);
  if (r.exitCode !== 0) throw new HostCapabilityError(`cannot mount the service's work tmpfs at ${dir}: ${r.stderr.trim()}`);
}

/** The key callbacks are signed with: made once per state root, private to root. */
function callbackSecret(root: string): string {
  const f = join(root, 'service-callback.key');
  if (!existsSync(f)) writeFileSync(f, randomBytes(32).toString('hex'), { mode: 0o600, flag: 'wx' });
  return readFileSync(f, 'utf8').trim();
}

/** A socket file left by a killed service is removed; one that answers belongs to a live service. */
async function clearStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!statSync(path).isSocket()) throw new HostCapabilityError(`${path} exists and is not a socket; move it away`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw new HostCapabilityError(`another service answers on ${path}; stop it first`);
  rmSync(path);
}
