import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { AgentClient, AgentClosedError, AgentTimeoutError, encodeFrame, FrameDecoder, MAX_PAYLOAD } from './agent/index.js';
import { within } from '../../util/proc.js';
import { TIMEOUT_EXIT_CODE, TIMEOUT_GRACE_MS, type ExitStatus, type OutputSink } from '../backend.js';
import type { Process } from '../workload.js';
import { writeJsonAtomic, type VmFiles } from './files.js';
import type { MachineHandle, MachineLauncher, MachineSpec } from './machine.js';

/** What a VM run leaves in exit.json: the workload's end, or why the machine died without one. */
export interface VmExit {
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  timedOut: boolean;
  crash: string | null;
  /** From session 0's X: the guest workload cgroup's counters (absent in records of older versions). */
  cpuTimeMs?: number | null;
  peakMemoryBytes?: number | null;
  cpuTimeLimitExceeded?: boolean;
  /** The guest never reported ready within the boot limit (`crash` says so too). */
  bootTimedOut?: boolean;
  readyAtMs: number | null;
  finishedAtMs: number;
}

/** After SIGKILL at a timeout, how long the guest gets to report the exit before the machine goes. */
const KILL_REPORT_MS = 5000;

/**
 * Signals for the workload from the process that supervises it (a foreground CLI forwarding
 * ^C, the backend's own signal()). Signals sent before session 0 has started wait for it:
 * the workload is what they are for, not the booting guest.
 */
export class RunControl {
  private agent: AgentClient | null = null;
  private pending: string[] = [];

  signal(sig: string): void {
    if (this.agent) this.agent.signal(0, sig);
    else this.pending.push(sig);
  }

  /** Session 0 has been started on `agent`: deliver what waited. */
  attach(agent: AgentClient): void {
    this.agent = agent;
    for (const s of this.pending.splice(0)) agent.signal(0, s);
  }
}

export interface SuperviseOptions {
  /** How long the guest may take to come up (a hung guest prints nothing). */
  bootTimeoutMs: number;
  /** The workload's own time limit, counted from session 0's start (see TIMEOUT_EXIT_CODE). */
  timeoutMs?: number;
  /** The workload's standard input, passed on with its EOF; none: /dev/null. */
  stdin?: NodeJS.ReadableStream | null;
  control?: RunControl;
}

/** The last lines of the kernel console that say why a guest died. */
export function crashReason(files: VmFiles): string {
  let console = '';
  try {
    console = readFileSync(files.console, 'utf8');
  } catch {
    /* no console log */
  }
  const panic = /Kernel panic - not syncing:[^\r\n]*/.exec(console);
  if (panic) return `guest kernel panic (${panic[0].trim()})`;
  const oops = /(BUG:|Oops:|general protection fault)[^\r\n]*/.exec(console);
  if (oops) return `guest kernel crashed (${oops[0].trim()})`;
  // The agent's last words when it failed before its port was open (it has no other witness).
  const agentFailed = [...console.matchAll(/^hbx-agent: ([^\r\n]*)/gm)].at(-1);
  if (agentFailed) return `the virtual machine stopped before the workload finished; the guest agent last said: ${agentFailed[1]!.trim()}`;
  return 'the virtual machine stopped before the workload finished';
}

const seconds = (ms: number): string => `${Number((ms / 1000).toFixed(1))} s`;

/** Feeds `stdin` to session 0; returns how to stop listening once the session has ended. */
function pipeStdin(agent: AgentClient, stdin: NodeJS.ReadableStream): () => void {
  const onData = (c: Buffer | string): void => agent.writeStdin(0, c);
  const onEnd = (): void => agent.closeStdin(0);
  stdin.on('data', onData);
  stdin.once('end', onEnd);
  stdin.once('error', onEnd);
  return () => {
    stdin.off('data', onData);
    stdin.off('end', onEnd);
    stdin.off('error', onEnd);
    // The caller's stream (often process.stdin) must not keep this process alive.
    stdin.pause();
  };
}

/**
 * Runs one VM from launch to power-off: starts the machine, waits for the agent, runs the
 * workload as session 0 with its output going to `sink`, serves `exec` requests from other
 * processes on the control socket, enforces the workload's time limit, and turns the end into
 * a VmExit (with a crash reason when the machine died first). The same code serves foreground
 * runs (in the CLI process) and detached ones (in `hybridbox internal monitor`).
 */
export async function supervise(launcher: MachineLauncher, spec: MachineSpec, files: VmFiles, proc: Process, sink: OutputSink, opts: SuperviseOptions): Promise<VmExit> {
  let handle: MachineHandle | null = null;
  let agent: AgentClient | null = null;
  let ctl: Server | null = null;
  let timedOut = false;
  let readyAtMs: number | null = null;
  const timers: NodeJS.Timeout[] = [];
  let unpipe = (): void => undefined;
  const end = (e: Partial<VmExit>): VmExit => ({
    exitCode: null,
    signal: null,
    oomKilled: false,
    timedOut,
    crash: null,
    readyAtMs,
    finishedAtMs: Date.now(),
    ...e,
  });
  // A machine destroyed on request (signal KILL: `rm -f`, `stop` escalating) was killed, not crashed.
  const killedOnRequest = (): boolean => existsSync(files.killed);
  try {
    rmSync(files.killed, { force: true });
    handle = await launcher.launch(spec, files);
    const h = handle;
    const stopped = h.stopped.then(() => 'stopped' as const);
    agent = await AgentClient.connect(files.agentSock, opts.bootTimeoutMs);
    await h.resume?.();
    // Only a timeout is a hang: the agent may also report why it could not set the guest up
    // (a volume it cannot mount), or the machine may stop; each is said as it is.
    const ready = await Promise.race([agent.waitReady(opts.bootTimeoutMs).then(() => 'ready' as const), stopped]).catch((e: Error) => e);
    if (ready !== 'ready') {
      if (killedOnRequest()) return end({ signal: 'SIGKILL' });
      if (ready === 'stopped' || ready instanceof AgentClosedError) return end({ crash: crashReason(files) });
      if (ready instanceof AgentTimeoutError) return end({ crash: `the guest did not come up within ${seconds(opts.bootTimeoutMs)} (the boot limit; hung at boot)`, bootTimedOut: true });
      return end({ crash: `the guest could not be set up: ${ready.message}` });
    }
    readyAtMs = Date.now();
    // Ready for others (ready.json) only once `exec` can be served.
    ctl = await serveControl(files.ctlSock, agent);
    const a = agent;
    const main = a.startSession(0, { ...proc, stdin: !!opts.stdin }, sink);
    main.catch(() => undefined);
    if (opts.stdin) unpipe = pipeStdin(a, opts.stdin);
    opts.control?.attach(a);
    if (opts.timeoutMs !== undefined) {
      // The limit counts from the workload's start, as on every backend: TERM, KILL after the
      // grace period, and a guest that cannot even report that loses its machine.
      timers.push(
        setTimeout(() => {
          timedOut = true;
          a.signal(0, 'SIGTERM');
          timers.push(
            setTimeout(() => {
              a.signal(0, 'SIGKILL');
              timers.push(setTimeout(() => void h.kill().catch(() => undefined), KILL_REPORT_MS));
            }, TIMEOUT_GRACE_MS),
          );
        }, opts.timeoutMs),
      );
    }
    writeJsonAtomic(files.ready, { readyAtMs });
    const outcome = await Promise.race([main.then((x) => ({ x })), stopped]).catch(() => 'stopped' as const);
    for (const t of timers) clearTimeout(t);
    unpipe();
    if (outcome === 'stopped') {
      if (timedOut) return end({ exitCode: TIMEOUT_EXIT_CODE, signal: 'SIGKILL' });
      if (killedOnRequest()) return end({ signal: 'SIGKILL' });
      return end({ crash: crashReason(files) });
    }
    // The agent powers the guest off after the workload; give it a moment, then make sure.
    await within(h.stopped, 10_000);
    const { exitCode, signal, oomKilled, cpuTimeMs, peakMemoryBytes, cpuTimeLimitExceeded } = outcome.x;
    const usage = { oomKilled, cpuTimeMs, peakMemoryBytes, cpuTimeLimitExceeded };
    return end(timedOut ? { exitCode: TIMEOUT_EXIT_CODE, signal, ...usage } : { exitCode, signal, ...usage });
  } catch (e) {
    return end({ crash: `the virtual machine could not be run: ${(e as Error).message}` });
  } finally {
    for (const t of timers) clearTimeout(t);
    unpipe();
    ctl?.close();
    agent?.close();
    if (handle) await handle.kill().catch(() => undefined);
    for (const f of [files.ctlSock, files.agentSock, files.qmpSock]) rmSync(f, { force: true });
  }
}

/** Checks what a control client sent as a session before the guest sees it. */
function parseSession(payload: Buffer): Process | string {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    return 'the S payload is not JSON';
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return 'the S payload must be a JSON object';
  const p = v as Record<string, unknown>;
  if (!Array.isArray(p.argv) || p.argv.length === 0 || !p.argv.every((a) => typeof a === 'string')) return 'argv must be a non-empty array of strings';
  if (p.env !== undefined && (p.env === null || typeof p.env !== 'object' || Array.isArray(p.env))) return 'env must be an object';
  return p as unknown as Process;
}

function parseSignal(payload: Buffer): string | number | null {
  try {
    const v = JSON.parse(payload.toString('utf8')) as { signal?: unknown };
    const s = v?.signal;
    if (typeof s === 'string' && /^(SIG)?[A-Z0-9]{2,8}$/.test(s)) return s;
    if (typeof s === 'number' && Number.isInteger(s) && s > 0 && s < 65) return s;
  } catch {
    /* answered below */
  }
  return null;
}

/**
 * The control socket: other hybridbox processes run `exec` through it, because the agent's
 * channel has one end on the host and the supervisor holds it. Requests use the agent's own
 * framing: `S` starts a session (the supervisor picks its id), `I`/`C` feed and close its
 * stdin, `K` signals it (session 0 in a `K` means the main workload: that is how `stop` asks
 * for a clean end). Anything else (bad JSON, unknown types, bytes that are not frames) is
 * answered with one `F` and the connection is closed: whoever sent it, it never reaches the
 * guest nor ends the supervisor.
 */
function serveControl(path: string, agent: AgentClient): Promise<Server> {
  rmSync(path, { force: true });
  let nextId = 1;
  const server = createServer((sock: Socket) => {
    const decoder = new FrameDecoder();
    let session: number | null = null;
    let finished = false;
    const fail = (request: string, message: string): void => {
      if (finished) return;
      finished = true;
      sock.end(encodeFrame('F', 0, Buffer.from(JSON.stringify({ request, message }))));
      if (session !== null) agent.signal(session, 'SIGKILL');
    };
    sock.on('error', () => undefined);
    sock.on('close', () => (finished = true));
    sock.on('data', (chunk: Buffer) => {
      if (finished) return;
      const frames = decoder.push(chunk);
      if (decoder.skippedBytes > 0) return fail('?', `${decoder.skippedBytes} bytes that are not a valid frame (bad magic, reserved byte, type, or a length over ${MAX_PAYLOAD})`);
      for (const f of frames) {
        if (finished) return;
        if (f.type === 'S') {
          if (session !== null) return fail('S', 'one session per connection; this one has started already');
          const proc = parseSession(f.payload);
          if (typeof proc === 'string') return fail('S', proc);
          const id = (session = nextId++);
          agent
            .startSession(id, proc, {
              onStdout: (c) => sock.write(encodeFrame('O', 0, c)),
              onStderr: (c) => sock.write(encodeFrame('E', 0, c)),
            })
            .then((x) => {
              finished = true;
              sock.end(encodeFrame('X', 0, Buffer.from(JSON.stringify(x))));
            })
            .catch((e: Error) => fail('S', e.message));
        } else if (f.type === 'K') {
          const sig = parseSignal(f.payload);
          if (sig === null) return fail('K', 'bad signal in K frame (expected {"signal": "SIGTERM"})');
          if (session !== null) agent.signal(session, sig);
          else {
            agent.signal(0, sig);
            finished = true;
            sock.end();
          }
        } else if (f.type === 'I' || f.type === 'C') {
          if (session === null) return fail(f.type, 'stdin before any session was started');
          if (f.type === 'I') agent.writeStdin(session, f.payload);
          else agent.closeStdin(session);
        } else {
          return fail(f.type, `unknown frame type '${f.type}'`);
        }
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      // A listening server that errors later must not take the supervisor with it.
      server.on('error', () => undefined);
      resolve(server);
    });
  });
}

/** Turns a VmExit into the status every backend reports. */
export function toExitStatus(x: VmExit): ExitStatus {
  return {
    startedAtMs: x.readyAtMs,
    exitCode: x.exitCode,
    signal: x.signal,
    oomKilled: x.oomKilled,
    timedOut: x.timedOut,
    crash: x.crash ?? undefined,
    peakMemoryBytes: x.peakMemoryBytes ?? null,
    cpuTimeMs: x.cpuTimeMs ?? null,
    cpuTimeLimitExceeded: x.cpuTimeLimitExceeded === true,
  };
}
