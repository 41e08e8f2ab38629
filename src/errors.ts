// One class per failure a caller can handle. Every message is one line that names
// what was wrong and how to fix it; the CLI prints `hybridbox: <message>` and exits
// with `exitCode` (125 for hybridbox's own errors, like the OCI tools).

export class HybridboxError extends Error {
  readonly exitCode: number = 125;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A workload spec field is malformed or impossible. */
export class SpecError extends HybridboxError {
  constructor(
    readonly field: string,
    readonly value: unknown,
    readonly allowed: string,
  ) {
    super(`${field}: ${describeValue(value)} is not valid; ${allowed}`);
  }
}

export class ImageNotFoundError extends HybridboxError {
  constructor(readonly image: string, known: string[] = []) {
    super(
      `image: "${image}" is not in the local image store; ` +
        (known.length ? `known images: ${known.join(', ')}` : 'run `hybridbox setup` to build the base images'),
    );
  }
}

export class SandboxNotFoundError extends HybridboxError {
  constructor(readonly ref: string) {
    super(`sandbox "${ref}" does not exist; list sandboxes with \`hybridbox ps -a\``);
  }
}

export class NameConflictError extends HybridboxError {
  constructor(readonly sandboxName: string, readonly existingId: string) {
    super(`name: "${sandboxName}" is already used by sandbox ${existingId}; pick another name or remove it with \`hybridbox rm ${sandboxName}\``);
  }
}

/** No backend can run the workload as specified (or the one asked for is unavailable). */
export class PlacementError extends HybridboxError {
  constructor(message: string, readonly rejected: { backend: string; reason: string }[] = []) {
    super(message);
  }
}

/** The sandbox is not in a state that allows the operation. */
export class StateError extends HybridboxError {}

/** The host lacks something hybridbox needs (a binary, a kernel feature, privileges). */
export class HostError extends HybridboxError {}

/** A runtime (crun, runc, QEMU, ...) failed while creating or starting a sandbox. */
export class RuntimeError extends HybridboxError {
  constructor(message: string, readonly stderr = '', options?: { cause?: unknown }) {
    super(message, options);
  }
}

export function describeValue(value: unknown): string {
  if (value === undefined) return 'a missing value';
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  try {
    const s = JSON.stringify(value);
    return s.length > 60 ? s.slice(0, 57) + '...' : s;
  } catch {
    return String(value);
  }
}
