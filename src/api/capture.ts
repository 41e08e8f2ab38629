import type { OutputSink } from '../runtimes/backend.js';

export const DEFAULT_MAX_BUFFER_BYTES = 1024 * 1024;

export type StreamName = 'stdout' | 'stderr';

/** A bounded copy of one output stream: the first `max` bytes are kept, the rest only counted. */
export class Capture {
  private chunks: Buffer[] = [];
  private kept = 0;
  truncated = false;
  constructor(private readonly max: number) {}
  push(c: Buffer): void {
    if (this.kept >= this.max) {
      if (c.length) this.truncated = true;
      return;
    }
    const part = c.length + this.kept > this.max ? c.subarray(0, this.max - this.kept) : c;
    if (part.length < c.length) this.truncated = true;
    this.chunks.push(part);
    this.kept += part.length;
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
  text(): string {
    return this.bytes().toString('utf8');
  }
}

/**
 * Cuts a stream at `limitBytes`: what comes before the cap passes (to the kept copy and the
 * caller's callback alike), the rest is dropped, and `onExceeded` hears of the first byte past
 * it once. Stopping the workload is the caller's part.
 */
class StreamLimit {
  private seen = 0;
  exceeded = false;
  constructor(
    private readonly limitBytes: number,
    private readonly onExceeded: () => void,
  ) {}
  /** The part of `c` within the cap (possibly empty). */
  admit(c: Buffer): Buffer {
    const room = Math.max(0, this.limitBytes - this.seen);
    this.seen += c.length;
    if (c.length <= room) return c;
    if (!this.exceeded) {
      this.exceeded = true;
      this.onExceeded();
    }
    return c.subarray(0, room);
  }
}

export interface OutputLimit {
  /** Per stream. */
  bytes: number;
  /** Called once, for the first stream that passes the cap. */
  onExceeded: (stream: StreamName) => void;
}

/** Both streams of a run: kept (bounded) and passed on to the caller's callbacks as they come. */
export class OutputCapture {
  readonly stdout: Capture;
  readonly stderr: Capture;
  readonly sink: OutputSink;
  /** The first stream that passed the output limit, if one did. */
  exceededBy: StreamName | null = null;
  constructor(maxBytes: number | undefined, to: { onStdout?: (c: Buffer) => void; onStderr?: (c: Buffer) => void }, limit?: OutputLimit) {
    const out = (this.stdout = new Capture(maxBytes ?? DEFAULT_MAX_BUFFER_BYTES));
    const err = (this.stderr = new Capture(maxBytes ?? DEFAULT_MAX_BUFFER_BYTES));
    const stream = (name: StreamName, keep: Capture, pass: ((c: Buffer) => void) | undefined): ((c: Buffer) => void) => {
      const cap =
        limit &&
        new StreamLimit(limit.bytes, () => {
          if (this.exceededBy !== null) return;
          this.exceededBy = name;
          limit.onExceeded(name);
        });
      return (c) => {
        const part = cap ? cap.admit(c) : c;
        // Bytes cut off at the cap are output the result does not hold.
        if (part.length < c.length) keep.truncated = true;
        if (!part.length) return;
        keep.push(part);
        pass?.(part);
      };
    };
    this.sink = { onStdout: stream('stdout', out, to.onStdout), onStderr: stream('stderr', err, to.onStderr) };
  }
  /** The output fields every result carries. */
  fields(): { stdout: string; stderr: string; stdoutTruncated: boolean; stderrTruncated: boolean } {
    return { stdout: this.stdout.text(), stderr: this.stderr.text(), stdoutTruncated: this.stdout.truncated, stderrTruncated: this.stderr.truncated };
  }
}
