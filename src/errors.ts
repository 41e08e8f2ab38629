// One class per failure a caller can handle. Every message is one line that names
// what was wrong and how to fix it; the CLI prints `hybridbox: <message>` and exits
// with `exitCode` (125 for hybridbox's own errors, like the OCI tools).
//
// The classes form a small tree so that a caller can catch as narrowly as it needs:
//   HybridboxError
//   ├─ SpecError                 any input error (spec fields, exec -e, --build-arg, refs)
//   ├─ ImageNotFoundError, ImageInUseError, ImageStoreBusyError
//   ├─ SandboxNotFoundError, AmbiguousReferenceError, NameConflictError
//   ├─ SandboxStateError         already running, not running, already ended
//   ├─ PlacementError            no backend can run the workload as specified
//   │  └─ BackendUnavailableError  the backend asked for cannot be used here
//   ├─ HostCapabilityError       the host lacks a binary, kernel feature or privilege
//   ├─ TimeoutError              a limit on waiting ran out (BootTimeoutError: a guest that never came up)
//   ├─ AbortedError              the caller's AbortSignal fired; the sandbox was stopped first
//   ├─ StateStoreError           the state directory or database cannot be used
//   ├─ InsecureFileError         a file holding secrets is readable by other users
//   └─ RuntimeError              a runtime (crun, QEMU, libvirt) failed starting or driving a sandbox
// The package entry also exports the errors of the image builder (SandboxfileError,
// BuildError), archives (ArchiveError), the S3 registry (RegistryError and its kinds) and the
// guest agent (AgentError, AgentTimeoutError, AgentClosedError).

export class HybridboxError extends Error {
  readonly exitCode: number = 125;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A workload spec field, flag or other input is malformed or impossible. Nothing was changed. */
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
  constructor(
    readonly image: string,
    known: string[] = [],
  ) {
    super(`image: "${image}" is not in the local image store; ` + (known.length ? `known images: ${known.join(', ')}` : 'run `hybridbox setup` to build the base images'));
  }
}

/** The image is still used by sandboxes; remove them first, or force it. */
export class ImageInUseError extends HybridboxError {
  constructor(
    readonly image: string,
    readonly sandboxes: string[],
  ) {
    super(
      `image ${image} is used by sandbox ${sandboxes.join(', ')}; remove ${sandboxes.length > 1 ? 'them' : 'it'} first, or use \`hybridbox image rm -f\` (the sandbox keeps its copy until it is removed)`,
    );
  }
}

/** The image store is busy (a prune, or writers while a prune wants to run); try again when it has finished. */
export class ImageStoreBusyError extends HybridboxError {}

export class SandboxNotFoundError extends HybridboxError {
  constructor(readonly ref: string) {
    super(`sandbox "${ref}" does not exist; list sandboxes with \`hybridbox ps -a\``);
  }
}

/** A sandbox reference (an id prefix) matches more than one sandbox. */
export class AmbiguousReferenceError extends HybridboxError {
  constructor(
    readonly ref: string,
    readonly matches: string[],
  ) {
    super(`sandbox "${ref}" is ambiguous: it is a prefix of ${matches.join(', ')}; give more of the id, or the name`);
  }
}

export class NameConflictError extends HybridboxError {
  constructor(
    readonly sandboxName: string,
    readonly existingId: string,
  ) {
    super(`name: "${sandboxName}" is already used by sandbox ${existingId}; pick another name or remove it with \`hybridbox rm ${sandboxName}\``);
  }
}

/** The sandbox is not in a state that allows the operation (already running, not running, ended). */
export class SandboxStateError extends HybridboxError {
  constructor(
    message: string,
    readonly sandbox?: string,
    readonly state?: string,
  ) {
    super(message);
  }
}

/** No backend can run the workload as specified. */
export class PlacementError extends HybridboxError {
  constructor(
    message: string,
    readonly rejected: { backend: string; reason: string }[] = [],
  ) {
    super(message);
  }
}

/** The backend asked for (`isolation: microvm`, ...) cannot run this workload on this host. */
export class BackendUnavailableError extends PlacementError {
  constructor(
    readonly backend: string,
    readonly reason: string,
    rejected: { backend: string; reason: string }[] = [],
  ) {
    super(`isolation: ${backend} was requested, but ${backend} cannot be used: ${reason}`, rejected);
  }
}

/** The host lacks something hybridbox needs (a binary, a kernel feature, privileges). */
export class HostCapabilityError extends HybridboxError {}

/** A wait with a limit ran out. */
export class TimeoutError extends HybridboxError {
  constructor(
    message: string,
    readonly timeoutMs: number,
  ) {
    super(message);
  }
}

/** A virtual machine's guest did not come up within its boot limit; the VM was stopped. */
export class BootTimeoutError extends TimeoutError {}

/** The caller's AbortSignal fired. The sandbox was stopped and recorded (or removed) first. */
export class AbortedError extends HybridboxError {
  constructor(
    message: string,
    readonly result?: unknown,
  ) {
    super(message);
  }
}

/** The state directory or its database cannot be used (permissions, a newer schema, corruption). */
export class StateStoreError extends HybridboxError {}

/** A file that holds secrets is readable or writable by other users; it is refused until fixed. */
export class InsecureFileError extends HybridboxError {
  constructor(
    readonly path: string,
    readonly mode: number,
  ) {
    super(`${path} is accessible by other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); it holds secrets: run \`chmod 600 ${path}\``);
  }
}

/** A runtime (crun, runc, QEMU, libvirt) failed while creating, starting or driving a sandbox. */
export class RuntimeError extends HybridboxError {
  constructor(
    message: string,
    readonly stderr = '',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function describeValue(value: unknown): string {
  if (value === undefined) return 'a missing value';
  // A long value (a path of thousands of bytes) would bury the rest of the one-line message.
  if (typeof value === 'string') return value.length > 200 ? `${JSON.stringify(value.slice(0, 120))}... (${value.length} characters)` : JSON.stringify(value);
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  try {
    const s = JSON.stringify(value);
    return s.length > 60 ? s.slice(0, 57) + '...' : s;
  } catch {
    return String(value);
  }
}
