// Parser for Sandboxfiles: the single-stage subset of Dockerfile syntax that hybridbox can
// build. It follows Docker's rules where they are observable (line joining, comment
// handling, ARG/ENV scoping, quoting) so a Dockerfile that fits the subset means the same
// thing here; everything outside the subset is rejected with a message naming the line.

import { HybridboxError } from '../../errors.js';

export const INSTRUCTIONS = ['FROM', 'RUN', 'COPY', 'ADD', 'WORKDIR', 'ENV', 'ARG', 'USER', 'LABEL', 'ENTRYPOINT', 'CMD'] as const;
export type InstructionKind = Exclude<(typeof INSTRUCTIONS)[number], 'FROM'>;

// Real Dockerfile instructions get a different message from typos: the user knows the word,
// they need to know hybridbox does not implement it.
const DOCKER_ONLY = new Set(['EXPOSE', 'VOLUME', 'HEALTHCHECK', 'SHELL', 'STOPSIGNAL', 'ONBUILD', 'MAINTAINER']);

const USAGE: Record<(typeof INSTRUCTIONS)[number], string> = {
  FROM: 'use FROM <image>[:<tag>|@<digest>]',
  RUN: 'use RUN <command> or RUN ["executable", "arg", ...]',
  COPY: 'use COPY [--chown=<user>[:<group>]] <src>... <dest> or COPY ["<src>", ..., "<dest>"]',
  ADD: 'use ADD [--chown=<user>[:<group>]] <src>... <dest> or ADD ["<src>", ..., "<dest>"]',
  WORKDIR: 'use WORKDIR <path>',
  ENV: 'use ENV <key>=<value> ... or ENV <key> <value>',
  ARG: 'use ARG <name>[=<default>]',
  USER: 'use USER <user>[:<group>]',
  LABEL: 'use LABEL <key>=<value> ...',
  ENTRYPOINT: 'use ENTRYPOINT <command> or ENTRYPOINT ["executable", "arg", ...]',
  CMD: 'use CMD <command> or CMD ["executable", "arg", ...]',
};

interface Base {
  /** 1-based line where the instruction starts. */
  line: number;
  /** The instruction as written, continuation lines joined (for cache keys and messages). */
  text: string;
}

/** RUN/CMD/ENTRYPOINT: shell form becomes `['/bin/sh', '-c', command]` with `shell: true`. */
export interface CommandInstruction<K extends 'RUN' | 'CMD' | 'ENTRYPOINT'> extends Base {
  kind: K;
  argv: string[];
  shell: boolean;
}
export interface CopyInstruction<K extends 'COPY' | 'ADD'> extends Base {
  kind: K;
  sources: string[];
  dest: string;
  chown?: string;
}
export interface WorkdirInstruction extends Base {
  kind: 'WORKDIR';
  /** As written after substitution; a relative path is relative to the previous WORKDIR. */
  path: string;
}
export interface EnvInstruction extends Base {
  kind: 'ENV';
  vars: Record<string, string>;
}
export interface ArgInstruction extends Base {
  kind: 'ARG';
  name: string;
  default?: string;
  /** The value in effect: build arg, else default, else the pre-FROM ARG of the same name. */
  value?: string;
}
export interface UserInstruction extends Base {
  kind: 'USER';
  user: string;
}
export interface LabelInstruction extends Base {
  kind: 'LABEL';
  labels: Record<string, string>;
}

export type Instruction =
  | CommandInstruction<'RUN'>
  | CommandInstruction<'CMD'>
  | CommandInstruction<'ENTRYPOINT'>
  | CopyInstruction<'COPY'>
  | CopyInstruction<'ADD'>
  | WorkdirInstruction
  | EnvInstruction
  | ArgInstruction
  | UserInstruction
  | LabelInstruction;

export interface Sandboxfile {
  /** The base image reference, variables substituted. */
  from: string;
  /** Line of the FROM instruction, for build errors that concern the base image. */
  fromLine: number;
  /** Instructions after FROM, in order. ARGs before FROM only feed FROM and are not listed. */
  instructions: Instruction[];
}

export interface ParseOptions {
  /** Name used in messages, e.g. the path the text was read from. */
  file: string;
  /** Values for declared ARGs (like `docker build --build-arg`); undeclared names are ignored. */
  buildArgs?: Record<string, string>;
}

export class SandboxfileError extends HybridboxError {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly instruction: string,
    problem: string,
  ) {
    super(`${file}:${line}: ${instruction}: ${problem}`);
  }
}

type Fail = (problem: string) => never;
type Lookup = (name: string) => string | undefined;

// Keeps user text inside a one-line message short and free of newlines.
function q(s: string): string {
  return JSON.stringify(s.length > 40 ? s.slice(0, 37) + '...' : s);
}

interface LogicalLine {
  line: number;
  text: string;
}

function logicalLines(text: string, file: string): LogicalLine[] {
  const phys = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const out: LogicalLine[] = [];
  let cur: LogicalLine | undefined;
  // Parser directives are only recognised before anything else, as in Docker.
  let directives = true;
  for (let i = 0; i < phys.length; i++) {
    const raw = phys[i]!;
    const trimmed = raw.trim();
    if (cur === undefined) {
      if (trimmed === '') {
        directives = false;
        continue;
      }
      if (trimmed.startsWith('#')) {
        const d = directives ? /^#\s*([A-Za-z][\w-]*)\s*=\s*(.*?)\s*$/.exec(trimmed) : null;
        // A different escape character would change how every later line is read;
        // reject it rather than silently misparse.
        if (d && d[1]!.toLowerCase() === 'escape' && d[2] !== '\\') {
          throw new SandboxfileError(file, i + 1, '# escape', `escape character ${q(d[2]!)} is not supported; the escape character is always \\`);
        }
        if (!d) directives = false;
        continue;
      }
      directives = false;
      cur = { line: i + 1, text: '' };
    } else if (trimmed === '' || trimmed.startsWith('#')) {
      // Docker drops comment and empty lines inside a continuation, so `\` before them
      // does not end the instruction.
      continue;
    }
    const cont = /\\[ \t]*$/.exec(raw);
    if (cont) {
      cur.text += raw.slice(0, cont.index);
      continue;
    }
    cur.text += raw;
    out.push({ line: cur.line, text: cur.text.trim() });
    cur = undefined;
  }
  // A trailing `\` on the last line is accepted, as Docker does.
  if (cur?.text.trim()) out.push({ line: cur.line, text: cur.text.trim() });
  return out;
}

// Splits on unquoted whitespace, keeping quotes and escapes in each word for expandWord.
function splitWords(s: string, fail: Fail): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
      i++;
      continue;
    }
    inWord = true;
    if (c === '\\') {
      cur += s.slice(i, i + 2);
      i += 2;
    } else if (c === "'" || c === '"') {
      const j = closingQuote(s, i);
      if (j < 0) fail(`unterminated ${c === "'" ? 'single' : 'double'} quote in ${q(s.slice(i))}; close the quote or escape it with \\`);
      cur += s.slice(i, j + 1);
      i = j + 1;
    } else {
      cur += c;
      i++;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

function closingQuote(s: string, open: number): number {
  const quote = s[open];
  for (let j = open + 1; j < s.length; j++) {
    if (quote === '"' && s[j] === '\\') j++;
    else if (s[j] === quote) return j;
  }
  return -1;
}

/** Index of the first `=` outside quotes and escapes, or -1. */
function unquotedEq(word: string): number {
  for (let i = 0; i < word.length; i++) {
    const c = word[i];
    if (c === '\\') i++;
    else if (c === "'" || c === '"') {
      const j = closingQuote(word, i);
      if (j < 0) return -1;
      i = j;
    } else if (c === '=') return i;
  }
  return -1;
}

/**
 * Substitutes variables and, with `quotes`, removes quotes and escapes as a shell would.
 * Undefined variables expand to '' as in Docker; callers reject values that end up empty
 * where emptiness is meaningless.
 */
function expandWord(word: string, lookup: Lookup, fail: Fail, quotes = true): string {
  let out = '';
  let i = 0;
  while (i < word.length) {
    const c = word[i]!;
    if (c === '\\' && (quotes || word[i + 1] === '$')) {
      out += word[i + 1] ?? '\\';
      i += 2;
    } else if (quotes && c === "'") {
      const j = word.indexOf("'", i + 1);
      if (j < 0) fail(`unterminated single quote in ${q(word.slice(i))}; close the quote or escape it with \\`);
      out += word.slice(i + 1, j);
      i = j + 1;
    } else if (quotes && c === '"') {
      i++;
      for (;;) {
        if (i >= word.length) fail(`unterminated double quote in ${q(word)}; close the quote or escape it with \\`);
        const d = word[i]!;
        if (d === '"') break;
        if (d === '\\' && ['"', '\\', '$'].includes(word[i + 1] ?? '')) {
          out += word[i + 1];
          i += 2;
        } else if (d === '$') {
          const [v, next] = expandVar(word, i, lookup, fail, quotes);
          out += v;
          i = next;
        } else {
          out += d;
          i++;
        }
      }
      i++;
    } else if (c === '$') {
      const [v, next] = expandVar(word, i, lookup, fail, quotes);
      out += v;
      i = next;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*/;

function expandVar(word: string, at: number, lookup: Lookup, fail: Fail, quotes: boolean): [string, number] {
  if (word[at + 1] !== '{') {
    const m = NAME.exec(word.slice(at + 1));
    // A `$` not followed by a name is literal, as in the shell.
    if (!m) return ['$', at + 1];
    return [lookup(m[0]) ?? '', at + 1 + m[0].length];
  }
  let depth = 1;
  let end = at + 2;
  for (; end < word.length && depth > 0; end++) {
    if (word[end] === '$' && word[end + 1] === '{') {
      depth++;
      end++;
    } else if (word[end] === '}') depth--;
  }
  if (depth > 0) fail(`unterminated ${q(word.slice(at))}; close it with }`);
  const inner = word.slice(at + 2, end - 1);
  const next = end;
  const m = NAME.exec(inner);
  const allowed = 'use ${NAME}, ${NAME:-default} or ${NAME:+alternative}';
  if (!m) fail(`bad substitution ${q('${' + inner + '}')}; ${allowed}`);
  const value = lookup(m[0]);
  const rest = inner.slice(m[0].length);
  const sub = (w: string) => expandWord(w, lookup, fail, quotes);
  if (rest === '') return [value ?? '', next];
  if (rest.startsWith(':-')) return [value ? value : sub(rest.slice(2)), next];
  if (rest.startsWith(':+')) return [value ? sub(rest.slice(2)) : '', next];
  if (rest.startsWith('-')) return [value !== undefined ? value : sub(rest.slice(1)), next];
  if (rest.startsWith('+')) return [value !== undefined ? sub(rest.slice(1)) : '', next];
  return fail(`unsupported substitution ${q('${' + inner + '}')}; ${allowed}`);
}

interface Flag {
  name: string;
  value: string | undefined;
}

function takeFlags(args: string, fail: Fail): { flags: Flag[]; rest: string } {
  const flags: Flag[] = [];
  let rest = args;
  while (rest.startsWith('--')) {
    const tok = /^\S+/.exec(rest)![0];
    rest = rest.slice(tok.length).trimStart();
    const m = /^--([a-z][a-z0-9-]*)(?:=(.*))?$/.exec(tok);
    if (!m) fail(`malformed flag ${q(tok)}; flags look like --name=value`);
    flags.push({ name: m[1]!, value: m[2] });
  }
  return { flags, rest };
}

function looksExec(args: string): boolean {
  // `[ -f x ] && ...` is a shell test, not an attempt at exec form; a quote (or `]`)
  // right after the bracket is.
  return /^\[\s*(["'\]]|$)/.test(args);
}

function parseJsonArray(args: string, fail: Fail): string[] {
  let v: unknown;
  try {
    v = JSON.parse(args);
  } catch {
    fail(`malformed JSON array ${q(args)}; exec form is a JSON array of double-quoted strings, e.g. ["/bin/sh", "-c", "make"]`);
  }
  if (!Array.isArray(v)) fail(`${q(args)} is not a JSON array; exec form is a JSON array of double-quoted strings`);
  const bad = v.findIndex((e) => typeof e !== 'string');
  if (bad >= 0) fail(`element ${bad} of the JSON array is ${JSON.stringify(v[bad])}, not a string; exec form is a JSON array of double-quoted strings`);
  return v as string[];
}

function levenshtein(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const USER_SPEC = /^[^\s:]+(:[^\s:]+)?$/;

export function parseSandboxfile(text: string, opts: ParseOptions): Sandboxfile {
  const { file } = opts;
  const buildArgs = opts.buildArgs ?? {};
  const buildArg = (name: string) => (Object.hasOwn(buildArgs, name) ? buildArgs[name] : undefined);
  const metaArgs = new Map<string, string>();
  const stageArgs = new Map<string, string>();
  const env = new Map<string, string>();
  // ENV wins over ARG of the same name, as in Docker.
  const stageLookup: Lookup = (n) => env.get(n) ?? stageArgs.get(n);
  const metaLookup: Lookup = (n) => metaArgs.get(n);

  let from: { image: string; line: number } | undefined;
  const instructions: Instruction[] = [];
  const lines = logicalLines(text, file);

  for (const { line, text: full } of lines) {
    const m = /^(\S+)\s*([\s\S]*)$/.exec(full)!;
    const written = m[1]!;
    const kw = written.toUpperCase();
    if (!(INSTRUCTIONS as readonly string[]).includes(kw)) {
      const known = `known instructions: ${INSTRUCTIONS.join(', ')}`;
      if (DOCKER_ONLY.has(kw)) throw new SandboxfileError(file, line, written, `Dockerfile instruction not supported in a Sandboxfile; ${known}`);
      const near = INSTRUCTIONS.find((k) => levenshtein(k, kw) <= Math.min(2, k.length - 2));
      throw new SandboxfileError(file, line, written, `unknown instruction${near ? ` (did you mean ${near}?)` : ''}; ${known}`);
    }
    const kind = kw as (typeof INSTRUCTIONS)[number];
    const fail: Fail = (problem) => {
      throw new SandboxfileError(file, line, kind, problem);
    };
    const usage = USAGE[kind];
    const { flags, rest } = takeFlags(m[2]!.trim(), fail);
    if (rest === '') fail(`missing arguments; ${usage}`);

    let chown: string | undefined;
    for (const f of flags) {
      if (kind !== 'COPY' && kind !== 'ADD') fail(`--${f.name} is not supported; ${kind} takes no flags`);
      if (f.name !== 'chown') fail(`--${f.name} is not supported; the only ${kind} flag is --chown=<user>[:<group>]`);
      if (chown !== undefined) fail(`--chown is given twice; give it once`);
      const v = expandWord(f.value ?? '', stageLookup, fail);
      if (!USER_SPEC.test(v)) fail(`--chown=${q(v)} is not <user>[:<group>]; use e.g. --chown=1000:1000 or --chown=app`);
      chown = v;
    }

    if (from === undefined && kind !== 'FROM' && kind !== 'ARG') {
      fail(`comes before FROM; a Sandboxfile starts with FROM <image>, and only ARG may precede it`);
    }
    const base = { line, text: full };

    switch (kind) {
      case 'FROM': {
        if (from) fail(`a second FROM (first at line ${from.line}) would start a multi-stage build, which is not supported; use exactly one FROM`);
        const words = splitWords(rest, fail);
        // `AS name` is harmless with one stage, so Dockerfiles that name their stage still parse.
        if (!(words.length === 1 || (words.length === 3 && words[1]!.toLowerCase() === 'as' && ENV_NAME.test(words[2]!.replace(/[.-]/g, '_'))))) {
          fail(`unexpected ${q(rest)}; ${usage} [AS <name>]`);
        }
        const image = expandWord(words[0]!, metaLookup, fail);
        if (image === '') fail(`image ${q(words[0]!)} is empty after substituting variables; give the ARG a default or pass it in buildArgs`);
        if (!/^[\w][\w.\-/:@]*$/.test(image)) fail(`${q(image)} is not an image reference; ${usage}`);
        from = { image, line };
        break;
      }
      case 'ARG': {
        const words = splitWords(rest, fail);
        if (words.length !== 1) fail(`expected one name, got ${q(rest)}; ${usage}, one per line`);
        const w = words[0]!;
        const eq = unquotedEq(w);
        const name = eq < 0 ? w : w.slice(0, eq);
        if (!ENV_NAME.test(name)) fail(`${q(name)} is not a valid name; names are letters, digits and _, not starting with a digit`);
        const lookup = from ? stageLookup : metaLookup;
        const dflt = eq < 0 ? undefined : expandWord(w.slice(eq + 1), lookup, fail);
        // Inside the stage a bare `ARG X` picks up the pre-FROM value, as Docker documents.
        const value = buildArg(name) ?? dflt ?? (from ? metaArgs.get(name) : undefined);
        const scope = from ? stageArgs : metaArgs;
        if (value !== undefined) scope.set(name, value);
        else scope.delete(name);
        if (from) {
          const inst: ArgInstruction = { kind, ...base, name };
          if (dflt !== undefined) inst.default = dflt;
          if (value !== undefined) inst.value = value;
          instructions.push(inst);
        }
        break;
      }
      case 'RUN':
      case 'CMD':
      case 'ENTRYPOINT': {
        // No substitution here: in shell form the shell expands variables at run time, and
        // exec form never expands them, exactly as in Docker.
        if (looksExec(rest)) {
          const argv = parseJsonArray(rest, fail);
          // An empty CMD/ENTRYPOINT clears the base image's; an empty RUN does nothing useful.
          if (kind === 'RUN' && argv.length === 0) fail(`empty exec form []; ${usage}`);
          instructions.push({ kind, ...base, argv, shell: false });
        } else {
          instructions.push({ kind, ...base, argv: ['/bin/sh', '-c', rest], shell: true });
        }
        break;
      }
      case 'COPY':
      case 'ADD': {
        const paths = looksExec(rest) ? parseJsonArray(rest, fail).map((p) => expandWord(p, stageLookup, fail, false)) : splitWords(rest, fail).map((w) => expandWord(w, stageLookup, fail));
        if (paths.length < 2) fail(`needs at least one source and a destination; ${usage}`);
        const empty = paths.indexOf('');
        if (empty >= 0) fail(`path ${empty + 1} is empty after substituting variables; ${usage}`);
        const dest = paths.pop()!;
        if (paths.length > 1 && !dest.endsWith('/')) {
          fail(`with ${paths.length} sources the destination ${q(dest)} must be a directory ending in /; add a trailing /`);
        }
        const inst: CopyInstruction<typeof kind> = { kind, ...base, sources: paths, dest };
        if (chown !== undefined) inst.chown = chown;
        instructions.push(inst as Instruction);
        break;
      }
      case 'WORKDIR': {
        const path = expandWord(rest, stageLookup, fail);
        if (path === '') fail(`path ${q(rest)} is empty after substituting variables; ${usage}`);
        instructions.push({ kind, ...base, path });
        break;
      }
      case 'USER': {
        const user = expandWord(rest, stageLookup, fail);
        if (!USER_SPEC.test(user)) fail(`${q(user)} is not <user>[:<group>]; ${usage}`);
        instructions.push({ kind, ...base, user });
        break;
      }
      case 'ENV':
      case 'LABEL': {
        const words = splitWords(rest, fail);
        const pairs: Record<string, string> = {};
        // Values see the variables as they were before this line: `ENV A=1 B=$A` gives B
        // the old A, as Docker does.
        const first = words[0]!;
        if (kind === 'ENV' && unquotedEq(first) < 0) {
          // Legacy `ENV KEY the rest of the line`.
          const value = rest.slice(first.length).trim();
          if (value === '') fail(`${q(first)} has no value; ${usage}`);
          if (!ENV_NAME.test(first)) fail(`${q(first)} is not a valid variable name; names are letters, digits and _, not starting with a digit`);
          pairs[first] = expandWord(value, stageLookup, fail);
        } else {
          for (const w of words) {
            const eq = unquotedEq(w);
            if (eq < 0) fail(`${q(w)} is not <key>=<value>; ${usage}`);
            const key = expandWord(w.slice(0, eq), stageLookup, fail);
            if (kind === 'ENV' ? !ENV_NAME.test(key) : key === '') {
              fail(`${q(key)} is not a valid ${kind === 'ENV' ? 'variable name; names are letters, digits and _, not starting with a digit' : 'key; keys must not be empty'}`);
            }
            pairs[key] = expandWord(w.slice(eq + 1), stageLookup, fail);
          }
        }
        if (kind === 'ENV') {
          for (const [k, v] of Object.entries(pairs)) env.set(k, v);
          instructions.push({ kind, ...base, vars: pairs });
        } else {
          instructions.push({ kind, ...base, labels: pairs });
        }
        break;
      }
    }
  }

  if (!from) {
    const last = lines.at(-1)?.line ?? 1;
    throw new SandboxfileError(file, last, 'FROM', `no FROM instruction; a Sandboxfile starts with FROM <image>, and only ARG may precede it`);
  }
  return { from: from.image, fromLine: from.line, instructions };
}
