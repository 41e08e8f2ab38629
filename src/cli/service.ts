// The CLI verbs of the HTTP service: `serve` runs it, `keys` manages its API keys (straight
// in its database: only root, who owns the state root, can). Loaded only by these verbs.
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { Hybridbox } from '../api/index.js';
import { SpecError } from '../errors.js';
import { parseDuration, parseSize } from '../spec/index.js';
import { stateRoot } from '../util/paths.js';
import { VERSION } from './version.js';

type Opts = Record<string, unknown>;
type Handler = (cmd: Command, args: unknown[], opts: Opts) => Promise<void>;

function parseGroup(g: string): number {
  if (/^\d+$/.test(g)) return Number(g);
  const line = readFileSync('/etc/group', 'utf8')
    .split('\n')
    .find((l: string) => l.split(':')[0] === g);
  if (!line) throw new SpecError('--socket-group', g, 'a group name from /etc/group or a numeric gid');
  return Number(line.split(':')[2]);
}

function positiveInt(v: unknown, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new SpecError(flag, v, 'a whole number above 0');
  return n;
}

export const serviceCommands: Record<string, Handler> = {
  async serve(_cmd, _args, opts) {
    const { startService } = await import('../service/index.js');
    if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) throw new SpecError('--tls-cert', opts.tlsCert ?? opts.tlsKey, 'give both --tls-cert and --tls-key');
    if (opts.tlsCert && String(opts.listen ?? '').startsWith('/')) throw new SpecError('--tls-cert', opts.tlsCert, 'TLS is for a TCP --listen HOST:PORT, not the unix socket');
    const hb = await Hybridbox.open({ ociRuntime: opts.runtime as 'crun' | 'runc' });
    const svc = await startService({
      hb,
      ...(opts.listen ? { listen: String(opts.listen) } : {}),
      ...(opts.socketGroup ? { socketGroup: parseGroup(String(opts.socketGroup)) } : {}),
      ...(opts.tlsCert ? { tls: { certFile: String(opts.tlsCert), keyFile: String(opts.tlsKey) } } : {}),
      ...(opts.maxQueued ? { maxQueued: positiveInt(opts.maxQueued, '--max-queued')! } : {}),
      callbackAllow: ((opts.callbackAllow as string[] | undefined) ?? []).flatMap((s) => s.split(',')).filter(Boolean),
      version: VERSION,
    });
    process.stderr.write(
      `hybridbox serve: listening on ${svc.address}${svc.recovered.requeued || svc.recovered.failed ? ` (recovered: ${svc.recovered.requeued} queued run(s) requeued, ${svc.recovered.failed} in-flight run(s) ended as internal-error)` : ''}\n`,
    );
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        process.stderr.write(`hybridbox serve: ${sig}: finishing running runs, then stopping\n`);
        void svc.close().finally(() => {
          hb.close();
          resolve();
        });
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
  },

  async keysCreate(_cmd, _args, opts) {
    const { createKey, ServiceStore } = await import('../service/index.js');
    const store = new ServiceStore(stateRoot());
    try {
      const quota = {
        ...(opts.maxConcurrent !== undefined ? { maxConcurrent: positiveInt(opts.maxConcurrent, '--max-concurrent')! } : {}),
        ...(opts.rate !== undefined ? { ratePerMin: parseRate(String(opts.rate)) } : {}),
        ...(opts.maxMemory !== undefined ? { maxMemoryMiB: Math.floor(parseSize(String(opts.maxMemory), '--max-memory') / 1048576) } : {}),
        ...(opts.maxCpuTime !== undefined ? { maxCpuTimeMs: parseDuration(String(opts.maxCpuTime), '--max-cpu-time') } : {}),
      };
      const k = createKey(store, { name: String(opts.name), scope: String(opts.scope ?? 'run'), quota });
      process.stderr.write(`hybridbox: key ${k.name} (${k.id}) created; this is the only time its secret is shown:\n`);
      process.stdout.write(`${k.secret}\n`);
    } finally {
      store.close();
    }
  },

  async keysLs(_cmd, _args, opts) {
    const { ServiceStore } = await import('../service/index.js');
    const store = new ServiceStore(stateRoot());
    try {
      const keys = store.listKeys().map((k) => ({ id: k.id, name: k.name, scope: k.scope, quota: k.quota, createdAt: new Date(k.createdAtMs).toISOString() }));
      if (opts.json) process.stdout.write(`${JSON.stringify(keys, null, 2)}\n`);
      else {
        process.stdout.write('ID             NAME                 SCOPE      QUOTA\n');
        for (const k of keys) {
          const q =
            Object.entries(k.quota)
              .map(([a, b]) => `${a}=${b}`)
              .join(' ') || '-';
          process.stdout.write(`${k.id.padEnd(14)} ${k.name.padEnd(20)} ${k.scope.padEnd(10)} ${q}\n`);
        }
      }
    } finally {
      store.close();
    }
  },

  async keysRm(_cmd, args) {
    const { ServiceStore } = await import('../service/index.js');
    const store = new ServiceStore(stateRoot());
    try {
      for (const ref of args[0] as string[]) if (!store.deleteKey(ref)) throw new SpecError('key', ref, 'a key id or name from `hybridbox keys ls`');
    } finally {
      store.close();
    }
  },
};

/** `60/min`, `10/s`, `100/h` → requests per minute. */
function parseRate(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\/(s|sec|min|m|h|hour)$/.exec(text.trim());
  if (!m || Number(m[1]) <= 0) throw new SpecError('--rate', text, 'a rate such as 60/min, 2/s or 1000/h');
  const per = { s: 1 / 60, sec: 1 / 60, min: 1, m: 1, h: 60, hour: 60 }[m[2] as 's'];
  return Number(m[1]) / per;
}
