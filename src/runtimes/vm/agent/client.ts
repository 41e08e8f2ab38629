import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { RuntimeError } from '../../../errors.js';
import { connectUnixWithRetry } from '../../../util/net.js';
import { FrameDecoder, MAX_PAYLOAD, decodeJsonPayload, encodeFrame, encodeJsonFrame, type Frame } from './protocol.js';

/** The `R` payload: the agent has the root filesystem, network and volumes ready. */
export interface ReadyInfo {
  kernel: string;
  /** Guest uptime when the agent was ready. */
  uptimeMs: number;
  /** Guest uptime when the agent started: the kernel's share of the boot (0 from an agent that does not say). */
  initMs: number;
}

/** What the agent runs: the workload's process, with stdin optional (off = /dev/null). */
export interface SessionSpec {
  argv: string[];
  env: Record<string, string>;
  workdir: string;
  uid: number;
  gid: number;
  /** Supplementary groups; default: just `gid`. */
  groups?: number[];
  /** true: stdin is a pipe fed by writeStdin() until closeStdin(); false (default): /dev/null. */
  stdin?: boolean;
}

export interface SessionSink {
  onStdout(data: Buffer): void;
  onStderr(data: Buffer): void;
}

export interface SessionExit {
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  /** The guest workload cgroup's totals when the session ended (all its sessions); null: not known. */
  cpuTimeMs: number | null;
  peakMemoryBytes: number | null;
  /** The agent killed the workload cgroup at its CPU time limit (hbx.cputime). */
  cpuTimeLimitExceeded: boolean;
}

const count = (v: unknown): number | null => (typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : null);

/** An `F` frame: what the agent could not do. `request` is the failed frame's type, or "setup". */
export interface AgentFailure {
  session: number;
  request: string;
  message: string;
}

/** The agent refused a request (an `F` frame) or failed to set the guest up. */
export class AgentError extends RuntimeError {}
/** A guest that prints nothing is hung or slow: every wait ends with this. */
export class AgentTimeoutError extends RuntimeError {}
/** The connection closed before the answer came: QEMU exited, so the VM is gone. */
export class AgentClosedError extends RuntimeError {}

interface PendingSession {
  sink: SessionSink;
  resolve: (exit: SessionExit) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
}

/**
 * The host end of the agent port. Events: `ready` (ReadyInfo), `failure` (AgentFailure, for
 * F frames that no pending call consumed), `close` (no arguments; pending calls are rejected
 * with AgentClosedError when it comes before their answer).
 */
export class AgentClient extends EventEmitter {
  private readonly decoder = new FrameDecoder();
  private readyInfo: ReadyInfo | null = null;
  private setupFailure: AgentError | null = null;
  private readonly readyWaiters = new Set<{ resolve: (r: ReadyInfo) => void; reject: (e: Error) => void }>();
  private readonly sessions = new Map<number, PendingSession>();
  /** Frames for the guest written before R: the agent flushes its input when it sets the port raw, so they wait. */
  private held: Buffer[] = [];
  private closed = false;
  private socketError: Error | null = null;
  private readonly closedPromise: Promise<void>;

  constructor(private readonly socket: Socket) {
    super();
    let onClosed!: () => void;
    this.closedPromise = new Promise((resolve) => (onClosed = resolve));
    socket.on('data', (d: Buffer) => {
      for (const f of this.decoder.push(d)) this.onFrame(f);
    });
    socket.on('error', (e) => (this.socketError = e));
    socket.on('close', () => {
      this.onClose();
      onClosed();
    });
  }

  /** Connects to the unix socket QEMU listens on, retrying until QEMU has created it. */
  static async connect(path: string, timeoutMs = 10_000): Promise<AgentClient> {
    const socket = await connectUnixWithRetry(path, timeoutMs, (e) => new AgentTimeoutError(`cannot connect to the guest agent socket ${path} within ${timeoutMs} ms: ${e.message}`), 20);
    return new AgentClient(socket);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get isReady(): boolean {
    return this.readyInfo !== null;
  }

  /** Garbage bytes the decoder skipped: line noise before the agent set its port raw. */
  get skippedBytes(): number {
    return this.decoder.skippedBytes;
  }

  /** Resolves with the `R` payload (at once if it came already). */
  waitReady(timeoutMs: number): Promise<ReadyInfo> {
    if (this.readyInfo) return Promise.resolve(this.readyInfo);
    if (this.setupFailure) return Promise.reject(this.setupFailure);
    if (this.closed) return Promise.reject(this.closedError('before the guest agent was ready'));
    return new Promise((resolve, reject) => {
      const w = {
        resolve: (r: ReadyInfo) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.readyWaiters.delete(w);
        reject(new AgentTimeoutError(`the guest agent was not ready within ${timeoutMs} ms; the VM's console log shows how far it booted`));
      }, timeoutMs);
      this.readyWaiters.add(w);
    });
  }

  /**
   * Starts session `id` and resolves when its `X` arrives, after all its output went to
   * `sink`. Rejects with AgentError when the agent refuses it, AgentClosedError when the
   * VM dies first, AgentTimeoutError after `timeoutMs` (the session is then forgotten, not
   * killed: signal() or shutdown() does that).
   */
  startSession(id: number, spec: SessionSpec, sink: SessionSink, opts: { timeoutMs?: number } = {}): Promise<SessionExit> {
    if (this.closed) return Promise.reject(this.closedError(`before session ${id} started`));
    if (this.sessions.has(id)) return Promise.reject(new AgentError(`session ${id} is already running in this VM; use another id`));
    let frame: Buffer;
    try {
      frame = encodeJsonFrame('S', id, { ...spec });
    } catch (e) {
      return Promise.reject(new AgentError(`session ${id}: ${(e as Error).message} (argv and env together must fit in ${MAX_PAYLOAD} bytes of JSON)`));
    }
    return new Promise<SessionExit>((resolve, reject) => {
      const p: PendingSession = { sink, resolve, reject };
      const done = (): void => {
        if (p.timer) clearTimeout(p.timer);
        this.sessions.delete(id);
      };
      p.resolve = (x) => {
        done();
        resolve(x);
      };
      p.reject = (e) => {
        done();
        reject(e);
      };
      if (opts.timeoutMs !== undefined) {
        p.timer = setTimeout(() => p.reject(new AgentTimeoutError(`session ${id} did not exit within ${opts.timeoutMs} ms`)), opts.timeoutMs);
      }
      this.sessions.set(id, p);
      this.send(frame);
    });
  }

  /** Feeds the session's stdin (it must have been started with `stdin: true`). */
  writeStdin(id: number, data: Buffer | string): void {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    for (let off = 0; off < buf.length; off += MAX_PAYLOAD) this.send(encodeFrame('I', id, buf.subarray(off, off + MAX_PAYLOAD)));
  }

  /** EOF on the session's stdin, after what was written before. */
  closeStdin(id: number): void {
    this.send(encodeFrame('C', id));
  }

  /** Signals the session's process group. A session that already ended is not an error. */
  signal(id: number, sig: string | number = 'SIGTERM'): void {
    this.send(encodeJsonFrame('K', id, { signal: sig }));
  }

  /** Asks the agent to stop every session (TERM, KILL after 2 s), sync and power off. */
  shutdown(): void {
    this.send(encodeFrame('Q', 0));
  }

  /** Resolves when the connection has closed (QEMU exited); rejects after `timeoutMs`. */
  async waitClosed(timeoutMs: number): Promise<void> {
    if (this.closed) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AgentTimeoutError(`the guest did not power off within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([this.closedPromise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Drops the connection; pending calls reject as if the VM had died. */
  close(): void {
    this.socket.destroy();
  }

  private send(frame: Buffer): void {
    if (this.closed) return;
    if (!this.readyInfo) this.held.push(frame);
    else this.socket.write(frame);
  }

  private onFrame(f: Frame): void {
    switch (f.type) {
      case 'R': {
        if (this.readyInfo) return; // repeated until the agent hears from us
        const j = decodeJsonPayload(f) ?? {};
        const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
        this.readyInfo = { kernel: typeof j.kernel === 'string' ? j.kernel : '', uptimeMs: num(j.uptimeMs), initMs: num(j.initMs) };
        for (const frame of this.held.splice(0)) this.socket.write(frame);
        for (const w of [...this.readyWaiters]) w.resolve(this.readyInfo);
        this.readyWaiters.clear();
        this.emit('ready', this.readyInfo);
        return;
      }
      case 'O':
      case 'E': {
        const s = this.sessions.get(f.session);
        if (!s) return;
        if (f.type === 'O') s.sink.onStdout(f.payload);
        else s.sink.onStderr(f.payload);
        return;
      }
      case 'X': {
        const s = this.sessions.get(f.session);
        if (!s) return;
        const j = decodeJsonPayload(f);
        const exitCode = j?.exitCode;
        const signal = j?.signal;
        if (!j || !(exitCode === null || Number.isInteger(exitCode)) || !(signal === null || typeof signal === 'string')) {
          s.reject(new AgentError(`session ${f.session}: malformed exit report from the guest agent: ${f.payload.toString('utf8').slice(0, 200)}`));
          return;
        }
        s.resolve({
          exitCode: exitCode as number | null,
          signal: signal as string | null,
          oomKilled: j.oomKilled === true,
          cpuTimeMs: count(j.cpuTimeMs),
          peakMemoryBytes: count(j.peakMemoryBytes),
          cpuTimeLimitExceeded: j.cpuTimeLimitExceeded === true,
        });
        return;
      }
      case 'F': {
        const j = decodeJsonPayload(f) ?? {};
        const failure: AgentFailure = {
          session: f.session,
          request: typeof j.request === 'string' ? j.request : '?',
          message: typeof j.message === 'string' ? j.message : f.payload.toString('utf8').slice(0, 500),
        };
        if (failure.request === 'setup') {
          this.setupFailure = new AgentError(`guest agent setup failed: ${failure.message}`);
          for (const w of [...this.readyWaiters]) w.reject(this.setupFailure);
          this.readyWaiters.clear();
        } else if (failure.request === 'S' && this.sessions.has(f.session)) {
          // The agent never started it: no X will follow.
          this.sessions.get(f.session)!.reject(new AgentError(`session ${f.session} did not start: ${failure.message}`));
          return;
        }
        this.emit('failure', failure);
        return;
      }
      default:
        return; // a frame type from a newer agent
    }
  }

  private closedError(when: string): AgentClosedError {
    const why = this.setupFailure ? ` (${this.setupFailure.message})` : this.socketError ? ` (${this.socketError.message})` : '';
    return new AgentClosedError(`the guest agent connection closed ${when}: the VM exited or crashed${why}; its console log tells which`);
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.held = [];
    for (const w of [...this.readyWaiters]) w.reject(this.setupFailure ?? this.closedError('before the guest agent was ready'));
    this.readyWaiters.clear();
    for (const [id, s] of [...this.sessions]) s.reject(this.closedError(`before session ${id} exited`));
    this.emit('close');
  }
}
