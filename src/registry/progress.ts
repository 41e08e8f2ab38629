// Progress of a push or pull: what the transfer code reports, and two ways of showing it.
// A terminal gets bars redrawn in place; anything else gets one line per blob; --quiet only
// the summary.
import { formatBytes } from '../util/text.js';

export type BlobKind = 'layer' | 'config' | 'manifest' | 'vm disk';

export interface BlobInfo {
  digest: string;
  kind: BlobKind;
  sizeBytes: number;
}

export interface TransferPlan {
  operation: 'push' | 'pull';
  /** Local name:tag. */
  ref: string;
  /** s3://bucket/prefix (and the remote name:tag when it differs from `ref`). */
  registry: string;
  /** Blobs that will move, and the bytes they hold. */
  blobsToTransfer: number;
  bytesToTransfer: number;
  /** Blobs already at the destination. */
  blobsSkipped: number;
  bytesSkipped: number;
}

export interface TransferSummary {
  operation: 'push' | 'pull';
  ref: string;
  registry: string;
  blobsTransferred: number;
  bytesTransferred: number;
  blobsSkipped: number;
  bytesSkipped: number;
  durationMs: number;
}

/**
 * Calls arrive in this order: `plan`, then per blob either `skipped`, or `start`, any number
 * of `bytes`, and `done` (several blobs may be in flight at once), then `finish` once, with
 * the summary on success or the error.
 */
export interface ProgressReporter {
  plan(plan: TransferPlan): void;
  skipped(blob: BlobInfo): void;
  start(blob: BlobInfo): void;
  bytes(blob: BlobInfo, deltaBytes: number): void;
  done(blob: BlobInfo): void;
  finish(summary: TransferSummary | undefined, error?: unknown): void;
}

export interface TransferSplit<B extends BlobInfo> {
  /** Blobs to move, in their given order. */
  missing: B[];
  skipped: B[];
  bytesMissing: number;
  bytesSkipped: number;
  /** The summary for the reporter once everything has moved. */
  summary(durationMs: number): TransferSummary;
}

/** Splits an operation's blobs into those to move and those already there, and tells `progress`. */
export function planTransfer<B extends BlobInfo>(
  progress: ProgressReporter,
  head: { operation: 'push' | 'pull'; ref: string; registry: string },
  blobs: readonly B[],
  isThere: (b: B, index: number) => boolean,
): TransferSplit<B> {
  const missing = blobs.filter((b, i) => !isThere(b, i));
  const skipped = blobs.filter((b, i) => isThere(b, i));
  const sum = (bs: B[]) => bs.reduce((n, b) => n + b.sizeBytes, 0);
  const split = { missing, skipped, bytesMissing: sum(missing), bytesSkipped: sum(skipped) };
  progress.plan({ ...head, blobsToTransfer: missing.length, bytesToTransfer: split.bytesMissing, blobsSkipped: skipped.length, bytesSkipped: split.bytesSkipped });
  for (const b of skipped) progress.skipped(b);
  return {
    ...split,
    summary: (durationMs) => ({
      ...head,
      blobsTransferred: missing.length,
      bytesTransferred: split.bytesMissing,
      blobsSkipped: skipped.length,
      bytesSkipped: split.bytesSkipped,
      durationMs,
    }),
  };
}

export const silentProgress: ProgressReporter = {
  plan() {},
  skipped() {},
  start() {},
  bytes() {},
  done() {},
  finish() {},
};

// ---------------------------------------------------------------------------
// formatting

export function formatRate(bytes: number, ms: number): string {
  return ms <= 0 ? '-' : `${formatBytes(Math.round((bytes * 1000) / ms))}/s`;
}

function formatEta(remainingBytes: number, bytesPerMs: number): string {
  if (bytesPerMs <= 0 || !Number.isFinite(bytesPerMs)) return '--:--';
  const s = Math.ceil(remainingBytes / bytesPerMs / 1000);
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m` : `${m}:${String(s % 60).padStart(2, '0')}`;
}

const shortDigest = (d: string) => d.replace(/^sha256:/, '').slice(0, 12);
const seconds = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
const verb = (op: 'push' | 'pull', past: boolean) => (op === 'push' ? (past ? 'uploaded' : 'uploading') : past ? 'downloaded' : 'downloading');

function blobLabel(b: BlobInfo): string {
  return `${b.kind.padEnd(8)} ${shortDigest(b.digest)}`;
}

export function summaryLine(s: TransferSummary): string {
  const what = s.operation === 'push' ? `pushed ${s.ref} to ${s.registry}` : `pulled ${s.ref} from ${s.registry}`;
  return (
    `${what}: ${s.blobsTransferred} blob${s.blobsTransferred === 1 ? '' : 's'} ${verb(s.operation, true)} (${formatBytes(s.bytesTransferred)}), ` +
    `${s.blobsSkipped} already there (${formatBytes(s.bytesSkipped)}) in ${seconds(s.durationMs)}` +
    (s.bytesTransferred > 0 ? ` (${formatRate(s.bytesTransferred, s.durationMs)})` : '')
  );
}

interface Writable {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

// ---------------------------------------------------------------------------
// plain lines

/** One line per blob start and finish (none with `quiet`), and the summary. */
export class LineProgress implements ProgressReporter {
  private op: 'push' | 'pull' = 'push';
  private readonly started = new Map<string, number>();

  constructor(
    private readonly out: Writable = process.stderr,
    private readonly quiet = false,
  ) {}

  private line(s: string): void {
    if (!this.quiet) this.out.write(`${s}\n`);
  }

  plan(p: TransferPlan): void {
    this.op = p.operation;
    this.line(
      `${p.operation} ${p.ref} ${p.operation === 'push' ? 'to' : 'from'} ${p.registry}: ${p.blobsToTransfer} blob${p.blobsToTransfer === 1 ? '' : 's'} to ${p.operation === 'push' ? 'upload' : 'download'} ` +
        `(${formatBytes(p.bytesToTransfer)}), ${p.blobsSkipped} already there (${formatBytes(p.bytesSkipped)})`,
    );
  }
  skipped(b: BlobInfo): void {
    this.line(`exists      ${blobLabel(b)} ${formatBytes(b.sizeBytes)}`);
  }
  start(b: BlobInfo): void {
    this.started.set(b.digest, performance.now());
    this.line(`${verb(this.op, false).padEnd(11)} ${blobLabel(b)} ${formatBytes(b.sizeBytes)}`);
  }
  bytes(): void {}
  done(b: BlobInfo): void {
    const ms = performance.now() - (this.started.get(b.digest) ?? performance.now());
    this.line(`${verb(this.op, true).padEnd(11)} ${blobLabel(b)} ${formatBytes(b.sizeBytes)} in ${seconds(ms)} (${formatRate(b.sizeBytes, ms)})`);
  }
  finish(s: TransferSummary | undefined): void {
    if (s) this.out.write(`${summaryLine(s)}\n`);
  }
}

// ---------------------------------------------------------------------------
// terminal bars

interface Live {
  blob: BlobInfo;
  bytes: number;
  startedMs: number;
}

/**
 * Bars for the blobs in flight and the total, redrawn in place (at most ten times a second);
 * a finished blob leaves one line above them.
 */
export class TtyProgress implements ProgressReporter {
  private op: 'push' | 'pull' = 'push';
  private readonly live = new Map<string, Live>();
  private totalBytes = 0;
  private doneBytes = 0;
  private startedMs = performance.now();
  private drawnLines = 0;
  private timer: NodeJS.Timeout | undefined;
  private dirty = false;

  constructor(private readonly out: Writable = process.stderr) {}

  plan(p: TransferPlan): void {
    this.op = p.operation;
    this.totalBytes = p.bytesToTransfer;
    this.startedMs = performance.now();
    this.print(`${p.operation} ${p.ref} ${p.operation === 'push' ? 'to' : 'from'} ${p.registry}: ${formatBytes(p.bytesToTransfer)} to move, ${formatBytes(p.bytesSkipped)} already there`);
    this.timer = setInterval(() => this.dirty && this.draw(), 100);
    this.timer.unref();
  }
  skipped(b: BlobInfo): void {
    this.print(`exists      ${blobLabel(b)} ${formatBytes(b.sizeBytes)}`);
  }
  start(b: BlobInfo): void {
    this.live.set(b.digest, { blob: b, bytes: 0, startedMs: performance.now() });
    this.draw();
  }
  bytes(b: BlobInfo, delta: number): void {
    const l = this.live.get(b.digest);
    if (l) l.bytes += delta;
    this.doneBytes += delta;
    this.dirty = true;
  }
  done(b: BlobInfo): void {
    const l = this.live.get(b.digest);
    this.live.delete(b.digest);
    const ms = l ? performance.now() - l.startedMs : 0;
    this.print(`${verb(this.op, true).padEnd(11)} ${blobLabel(b)} ${formatBytes(b.sizeBytes)} in ${seconds(ms)} (${formatRate(b.sizeBytes, ms)})`);
  }
  finish(s: TransferSummary | undefined): void {
    if (this.timer) clearInterval(this.timer);
    this.live.clear();
    this.clear();
    if (s) this.out.write(`${summaryLine(s)}\n`);
  }

  private fit(s: string): string {
    const cols = this.out.columns ?? 80;
    return s.length >= cols ? s.slice(0, cols - 1) : s;
  }

  private clear(): void {
    if (this.drawnLines > 0) this.out.write(`\x1b[${this.drawnLines}A\x1b[J`);
    this.drawnLines = 0;
  }

  /** A permanent line above the bars. */
  private print(s: string): void {
    this.clear();
    this.out.write(`${this.fit(s)}\n`);
    this.draw();
  }

  private draw(): void {
    this.dirty = false;
    const now = performance.now();
    const lines: string[] = [];
    for (const l of this.live.values()) {
      const ms = now - l.startedMs;
      lines.push(
        `  ${blobLabel(l.blob)} ${bar(l.bytes, l.blob.sizeBytes)} ${formatBytes(l.bytes)}/${formatBytes(l.blob.sizeBytes)} ` +
          `${formatRate(l.bytes, ms)} ETA ${formatEta(l.blob.sizeBytes - l.bytes, l.bytes / ms)}`,
      );
    }
    if (this.totalBytes > 0) {
      const ms = now - this.startedMs;
      lines.push(
        `  total ${' '.repeat(15)} ${bar(this.doneBytes, this.totalBytes)} ${formatBytes(this.doneBytes)}/${formatBytes(this.totalBytes)} ` +
          `${formatRate(this.doneBytes, ms)} ETA ${formatEta(this.totalBytes - this.doneBytes, this.doneBytes / ms)}`,
      );
    }
    let s = this.drawnLines > 0 ? `\x1b[${this.drawnLines}A` : '';
    for (const line of lines) s += `\x1b[2K${this.fit(line)}\n`;
    s += '\x1b[J';
    this.out.write(s);
    this.drawnLines = lines.length;
  }
}

function bar(done: number, total: number, width = 20): string {
  const filled = total > 0 ? Math.min(width, Math.round((done / total) * width)) : width;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

export interface ProgressOptions {
  /** Default: process.stderr. */
  stream?: Writable;
  /** Only the summary line. */
  quiet?: boolean;
  /** Default: whether `stream` is a terminal. */
  tty?: boolean;
}

/** Bars on a terminal, lines elsewhere, the summary alone with `quiet`. */
export function createProgressReporter(opts: ProgressOptions = {}): ProgressReporter {
  const stream = opts.stream ?? process.stderr;
  if (opts.quiet) return new LineProgress(stream, true);
  return (opts.tty ?? stream.isTTY === true) ? new TtyProgress(stream) : new LineProgress(stream);
}
