import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { SpecError } from '../errors.js';
import { parseKeyValue } from '../util/text.js';
import type { WorkloadSpecInput } from './schema.js';
import { parseBytes, parseCpus, parseDeviceLimit, parseDuration, parseNetRate, parseNumber, parseSize } from './units.js';

/** `hybridbox run` options as commander hands them over: strings, repeatable ones as arrays. */
export interface CliRunFlags {
  name?: string;
  /** `KEY=value`, repeatable */
  env?: string[];
  workdir?: string;
  user?: string;
  cpus?: string;
  memory?: string;
  pids?: string;
  ioWeight?: string;
  /** `[DEVICE:]RATE`, repeatable (docker's names) */
  deviceReadBps?: string[];
  deviceWriteBps?: string[];
  deviceReadIops?: string[];
  deviceWriteIops?: string[];
  /** `10mbit` */
  netRate?: string;
  /** `2s`, `500ms`: CPU time of the whole sandbox */
  cpuTime?: string;
  /** `10m`: RLIMIT_FSIZE */
  fileSize?: string;
  openFiles?: string;
  /** `64m`: each of /tmp and /dev/shm */
  tmpfsSize?: string;
  readOnly?: boolean;
  /** `1m`: per stream, foreground runs */
  outputLimit?: string;
  network?: string;
  /** `/host:/guest[:ro|rw]`, repeatable */
  volume?: string[];
  isolation?: string;
  trust?: string;
  startupBudget?: string;
  timeout?: string;
  ownKernel?: boolean;
  /** `-f spec.yaml`: a YAML or JSON spec used as the base that flags override */
  file?: string;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * Builds an unvalidated spec from `run` flags (and `-f` file). Only flag syntax is checked
 * here; pass the result to validateSpec. Flags override the file field by field: env by
 * variable name, volumes by guest path, resources and kernel by key.
 */
export function specFromFlags(flags: CliRunFlags, positional: { image?: string; command: string[] }): WorkloadSpecInput {
  const spec: Obj = flags.file === undefined ? {} : loadSpecFile(flags.file);
  const set = (key: string, value: unknown) => {
    if (value !== undefined) spec[key] = value;
  };
  const parsed = <T>(text: string | undefined, parse: (t: string) => T) => (text === undefined ? undefined : parse(text));

  set('image', positional.image);
  if (positional.command.length > 0) spec.command = positional.command;
  set('name', flags.name);
  set('workdir', flags.workdir);
  set('user', flags.user);
  set('network', flags.network);
  set('isolation', flags.isolation);
  set('trust', flags.trust);
  set('readOnlyRoot', flags.readOnly);
  set(
    'outputLimitBytes',
    parsed(flags.outputLimit, (t) => parseBytes(t, '--output-limit')),
  );
  set(
    'startupBudgetMs',
    parsed(flags.startupBudget, (t) => parseDuration(t, '--startup-budget')),
  );
  set(
    'timeoutMs',
    parsed(flags.timeout, (t) => parseDuration(t, '--timeout')),
  );

  const resources = dropUndefined({
    cpus: parsed(flags.cpus, (t) => parseCpus(t, '--cpus')),
    memoryMiB: parsed(flags.memory, (t) => parseSize(t, '--memory')),
    pids: parsed(flags.pids, (t) => parseNumber(t, '--pids', 'a whole number of processes such as 256')),
    ioWeight: parsed(flags.ioWeight, (t) => parseNumber(t, '--io-weight', 'a whole number from 10 to 1000')),
    deviceReadBps: flags.deviceReadBps?.map((t) => parseDeviceLimit(t, '--device-read-bps', 'bytes')),
    deviceWriteBps: flags.deviceWriteBps?.map((t) => parseDeviceLimit(t, '--device-write-bps', 'bytes')),
    deviceReadIops: flags.deviceReadIops?.map((t) => parseDeviceLimit(t, '--device-read-iops', 'ops')),
    deviceWriteIops: flags.deviceWriteIops?.map((t) => parseDeviceLimit(t, '--device-write-iops', 'ops')),
    netRateKbit: parsed(flags.netRate, (t) => parseNetRate(t, '--net-rate')),
    cpuTimeMs: parsed(flags.cpuTime, (t) => parseDuration(t, '--cpu-time')),
    fileSizeBytes: parsed(flags.fileSize, (t) => parseBytes(t, '--file-size')),
    openFiles: parsed(flags.openFiles, (t) => parseNumber(t, '--open-files', 'a whole number of file descriptors such as 256')),
    tmpfsMiB: parsed(flags.tmpfsSize, (t) => parseSize(t, '--tmpfs-size')),
  });
  if (Object.keys(resources).length > 0) spec.resources = merge(spec.resources, resources);
  if (flags.env?.length) spec.env = merge(spec.env, Object.fromEntries(flags.env.map((kv) => parseKeyValue(kv, '--env', '--env LANG=C.UTF-8'))));
  if (flags.ownKernel !== undefined) spec.kernel = merge(spec.kernel, { ownKernel: flags.ownKernel });
  if (flags.volume?.length) {
    const added = flags.volume.map(parseVolumeFlag);
    const base = spec.volumes;
    const guestPaths = new Set(added.map((v) => v.guestPath));
    // A malformed file value is left in place so validateSpec reports it rather than the flags hiding it.
    if (base === undefined || Array.isArray(base)) {
      spec.volumes = [...(base ?? []).filter((v) => !(isObj(v) && guestPaths.has(v.guestPath as string))), ...added];
    }
  }
  // Unvalidated by design: validateSpec is the gate that turns this into a WorkloadSpec.
  return spec as WorkloadSpecInput;
}

// yaml is loaded only when a spec file is read: most CLI calls never pay for it. The bundle
// keeps it external and require() resolves it from node_modules at that moment.
let yamlModule: typeof import('yaml') | undefined;
function loadYaml(): typeof import('yaml') {
  return (yamlModule ??= createRequire(import.meta.url)('yaml') as typeof import('yaml'));
}

/** Parses spec text; YAML 1.2 is a superset of JSON, so one parser reads both. */
export function parseSpecText(text: string, source = 'spec'): Obj {
  let doc: unknown;
  try {
    doc = loadYaml().parse(text);
  } catch (err) {
    // The yaml library appends a multi-line code frame; the first line says what and where.
    const first = (err instanceof Error ? err.message : String(err)).split(/\r?\n/)[0]!.replace(/:$/, '');
    throw new SpecError('--file', source, `allowed: a YAML or JSON document (${first})`);
  }
  if (doc === null || doc === undefined) return {};
  if (!isObj(doc)) throw new SpecError('--file', source, 'allowed: a YAML or JSON mapping of spec fields at the top level');
  return doc;
}

export function loadSpecFile(path: string): Obj {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new SpecError('--file', path, `allowed: a readable YAML or JSON spec file (${code})`);
  }
  return parseSpecText(text, path);
}

function parseVolumeFlag(text: string): { hostPath: string; guestPath: string; readOnly: boolean } {
  const [hostPath, guestPath, mode, ...rest] = text.split(':');
  if (!hostPath || !guestPath || rest.length > 0 || (mode !== undefined && mode !== 'ro' && mode !== 'rw')) {
    throw new SpecError('--volume', text, 'allowed: /host/path:/guest/path with optional :ro or :rw, e.g. /srv/data:/data:ro');
  }
  return { hostPath, guestPath, readOnly: mode === 'ro' };
}

function merge(base: unknown, over: Obj): unknown {
  if (base === undefined) return over;
  return isObj(base) ? { ...base, ...over } : base;
}

function dropUndefined(o: Obj): Obj {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}
