import { existsSync } from 'node:fs';
import { isBlockDevice } from '../host/blockdev.js';
import type { HostLoad } from '../host/types.js';
import { place, type Placement } from '../scheduler/index.js';
import { validateForHost, validateSpec, type WorkloadSpec, type WorkloadSpecInput } from '../spec/index.js';
import type { Core } from './context.js';

/**
 * Validation and placement: a spec checked against the schema and this host, then the
 * scheduler's decision with its reasons. Start-up predictions come from this host's newest
 * `bench startup` result (time to the workload's first output), and from the backends'
 * documented defaults before there is one.
 */
export class PlacementService {
  constructor(private readonly core: Core) {}

  /** Validates a spec against the schema and this host; throws a one-line SpecError. */
  validate(input: WorkloadSpecInput | unknown): WorkloadSpec {
    const spec = validateSpec(input);
    const { host, images, store } = this.core;
    validateForHost(spec, {
      hostCpus: host.cpus,
      hostMemoryMiB: Math.floor(host.memTotalBytes / 1048576),
      imageExists: (ref) => images.has(ref),
      knownImages: () => images.list(),
      nameTaken: (name) => store.nameTaken(name),
      pathExists: (p) => existsSync(p),
      isBlockDevice,
    });
    return spec;
  }

  /** The scheduler's decision for a spec, without running anything. */
  place(input: WorkloadSpecInput | unknown): Placement {
    return this.decide(this.validate(input));
  }

  /** @internal The decision for a spec that is already valid. */
  decide(spec: WorkloadSpec): Placement {
    const measured = this.core.measurements.startupStats(this.core.measurements.hostKey, { measure: 'firstOutput' });
    return place(spec, this.core.host, this.load(), this.core.backends.descriptors(), measured);
  }

  private load(): HostLoad {
    const running = { container: 0, microvm: 0, vm: 0 };
    let committedMemoryMiB = 0;
    for (const r of this.core.store.list('running')) {
      running[r.backend]++;
      committedMemoryMiB += (r.spec as WorkloadSpec).resources.memoryMiB ?? 0;
    }
    return { running, committedMemoryMiB };
  }
}
