import { posix } from 'node:path';
import { globalRegistry, type core } from 'zod/mini';
import { ImageNotFoundError, NameConflictError, SpecError } from '../errors.js';
import { DEVICE_LIMIT_FIELDS, RESERVED_GUEST_PATHS, WorkloadSpecSchema, type WorkloadSpec } from './schema.js';

/** What validateForHost needs to know about the machine it will run on. */
export interface HostContext {
  hostCpus: number;
  hostMemoryMiB: number;
  imageExists(ref: string): boolean;
  knownImages(): string[];
  /** The id of the sandbox already using `name`, or null. */
  nameTaken(name: string): string | null;
  pathExists(p: string): boolean;
  /** Whether `p` is a block device on this host (disk limits name one). */
  isBlockDevice(p: string): boolean;
}

/** Checks shape, ranges and cross-field rules; throws a SpecError naming the first problem. */
export function validateSpec(input: unknown): WorkloadSpec {
  const result = WorkloadSpecSchema.safeParse(input);
  if (!result.success) throw issueToError(result.error.issues[0]!, input);
  const spec = result.data;

  if (spec.command?.[0] === '') throw new SpecError('command[0]', '', 'allowed: the program to run (a name or path); it cannot be empty');
  spec.command?.forEach((a, i) => checkedText(`command[${i}]`, a));
  for (const [k, v] of Object.entries(spec.env)) checkedText(formatPath(['env', k]), v);
  // Paths are normalised so "/data/" and "/data" are recognised as the same mount point.
  spec.workdir = checkedPath('workdir', spec.workdir);
  const seen = new Map<string, number>();
  spec.volumes.forEach((v, i) => {
    const field = `volumes[${i}].guestPath`;
    const given = v.guestPath;
    v.hostPath = checkedPath(`volumes[${i}].hostPath`, v.hostPath);
    v.guestPath = checkedPath(field, given);
    const reserved = RESERVED_GUEST_PATHS.find((r) => v.guestPath === r || (r !== '/' && v.guestPath.startsWith(`${r}/`)));
    if (reserved) throw new SpecError(field, given, `allowed: a path outside ${RESERVED_GUEST_PATHS.join(', ')} (the runtime owns ${reserved})`);
    const first = seen.get(v.guestPath);
    if (first !== undefined) throw new SpecError(field, given, `allowed: a guest path no other volume uses; volumes[${first}] already mounts it`);
    seen.set(v.guestPath, i);
  });
  for (const f of DEVICE_LIMIT_FIELDS) {
    const paths = new Map<string, number>();
    spec.resources[f]?.forEach((l, i) => {
      const field = `resources.${f}[${i}].path`;
      const key = l.path === undefined ? '' : checkedPath(field, l.path);
      if (l.path !== undefined) l.path = key;
      const first = paths.get(key);
      if (first !== undefined)
        throw new SpecError(
          l.path === undefined ? `resources.${f}[${i}]` : field,
          l.path ?? l.rate,
          `allowed: one rate per device; resources.${f}[${first}] already names ${l.path ?? "the writable layer's device"}`,
        );
      paths.set(key, i);
    });
  }
  if (spec.resources.netRateKbit !== undefined && spec.network !== 'bridge') {
    throw new SpecError('resources.netRateKbit', spec.resources.netRateKbit, 'allowed: only with network: bridge (a sandbox without a network has no traffic to limit)');
  }
  return spec;
}

/** Checks a validated spec against this host: capacity, image, name and host paths. */
export function validateForHost(spec: WorkloadSpec, ctx: HostContext): WorkloadSpec {
  const { cpus, memoryMiB } = spec.resources;
  if (cpus !== undefined && cpus > ctx.hostCpus) throw new SpecError('resources.cpus', cpus, `allowed: at most ${ctx.hostCpus} (the CPUs this host has)`);
  if (memoryMiB !== undefined && memoryMiB > ctx.hostMemoryMiB) {
    throw new SpecError('resources.memoryMiB', memoryMiB, `allowed: at most ${ctx.hostMemoryMiB} (MiB of memory this host has)`);
  }
  spec.volumes.forEach((v, i) => {
    if (!ctx.pathExists(v.hostPath)) throw new SpecError(`volumes[${i}].hostPath`, v.hostPath, 'allowed: a path that exists on the host; create it first');
  });
  for (const f of DEVICE_LIMIT_FIELDS) {
    spec.resources[f]?.forEach((l, i) => {
      if (l.path !== undefined && !ctx.isBlockDevice(l.path)) throw new SpecError(`resources.${f}[${i}].path`, l.path, 'allowed: a block device that exists on this host (see lsblk)');
    });
  }
  if (!ctx.imageExists(spec.image)) throw new ImageNotFoundError(spec.image, ctx.knownImages());
  const holder = spec.name === undefined ? null : ctx.nameTaken(spec.name);
  if (spec.name !== undefined && holder !== null) throw new NameConflictError(spec.name, holder);
  return spec;
}

// No backend can carry a NUL (execve, mount and every C string end there); a lone UTF-16
// surrogate has no UTF-8 form and would be replaced on the way out, changing the value.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
// Paths also go into QEMU options, libvirt's XML (where XML 1.0 has no form for most
// control characters and turns a newline in an attribute into a space) and one-line messages.
const CONTROL = /[\u0000-\u001F\u007F]/;
/** PATH_MAX less its terminating NUL. */
const PATH_MAX_BYTES = 4095;

function checkedText(field: string, s: string): void {
  if (s.includes('\0')) throw new SpecError(field, s, 'allowed: text without NUL characters (no process argument or variable can hold one)');
  if (LONE_SURROGATE.test(s)) throw new SpecError(field, s, 'allowed: valid Unicode text (this has a lone UTF-16 surrogate)');
}

function checkedPath(field: string, p: string): string {
  checkedText(field, p);
  if (CONTROL.test(p)) throw new SpecError(field, p, 'allowed: a path without control characters (newline, tab, ...)');
  if (Buffer.byteLength(p) > PATH_MAX_BYTES) throw new SpecError(field, p, `allowed: a path of at most ${PATH_MAX_BYTES} bytes`);
  // ".." could climb out of a mount on either side once symlinks and bind mounts mix.
  if (p.split('/').includes('..')) throw new SpecError(field, p, 'allowed: an absolute path without ".." segments');
  return posix.normalize(p).replace(/(.)\/$/, '$1');
}

// --- zod issue → SpecError -------------------------------------------------------------

type Schema = core.$ZodType;
interface Def {
  type: string;
  innerType?: Schema;
  shape?: Record<string, Schema>;
  element?: Schema;
  keyType?: Schema;
  valueType?: Schema;
  entries?: Record<string, string | number>;
  checks?: { _zod: { def: CheckDef } }[];
}
interface CheckDef {
  check: string;
  value?: number;
  inclusive?: boolean;
  format?: string;
  minimum?: number;
}

const def = (s: Schema) => s._zod.def as unknown as Def;
const WRAPPERS = new Set(['optional', 'default', 'prefault', 'nullable', 'readonly', 'catch']);

/** Strips optional/default wrappers, keeping the first description found on the way in. */
function unwrap(s: Schema): { node: Schema; description?: string } {
  let description = globalRegistry.get(s)?.description;
  while (WRAPPERS.has(def(s).type)) {
    s = def(s).innerType!;
    description ??= globalRegistry.get(s)?.description;
  }
  return description === undefined ? { node: s } : { node: s, description };
}

function schemaAt(path: PropertyKey[]): Schema | undefined {
  let s: Schema | undefined = WorkloadSpecSchema;
  for (const seg of path) {
    if (!s) return undefined;
    const d = def(unwrap(s).node);
    s = d.type === 'object' ? d.shape?.[String(seg)] : d.type === 'array' ? d.element : d.type === 'record' ? d.valueType : undefined;
  }
  return s;
}

function valueAt(input: unknown, path: PropertyKey[]): unknown {
  let v = input;
  for (const seg of path) v = v !== null && typeof v === 'object' && Object.hasOwn(v, seg) ? (v as Record<PropertyKey, unknown>)[seg] : undefined;
  return v;
}

function formatPath(path: PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(String(seg))) out += out ? `.${String(seg)}` : String(seg);
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out || 'spec';
}

function issueToError(issue: core.$ZodIssue, input: unknown): SpecError {
  const path = issue.path;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0]!;
    const known = Object.keys(def(unwrap(schemaAt(path)!).node).shape ?? {});
    return new SpecError(formatPath([...path, key]), valueAt(input, [...path, key]), `unknown key ${JSON.stringify(key)}: allowed keys are ${known.join(', ')}`);
  }
  if (issue.code === 'invalid_key') {
    // A bad record key: report the key itself against the record's field.
    const record = def(unwrap(schemaAt(path.slice(0, -1))!).node);
    const text = record.keyType ? describe(record.keyType, '') : 'a valid key';
    return new SpecError(formatPath(path.slice(0, -1)), String(path.at(-1)), `allowed: ${text}`);
  }
  const schema = schemaAt(path);
  const text = schema ? describe(schema, String(path.at(-1) ?? '')) : issue.message;
  return new SpecError(formatPath(path), valueAt(input, path), `allowed: ${text}`);
}

const UNITS: Record<string, string> = {
  netRateKbit: ' (kbit/s, e.g. 10000 for 10mbit)',
  rate: ' (per second)',
  memoryMiB: ' (MiB)',
  startupBudgetMs: ' (ms)',
  timeoutMs: ' (ms)',
  cpus: ' (CPUs, e.g. 0.5 or 2)',
  cpuTimeMs: ' (ms of CPU time)',
  fileSizeBytes: ' (bytes)',
  openFiles: ' (file descriptors per process)',
  tmpfsMiB: ' (MiB)',
  outputLimitBytes: ' (bytes per stream)',
};

/** The plain-words rule for one field, from its description or its type and checks. */
function describe(schema: Schema, key: string): string {
  const { node, description } = unwrap(schema);
  const d = def(node);
  if (d.type === 'number') return describeNumber(d) + (UNITS[key] ?? '');
  if (description) return description;
  switch (d.type) {
    case 'enum':
      return `one of ${Object.values(d.entries ?? {}).join(', ')}`;
    case 'boolean':
      return 'true or false';
    case 'string':
      return 'a string';
    case 'object':
      return `a mapping with keys ${Object.keys(d.shape ?? {}).join(', ')}`;
    case 'array':
      return d.element ? `a list, each item ${describe(d.element, '')}` : 'a list';
    default:
      return `a value of type ${d.type}`;
  }
}

function describeNumber(d: Def): string {
  let int = false;
  let lo: CheckDef | undefined;
  let hi: CheckDef | undefined;
  for (const { _zod } of d.checks ?? []) {
    const c = _zod.def;
    if (c.check === 'number_format' && c.format?.includes('int')) int = true;
    else if (c.check === 'greater_than') lo = c;
    else if (c.check === 'less_than') hi = c;
  }
  // For integers "> 0" reads better as "from 1".
  if (int && lo && !lo.inclusive) lo = { check: 'greater_than', value: Math.floor(lo.value!) + 1, inclusive: true };
  const parts = [int ? 'an integer' : 'a number'];
  if (lo && hi && lo.inclusive && hi.inclusive) parts.push(`from ${lo.value} to ${hi.value}`);
  else {
    if (lo) parts.push(lo.inclusive ? `of at least ${lo.value}` : `above ${lo.value}`);
    if (hi) parts.push(`${lo ? 'and ' : ''}${hi.inclusive ? 'at most' : 'below'} ${hi.value}`);
  }
  return parts.join(' ');
}
