import { devNumbers, diskOfNode, type BlockDevice } from '../host/blockdev.js';
import { DEVICE_LIMIT_FIELDS, type DeviceLimitField, type WorkloadSpec } from '../spec/schema.js';
import type { ExitStatus } from './backend.js';
import { formatBytes } from '../util/text.js';
import type { LimitEnforcement } from './descriptor.js';

/**
 * What every backend's limit plan shares: the values in words and the disk a limit lands
 * on. Each backend says how it enforces them (container/limits.ts, vm/limits.ts).
 */
export interface LimitTarget {
  /** The sandbox, once it exists (cgroup paths and device names are concrete then). */
  id?: string;
  /**
   * The disk behind the sandbox's writable layer: undefined before the sandbox exists
   * (`place`), null when that layer is on no block device (a tmpfs state root).
   */
  disk?: BlockDevice | null;
}

export const DEVICE_FIELD_WORDS: Record<DeviceLimitField, { what: string; unit: 'B' | 'ops' }> = {
  deviceReadBps: { what: 'read bandwidth', unit: 'B' },
  deviceWriteBps: { what: 'write bandwidth', unit: 'B' },
  deviceReadIops: { what: 'read operations', unit: 'ops' },
  deviceWriteIops: { what: 'write operations', unit: 'ops' },
};

export const rateWords = (f: DeviceLimitField, rate: number): string => (DEVICE_FIELD_WORDS[f].unit === 'B' ? `${formatBytes(rate)}/s` : `${rate} IO/s`);

export const diskWords = (d: BlockDevice | null | undefined, path?: string): string =>
  d ? `${d.path ?? path ?? 'disk'} (${devNumbers(d)})` : path ? path : d === null ? 'the writable layer (on no block device)' : "the disk behind the sandbox's writable layer";

/** kbit/s in tc's words: 10mbit, 512kbit. */
export function netRateWords(kbit: number): string {
  if (kbit >= 1e6 && kbit % 1e6 === 0) return `${kbit / 1e6}gbit`;
  if (kbit >= 1000 && kbit % 1000 === 0) return `${kbit / 1000}mbit`;
  return `${kbit}kbit`;
}

/** One disk limit of the spec, with the disk it names (resolved when it can be). */
export interface DeviceLimitEntry {
  field: DeviceLimitField;
  index: number;
  rate: number;
  /** The device the spec named, or undefined for the writable layer's disk. */
  path: string | undefined;
}

export function deviceLimitEntries(spec: WorkloadSpec): DeviceLimitEntry[] {
  return DEVICE_LIMIT_FIELDS.flatMap((field) => (spec.resources[field] ?? []).map((l, index) => ({ field, index, rate: l.rate, path: l.path })));
}

/** A disk limit with the disk it lands on: what a backend applies (null: no disk to apply it to). */
export interface ResolvedDeviceLimit extends DeviceLimitEntry {
  disk: BlockDevice | null | undefined;
  /**
   * Another limit of the same field on the same disk with a lower rate (or the same rate,
   * earlier): the kernel keeps one rate per disk, so that one holds and this one does not.
   */
  shadowedBy?: DeviceLimitEntry;
}

/**
 * The disk each limit lands on: the one it names (a partition resolved to its disk, since
 * the kernel throttles whole disks), or the disk behind the writable layer. The plan that
 * `inspect` shows and the values a backend writes both come from here, so they agree.
 */
export function resolveDeviceLimits(spec: WorkloadSpec, target: LimitTarget): ResolvedDeviceLimit[] {
  const out: ResolvedDeviceLimit[] = deviceLimitEntries(spec).map((e) => ({ ...e, disk: e.path === undefined ? target.disk : diskOfNode(e.path) }));
  // `10mb` and `/dev/vda:5mb` are different paths to validation but one disk to the kernel.
  const holder = new Map<string, ResolvedDeviceLimit>();
  for (const e of out) {
    if (!e.disk) continue;
    const key = `${e.field} ${devNumbers(e.disk)}`;
    const held = holder.get(key);
    if (held === undefined || e.rate < held.rate) holder.set(key, e);
  }
  for (const e of out) {
    const held = e.disk ? holder.get(`${e.field} ${devNumbers(e.disk)}`) : undefined;
    if (held !== undefined && held !== e) e.shadowedBy = held;
  }
  return out;
}

/** Why a limit another one on the same disk overrides is not applied (every backend holds the lower). */
export const shadowedNote = (e: ResolvedDeviceLimit & { shadowedBy: DeviceLimitEntry }): string =>
  `resources.${e.field}[${e.shadowedBy.index}] sets ${rateWords(e.field, e.shadowedBy.rate)} on the same disk, and a disk has one ${DEVICE_FIELD_WORDS[e.field].what} limit: the lower one holds`;

/** `resources.deviceWriteBps[0]` */
export const entryField = (e: DeviceLimitEntry): string => `resources.${e.field}[${e.index}]`;

/** The plain enforcement of a limit nobody can apply here. */
export const notApplied = (field: string, value: string, note: string): LimitEnforcement => ({ field, value, mechanism: null, note });

/**
 * When to look at a sandbox's CPU counter next, with `leftMs` of its CPU time limit left:
 * the group uses at most `cpus` ms per ms, so the limit cannot be reached sooner. At least
 * 5 ms (what it may overshoot by, per CPU), at most 250 ms. hbx-shim and the guest agent
 * pace their checks the same way.
 */
export function cpuCheckInMs(leftMs: number, cpus: number): number {
  return Math.min(250, Math.max(5, Math.floor(leftMs / Math.max(cpus, 0.01))));
}

/**
 * The spec's output cap, which the API layer holds the same way on every backend: on the
 * output as it reaches the caller, with a SIGKILL of the whole sandbox past it.
 */
export function outputLimitEnforcement(spec: WorkloadSpec): LimitEnforcement[] {
  if (spec.outputLimitBytes === undefined) return [];
  return [
    {
      field: 'outputLimitBytes',
      value: `${formatBytes(spec.outputLimitBytes)} per stream`,
      mechanism: `hybridbox's output capture (foreground runs): the sandbox is killed once stdout or stderr passes ${spec.outputLimitBytes} bytes; what came before is kept`,
    },
  ];
}

/**
 * The CPU time verdict as isolate gives it: the limit was reached when the backend killed
 * the workload for it, and also when the workload used more than the limit and ended before
 * the next look at its counter did.
 */
export function withCpuVerdict(spec: WorkloadSpec, status: ExitStatus): ExitStatus {
  const limit = spec.resources.cpuTimeMs;
  const over = limit !== undefined && status.cpuTimeMs !== null && status.cpuTimeMs > limit;
  return over && !status.cpuTimeLimitExceeded ? { ...status, cpuTimeLimitExceeded: true } : status;
}
