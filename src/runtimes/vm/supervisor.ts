import { createServer, type Server, type Socket } from 'node:net';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { AgentClient, AgentClosedError, AgentTimeoutError, encodeFrame, FrameDecoder } from './agent/index.js';
import { within } from '../../util/proc.js';
import type { ExitStatus, OutputSink } from '../backend.js';
import type { Process } from '../workload.js';
import type { VmFiles } from './files.js';
import type { MachineHandle, MachineLauncher, MachineSpec } from './machine.js';

/** What a VM run leaves in exit.json: the workload's end, or why the machine died without one. */
export interface VmExit {
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  timedOut: boolean;
  crash: string | null;
  readyAtMs: number | null;
  finishedAtMs: number;
}

export interface SuperviseOptions {
  /** How long the guest may take to come up (a hung guest prints nothing). */
  bootTimeoutMs: number;
  /** The workload's own time limit, if any. */
  timeoutMs?: number;
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

/**
 * Runs one VM from launch to power-off: starts the machine, waits for the agent, runs the
 * workload as session 0 with its output going to `sink`, serves `exec` requests from other
 * processes on the control socket, and turns the end into a VmExit (with a crash reason
 * when the machine died first). The same code serves foreground runs (in the CLI process)
 * and detached ones (in `hybridbox internal vm-monitor`).
 */
export async function supervise(
  launcher: MachineLauncher,
  spec: MachineSpec,
  files: VmFiles,
  proc: Process,
  sink: OutputSink,
  opts: SuperviseOptions,
): Promise<VmExit> {
  let handle: MachineHandle | null = null;
  let agent: AgentClient | null = null;
  let ctl: Server | null = null;
  let timedOut = false;
  let readyAtMs: number | null = null;
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
  try {
    handle = await launcher.launch(spec, files);
    const stopped = handle.stopped.then(() => 'stopped' as const);
    agent = await AgentClient.connect(files.agentSock, opts.bootTimeoutMs);
    await handle.resume?.();
    // Only a timeout is a hang: the agent may also report why it could not set the guest up
    // (a volume it cannot mount), or the machine may stop; each is said as it is.
    const ready = await Promise.race([agent.waitReady(opts.bootTimeoutMs).then(() => 'ready' as const), stopped]).catch((e: Error) => e);
    if (ready !== 'ready') {
      const why =
        ready === 'stopped' || ready instanceof AgentClosedError
          ? crashReason(files)
          : ready instanceof AgentTimeoutError
            ? `the guest did not come up within ${Math.round(opts.bootTimeoutMs / 1000)} s (hung at boot)`
            : `the guest could not be set up: ${ready.message}`;
      return end({ crash: why });
    }
    readyAtMs = Date.now();
    // Ready for others (ready.json) only once `exec` can be served.
    ctl = await serveControl(files.ctlSock, agent);
    const main = agent.startSession(0, proc, sink);
    main.catch(() => undefined);
    writeFileSync(files.ready, JSON.stringify({ readyAtMs }) + '\n');
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<'timeout'>((resolve) => {
      if (opts.timeoutMs !== undefined) timer = setTimeout(() => resolve('timeout'), opts.timeoutMs);
    });
    const outcome = await Promise.race([main.then((x) => ({ x })), stopped, limit]).catch(() => 'stopped' as const);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      timedOut = true;
      await handle.kill();
      return end({ signal: 'SIGKILL' });
    }
    if (outcome === 'stopped') return end({ crash: crashReason(files) });
    // The agent powers the guest off after the workload; give it a moment, then make sure.
    await within(handle.stopped, 10_000);
    return end({ exitCode: outcome.x.exitCode, signal: outcome.x.signal, oomKilled: outcome.x.oomKilled });
  } catch (e) {
    return end({ crash: `the virtual machine could not be run: ${(e as Error).message}` });
  } finally {
    ctl?.close();
    agent?.close();
    if (handle) await handle.kill().catch(() => undefined);
    for (const f of [files.ctlSock, files.agentSock, files.qmpSock]) rmSync(f, { force: true });
  }
}

/**
 * The control socket: other hybridbox processes run `exec` through it, because the agent's
 * channel has one end on the host and the supervisor holds it. Requests use the agent's own
 * framing: `S` starts a session (the supervisor picks its id), `K` signals it (session 0 in
 * a `K` means the main workload: that is how `stop` asks for a clean end).
 */
function serveControl(path: string, agent: AgentClient): Promise<Server> {
  rmSync(path, { force: true });
  let nextId = 1;
  const server = createServer((sock: Socket) => {
    const decoder = new FrameDecoder();
    let session: number | null = null;
    sock.on('error', () => undefined);
    sock.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        if (f.type === 'S' && session === null) {
          const id = (session = nextId++);
          const proc = JSON.parse(f.payload.toString('utf8')) as Process;
          agent
            .startSession(id, proc, {
              onStdout: (c) => sock.write(encodeFrame('O', 0, c)),
              onStderr: (c) => sock.write(encodeFrame('E', 0, c)),
            })
            .then((x) => sock.end(encodeFrame('X', 0, Buffer.from(JSON.stringify(x)))))
            .catch((e: Error) => sock.end(encodeFrame('F', 0, Buffer.from(JSON.stringify({ message: e.message })))));
        } else if (f.type === 'K') {
          const { signal } = JSON.parse(f.payload.toString('utf8')) as { signal: string };
          agent.signal(f.session === 0 && session === null ? 0 : (session ?? 0), signal);
          if (session === null) sock.end();
        }
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve(server));
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
    peakMemoryBytes: null,
    cpuTimeMs: null,
  };
}
