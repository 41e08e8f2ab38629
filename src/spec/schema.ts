// zod/mini rather than classic zod: the same core and the same parsing, but without the
// method-chaining layer, whose import cost was paid on every CLI call.
import * as z from 'zod/mini';
import en from 'zod/v4/locales/en.js';

// Classic zod installs English issue messages when its first schema is built; mini leaves
// them as "Invalid input". Install them the same way so ZodError texts stay as they were.
if (!z.config().localeError) z.config(en());

export const ISOLATIONS = ['auto', 'container', 'microvm', 'vm'] as const;
export const BACKEND_KINDS = ['container', 'microvm', 'vm'] as const;
export const NETWORKS = ['none', 'bridge'] as const;
export const TRUST_LEVELS = ['trusted', 'untrusted'] as const;

export type Isolation = (typeof ISOLATIONS)[number];
export type BackendKind = (typeof BACKEND_KINDS)[number];
export type NetworkMode = (typeof NETWORKS)[number];
export type Trust = (typeof TRUST_LEVELS)[number];

// Paths a volume may never cover: the runtime owns them inside every sandbox.
export const RESERVED_GUEST_PATHS = ['/', '/proc', '/sys', '/dev', '/.hbx'] as const;

// Each described() text is the plain-words "allowed" part of validateSpec's error
// messages, so the schema is the single place where a field's rules are stated.
// (What classic zod's `.describe()` did: the text goes into zod's global registry.)
function described<T extends z.core.$ZodType>(schema: T, description: string): T {
  z.globalRegistry.add(schema, { description });
  return schema;
}

const ABS_PATH = 'an absolute path (starting with /)';
const absPath = described(z.string().check(z.refine((p) => p.startsWith('/'), { message: `must be ${ABS_PATH}` })), ABS_PATH);

export const VolumeSchema = z.strictObject({
  hostPath: absPath,
  guestPath: absPath,
  readOnly: z._default(z.boolean(), false),
});

/**
 * One disk limit: a rate for a host block device, or for the device that backs the
 * sandbox's writable layer when `path` is left out. Docker's engine API has the same shape
 * (BlkioDeviceReadBps: [{Path, Rate}]).
 */
export const DeviceLimitSchema = z.strictObject({
  path: z.optional(described(z.string().check(z.regex(/^\/dev\/[A-Za-z0-9._/-]+$/, { message: 'use a block device path such as /dev/vda' })), 'a block device path such as /dev/vda')),
  rate: z.number().check(z.int(), z.gte(1), z.lte(2 ** 50)),
});
export type DeviceLimit = z.output<typeof DeviceLimitSchema>;

function deviceLimits(unit: string) {
  return described(z.array(DeviceLimitSchema).check(z.minLength(1), z.maxLength(16)), `a list of { path?: /dev/..., rate: ${unit} } (path left out: the device behind the writable layer)`);
}

/** The disk limit fields of resources, with how the cgroup files and QEMU name them. */
export const DEVICE_LIMIT_FIELDS = ['deviceReadBps', 'deviceWriteBps', 'deviceReadIops', 'deviceWriteIops'] as const;
export type DeviceLimitField = (typeof DEVICE_LIMIT_FIELDS)[number];

export const ResourcesSchema = z.strictObject({
  /** CPU quota in CPUs (0.5 = half of one core). */
  cpus: z.optional(z.number().check(z.positive(), z.lte(1024))),
  memoryMiB: z.optional(z.number().check(z.int(), z.gte(6), z.lte(4 * 1024 * 1024))),
  pids: z.optional(z.number().check(z.int(), z.gte(1), z.lte(4_194_304))),
  /** Relative IO weight, 10..1000 (cgroup v1 blkio.weight / v2 io.weight scale). */
  ioWeight: z.optional(z.number().check(z.int(), z.gte(10), z.lte(1000))),
  /** Disk read bandwidth cap, bytes per second (docker's --device-read-bps). */
  deviceReadBps: z.optional(deviceLimits('bytes per second')),
  /** Disk write bandwidth cap, bytes per second. */
  deviceWriteBps: z.optional(deviceLimits('bytes per second')),
  /** Disk read operations per second. */
  deviceReadIops: z.optional(deviceLimits('operations per second')),
  /** Disk write operations per second. */
  deviceWriteIops: z.optional(deviceLimits('operations per second')),
  /** Network bandwidth of a bridged sandbox, in kilobits per second (1 kbit = 1000 bits), each direction. */
  netRateKbit: z.optional(z.number().check(z.int(), z.gte(8), z.lte(100_000_000))),
  /**
   * CPU time of the whole sandbox (every process, as cgroup accounting counts it, like
   * isolate's --cg-timing), in ms: past it the workload is killed (RunResult.cpuTimeLimitExceeded).
   * Not wall time: a sleeping workload uses none.
   */
  cpuTimeMs: z.optional(z.number().check(z.int(), z.gte(10), z.lte(7 * 24 * 3_600_000))),
  /** Largest file a process may write (RLIMIT_FSIZE), bytes: a write past it gets SIGXFSZ (or EFBIG if that is caught). */
  fileSizeBytes: z.optional(z.number().check(z.int(), z.gte(1), z.lte(2 ** 50))),
  /** Open file descriptors per process (RLIMIT_NOFILE, soft = hard). Default: 1024 in a container, the guest kernel's in a VM. */
  openFiles: z.optional(z.number().check(z.int(), z.gte(8), z.lte(1_048_576))),
  /** Size of each of the private tmpfs mounts at /tmp and /dev/shm, MiB (their pages also count against memoryMiB). */
  tmpfsMiB: z.optional(z.number().check(z.int(), z.gte(1), z.lte(1024 * 1024))),
});

export const KernelRequirementsSchema = z.strictObject({
  /** The workload needs a kernel of its own (modules, sysctls, a different version). */
  ownKernel: z._default(z.boolean(), false),
});

export const WorkloadSpecSchema = z.strictObject({
  name: z.optional(
    described(
      z.string().check(z.regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/, { message: 'use 1-63 letters, digits, _ . -, starting with a letter or digit' })),
      '1-63 letters, digits, _ . -, starting with a letter or digit',
    ),
  ),
  // No whitespace or control characters: the reference ends up in one-line messages and paths.
  image: described(
    z.string().check(z.regex(/^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$/, { message: 'use an image reference such as busybox or alpine:3.20' })),
    'an image reference such as busybox or alpine:3.20',
  ),
  /** argv; when absent the image's default command is used. */
  command: z.optional(described(z.array(z.string()).check(z.minLength(1)), "a non-empty list of strings, program first; leave command out to use the image's default")),
  env: z._default(
    described(
      z.record(
        described(z.string().check(z.regex(/^[A-Za-z_][A-Za-z0-9_]*$/)), 'variable names of letters, digits and _, not starting with a digit'),
        described(z.string(), 'a string (quote numbers and booleans in YAML)'),
      ),
      'a mapping of variable names to string values',
    ),
    {},
  ),
  workdir: z._default(absPath, '/'),
  user: z._default(
    described(z.string().check(z.regex(/^(\d+|[a-z_][a-z0-9_-]*)(:(\d+|[a-z_][a-z0-9_-]*))?$/, { message: 'use uid[:gid] or name[:group]' })), 'uid[:gid] or name[:group], e.g. 1000:1000 or nobody'),
    '0:0',
  ),
  resources: z._default(ResourcesSchema, {}),
  network: z._default(z.enum(NETWORKS), 'none'),
  volumes: z._default(z.array(VolumeSchema), []),
  isolation: z._default(z.enum(ISOLATIONS), 'auto'),
  trust: z._default(z.enum(TRUST_LEVELS), 'trusted'),
  startupBudgetMs: z.optional(z.number().check(z.int(), z.positive(), z.lte(3_600_000))),
  timeoutMs: z.optional(z.number().check(z.int(), z.positive(), z.lte(7 * 24 * 3_600_000))),
  /**
   * The image's root file system read-only (writes get EROFS); /tmp and /dev/shm are private
   * tmpfs mounts (nosuid, nodev), so nothing the workload writes outlives its run.
   */
  readOnlyRoot: z._default(z.boolean(), false),
  /**
   * Output cap per stream, bytes, for foreground runs (`run`): once stdout or stderr passes
   * it the sandbox is killed, what came before the cap is kept (RunResult.outputLimitExceeded).
   * A detached sandbox's output goes to its logs unwatched, so it is refused there.
   */
  outputLimitBytes: z.optional(z.number().check(z.int(), z.gte(1), z.lte(2 ** 40))),
  kernel: z._default(KernelRequirementsSchema, { ownKernel: false }),
});

/** What a caller may pass (defaults optional). */
export type WorkloadSpecInput = z.input<typeof WorkloadSpecSchema>;
/** A validated spec with every default filled in. */
export type WorkloadSpec = z.output<typeof WorkloadSpecSchema>;
