import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Everything a VM sandbox keeps in its directory; all of it goes with `rm`. */
export function vmFiles(dir: string) {
  return {
    dir,
    disk: join(dir, 'disk.qcow2'),
    agentSock: join(dir, 'agent.sock'),
    qmpSock: join(dir, 'qmp.sock'),
    ctlSock: join(dir, 'ctl.sock'),
    console: join(dir, 'console.log'),
    stdout: join(dir, 'stdout.log'),
    stderr: join(dir, 'stderr.log'),
    exit: join(dir, 'exit.json'),
    ready: join(dir, 'ready.json'),
    /** Present once someone asked for the machine to be destroyed: its end is then a kill, not a crash. */
    killed: join(dir, 'killed'),
    pid: join(dir, 'qemu.pid'),
    domainXml: join(dir, 'domain.xml'),
  };
}
export type VmFiles = ReturnType<typeof vmFiles>;

/**
 * Writes a JSON record that other processes poll for (ready.json, exit.json): through a
 * temporary file and a rename, so a reader sees either no file or all of it, never the
 * empty or half-written file an in-place write shows for a moment.
 */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, JSON.stringify(value) + '\n');
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
