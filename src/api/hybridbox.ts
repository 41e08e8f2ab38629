import { customAlphabet } from 'nanoid';
import { join } from 'node:path';
import { RuntimeError, SpecError } from '../errors.js';
import { probeHost } from '../host/probe.js';
import type { HostInfo } from '../host/types.js';
import type { StepRunner } from '../images/build/index.js';
import { ImageStore } from '../images/index.js';
import { Measurements, hostKey } from '../measurements/index.js';
import { BridgeNetwork } from '../network/index.js';
import { BackendRegistry, type BackendAvailability } from '../runtimes/registry.js';
import { StateStore, preparePrivateRoot } from '../store/index.js';
import { ensureSbinOnPath, stateRoot } from '../util/paths.js';
import { backendOf, type Core } from './context.js';
import { ImageService } from './images.js';
import { PlacementService } from './placement.js';
import { Reconciler } from './reconciler.js';
import { SandboxService } from './sandboxes.js';
import type { HybridboxOptions } from './types.js';

const stepName = customAlphabet('0123456789abcdefghijklmnopqrstuvwxyz', 12);

/**
 * The library API: a thin facade over small services that the CLI, the HTTP service and
 * library callers all use (after E2B's `sandbox.files` / `sandbox.commands`).
 *
 *   const hb = await Hybridbox.open();
 *   const r = await hb.sandboxes.run({ image: 'busybox', command: ['echo', 'hi'] });
 */
export class Hybridbox {
  /** The sandbox lifecycle: create, run, start, stop, kill, remove, list, inspect, exec, logs. */
  readonly sandboxes: SandboxService;
  /** Tags, builds, import/export, prune, and push/pull to S3, with the in-use guards inside. */
  readonly images: ImageService;
  /** Validation and the scheduler's explained decisions. */
  readonly placement: PlacementService;
  /** Stored benchmark results of this state root (what `hybridbox bench` writes and placement reads). */
  readonly measurements: Measurements;
  readonly root: string;
  readonly host: HostInfo;
  readonly #core: Core;

  private constructor(root: string, host: HostInfo, options: HybridboxOptions) {
    const store = new StateStore(root);
    const images = new ImageStore(root);
    const measurements = new Measurements(store.db, hostKey(host));
    const backends = new BackendRegistry(host, store, new BridgeNetwork(store), images, options);
    const core: Core = { root, host, store, images, backends, measurements };
    this.#core = core;
    this.root = root;
    this.host = host;
    this.measurements = measurements;
    this.placement = new PlacementService(core);
    const reconciler = new Reconciler(core);
    this.sandboxes = new SandboxService(core, this.placement, reconciler);
    this.images = new ImageService(core, this.buildSteps(reconciler));
  }

  static async open(options: HybridboxOptions = {}): Promise<Hybridbox> {
    ensureSbinOnPath();
    const root = options.root ?? stateRoot();
    // Every sandbox's overlayfs mount names paths under the root: its lowerdir list is colon-separated.
    if (!root.startsWith('/') || /[:\x00-\x1f\x7f]/.test(root))
      throw new SpecError('root', root, 'give an absolute state directory path without ":" or control characters (overlayfs mount options cannot carry them)');
    // Private: specs, env values, logs and exit records are nobody else's to read (see ARCHITECTURE).
    preparePrivateRoot(root);
    const host = options.host ?? (await probeHost({ cacheDir: join(root, 'cache') }));
    return new Hybridbox(root, host, options);
  }

  close(): void {
    this.#core.store.close();
  }

  /** The host and every backend as hybridbox sees them (`hybridbox info`). */
  info(): { host: HostInfo; backends: BackendAvailability[] } {
    return { host: this.host, backends: this.#core.backends.availability() };
  }

  /** A build's RUN step is an ordinary container sandbox; its filesystem changes become the layer. */
  private buildSteps(reconciler: Reconciler): StepRunner {
    const core = this.#core;
    return {
      withStep: async (req, use) => {
        const name = `build-${stepName()}`;
        try {
          const r = await this.sandboxes.run(
            { image: req.image, command: req.argv, env: req.env, workdir: req.workdir, user: req.user, network: req.network, isolation: 'container', name },
            { onStdout: req.onStdout, onStderr: req.onStderr, maxBufferBytes: 0 },
          );
          const rec = core.store.get(r.id)!;
          const changes = backendOf(core, rec).filesystemChanges?.(rec);
          if (!changes) throw new RuntimeError(`the ${rec.backend} backend cannot report filesystem changes, which a build step needs`);
          return await use({ exitCode: r.exitCode, signal: r.signal, changes });
        } finally {
          const rec = core.store.find(name);
          if (rec) await reconciler.remove(rec);
        }
      },
    };
  }
}
