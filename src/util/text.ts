import { SpecError } from '../errors.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
const MiB = 1048576;

/**
 * A byte count in binary units; '-' when it is unknown.
 * - 'exact' (default), for sizes a user acts on (images, archives, transfers): whole bytes
 *   below 1 KiB, then one decimal: "512 B", "1.5 MiB".
 * - 'rounded', for figures compared at a glance (bench tables and sentences): KiB below
 *   0.1 MiB, two or three significant digits above: "80 KiB", "2.4 MiB", "37 MiB", "1.2 GiB".
 */
export function formatBytes(n: number | null | undefined, style: 'exact' | 'rounded' = 'exact'): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '-';
  if (style === 'rounded') {
    const a = Math.abs(n);
    if (a >= 1024 * MiB) return `${(n / (1024 * MiB)).toFixed(1)} GiB`;
    if (a >= 10 * MiB) return `${(n / MiB).toFixed(0)} MiB`;
    if (a >= MiB / 10) return `${(n / MiB).toFixed(1)} MiB`;
    return `${(n / 1024).toFixed(0)} KiB`;
  }
  let v = n;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${UNITS[i]}`;
}

/** `KEY=VALUE` split at the first '=' (the value may hold more); null without a key or an '='. */
export function splitKeyValue(text: string): [string, string] | null {
  const i = text.indexOf('=');
  return i > 0 ? [text.slice(0, i), text.slice(i + 1)] : null;
}

/**
 * A user's `KEY=VALUE` (-e, --build-arg, exec -e, labels); anything else is a SpecError
 * naming `field`, with `example` (e.g. "--env LANG=C.UTF-8") as the hint.
 */
export function parseKeyValue(text: string, field: string, example?: string): [string, string] {
  const kv = splitKeyValue(text);
  if (!kv) throw new SpecError(field, text, `allowed: KEY=VALUE${example ? `, e.g. ${example}` : ''}`);
  return kv;
}
