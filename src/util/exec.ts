import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { HostCapabilityError } from '../errors.js';

/** How much of a child's stderr is kept by default: enough to quote its error, never unbounded. */
export const STDERR_CAP_CHARS = 8192;

/** The last line of `text` (trailing blank lines skipped), or `fallback` when it is blank. */
export function lastLine(text: string, fallback = ''): string {
  const t = text.trim();
  return t ? t.slice(t.lastIndexOf('\n') + 1) : fallback;
}

/**
 * The end of a stream's text in bounded memory: at most `maxChars`, starting at a line when
 * something was dropped. The end, not the start, because that is where a failing tool says why.
 */
export class TextTail {
  private kept = '';
  private readonly decoder = new StringDecoder('utf8');
  /** True once anything was dropped. */
  truncated = false;

  constructor(readonly maxChars = STDERR_CAP_CHARS) {}

  /** Appends a chunk; an arrow function so that it can be handed on as a callback. */
  readonly push = (chunk: Buffer | string): void => {
    this.kept += typeof chunk === 'string' ? chunk : this.decoder.write(chunk);
    const over = this.kept.length - this.maxChars;
    if (over <= 0) return;
    this.truncated = true;
    // Drop the partial line the cut leaves at the front, unless that would leave nothing.
    const nl = this.kept[over - 1] === '\n' ? over - 1 : this.kept.indexOf('\n', over);
    this.kept = this.kept.slice(nl >= 0 && nl < this.kept.length - 1 ? nl + 1 : over);
  };

  get text(): string {
    return this.kept;
  }
}

/**
 * Complete lines from a stream's chunks (\n, \r\n or a lone \r ends one: progress bars
 * redraw with \r), each handed to `onLine`; the last `keep` non-blank ones are kept.
 */
export class LineTail {
  private partial = '';
  private readonly decoder = new StringDecoder('utf8');
  private readonly kept: string[] = [];

  constructor(
    private readonly keep: number,
    private readonly onLine: (line: string) => void = () => undefined,
  ) {}

  readonly push = (chunk: Buffer | string): void => {
    const lines = (this.partial + (typeof chunk === 'string' ? chunk : this.decoder.write(chunk))).split(/\r?\n|\r/);
    this.partial = lines.pop() ?? '';
    for (const l of lines) this.add(l);
  };

  /** The kept lines, the unfinished last one included. */
  end(): string[] {
    const rest = this.partial;
    this.partial = '';
    if (rest.trim()) this.add(rest);
    return [...this.kept];
  }

  private add(line: string): void {
    if (!line.trim()) return;
    this.onLine(line);
    this.kept.push(line);
    if (this.kept.length > this.keep) this.kept.shift();
  }
}

export interface ChildOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /**
   * Written to stdin, which is then closed. A stream is piped in, its end being the child's EOF,
   * and let go when the child ends, so that a caller's stream (process.stdin) neither keeps this
   * process alive nor feeds a pipe nobody reads. Without it (and `openStdin`) stdin is /dev/null.
   */
  input?: string | NodeJS.ReadableStream;
  /** Stdin is a pipe left open for the caller to write to and end (`process.stdin`). Not with `input`. */
  openStdin?: boolean;
  /** 'keep': collected whole into `stdout` (callers parse it); a function: called with each chunk. Default: /dev/null. */
  stdout?: 'keep' | ((chunk: Buffer) => void);
  /** Called with each chunk; the last `stderrCapChars` are kept for `stderr` whatever it is. 'ignore': /dev/null. */
  stderr?: 'ignore' | ((chunk: Buffer) => void);
  stderrCapChars?: number;
  /** Sends `killSignal` (default SIGTERM) after this long; `timedOut` says it did. */
  timeoutMs?: number;
  killSignal?: NodeJS.Signals;
  /** After the timeout's signal, SIGKILL this much later if the child is still there. */
  forceKillAfterMs?: number;
  /**
   * In its own process group, stdout and stderr on /dev/null, and not keeping this process alive
   * (nor does its stdin pipe, if it has one): a daemon, a monitor, a watchdog.
   */
  detached?: boolean;
}

export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** The end of stderr, at most `stderrCapChars`. */
  stderr: string;
  timedOut: boolean;
  /** ms from the spawn to the process's exit, and to its pipes closing (all output read). */
  exitMs: number;
  closeMs: number;
}

export interface Child {
  process: ChildProcess;
  /** performance.now() just before the spawn, for callers that time events of their own. */
  startedAt: number;
  /** Settles once the child has exited and its output is read; rejects only when it could not be started. */
  done: Promise<ChildExit>;
}

/**
 * Starts a command. The one place hybridbox spawns a process: each caller picks what it reads
 * (stdout kept or streamed, stderr streamed and always kept in bounded form), a timeout and
 * its signal; the result is the exit, the output and the timings.
 */
export function spawnChild(file: string, args: readonly string[], opts: ChildOptions = {}): Child {
  const stdin = opts.input === undefined && !opts.openStdin ? 'ignore' : 'pipe';
  const stdout = opts.stdout === undefined || opts.detached ? 'ignore' : 'pipe';
  const stderr = opts.stderr === 'ignore' || opts.detached ? 'ignore' : 'pipe';
  const startedAt = performance.now();
  const child = spawn(file, args, { env: opts.env, cwd: opts.cwd, stdio: [stdin, stdout, stderr], detached: opts.detached });
  if (opts.detached) {
    child.unref();
    (child.stdin as Socket | null)?.unref();
  }

  const out: Buffer[] = [];
  if (child.stdout) child.stdout.on('data', typeof opts.stdout === 'function' ? opts.stdout : (c: Buffer) => out.push(c));
  const err = new TextTail(opts.stderrCapChars);
  if (child.stderr) {
    const onStderr = opts.stderr;
    child.stderr.on('data', (c: Buffer) => {
      err.push(c);
      if (typeof onStderr === 'function') onStderr(c);
    });
  }
  let releaseInput = (): void => undefined;
  if (child.stdin) {
    const to = child.stdin;
    // A child that exits (or closes its stdin) without reading its input must not fail the caller with EPIPE.
    to.on('error', () => undefined);
    const from = opts.input;
    if (typeof from === 'string') to.end(from);
    else if (from) {
      from.pipe(to);
      releaseInput = () => {
        from.unpipe(to);
        to.destroy();
      };
    }
  }

  let timedOut = false;
  let timer: NodeJS.Timeout | undefined;
  let forceTimer: NodeJS.Timeout | undefined;
  if (opts.timeoutMs !== undefined) {
    timer = setTimeout(() => {
      timedOut = true;
      child.kill(opts.killSignal ?? 'SIGTERM');
      if (opts.forceKillAfterMs !== undefined) {
        forceTimer = setTimeout(() => child.kill('SIGKILL'), opts.forceKillAfterMs);
        forceTimer.unref();
      }
    }, opts.timeoutMs);
  }
  let exitMs: number | undefined;
  const done = new Promise<ChildExit>((resolve, reject) => {
    child.once('exit', () => {
      exitMs = performance.now() - startedAt;
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      clearTimeout(forceTimer);
      releaseInput();
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(forceTimer);
      releaseInput();
      const closeMs = performance.now() - startedAt;
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: err.text, timedOut, exitMs: exitMs ?? closeMs, closeMs });
    });
  });
  // Detached callers watch for files instead; a failed start must not become an unhandled rejection.
  if (opts.detached) done.catch(() => undefined);
  return { process: child, startedAt, done };
}

export interface RunOutcome {
  /** undefined when the command could not be started or was ended by a signal. */
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  failed: boolean;
  timedOut: boolean;
}

const stripFinalNewline = (s: string): string => s.replace(/\r?\n$/, '');

/**
 * Runs a command to completion with its output kept (one final newline stripped). `env` adds
 * to this process's environment. Never throws: a command that cannot be started has `failed`
 * set and the reason in `stderr`; callers read `exitCode`.
 */
export async function run(file: string, args: readonly string[], options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunOutcome> {
  const env = options.env && { ...process.env, ...options.env };
  try {
    // Callers may parse the whole of stderr (apt's "E: " lines), so it is kept up to 1 MiB.
    const r = await spawnChild(file, args, { input: options.input, timeoutMs: options.timeoutMs, env, stdout: 'keep', stderrCapChars: 1 << 20, forceKillAfterMs: 5000 }).done;
    const exitCode = r.code ?? undefined;
    return { exitCode, stdout: stripFinalNewline(r.stdout), stderr: stripFinalNewline(r.stderr), failed: exitCode !== 0 || r.timedOut, timedOut: r.timedOut };
  } catch (e) {
    return { exitCode: undefined, stdout: '', stderr: (e as Error).message, failed: true, timedOut: false };
  }
}

/**
 * Runs a command that must succeed; a failure becomes one line: what failed and its last
 * words (a HostCapabilityError unless the caller makes its own).
 */
export async function runChecked(file: string, args: readonly string[], what: string, makeError: (msg: string) => Error = (m) => new HostCapabilityError(m)): Promise<RunOutcome> {
  const r = await run(file, args);
  if (r.exitCode !== 0) throw makeError(`${what} failed: ${lastLine(r.stderr || r.stdout, `exit ${r.exitCode}`)}`);
  return r;
}
