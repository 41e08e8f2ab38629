import type { Command } from 'commander';
import os from 'node:os';
import { Hybridbox, type RunResult, type SandboxInfo } from '../api/index.js';
import { HybridboxError, SpecError } from '../errors.js';
import { formatHostInfo } from '../host/format.js';
import { formatPlacement } from '../scheduler/index.js';
import { parseDuration, specFromFlags, type CliRunFlags } from '../spec/index.js';
import { formatBytes, parseKeyValue } from '../util/text.js';

type Opts = Record<string, unknown>;
type Handler = (cmd: Command, args: unknown[], opts: Opts) => Promise<void>;

/** Opens the library for one command and always closes it (the state DB stays consistent). */
async function withHybridbox<T>(opts: Opts, fn: (hb: Hybridbox) => Promise<T>): Promise<T> {
  const hb = await Hybridbox.open({ ociRuntime: opts.runtime as 'crun' | 'runc' });
  try {
    return await fn(hb);
  } finally {
    hb.close();
  }
}

function warn(warnings: string[]): void {
  for (const w of warnings) process.stderr.write(`hybridbox: warning: ${w}\n`);
}

function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

function json(value: unknown): void {
  out(JSON.stringify(value, null, 2));
}

// commander's option names are CliRunFlags' names (camel-cased); this list keeps the two in step.
const RUN_FLAGS = [
  'file',
  'name',
  'env',
  'workdir',
  'user',
  'cpus',
  'memory',
  'pids',
  'ioWeight',
  'deviceReadBps',
  'deviceWriteBps',
  'deviceReadIops',
  'deviceWriteIops',
  'netRate',
  'cpuTime',
  'fileSize',
  'openFiles',
  'tmpfsSize',
  'readOnly',
  'outputLimit',
  'network',
  'volume',
  'isolation',
  'trust',
  'startupBudget',
  'timeout',
  'ownKernel',
] as const satisfies readonly (keyof CliRunFlags)[];

function runFlags(opts: Opts): CliRunFlags {
  return Object.fromEntries(RUN_FLAGS.filter((k) => opts[k] !== undefined).map((k) => [k, opts[k]])) as CliRunFlags;
}

function specInput(args: unknown[], opts: Opts) {
  const [image, command = []] = args as [string | undefined, string[] | undefined];
  // `run IMAGE -- CMD` reaches us with the separator still in place (pass-through options).
  return specFromFlags(runFlags(opts), { image, command: command[0] === '--' ? command.slice(1) : command });
}

/** The exit code a shell would show for a finished workload. */
function shellExitCode(r: { exitCode: number | null; signal: string | null }): number {
  if (r.exitCode !== null) return r.exitCode;
  return 128 + (r.signal ? (os.constants.signals[r.signal as NodeJS.Signals] ?? 9) : 1);
}

const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * A foreground run forwards SIGINT, SIGTERM and SIGHUP to its workload, as `docker run`
 * does, and keeps waiting for its end (so the exit is recorded and `--rm` removes it). A
 * signal before the sandbox exists aborts the run instead; the third signal kills it.
 */
function forwardSignals(hb: Hybridbox): { abort: AbortSignal; attach(id: string): void; dispose(): void } {
  const ac = new AbortController();
  let id: string | null = null;
  let count = 0;
  const handler = (sig: NodeJS.Signals): void => {
    count++;
    if (id === null) return ac.abort();
    const to = count >= 3 ? 'KILL' : (sig.slice(3) as 'INT' | 'TERM' | 'HUP');
    hb.sandboxes.kill(id, to).catch(() => undefined);
  };
  for (const s of FORWARDED) process.on(s, handler);
  return {
    abort: ac.signal,
    attach: (sandboxId) => {
      id = sandboxId;
    },
    dispose: () => {
      for (const s of FORWARDED) process.off(s, handler);
    },
  };
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function ago(ms: number | null): string {
  if (ms === null) return '-';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

function status(s: SandboxInfo): string {
  if (s.state === 'exited') {
    const how = s.oomKilled ? ' (OOM)' : s.timedOut ? ' (timeout)' : '';
    return `exited ${s.exitCode ?? s.signal ?? '?'}${how}`;
  }
  return s.state;
}

async function registryCommand(verb: 'push' | 'pull', ref: string, opts: Opts): Promise<void> {
  await withHybridbox(opts, async (hb) => {
    const r = await hb.images[verb](ref, {
      registry: opts.registry as string | undefined,
      remoteRef: opts.remote as string | undefined,
      withVmDisk: opts.withVmDisk === true,
      progress: opts.json ? 'none' : opts.quiet ? 'quiet' : 'auto',
    });
    if (opts.json) json(r);
  });
}

function benchCommand(load: () => Promise<(hb: Hybridbox, opts: Opts) => Promise<void>>): Handler {
  return async (_cmd, _args, opts) => {
    const fn = await load();
    await withHybridbox(opts, (hb) => fn(hb, opts));
  };
}

export const commands: Record<string, Handler> = {
  async info(_cmd, _args, opts) {
    await withHybridbox(opts, async (hb) => {
      const info = hb.info();
      if (opts.json) return json(info);
      out(formatHostInfo(info.host));
      out('\nbackends:');
      for (const b of info.backends) {
        out(`  ${b.kind.padEnd(9)} ${b.available ? 'available' : `unavailable: ${b.reason}`}`);
        for (const [k, v] of Object.entries(b)) {
          if (!['kind', 'summary', 'available', 'reason'].includes(k)) out(`  ${''.padEnd(9)} ${k}: ${String(v)}`);
        }
      }
    });
  },

  async setup(_cmd, _args, opts) {
    await withHybridbox(opts, async (hb) => {
      await hb.images.ensureBase();
      // debian:bookworm and the runtimes need Debian's mirror; without it, everything
      // busybox-based still works.
      try {
        await hb.images.ensureBase('debian:bookworm');
        if (opts.runtimes !== false) {
          const { ensureRuntimeImages } = await import('../languages/index.js');
          for (const r of await ensureRuntimeImages(hb)) {
            if (r.source !== 'present')
              process.stderr.write(`hybridbox: ${r.ref} (${r.runtimes.join(', ')}): ${r.source === 'built' ? 'built' : 'imported from the cache'} in ${(r.ms / 1000).toFixed(1)} s\n`);
          }
        }
      } catch (e) {
        process.stderr.write(`hybridbox: warning: the Debian images were not all built: ${(e as Error).message}\n`);
      }
      out(`images: ${hb.images.list().join(', ')}`);
    });
  },

  async runtimes(_cmd, _args, opts) {
    await withHybridbox(opts, async (hb) => {
      const { listRuntimes } = await import('../languages/index.js');
      const list = await listRuntimes(hb);
      if (opts.json) return json(list);
      out(
        table([
          ['RUNTIME', 'VERSION', 'ALIASES', 'IMAGE', 'COMPILE', 'RUN'],
          ...list.map((r) => [r.name, r.version ?? 'not built (run `hybridbox setup`)', r.aliases.join(', '), r.image, r.compile?.join(' ') ?? '-', r.run.join(' ')]),
        ]),
      );
    });
  },

  async place(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const p = hb.placement.place(specInput(args, opts));
      if (opts.json) json(p);
      else out(formatPlacement(p));
    });
  },

  async run(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const input = specInput(args, opts);
      if (opts.detach) {
        if (opts.interactive) throw new SpecError('interactive', true, 'a detached sandbox has no standard input; drop -i or -d');
        const info = await hb.sandboxes.runDetached(input);
        warn(info.warnings);
        if (opts.json) json(info);
        else out(info.id);
        return;
      }
      const stream = !opts.json;
      const forward = forwardSignals(hb);
      let r: RunResult;
      try {
        r = await hb.sandboxes.run(input, {
          remove: !!opts.rm,
          stdin: opts.interactive ? process.stdin : null,
          signal: forward.abort,
          onCreated: (s) => forward.attach(s.id),
          onStdout: stream ? (c) => process.stdout.write(c) : undefined,
          onStderr: stream ? (c) => process.stderr.write(c) : undefined,
        });
      } finally {
        forward.dispose();
      }
      if (opts.json) json(r);
      else {
        warn(r.warnings);
        if (r.oomKilled) process.stderr.write(`hybridbox: sandbox ${r.name} was killed: out of memory (limit reached)\n`);
        if (r.timedOut) process.stderr.write(`hybridbox: sandbox ${r.name} was stopped: its time limit ran out (exit 124)\n`);
        if (r.cpuTimeLimitExceeded) process.stderr.write(`hybridbox: sandbox ${r.name} was killed: its CPU time limit ran out (${r.cpuTimeMs} ms used)\n`);
        if (r.fileSizeLimitExceeded) process.stderr.write(`hybridbox: sandbox ${r.name} was killed by SIGXFSZ: a file reached its size limit\n`);
        if (r.outputLimitStream) process.stderr.write(`hybridbox: sandbox ${r.name} was killed: its ${r.outputLimitStream} passed the output limit (what came before it is kept)\n`);
        if (r.crash) process.stderr.write(`hybridbox: sandbox ${r.name} crashed: ${r.crash}\n`);
      }
      // A crash has no workload exit code: report it as hybridbox's own failure.
      process.exitCode = r.crash ? 125 : shellExitCode(r);
    });
  },

  async create(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const info = await hb.sandboxes.create(specInput(args, opts));
      warn(info.warnings);
      out(info.id);
    });
  },

  async start(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      for (const ref of args[0] as string[]) out((await hb.sandboxes.start(ref)).id);
    });
  },

  async stop(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const graceMs = parseDuration(String(opts.time), 'time');
      for (const ref of args[0] as string[]) out((await hb.sandboxes.stop(ref, { graceMs })).id);
    });
  },

  async rm(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      let failed: unknown;
      for (const ref of args[0] as string[]) {
        try {
          await hb.sandboxes.remove(ref, { force: !!opts.force });
          out(ref);
        } catch (e) {
          if (!(e instanceof HybridboxError)) throw e;
          process.stderr.write(`hybridbox: ${e.message}\n`);
          failed = e;
        }
      }
      if (failed) process.exitCode = 125;
    });
  },

  async ps(_cmd, _args, opts) {
    await withHybridbox(opts, async (hb) => {
      const list = await hb.sandboxes.list({ all: !!opts.all });
      if (opts.json) return json(list);
      const rows = [['ID', 'NAME', 'BACKEND', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS', 'IP']];
      for (const s of list) {
        const cmd = (s.command ?? []).join(' ');
        rows.push([s.id, s.name, s.backend, s.image, cmd.length > 24 ? cmd.slice(0, 21) + '...' : cmd, ago(s.createdAtMs), status(s), s.ip ?? '-']);
      }
      out(table(rows));
    });
  },

  async logs(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      await hb.sandboxes.logs(args[0] as string, {
        follow: !!opts.follow,
        signal: ac.signal,
        onStdout: (c) => process.stdout.write(c),
        onStderr: (c) => process.stderr.write(c),
      });
    });
  },

  async exec(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const env = Object.fromEntries(((opts.env as string[] | undefined) ?? []).map((kv) => parseKeyValue(kv, '--env', '--env LANG=C.UTF-8')));
      const argv = args[1] as string[];
      const r = await hb.sandboxes.exec(args[0] as string, argv[0] === '--' ? argv.slice(1) : argv, {
        env,
        workdir: opts.workdir as string | undefined,
        user: opts.user as string | undefined,
        stdin: opts.interactive ? process.stdin : undefined,
        onStdout: (c) => process.stdout.write(c),
        onStderr: (c) => process.stderr.write(c),
      });
      process.exitCode = r.exitCode ?? 128 + (r.signal ? (os.constants.signals[r.signal as NodeJS.Signals] ?? 9) : 1);
    });
  },

  async inspect(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      json(await hb.sandboxes.inspect(args[0] as string));
    });
  },

  async images(_cmd, _args, opts) {
    await withHybridbox(opts, async (hb) => {
      const list = [];
      for (const { ref, digest } of hb.images.entries()) {
        const d = await hb.images.inspect(ref);
        list.push({ ref, digest, layers: d.manifest.layers.length, sizeBytes: d.sizeBytes, created: d.config.created ?? null });
      }
      if (opts.json) return json(list);
      out(table([['IMAGE', 'DIGEST', 'LAYERS', 'SIZE'], ...list.map((i) => [i.ref, i.digest.slice(0, 19), String(i.layers), formatBytes(i.sizeBytes)])]));
    });
  },

  async imageInspect(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      json(await hb.images.inspect(args[0] as string));
    });
  },

  async imageRm(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      for (const ref of args[0] as string[]) out(`untagged ${ref} (${(await hb.images.remove(ref, { force: opts.force === true })).slice(0, 19)})`);
    });
  },

  async push(_cmd, args, opts) {
    await registryCommand('push', args[0] as string, opts);
  },

  async pull(_cmd, args, opts) {
    await registryCommand('pull', args[0] as string, opts);
  },

  async imageImport(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const r = await hb.images.import(args[0] as string, { ref: opts.tag as string | undefined });
      for (const i of r.images) out(`imported ${i.ref} (${i.manifest.digest.slice(0, 19)}) from a ${r.format} archive`);
    });
  },

  async imageExport(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      const r = await hb.images.export(args[0] as string[], opts.output as string, { format: opts.format as 'oci' | 'docker' });
      out(`wrote ${r.images.map((i) => i.ref).join(', ')} to ${opts.output as string} (${r.format} archive, ${formatBytes(r.bytes)})`);
    });
  },

  async imagePrune(_cmd, _args, opts) {
    await withHybridbox(opts, async (hb) => {
      const r = await hb.images.prune();
      out(`removed ${r.blobs} blobs, ${r.layers} unpacked layers, ${r.disks} VM disks; freed ${formatBytes(r.bytesFreed)} of blobs and disks`);
    });
  },

  async tag(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      await hb.images.tag(args[0] as string, args[1] as string);
    });
  },

  async build(_cmd, args, opts) {
    const { resolve, join } = await import('node:path');
    const context = resolve(args[0] as string);
    const tags = (opts.tag as string[] | undefined) ?? [];
    const buildArgs = Object.fromEntries(((opts.buildArg as string[] | undefined) ?? []).map((kv) => parseKeyValue(kv, '--build-arg', '--build-arg VERSION=1.2')));
    const quiet = opts.quiet === true || opts.json === true;
    await withHybridbox(opts, async (hb) => {
      const r = await hb.images.build({
        file: opts.file ? resolve(opts.file as string) : join(context, 'Sandboxfile'),
        contextDir: context,
        tags,
        buildArgs,
        network: opts.network as 'none' | 'bridge',
        noCache: opts.cache === false,
        onLog: quiet ? undefined : (line) => process.stderr.write(`${line}\n`),
        onOutput: quiet ? undefined : (chunk) => process.stderr.write(chunk),
      });
      if (opts.json) return json(r);
      if (!quiet)
        process.stderr.write(
          `built ${r.digest} in ${(r.durationMs / 1000).toFixed(2)} s (${r.steps.filter((s) => s.cached).length} cached steps)${r.tags.length ? `; tagged ${r.tags.join(', ')}` : ''}\n`,
        );
      out(r.digest);
    });
  },

  // Each benchmark lives in src/bench/commands/<name>.ts, loaded only when asked for.
  benchStartup: benchCommand(async () => (await import('../bench/commands/startup.js')).benchStartup),
  benchIsolation: benchCommand(async () => (await import('../bench/commands/isolation.js')).benchIsolation),
  benchService: benchCommand(async () => (await import('../bench/commands/service.js')).benchService),
  benchDensity: benchCommand(async () => (await import('../bench/commands/density.js')).benchDensity),
  report: benchCommand(async () => (await import('../bench/commands/report.js')).report),

  async demo(_cmd, _args, opts) {
    const { runDemo } = await import('./demo.js');
    await runDemo(opts.runtime as 'crun' | 'runc');
  },

  async monitor(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      await hb.sandboxes.monitor(args[0] as string);
    });
  },

  async reap(_cmd, args, opts) {
    await withHybridbox(opts, async (hb) => {
      await hb.sandboxes.reap(args[0] as string);
    });
  },
};
