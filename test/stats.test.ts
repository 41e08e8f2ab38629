import test from 'ava';
import { bootstrapMedianCi, median, percentile, seededRandom, summarize } from '../src/bench/stats.js';

test('percentile interpolates linearly between ranks', (t) => {
  t.is(percentile([1, 2, 3, 4], 50), 2.5);
  t.is(percentile([10, 20, 30, 40, 50], 0), 10);
  t.is(percentile([10, 20, 30, 40, 50], 100), 50);
  t.is(percentile([10, 20, 30, 40, 50], 25), 20);
  // rank 0.95 * 4 = 3.8: 40 + 0.8 * (50 - 40)
  t.is(percentile([10, 20, 30, 40, 50], 95), 48);
  t.is(percentile([7], 95), 7);
  t.true(Number.isNaN(percentile([], 50)));
});

test('median sorts its input and leaves it untouched', (t) => {
  const xs = [3, 1, 2];
  t.is(median(xs), 2);
  t.deepEqual(xs, [3, 1, 2]);
  t.is(median([4, 1, 3, 2]), 2.5);
});

test('summarize: min, median, mean, p95, p99, max of known values', (t) => {
  // 1..11 in a shuffled order: ranks 9.5 (p95) and 9.9 (p99) fall between 10 and 11.
  const s = summarize([7, 3, 11, 1, 9, 5, 2, 10, 4, 8, 6]);
  t.is(s.n, 11);
  t.is(s.minMs, 1);
  t.is(s.medianMs, 6);
  t.is(s.meanMs, 6);
  t.is(s.p95Ms, 10.5);
  t.is(s.p99Ms, 10.9);
  t.is(s.maxMs, 11);
  t.true(s.medianCiMs[0] <= s.medianMs && s.medianMs <= s.medianCiMs[1], `CI ${s.medianCiMs} around ${s.medianMs}`);
});

test('summarize of nothing is all NaN and noisy', (t) => {
  const s = summarize([]);
  t.is(s.n, 0);
  for (const v of [s.minMs, s.medianMs, s.p95Ms, s.p99Ms, s.maxMs, ...s.medianCiMs]) t.true(Number.isNaN(v));
  t.true(s.noisy);
});

test('bootstrap CI of the median: deterministic, contains the median, narrows to a point for equal samples', (t) => {
  const rnd = seededRandom(42);
  const xs = Array.from({ length: 30 }, () => 100 + rnd() * 50);
  const a = bootstrapMedianCi(xs);
  t.deepEqual(bootstrapMedianCi(xs), a, 'same samples, same interval');
  const m = median(xs);
  t.true(a[0] <= m && m <= a[1], `[${a}] contains ${m}`);
  t.true(a[0] >= Math.min(...xs) && a[1] <= Math.max(...xs));
  t.deepEqual(bootstrapMedianCi([5, 5, 5, 5, 5]), [5, 5]);
  t.deepEqual(bootstrapMedianCi([9]), [9, 9]);
  // summarize resamples the sorted samples: the order they were taken in does not matter.
  t.deepEqual(summarize([...xs].reverse()).medianCiMs, summarize(xs).medianCiMs);
});

test('seededRandom repeats its sequence and stays in [0, 1)', (t) => {
  const a = seededRandom(7);
  const b = seededRandom(7);
  for (let i = 0; i < 1000; i++) {
    const x = a();
    t.is(x, b());
    if (x < 0 || x >= 1) t.fail(`${x} out of [0, 1)`);
  }
});

test('noisy: too few samples, a wide spread, or a steady set', (t) => {
  t.true(summarize([10, 10, 10, 10]).noisy, 'fewer than 5 samples');
  t.false(summarize([10, 10, 10, 10, 10, 10]).noisy, 'identical samples');
  t.false(summarize([100, 101, 99, 100, 102, 98, 100, 101, 99, 100]).noisy, 'within 2%');
  t.true(summarize([10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 100, 100]).noisy, 'p95 far above the median');
  t.true(summarize([10, 30, 10, 30, 10, 30, 10, 30, 10, 30]).noisy, 'a median that could be 10 or 30');
});
