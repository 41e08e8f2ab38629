import type { Socket } from 'node:net';
import { RuntimeError } from '../../errors.js';
import { connectUnixWithRetry } from '../../util/net.js';
import { withDeadline } from '../../util/proc.js';

/**
 * A small client for QEMU's machine protocol (QMP): JSON lines over a unix socket. One
 * command at a time is all hybridbox needs (status, memory, quit), so replies are matched in
 * order; asynchronous events are kept for whoever asks.
 */
export class QmpClient {
  private buffer = '';
  private waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = [];
  readonly events: { event: string; data?: unknown }[] = [];
  private closed = false;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(d));
    const fail = (e?: Error) => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w.reject(e ?? new RuntimeError('QMP connection closed'));
    };
    socket.on('error', fail);
    socket.on('close', () => fail());
  }

  /** Connects, retrying until QEMU has created the socket, and negotiates capabilities. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    const socket = await connectUnixWithRetry(path, timeoutMs, (e) => new RuntimeError(`cannot connect to QMP at ${path}: ${e.message}`));
    const c = new QmpClient(socket);
    const greeted = (async () => {
      await c.next(); // greeting
      await c.execute('qmp_capabilities');
    })();
    try {
      // A stopped or wedged QEMU still accepts the connection (the kernel does) but never greets:
      // without a limit here, whoever wanted to end that QEMU would wait for ever.
      await withDeadline(greeted, Math.max(0, deadline - Date.now()), () => new RuntimeError(`QEMU did not answer on ${path} within ${timeoutMs} ms`));
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  private next(): Promise<unknown> {
    if (this.closed) return Promise.reject(new RuntimeError('QMP connection closed'));
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  private onData(d: string): void {
    this.buffer += d;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      if ('event' in msg) {
        this.events.push({ event: String(msg.event), data: msg.data });
        continue;
      }
      const w = this.waiting.shift();
      if (!w) continue;
      if ('error' in msg) {
        const err = msg.error as { desc?: string };
        w.reject(new RuntimeError(`QMP: ${err.desc ?? 'error'}`));
      } else w.resolve('return' in msg ? msg.return : msg);
    }
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const reply = this.next();
    this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    return (await reply) as T;
  }

  close(): void {
    this.socket.destroy();
  }
}
