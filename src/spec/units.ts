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
