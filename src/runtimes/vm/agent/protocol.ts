/**
 * The host side of the guest agent's framing (docs/guest-agent-protocol.md): a 10-byte
 * header — "HB", type letter, 0, session (u16 BE), payload length (u32 BE) — then the
 * payload. The guest is untrusted and the serial line carries noise before the agent sets
 * it raw, so the decoder never trusts a header it cannot validate and never buffers more
 * than one maximal frame.
 */

export const HEADER_SIZE = 10;
export const MAX_PAYLOAD = 65536;
const MAGIC_H = 0x48; // 'H'
const MAGIC_B = 0x42; // 'B'

/** Guest → host: R ready, O stdout, E stderr, X exit, F failure. Host → guest: S start, I stdin, C close stdin, K signal, Q shut down. */
export type FrameType = 'R' | 'O' | 'E' | 'X' | 'F' | 'S' | 'I' | 'C' | 'K' | 'Q';

export interface Frame {
  /** One ASCII capital letter; a decoder passes on letters it does not know. */
  type: string;
  session: number;
  payload: Buffer;
}

export function encodeFrame(type: string, session: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  if (!/^[A-Z]$/.test(type)) throw new RangeError(`frame type must be one capital letter, got ${JSON.stringify(type)}`);
  if (!Number.isInteger(session) || session < 0 || session > 0xffff) throw new RangeError(`session id must be 0..65535, got ${session}`);
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (body.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${body.length} bytes exceeds ${MAX_PAYLOAD}`);
  const frame = Buffer.allocUnsafe(HEADER_SIZE + body.length);
  frame[0] = MAGIC_H;
  frame[1] = MAGIC_B;
  frame[2] = type.charCodeAt(0);
  frame[3] = 0;
  frame.writeUInt16BE(session, 4);
  frame.writeUInt32BE(body.length, 6);
  body.copy(frame, HEADER_SIZE);
  return frame;
}

/** A control frame: its payload is one JSON object. */
export function encodeJsonFrame(type: string, session: number, value: Record<string, unknown>): Buffer {
  return encodeFrame(type, session, JSON.stringify(value));
}

/** The JSON object of a control frame, or null when the payload is not one. */
export function decodeJsonPayload(frame: Frame): Record<string, unknown> | null {
  try {
    const v: unknown = JSON.parse(frame.payload.toString('utf8'));
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/**
 * Turns a byte stream into frames. Bytes that cannot start a valid header (wrong magic,
 * non-zero reserved byte, a type that is not a capital letter, a length over the maximum)
 * are skipped one at a time until the next magic, so an oversized or corrupt header costs
 * a resync, never a large allocation or a stall waiting for bytes that will not come.
 */
export class FrameDecoder {
  /** Bytes skipped as garbage so far: a non-zero value after the first frame means line noise or a bug. */
  skippedBytes = 0;
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes needed before parsing can make progress: avoids re-concatenating a large frame arriving in small pieces. */
  private needed = 2;

  constructor(readonly maxPayload = MAX_PAYLOAD) {
    if (!Number.isInteger(maxPayload) || maxPayload < 0 || maxPayload > 0xffffffff) throw new RangeError(`bad maxPayload ${maxPayload}`);
  }

  /** Feeds bytes; returns the frames they complete, in order. */
  push(data: Buffer): Frame[] {
    if (data.length === 0) return [];
    this.chunks.push(data);
    this.buffered += data.length;
    if (this.buffered < this.needed) return [];
    const buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const frames: Frame[] = [];
    let i = 0;
    this.needed = 2;
    while (buf.length - i >= 2) {
      if (buf[i] !== MAGIC_H || buf[i + 1] !== MAGIC_B) {
        const next = buf.indexOf(MAGIC_H, i + 1);
        const to = next < 0 ? buf.length : next;
        this.skippedBytes += to - i;
        i = to;
        continue;
      }
      if (buf.length - i < HEADER_SIZE) {
        this.needed = HEADER_SIZE;
        break;
      }
      const type = buf[i + 2]!;
      const length = buf.readUInt32BE(i + 6);
      if (buf[i + 3] !== 0 || type < 0x41 || type > 0x5a || length > this.maxPayload) {
        this.skippedBytes += 1;
        i += 1;
        continue;
      }
      if (buf.length - i < HEADER_SIZE + length) {
        this.needed = HEADER_SIZE + length;
        break;
      }
      // A copy: the frame must not pin the (possibly much larger) concatenated buffer.
      const payload = Buffer.from(buf.subarray(i + HEADER_SIZE, i + HEADER_SIZE + length));
      frames.push({ type: String.fromCharCode(type), session: buf.readUInt16BE(i + 4), payload });
      i += HEADER_SIZE + length;
    }
    if (buf.length - i === 1 && buf[i] !== MAGIC_H) {
      this.skippedBytes += 1;
      i += 1;
    }
    const rest = buf.subarray(i);
    this.chunks = rest.length ? [Buffer.from(rest)] : [];
    this.buffered = rest.length;
    return frames;
  }

  /** Bytes held back waiting for the rest of a frame. */
  get pendingBytes(): number {
    return this.buffered;
  }
}
