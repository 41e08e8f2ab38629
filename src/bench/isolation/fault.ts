// Fault isolation: faults injected into one sandbox (a guest kernel panic, an OOM, a fork
// bomb, QEMU killed with SIGKILL) while one sandbox of each backend runs alongside; each
// must keep running, and the host must stay up.
import type { Hybridbox, SandboxInfo } from '../../api/index.js';
import type { BackendKind } from '../../spec/schema.js';
import { pollUntil } from '../../util/proc.js';
import type { FaultCase } from '../../measurements/index.js';
import { LIMITS, PROBE_IN_IMAGE, findQemuPid, hostBootId, hostIsUp, hostProcessCount, lastJson, withTimeout, type Log, type SandboxRegister } from './context.js';

export interface FaultContext {
  hb: Hybridbox;
  image: string;
  register: SandboxRegister;
  log: Log;
}

const RUN_TIMEOUT_MS = 300_000;

export async function runFault(ctx: FaultContext, backends: BackendKind[]): Promise<FaultCase[]> {
  const { hb, register, log } = ctx;
  const bootId = hostBootId();
  const survivors: { backend: BackendKind; name: string; info: SandboxInfo }[] = [];
  const cases: FaultCase[] = [];
  try {
    for (const b of backends) {
      const name = register.name(`survivor-${b}`);
      log(`fault: starting a ${b} bystander`);
      const info = await hb.sandboxes.runDetached({ name, image: ctx.image, command: ['sleep', '86400'], isolation: b, timeoutMs: 3_600_000 });
      survivors.push({ backend: b, name, info });
    }

    /** After a fault: is each bystander still listed as running, and does it still answer? */
    const check = async (fault: string, inBackend: BackendKind, detail: string): Promise<FaultCase> => {
      const listed = new Set((await hb.sandboxes.list()).filter((s) => s.state === 'running').map((s) => s.name));
      const result: FaultCase = { fault, in: inBackend, survivors: [], hostUp: await hostIsUp(bootId), detail };
      for (const s of survivors) {
        let answers = false;
        if (listed.has(s.name)) {
          const e = await withTimeout(hb.sandboxes.exec(s.name, ['echo', 'alive']), 120_000, `exec in ${s.name}`).catch(() => null);
          answers = e?.exitCode === 0 && e.stdout === 'alive\n';
        }
        result.survivors.push({ backend: s.backend, name: s.name, keptRunning: listed.has(s.name) && answers });
      }
      const kept = result.survivors.filter((s) => s.keptRunning).length;
      log(`fault: ${fault} in ${inBackend}: ${detail}; bystanders running ${kept}/${result.survivors.length}; host ${result.hostUp ? 'up' : 'DOWN'}`);
      return result;
    };

    for (const b of backends.filter((x) => x !== 'container')) {
      const name = register.name(`panic-${b}`);
      const r = await withTimeout(
        hb.sandboxes.run({ name, image: ctx.image, command: ['sh', '-c', 'echo before; echo c > /proc/sysrq-trigger; echo after'], isolation: b }),
        RUN_TIMEOUT_MS,
        `the ${b} panic run`,
      );
      cases.push(await check('guest kernel panic', b, r.crash ? `crashed only itself: ${r.crash}` : `no crash reported (exit ${r.exitCode ?? r.signal})`));
      await register.remove(name);
    }

    if (backends.includes('container')) {
      const oomName = register.name('oom-container');
      const oom = await withTimeout(
        hb.sandboxes.run({ name: oomName, image: ctx.image, command: [PROBE_IN_IMAGE, 'mem-bomb', '120', '--once'], isolation: 'container', resources: { memoryMiB: 32 }, timeoutMs: 120_000 }),
        RUN_TIMEOUT_MS,
        'the OOM run',
      );
      const peak = oom.peakMemoryBytes === null ? '?' : `${Math.round(oom.peakMemoryBytes / 1048576)} MiB`;
      cases.push(await check('out of memory (32 MiB limit)', 'container', `${oom.oomKilled ? 'OOM-killed' : 'not OOM-killed'} (exit ${oom.exitCode ?? oom.signal}), peak ${peak}`));
      await register.remove(oomName);

      const forkName = register.name('forkbomb-container');
      const before = hostProcessCount();
      const fb = await withTimeout(
        hb.sandboxes.run({
          name: forkName,
          image: ctx.image,
          command: [PROBE_IN_IMAGE, 'fork-bomb', '3'],
          isolation: 'container',
          resources: { pids: LIMITS.pids, cpus: LIMITS.cpus, memoryMiB: LIMITS.memoryMiB },
          timeoutMs: 120_000,
        }),
        RUN_TIMEOUT_MS,
        'the fork bomb run',
      );
      const rep = lastJson(fb.stdout);
      const after = hostProcessCount();
      cases.push(
        await check(
          `fork bomb (pids ${LIMITS.pids})`,
          'container',
          rep
            ? `${rep.forksRefused} forks refused at the pids cap, ${rep.maxAlive} processes at most; host processes ${before} before, ${after} after`
            : `no report (exit ${fb.exitCode ?? fb.signal})`,
        ),
      );
      await register.remove(forkName);
    }

    if (backends.includes('microvm')) {
      const name = register.name('qemu-kill-microvm');
      const vm = await hb.sandboxes.runDetached({ name, image: ctx.image, command: ['sleep', '86400'], isolation: 'microvm', timeoutMs: 3_600_000 });
      const pid = findQemuPid(vm.id);
      let detail: string;
      if (pid === null) detail = 'its QEMU process was not found';
      else {
        // This QEMU was started by hybridbox for this bench (found by the sandbox id on its command line).
        process.kill(pid, 'SIGKILL');
        const ended = await pollUntil(async () => (await hb.sandboxes.list({ all: true })).find((s) => s.name === name)?.state !== 'running', { timeoutMs: 30_000, intervalMs: 200 });
        const rec = (await hb.sandboxes.list({ all: true })).find((s) => s.name === name);
        detail = ended
          ? `QEMU ${pid} killed: the sandbox is ${rec?.state ?? 'gone'}${rec?.stateReason ? ` (${rec.stateReason})` : ''}`
          : `QEMU ${pid} killed, but the sandbox is still recorded as running`;
      }
      cases.push(await check('QEMU killed (SIGKILL)', 'microvm', detail));
      await register.remove(name);
    }
  } finally {
    for (const s of survivors) await register.remove(s.name);
  }
  return cases;
}
