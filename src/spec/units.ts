import { SpecError } from '../errors.js';

// Plain decimals only: no sign, exponent, hex or spaces inside the number, so "-1g",
// "1e3m" and "0x10" are rejected instead of being read by Number()'s looser grammar.
const DECIMAL = String.raw`(\d+(?:\.\d+)?|\.\d+)`;

const SIZE = new RegExp(`^${DECIMAL}\\s*(?:([bkmgt])(?:i?b)?)?$`, 'i');
const SIZE_BYTES: Record<string, number> = { b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

const DURATION = new RegExp(`^${DECIMAL}\\s*(ms|s|m|h|d)?$`);
const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

const NUMBER = new RegExp(`^${DECIMAL}$`);

function match(text: string, re: RegExp, field: string, allowed: string): RegExpExecArray {
  const m = re.exec(text.trim());
  // Digits-only input can still overflow to Infinity ("1" followed by 400 zeros).
  if (!m || !Number.isFinite(Number(m[1]))) throw new SpecError(field, text, `allowed: ${allowed}`);
  return m;
}

/** `256m`, `256MiB`, `1.5G`, `512k` → MiB, rounded up; a plain number is MiB; units are binary (k = 1024). */
export function parseSize(text: string, field: string): number {
  const m = match(text, SIZE, field, 'a size such as 256m, 1.5g, 512k or a plain number of MiB');
  const bytes = Number(m[1]) * SIZE_BYTES[(m[2] ?? 'm').toLowerCase()]!;
  return Math.ceil(bytes / 2 ** 20);
}

/** `10m`, `512k`, `1.5g`, `4096` → bytes, rounded up; a plain number is bytes; units are binary (k = 1024). */
export function parseBytes(text: string, field: string): number {
  const m = match(text, SIZE, field, 'a size such as 10m, 512k, 1g or a plain number of bytes');
  return Math.ceil(Number(m[1]) * SIZE_BYTES[(m[2] ?? 'b').toLowerCase()]!);
}

/** `500ms`, `10s`, `2m`, `1h`, `1.5s` → milliseconds, rounded up; a plain number is ms. */
export function parseDuration(text: string, field: string): number {
  const m = match(text, DURATION, field, 'a duration such as 500ms, 10s, 1.5m, 2h or a plain number of ms');
  return Math.ceil(Number(m[1]) * DURATION_MS[m[2] ?? 'ms']!);
}

/** `0.5`, `2` → CPUs. Range checks are the schema's job. */
export function parseCpus(text: string, field: string): number {
  return parseNumber(text, field, 'a number of CPUs such as 0.5 or 2');
}

/** A non-negative decimal; whether it must be an integer is left to the schema, which says so in its message. */
export function parseNumber(text: string, field: string, allowed = 'a non-negative number such as 100'): number {
  return Number(match(text, NUMBER, field, allowed)[1]);
}

const NET_RATE = new RegExp(`^${DECIMAL}\\s*(bit|kbit|mbit|gbit)$`, 'i');
const NET_RATE_KBIT: Record<string, number> = { bit: 1e-3, kbit: 1, mbit: 1e3, gbit: 1e6 };

/**
 * `10mbit`, `512kbit`, `1gbit` → kilobits per second (decimal, as tc counts: 1 mbit = 10^6
 * bits). tc's own `kbps` means kilo*bytes*; it is refused rather than guessed at.
 */
export function parseNetRate(text: string, field: string): number {
  const m = match(text, NET_RATE, field, 'a rate in bits per second such as 10mbit, 512kbit or 1gbit');
  return Math.round(Number(m[1]) * NET_RATE_KBIT[m[2]!.toLowerCase()]!);
}

/**
 * docker's `--device-write-bps [DEVICE:]RATE`: `/dev/vda:10mb` or `10mb` (the device behind
 * the writable layer). Byte rates take binary units (10mb = 10 MiB/s, a plain number is
 * bytes); operation rates are plain numbers.
 */
export function parseDeviceLimit(text: string, field: string, kind: 'bytes' | 'ops'): { path?: string; rate: number } {
  const at = text.lastIndexOf(':');
  const path = at < 0 ? undefined : text.slice(0, at);
  const rateText = at < 0 ? text : text.slice(at + 1);
  const example = kind === 'bytes' ? '/dev/vda:10mb or 10mb' : '/dev/vda:1000 or 1000';
  if (path !== undefined && !path.startsWith('/dev/')) throw new SpecError(field, text, `allowed: [DEVICE:]RATE with a block device under /dev, e.g. ${example}`);
  const m = match(rateText, kind === 'bytes' ? SIZE : NUMBER, field, `[DEVICE:]RATE, e.g. ${example}`);
  const rate = kind === 'bytes' ? Math.round(Number(m[1]) * SIZE_BYTES[(m[2] ?? 'b').toLowerCase()]!) : Number(m[1]);
  return path === undefined ? { rate } : { path, rate };
}
