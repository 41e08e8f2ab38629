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
    pid: join(dir, 'qemu.pid'),
    domainXml: join(dir, 'domain.xml'),
  };
}
export type VmFiles = ReturnType<typeof vmFiles>;
