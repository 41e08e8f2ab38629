// The HTTP API's request and response shapes: one zod schema each, from which fastify
// validates requests and the OpenAPI document is generated. Workload fields reuse the
// library's rules (spec/schema.ts), so a limit means the same thing in both places.
import * as z from 'zod/mini';
import { ISOLATIONS, TRUST_LEVELS } from '../spec/index.js';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
// A file's place under /box: relative, no "..", no odd characters (it becomes a host path).
const BOX_PATH = /^(?!.*(^|\/)\.\.?(\/|$))[A-Za-z0-9._+-]+(\/[A-Za-z0-9._+-]+)*$/;

const int = (min: number, max: number) => z.number().check(z.int(), z.gte(min), z.lte(max));

export const LimitsSchema = z.strictObject({
  /** Wall-clock time of the workload. */
  wallTimeMs: z.optional(int(1, 3_600_000)),
  /** CPU time of the whole group (all its processes). */
  cpuTimeMs: z.optional(int(10, 3_600_000)),
  /** Grace past cpuTimeMs before the workload is stopped (it is still judged against cpuTimeMs). */
  extraTimeMs: z.optional(int(0, 60_000)),
  memoryMiB: z.optional(int(6, 65_536)),
  pids: z.optional(int(1, 65_536)),
  cpus: z.optional(z.number().check(z.positive(), z.lte(64))),
  fileSizeBytes: z.optional(int(1, 2 ** 40)),
  tmpfsMiB: z.optional(int(1, 65_536)),
  openFiles: z.optional(int(8, 1_048_576)),
  /** Bytes kept and streamed per output stream; past it the workload is stopped (output-limit). */
  outputBytes: z.optional(int(1, 64 * 1024 * 1024)),
});
export type Limits = z.output<typeof LimitsSchema>;

export const FileSchema = z.strictObject({
  path: z.string().check(z.regex(BOX_PATH, { message: 'a relative path under /box: letters, digits, . _ + -, no ".." parts' }), z.maxLength(255)),
  content: z.string().check(z.maxLength(8 * 1024 * 1024)),
  encoding: z._default(z.enum(['utf8', 'base64']), 'utf8'),
  executable: z._default(z.boolean(), false),
});

const workload = {
  /** An image in the service's store; or name a runtime instead. */
  image: z.optional(z.string().check(z.regex(/^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$/, { message: 'an image reference such as busybox' }))),
  /** A language runtime from GET /v1/runtimes (name or alias); instead of an image. */
  runtime: z.optional(z.string().check(z.regex(/^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/, { message: 'a runtime name from GET /v1/runtimes' }))),
  files: z._default(z.array(FileSchema).check(z.maxLength(64)), []),
  env: z._default(z.record(z.string().check(z.regex(ENV_NAME, { message: 'variable names of letters, digits and _' })), z.string().check(z.maxLength(65_536))), {}),
  limits: z._default(LimitsSchema, {}),
  isolation: z._default(z.enum(ISOLATIONS), 'auto'),
  /** untrusted (the default for API callers): user namespace, strict seccomp, read-only root, no network. */
  trust: z._default(z.enum(TRUST_LEVELS), 'untrusted'),
};

export const RunRequestSchema = z.strictObject({
  ...workload,
  /** argv; with a runtime and files it defaults to the runtime's run command. */
  command: z.optional(z.array(z.string().check(z.maxLength(65_536))).check(z.minLength(1), z.maxLength(1024))),
  /** The file a runtime compiles and runs. @default the runtime's file name */
  entrypoint: z.optional(z.string().check(z.regex(BOX_PATH))),
  stdin: z._default(z.string().check(z.maxLength(16 * 1024 * 1024)), ''),
  /** Where the result is POSTed, signed with HMAC-SHA256 (allowed by the service's configuration). */
  callbackUrl: z.optional(z.url({ protocol: /^https?$/ })),
});
export type RunRequest = z.output<typeof RunRequestSchema>;

export const CHECKERS = ['exact', 'trailing-whitespace', 'float'] as const;

export const JudgeRequestSchema = z.strictObject({
  ...workload,
  /** Runs once before the tests; its failure is compile-error. @default the runtime's compile command */
  compile: z.optional(z.array(z.string()).check(z.minLength(1))),
  /** Runs once per test. @default the runtime's run command */
  run: z.optional(z.array(z.string()).check(z.minLength(1))),
  tests: z
    .array(
      z.strictObject({
        stdin: z._default(z.string().check(z.maxLength(16 * 1024 * 1024)), ''),
        expected: z.string().check(z.maxLength(16 * 1024 * 1024)),
        /** This test's own limits, over the request's. */
        limits: z._default(LimitsSchema, {}),
      }),
    )
    .check(z.minLength(1), z.maxLength(256)),
  checker: z._default(
    z.union([
      z.strictObject({ kind: z.enum(CHECKERS), epsilon: z.optional(z.number().check(z.positive())) }),
      /** A program that gets input, expected and actual output as files and exits 0 to accept. */
      z.strictObject({ kind: z.literal('custom'), runtime: z.string(), source: z.string().check(z.maxLength(1024 * 1024)) }),
    ]),
    { kind: 'trailing-whitespace' },
  ),
  stopOnFirstFailure: z._default(z.boolean(), false),
  callbackUrl: z.optional(z.url({ protocol: /^https?$/ })),
});
export type JudgeRequest = z.output<typeof JudgeRequestSchema>;

export const VERDICTS = ['accepted', 'wrong-answer', 'compile-error', 'internal-error', 'time-limit', 'wall-time-limit', 'memory-limit', 'output-limit', 'file-size-limit', 'runtime-error'] as const;
export type Verdict = (typeof VERDICTS)[number];

const nullableInt = z.nullable(z.number());

/** One sandboxed step (a run, a compile, a test) as measured. */
export const StepSchema = z.object({
  verdict: z.enum(VERDICTS),
  /** Why, in words (the signal, the limit, the checker's message). */
  message: z.nullable(z.string()),
  exitCode: nullableInt,
  signal: z.nullable(z.string()),
  cpuMs: nullableInt,
  wallMs: z.number(),
  peakMemoryBytes: nullableInt,
  stdout: z.string(),
  stderr: z.string(),
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
  backend: z.string(),
  sandboxId: z.string(),
});
export type Step = z.output<typeof StepSchema>;

export const PlacementSchema = z.object({ backend: z.string(), reasons: z.array(z.string()), rejected: z.array(z.object({ backend: z.string(), reason: z.string() })) });

export const RUN_STATUSES = ['queued', 'running', 'completed', 'internal-error'] as const;

export const RunSchema = z.object({
  id: z.string(),
  kind: z.enum(['run', 'judge']),
  status: z.enum(RUN_STATUSES),
  /** While queued: 1 = next to be admitted. */
  queuePosition: z.nullable(z.number()),
  /** Why it waits, or why it failed. */
  reason: z.nullable(z.string()),
  placement: z.nullable(PlacementSchema),
  createdAtMs: z.number(),
  startedAtMs: nullableInt,
  finishedAtMs: nullableInt,
  /** A run's outcome (status completed). */
  result: z.nullable(StepSchema),
  /** A judge request's outcome (status completed). */
  judge: z.nullable(
    z.object({
      verdict: z.enum(VERDICTS),
      compile: z.nullable(StepSchema),
      tests: z.array(z.intersection(StepSchema, z.object({ index: z.number(), checker: z.nullable(z.string()) }))),
      /** Where the compile step's output went: in `compile.stdout`/`compile.stderr`. */
      compileOutput: z.string(),
    }),
  ),
});
export type Run = z.output<typeof RunSchema>;

export const ErrorSchema = z.object({
  error: z.string(),
  /** The request field at fault, as a dotted path. */
  field: z.optional(z.string()),
  value: z.optional(z.unknown()),
  allowed: z.optional(z.string()),
  /** For errors a client handles apart: quota, rate-limit. */
  code: z.optional(z.string()),
});

export const RuntimeSchema = z.object({
  name: z.string(),
  version: z.string(),
  aliases: z.array(z.string()),
  image: z.string(),
  compile: z.nullable(z.array(z.string())),
  run: z.array(z.string()),
  fileName: z.string(),
});

export const HealthSchema = z.object({
  ok: z.boolean(),
  queued: z.number(),
  running: z.number(),
  capacity: z.object({ cpuSlots: z.number(), cpuSlotsUsed: z.number(), memoryMiB: z.number(), memoryMiBUsed: z.number() }),
});
