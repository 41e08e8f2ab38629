// `hybridbox bench service`: what the HTTP front door costs. A trivial run (`echo ok`)
// through the API and through the library in the same process, interleaved so both see the
// same host; throughput at several concurrencies; and the CLI through the service against
// the floor it stands on (`node -e 0` plus a raw `crun run`).
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type { Hybridbox } from '../../api/index.js';
import { Client } from '../../client/index.js';
import { HybridboxError } from '../../errors.js';
import type { ServiceBenchResult, ServiceThroughput } from '../../measurements/index.js';
import { type Service, startService } from '../../service/index.js';
import type { BackendKind } from '../../spec/index.js';
import { packageRoot } from '../../util/paths.js';
import { describeHost } from '../host.js';
import { median, percentile, summarize } from '../stats.js';
import { timedSpawn } from '../startup/proc.js';
import { crunRawScenario } from '../startup/raw.js';

export interface ServiceBenchOptions {
  /** Interleaved pairs (API, library) for the overhead. @default 30 */
  runs?: number;
  /** Runs per throughput point. @default 40 (containers), 8 (microVMs) */
  throughputRuns?: number;
  image?: string;
  log?: (line: string) => void;
}

const ECHO = ['sh', '-c', 'echo ok'];

export async function runServiceBench(hb: Hybridbox, o: ServiceBenchOptions): Promise<ServiceBenchResult> {
  const log = o.log ?? (() => undefined);
  const image = o.image ?? 'busybox';
  const runs = o.runs ?? 30;
  const t0 = Date.now();
  const work = mkdtempSync(join(os.tmpdir(), 'hbx-bench-service-'));
  const sock = join(work, 'api.sock');
  let svc: Service | null = null;
  try {
    // Keyless over a root-only socket: the auth path is the same code, minus the hash lookup.
    svc = await startService({ hb, listen: sock, version: 'bench', maxQueued: 4096 });
    const client = new Client({ host: `unix://${sock}` });
    const req = (isolation: BackendKind) => ({ image, command: ECHO, isolation, trust: 'trusted' as const });

    log(`bench service: ${runs} interleaved pairs of echo ok (container), through the API and through the library`);
    const api: number[] = [];
    const lib: number[] = [];
    for (let i = 0; i < runs + 2; i++) {
      const order = i % 2 === 0 ? (['api', 'lib'] as const) : (['lib', 'api'] as const);
      for (const which of order) {
        const s = performance.now();
        if (which === 'api') {
          const r = await client.runs.create(req('container'), { waitMs: 60_000 });
          if (r.result?.verdict !== 'accepted') throw new HybridboxError(`bench service: a run through the API failed: ${r.reason ?? r.result?.message}`);
        } else {
          const r = await hb.sandboxes.run({ ...req('container'), name: undefined, network: 'none' }, { remove: true });
          if (r.exitCode !== 0) throw new HybridboxError(`bench service: a library run failed: ${r.stderr}`);
        }
        // The first pair warms both paths up.
        if (i >= 2) (which === 'api' ? api : lib).push(performance.now() - s);
      }
    }
    const overheadMs = median(api) - median(lib);

    const throughput: ServiceThroughput[] = [];
    for (const [backend, levels, n] of [
      ['container', [1, 4, 16], o.throughputRuns ?? 40],
      ['microvm', [1, 4], Math.max(4, Math.round((o.throughputRuns ?? 40) / 5))],
    ] as const) {
      if (!hb.info().backends.find((b) => b.kind === backend)?.available) continue;
      for (const c of levels) {
        log(`bench service: ${n} ${backend} runs at concurrency ${c}`);
        const lat: number[] = [];
        let next = 0;
        const s = performance.now();
        await Promise.all(
          Array.from({ length: c }, async () => {
            while (next < n) {
              next++;
              const a = performance.now();
              const r = await client.runs.create(req(backend), { waitMs: 60_000 });
              const done = r.status === 'queued' || r.status === 'running' ? await client.runs.get(r.id, { waitMs: 60_000 }) : r;
              if (done.result?.verdict !== 'accepted') throw new HybridboxError(`bench service: a ${backend} run failed: ${done.reason ?? done.result?.message}`);
              lat.push(performance.now() - a);
            }
          }),
        );
        const secs = (performance.now() - s) / 1000;
        lat.sort((x, y) => x - y);
        throughput.push({ backend, concurrency: c, runs: n, runsPerSecond: n / secs, p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99) });
      }
    }

    log('bench service: the CLI through the service against node -e 0 plus a raw crun run');
    // The installed command (package.json bin), as a user runs it.
    const cli = join(packageRoot(), 'dist', 'hybridbox.cjs');
    const shim = process.env.HYBRIDBOX_SHIM ?? join(packageRoot(), 'dist', 'hbx-shim');
    if (!existsSync(shim)) throw new HybridboxError(`${shim} is missing; run \`npm run build\` first`);
    const crun = crunRawScenario({ hb, image, command: 'echo ok', work, shim });
    const why = await crun.prepare();
    const cliMs: number[] = [];
    const nodeMs: number[] = [];
    const crunMs: number[] = [];
    try {
      for (let i = 0; i < runs + 2; i++) {
        const c = await timedSpawn(process.execPath, [cli, '--host', `unix://${sock}`, 'run', '--isolation', 'container', '--trust', 'trusted', image, ...ECHO]);
        if (c.code !== 0) throw new HybridboxError(`bench service: the CLI through the service failed: ${c.stderr.trim()}`);
        const n = await timedSpawn(process.execPath, ['-e', '0']);
        const r = why ? null : await crun.once();
        if (i < 2) continue;
        cliMs.push(c.closeMs);
        nodeMs.push(n.closeMs);
        if (r) crunMs.push(r.totalMs);
      }
    } finally {
      await crun.cleanup();
    }
    const floor = crunMs.length ? median(nodeMs) + median(crunMs) : null;
    const result: ServiceBenchResult = {
      kind: 'service',
      startedAtMs: t0,
      durationMs: Date.now() - t0,
      host: await describeHost(hb.host),
      options: { runs, image },
      overhead: { apiMs: summarize(api), libraryMs: summarize(lib), medianOverheadMs: overheadMs },
      throughput,
      cli: { throughServiceMs: summarize(cliMs), nodeMs: summarize(nodeMs), crunRawMs: crunMs.length ? summarize(crunMs) : null, ratioToFloor: floor ? median(cliMs) / floor : null, crunSkipped: why },
      summary: [],
    };
    result.summary = summarizeService(result);
    return result;
  } finally {
    await svc?.close();
    rmSync(work, { recursive: true, force: true });
  }
}

export function summarizeService(r: ServiceBenchResult): string[] {
  const f = (x: number) => x.toFixed(1);
  const out = [
    `A trivial container run took ${f(r.overhead.apiMs.medianMs)} ms through the API and ${f(r.overhead.libraryMs.medianMs)} ms through the library (medians, interleaved): the service adds ${f(r.overhead.medianOverheadMs)} ms per run (target <= 5 ms).`,
  ];
  for (const t of r.throughput) out.push(`${t.backend} at concurrency ${t.concurrency}: ${t.runsPerSecond.toFixed(2)} runs/s, latency p50 ${f(t.p50Ms)} ms, p99 ${f(t.p99Ms)} ms.`);
  if (r.cli.ratioToFloor !== null) {
    out.push(
      `The CLI through the service took ${f(r.cli.throughServiceMs.medianMs)} ms against ${f(r.cli.nodeMs.medianMs)} ms for node -e 0 plus ${f(r.cli.crunRawMs!.medianMs)} ms for a raw crun run: ${r.cli.ratioToFloor.toFixed(2)}x that floor (target <= 1.3x).`,
    );
  } else out.push(`The raw crun baseline was skipped: ${r.cli.crunSkipped}.`);
  return out;
}
