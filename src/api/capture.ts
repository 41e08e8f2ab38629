import type { OutputSink } from '../runtimes/backend.js';

export const DEFAULT_MAX_BUFFER_BYTES = 1024 * 1024;

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

/** Both streams of a run: kept (bounded) and passed on to the caller's callbacks as they come. */
export class OutputCapture {
  readonly stdout: Capture;
  readonly stderr: Capture;
  readonly sink: OutputSink;
  constructor(maxBytes: number | undefined, to: { onStdout?: (c: Buffer) => void; onStderr?: (c: Buffer) => void }) {
    const out = (this.stdout = new Capture(maxBytes ?? DEFAULT_MAX_BUFFER_BYTES));
    const err = (this.stderr = new Capture(maxBytes ?? DEFAULT_MAX_BUFFER_BYTES));
    this.sink = {
      onStdout: (c) => {
        out.push(c);
        to.onStdout?.(c);
      },
      onStderr: (c) => {
        err.push(c);
        to.onStderr?.(c);
      },
    };
  }
  /** The output fields every result carries. */
  fields(): { stdout: string; stderr: string; stdoutTruncated: boolean; stderrTruncated: boolean } {
    return { stdout: this.stdout.text(), stderr: this.stderr.text(), stdoutTruncated: this.stdout.truncated, stderrTruncated: this.stderr.truncated };
  }
}
