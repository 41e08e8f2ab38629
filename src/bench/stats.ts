import type { Stats } from '../measurements/index.js';

/** The p-th percentile (0..100) of sorted values, linearly interpolated between ranks. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

export function median(values: readonly number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

/**
 * A small seeded PRNG (mulberry32): the bootstrap must give the same interval for the same
 * samples, or reports would change from one rendering to the next.
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Percentile bootstrap interval of the median: resample with replacement `rounds` times. */
export function bootstrapMedianCi(values: readonly number[], opts: { rounds?: number; confidence?: number; seed?: number } = {}): [number, number] {
  const n = values.length;
  if (n === 0) return [NaN, NaN];
  if (n === 1) return [values[0]!, values[0]!];
  const rounds = opts.rounds ?? 2000;
  const rnd = seededRandom(opts.seed ?? 0x5eed);
  const medians = new Float64Array(rounds);
  const sample = new Float64Array(n);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < n; i++) sample[i] = values[Math.floor(rnd() * n)]!;
    sample.sort();
    medians[r] = percentile(sample as unknown as number[], 50);
  }
  medians.sort();
  const alpha = (1 - (opts.confidence ?? 0.95)) / 2;
  const m = medians as unknown as number[];
  return [percentile(m, alpha * 100), percentile(m, (1 - alpha) * 100)];
}

const round1 = (x: number): number => Math.round(x * 10) / 10;

/**
 * Summary statistics of timings. `noisy` flags a run whose numbers should not be read
 * closely: the median's confidence interval spans more than 20% of it, or p95 is more
 * than twice the median.
 */
export function summarize(values: readonly number[]): Stats {
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  if (n === 0) {
    return { n: 0, minMs: NaN, medianMs: NaN, meanMs: NaN, p95Ms: NaN, p99Ms: NaN, maxMs: NaN, medianCiMs: [NaN, NaN], noisy: true };
  }
  const med = percentile(sorted, 50);
  const ci = bootstrapMedianCi(sorted);
  const p95 = percentile(sorted, 95);
  return {
    n,
    minMs: round1(sorted[0]!),
    medianMs: round1(med),
    meanMs: round1(sorted.reduce((a, b) => a + b, 0) / n),
    p95Ms: round1(p95),
    p99Ms: round1(percentile(sorted, 99)),
    maxMs: round1(sorted[n - 1]!),
    medianCiMs: [round1(ci[0]), round1(ci[1])],
    noisy: n < 5 || (med > 0 && ((ci[1] - ci[0]) / med > 0.2 || p95 / med > 2)),
  };
}
