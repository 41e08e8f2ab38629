import { z } from 'zod';

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

// Each `.describe()` text is the plain-words "allowed" part of validateSpec's error
// messages, so the schema is the single place where a field's rules are stated.
const ABS_PATH = 'an absolute path (starting with /)';
const absPath = z
  .string()
  .refine((p) => p.startsWith('/'), { message: `must be ${ABS_PATH}` })
  .describe(ABS_PATH);

export const VolumeSchema = z
  .object({
    hostPath: absPath,
    guestPath: absPath,
    readOnly: z.boolean().default(false),
  })
  .strict();

export const ResourcesSchema = z
  .object({
    /** CPU quota in CPUs (0.5 = half of one core). */
    cpus: z.number().positive().max(1024).optional(),
    memoryMiB: z.number().int().min(6).max(4 * 1024 * 1024).optional(),
    pids: z.number().int().min(1).max(4_194_304).optional(),
    /** Relative IO weight, 10..1000 (cgroup v1 blkio.weight / v2 io.weight scale). */
    ioWeight: z.number().int().min(10).max(1000).optional(),
  })
  .strict();

export const KernelRequirementsSchema = z
  .object({
    /** The workload needs a kernel of its own (modules, sysctls, a different version). */
    ownKernel: z.boolean().default(false),
  })
  .strict();

export const WorkloadSpecSchema = z
  .object({
    name: z
      .string()
      .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/, { message: 'use 1-63 letters, digits, _ . -, starting with a letter or digit' })
      .describe('1-63 letters, digits, _ . -, starting with a letter or digit')
      .optional(),
    // No whitespace or control characters: the reference ends up in one-line messages and paths.
    image: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._\/:@+-]{0,254}$/, { message: 'use an image reference such as busybox or alpine:3.20' })
      .describe('an image reference such as busybox or alpine:3.20'),
    /** argv; when absent the image's default command is used. */
    command: z
      .array(z.string())
      .min(1)
      .describe("a non-empty list of strings, program first; leave command out to use the image's default")
      .optional(),
    env: z
      .record(
        z
          .string()
          .regex(/^[A-Za-z_][A-Za-z0-9_]*$/)
          .describe('variable names of letters, digits and _, not starting with a digit'),
        z.string().describe('a string (quote numbers and booleans in YAML)'),
      )
      .describe('a mapping of variable names to string values')
      .default({}),
    workdir: absPath.default('/'),
    user: z
      .string()
      .regex(/^(\d+|[a-z_][a-z0-9_-]*)(:(\d+|[a-z_][a-z0-9_-]*))?$/, { message: 'use uid[:gid] or name[:group]' })
      .describe('uid[:gid] or name[:group], e.g. 1000:1000 or nobody')
      .default('0:0'),
    resources: ResourcesSchema.default({}),
    network: z.enum(NETWORKS).default('none'),
    volumes: z.array(VolumeSchema).default([]),
    isolation: z.enum(ISOLATIONS).default('auto'),
    trust: z.enum(TRUST_LEVELS).default('trusted'),
    startupBudgetMs: z.number().int().positive().max(3_600_000).optional(),
    timeoutMs: z.number().int().positive().max(7 * 24 * 3_600_000).optional(),
    kernel: KernelRequirementsSchema.default({ ownKernel: false }),
  })
  .strict();

/** What a caller may pass (defaults optional). */
export type WorkloadSpecInput = z.input<typeof WorkloadSpecSchema>;
/** A validated spec with every default filled in. */
export type WorkloadSpec = z.output<typeof WorkloadSpecSchema>;
