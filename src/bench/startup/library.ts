// The hybridbox scenarios: one run of the workload through the library's public calls,
// `hb.sandboxes.run()` then `hb.sandboxes.remove()`, in this process. Phases come from the library's own
// records: when the sandbox was recorded (validated, placed, image resolved), when its
// backend had prepared it, when its first process existed (RunResult.startupMs), when it
// ended (its resources released), and when it was removed.
import type { BackendKind } from '../../spec/schema.js';
import { lastLine } from '../../util/exec.js';
import { BenchRunError, NO_OUTPUT, phaseDurations } from './proc.js';
import { backendUnavailable, workloadArgv, type BenchContext, type Measurement, type Scenario } from './types.js';

const DESCRIPTIONS: Record<BackendKind, string> = {
  container: 'hybridbox container: hb.sandboxes.run() (validate, place, record, overlay + config.json, hbx-shim + crun run, cgroup accounting, teardown), then hb.sandboxes.remove()',
  microvm: 'hybridbox microVM: hb.sandboxes.run() (place, qcow2 overlay, QEMU -M microvm, guest agent session 0, power-off), then hb.sandboxes.remove()',
  vm: 'hybridbox libvirt VM: hb.sandboxes.run() (place, qcow2 overlay, virsh create --paused + resume, guest agent session 0, power-off), then hb.sandboxes.remove()',
};

/** The sandboxes are named so that one left by a failed run can be found and removed. */
let seq = 0;

export function libraryScenario(ctx: BenchContext, backend: BackendKind): Scenario {
  const spec = (name: string) => ({ name, image: ctx.image, command: workloadArgv(ctx.command), isolation: backend });
  return {
    name: backend,
    kind: 'backend',
    backend,
    description: DESCRIPTIONS[backend],
    async prepare() {
      return backendUnavailable(ctx, backend);
    },
    async once(): Promise<Measurement> {
      const { hb } = ctx;
      const name = `bench-startup-${process.pid}-${++seq}`;
      let first: number | null = null;
      const t0Epoch = Date.now();
      const t0 = performance.now();
      try {
        const r = await hb.sandboxes.run(spec(name), { onStdout: () => void (first ??= performance.now() - t0), maxBufferBytes: 64 * 1024 });
        const rec = hb.sandboxes.find(r.id);
        await hb.sandboxes.remove(r.id);
        const totalMs = performance.now() - t0;
        if (r.crash) throw new BenchRunError(`the sandbox crashed: ${r.crash}`);
        if (r.exitCode !== 0) throw new BenchRunError(`the workload ended with ${r.signal ?? `exit code ${r.exitCode}`}; stderr: ${lastLine(r.stderr, NO_OUTPUT)}`);
        const at = (epochMs: number | null | undefined): number | null => (epochMs == null ? null : epochMs - t0Epoch);
        return {
          totalMs,
          firstOutputMs: first,
          phases: phaseDurations([
            ['placement', at(rec?.createdAtMs)],
            ['prepare', at(rec?.startedAtMs)],
            ['start', r.startupMs],
            ['firstOutput', first],
            ['exit', at(rec?.finishedAtMs)],
            ['teardown', totalMs],
          ]),
        };
      } finally {
        if (hb.sandboxes.find(name)) await hb.sandboxes.remove(name, { force: true }).catch(() => undefined);
      }
    },
    async cleanup() {
      /* every run removes its own sandbox */
    },
  };
}
