import { connect, type Socket } from 'node:net';
import { pollUntil } from './proc.js';

/** Connects once to a unix socket. */
export function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/**
 * Connects to a unix socket that a process is about to create (QEMU's agent and QMP
 * sockets), retrying until `timeoutMs`; then rejects with `onTimeout(lastError)`.
 */
export async function connectUnixWithRetry(path: string, timeoutMs: number, onTimeout: (e: Error) => Error, stepMs = 10): Promise<Socket> {
  let socket: Socket | undefined;
  let last: Error | undefined;
  const tryOnce = async (): Promise<boolean> => {
    try {
      socket = await connectUnix(path);
      return true;
    } catch (e) {
      last = e as Error;
      return false;
    }
  };
  if (!(await pollUntil(tryOnce, { timeoutMs, intervalMs: stepMs }))) throw onTimeout(last!);
  return socket!;
}
