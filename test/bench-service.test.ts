import test from 'ava';
import { runServiceBench, summarizeService } from '../src/bench/service/index.js';
import { freshHybridbox } from './helpers.js';

test('bench service runs end to end and its result is well formed', async (t) => {
  const { hb, cleanup } = await freshHybridbox('hbx-bench-svc-');
  try {
    const r = await runServiceBench(hb, { runs: 3, throughputRuns: 4 });
    t.is(r.kind, 'service');
    t.is(r.overhead.apiMs.n, 3);
    t.is(r.overhead.libraryMs.n, 3);
    t.true(Number.isFinite(r.overhead.medianOverheadMs));
    t.deepEqual(
      r.throughput.map((x) => `${x.backend}@${x.concurrency}`),
      ['container@1', 'container@4', 'container@16', 'microvm@1', 'microvm@4'],
    );
    for (const x of r.throughput) t.true(x.runsPerSecond > 0 && x.p99Ms >= x.p50Ms);
    t.true(r.cli.ratioToFloor !== null && r.cli.ratioToFloor > 0);
    t.deepEqual(summarizeService(r), r.summary);
    hb.measurements.save(r);
    t.is(hb.measurements.latest('service')?.id, r.id);
    t.deepEqual(await hb.sandboxes.list({ all: true }), []);
  } finally {
    await cleanup();
  }
});
