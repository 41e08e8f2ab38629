// Bounded parallelism that fails as a unit: the first error aborts the tasks still running
// (through their signal) and is thrown once every task has settled, so nothing keeps writing
// after a push or pull has returned.

/** Runs `fn` over `items`, at most `limit` at a time. */
export async function runLimited<T>(items: readonly T[], limit: number, fn: (item: T, signal: AbortSignal) => Promise<void>, parent?: AbortSignal): Promise<void> {
  if (items.length === 0) return;
  const controller = new AbortController();
  const onParentAbort = () => controller.abort(parent?.reason);
  if (parent?.aborted) onParentAbort();
  parent?.addEventListener('abort', onParentAbort, { once: true });
  let next = 0;
  let firstError: { err: unknown } | undefined;
  const worker = async () => {
    while (!firstError && !controller.signal.aborted && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item, controller.signal);
      } catch (err) {
        if (!firstError) {
          firstError = { err };
          controller.abort(err);
        }
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  } finally {
    parent?.removeEventListener('abort', onParentAbort);
  }
  if (firstError) throw firstError.err;
  parent?.throwIfAborted();
}

/** Like Promise.all over a mapping, `limit` at a time, results in input order. */
export async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T, signal: AbortSignal) => Promise<R>, parent?: AbortSignal): Promise<R[]> {
  const out = new Array<R>(items.length);
  const indexed = items.map((item, i) => ({ item, i }));
  await runLimited(indexed, limit, async ({ item, i }, signal) => void (out[i] = await fn(item, signal)), parent);
  return out;
}
