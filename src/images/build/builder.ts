import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join, posix, relative, resolve, sep } from 'node:path';
import { HybridboxError } from '../../errors.js';
import { LineTail, run } from '../../util/exec.js';
import { applyLayer, createLayer, parseDigest, type Layer } from '../oci/index.js';
import { normalizeRef, statInImage, type ImageConfig, type ImageStore } from '../store.js';
import { resolveUser } from '../users.js';
import { SandboxfileError, parseSandboxfile } from './sandboxfile.js';
import type { CopyInstruction, Instruction } from './sandboxfile.js';

/** One RUN step as the builder asks for it: run `argv` on top of `image` and keep the changes. */
export interface StepRequest {
  /** Manifest digest of the image so far. */
  image: string;
  argv: string[];
  env: Record<string, string>;
  workdir: string;
  user: string;
  network: 'none' | 'bridge';
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
}

export interface StepOutcome {
  exitCode: number | null;
  signal: string | null;
  /** Upper-directory form of the changes (see Backend.filesystemChanges). */
  changes: { dir: string; madeByBackend: string[] };
}

/**
 * Runs build steps in a sandbox. `withStep` must call `use` while the sandbox's changes still
 * exist, and remove the sandbox afterwards whatever happens.
 */
export interface StepRunner {
  withStep<T>(req: StepRequest, use: (outcome: StepOutcome) => Promise<T>): Promise<T>;
}

export interface BuildOptions {
  /** Path of the Sandboxfile. */
  file: string;
  /** The build context: COPY/ADD sources must stay inside it. */
  contextDir: string;
  tags: string[];
  buildArgs?: Record<string, string>;
  network?: 'none' | 'bridge';
  noCache?: boolean;
  /** Progress lines: one per step, with CACHED when it was a cache hit. */
  onLog?: (line: string) => void;
  /** The output of RUN steps, as it comes. */
  onOutput?: (chunk: Buffer, stream: 'stdout' | 'stderr') => void;
  /** Called when FROM names an image that is not there yet, to make a known base image. */
  ensureBase?: (ref: string) => Promise<boolean>;
}

export interface BuildStep {
  line: number;
  instruction: string;
  cached: boolean;
  /** null for instructions that only change the config. */
  layerDigest: string | null;
  durationMs: number;
}

export interface BuildResult {
  digest: string;
  tags: string[];
  steps: BuildStep[];
  durationMs: number;
}

/** A build failure that points at the Sandboxfile line (exit code 1, like a failed test). */
export class BuildError extends SandboxfileError {}

interface State {
  /** Chain key: the base manifest and every instruction so far (with its inputs). */
  key: string;
  layers: Layer[];
  config: ImageConfig;
  /** Build args declared so far, with their values: RUN sees them as environment. */
  args: Record<string, string>;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

const TAIL_LINES = 5;

/**
 * Builds an image from a Sandboxfile: every RUN, COPY and ADD makes one layer, every other
 * instruction changes the config. Layers are cached under a key chained from the base image
 * and each instruction with its inputs (for COPY/ADD the content of the copied files), so an
 * unchanged rebuild runs nothing. Tags are written only when the whole build has succeeded.
 */
export async function buildImage(store: ImageStore, runner: StepRunner, opts: BuildOptions): Promise<BuildResult> {
  const t0 = performance.now();
  const file = opts.file;
  // Paths below the working directory are shown as the user would type them.
  const shown = file.startsWith(process.cwd() + sep) ? relative(process.cwd(), file) : file;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new HybridboxError(`file: cannot read ${file}; pass the Sandboxfile with -f PATH`);
  }
  const tags = opts.tags.map((t) => normalizeRef(t));
  if (!existsSync(opts.contextDir) || !lstatSync(opts.contextDir).isDirectory()) {
    throw new HybridboxError(`context: ${opts.contextDir} is not a directory; give the build context directory as the last argument`);
  }
  const context = realpathSync(opts.contextDir);
  const parsed = parseSandboxfile(text, { file: shown, buildArgs: opts.buildArgs });
  const fail = (line: number, instr: string, problem: string): never => {
    throw new BuildError(shown, line, instr, problem);
  };

  if (!store.has(parsed.from) && !(await opts.ensureBase?.(parsed.from))) {
    fail(parsed.fromLine, 'FROM', `image "${parsed.from}" is not in the local store (known: ${store.list().join(', ') || 'none'}); build, import or pull it first`);
  }
  const base = await store.inspect(parsed.from);
  const baseImage = await store.resolve(parsed.from);
  const state: State = {
    key: base.digest,
    layers: base.manifest.layers.map((d, i) => ({ descriptor: d, diffId: base.config.rootfs.diff_ids[i]! })),
    config: { ...baseImage.config, env: { ...baseImage.config.env }, labels: { ...baseImage.config.labels } },
    args: {},
  };
  const log = opts.onLog ?? (() => undefined);
  const steps: BuildStep[] = [];
  const total = parsed.instructions.length + 1;
  log(`[1/${total}] FROM ${parsed.from} (${base.digest.slice(0, 19)})`);
  const cacheDir = join(store.dir, 'build-cache');
  const endBuild = store.guardFromPrune();
  try {
    for (const [i, ins] of parsed.instructions.entries()) {
      const ts = performance.now();
      const head = `[${i + 2}/${total}] ${ins.text}`;
      const makesLayer = ins.kind === 'RUN' || ins.kind === 'COPY' || ins.kind === 'ADD';
      if (!makesLayer) {
        applyConfig(state, ins);
        state.key = sha(JSON.stringify([state.key, ins.kind, ins.text]));
        steps.push({ line: ins.line, instruction: ins.text, cached: false, layerDigest: null, durationMs: ms(ts) });
        log(head);
        continue;
      }
      const sources = ins.kind === 'RUN' ? null : resolveSources(context, ins, (p) => fail(ins.line, ins.kind, p));
      const inputs = ins.kind === 'RUN' ? JSON.stringify([state.config, state.args, opts.network ?? 'none']) : await contentKey(sources!);
      const key = sha(JSON.stringify([state.key, ins.kind, ins.text, inputs]));
      const cachePath = join(cacheDir, `${key}.json`);
      let layer = opts.noCache ? undefined : readCache(store, cachePath);
      const cached = layer !== undefined;
      if (!layer) {
        layer =
          ins.kind === 'RUN' ? await runStep(store, runner, state, ins.argv, opts, (p) => fail(ins.line, 'RUN', p)) : await copyStep(store, state, ins, sources!, (p) => fail(ins.line, ins.kind, p));
        writeCache(cacheDir, cachePath, layer);
      }
      state.layers.push(layer);
      state.key = key;
      steps.push({ line: ins.line, instruction: ins.text, cached, layerDigest: layer.descriptor.digest, durationMs: ms(ts) });
      log(`${head}${cached ? ' CACHED' : ''}`);
    }
    const manifest = await store.commit(tags, state.layers, state.config);
    return { digest: manifest.digest, tags, steps, durationMs: ms(t0) };
  } finally {
    endBuild();
  }
}

const ms = (since: number): number => Math.round((performance.now() - since) * 10) / 10;

function applyConfig(state: State, ins: Instruction): void {
  const c = state.config;
  switch (ins.kind) {
    case 'ENV':
      Object.assign(c.env, ins.vars);
      break;
    case 'ARG':
      if (ins.value !== undefined) state.args[ins.name] = ins.value;
      break;
    case 'WORKDIR':
      c.workdir = posix.resolve(c.workdir || '/', ins.path);
      break;
    case 'USER':
      c.user = ins.user;
      break;
    case 'LABEL':
      Object.assign(c.labels, ins.labels);
      break;
    case 'CMD':
      c.cmd = ins.argv;
      break;
    case 'ENTRYPOINT':
      c.entrypoint = ins.argv;
      // As in Docker: a new ENTRYPOINT drops the CMD inherited from the base image.
      c.cmd = [];
      break;
    default:
      break;
  }
}

function readCache(store: ImageStore, path: string): Layer | undefined {
  try {
    const layer = JSON.parse(readFileSync(path, 'utf8')) as Layer;
    parseDigest(layer.descriptor.digest);
    parseDigest(layer.diffId);
    // A pruned blob makes the entry worthless: rebuild the step.
    return existsSync(store.blobs.path(layer.descriptor.digest)) ? layer : undefined;
  } catch {
    return undefined;
  }
}

function writeCache(dir: string, path: string, layer: Layer): void {
  mkdirSync(dir, { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(layer));
  renameSync(tmp, path);
}

async function runStep(store: ImageStore, runner: StepRunner, state: State, argv: string[], opts: BuildOptions, fail: (p: string) => never): Promise<Layer> {
  // The step runs on an untagged image of everything so far.
  const parent = await store.commit([], state.layers, state.config);
  const output = new LineTail(TAIL_LINES);
  const req: StepRequest = {
    image: parent.digest,
    argv,
    env: { ...state.args, ...state.config.env },
    workdir: state.config.workdir || '/',
    user: state.config.user || '0:0',
    network: opts.network ?? 'none',
    onStdout: (c) => {
      output.push(c);
      opts.onOutput?.(c, 'stdout');
    },
    onStderr: (c) => {
      output.push(c);
      opts.onOutput?.(c, 'stderr');
    },
  };
  return runner.withStep(req, async (outcome) => {
    if (outcome.exitCode !== 0) {
      const how = outcome.signal ? `was killed by ${outcome.signal}` : `exited with code ${outcome.exitCode}`;
      const last = output.end().map((l) => l.trim().slice(0, 160));
      fail(`the command ${how}${last.length ? `; last output: ${last.join(' | ')}` : ' and printed nothing'}`);
    }
    return createLayer(outcome.changes.dir, {
      store: store.blobs,
      overlayUpper: { opaqueDirs: await opaqueDirs(outcome.changes.dir) },
      exclude: new Set(outcome.changes.madeByBackend),
    });
  });
}

/** Directories overlayfs marked opaque in an upper directory (deleted, then made anew). */
async function opaqueDirs(upper: string): Promise<Set<string>> {
  const r = await run('getfattr', ['-R', '--absolute-names', '-n', 'trusted.overlay.opaque', upper]);
  const out = new Set<string>();
  const lines = r.stdout.split('\n');
  for (const [i, line] of lines.entries()) {
    if (!line.startsWith('# file: ')) continue;
    if (!/^trusted\.overlay\.opaque="y"/.test(lines[i + 1] ?? '')) continue;
    out.add(relative(upper, line.slice('# file: '.length)));
  }
  return out;
}

// ---------------------------------------------------------------------------
// COPY and ADD

interface Source {
  /** As written in the Sandboxfile. */
  given: string;
  /** Real path inside the context. */
  path: string;
  isDir: boolean;
}

function resolveSources(context: string, ins: CopyInstruction<'COPY' | 'ADD'>, fail: (p: string) => never): Source[] {
  return ins.sources.map((given) => {
    if (/^[a-z]+:\/\//i.test(given)) fail(`${JSON.stringify(given)} is a URL; only files from the build context can be added (no network in builds)`);
    if (/[*?[]/.test(given)) fail(`${JSON.stringify(given)} is a wildcard; name the files or a directory instead`);
    const joined = resolve(context, given.replace(/^\/+/, ''));
    const inside = (p: string) => p === context || p.startsWith(context + sep);
    if (!inside(joined)) fail(`source ${JSON.stringify(given)} is outside the build context ${context}; move it into the context`);
    let real: string;
    try {
      real = realpathSync(joined);
    } catch {
      fail(`source ${JSON.stringify(given)} does not exist in the build context ${context}`);
    }
    if (!inside(real!)) fail(`source ${JSON.stringify(given)} is a symlink that leads outside the build context (to ${real!}); copy the file into the context`);
    return { given, path: real!, isDir: lstatSync(real!).isDirectory() };
  });
}

/** The content of the sources: names, modes, bytes and link targets, so any edit misses the cache. */
async function contentKey(sources: Source[]): Promise<string> {
  const h = createHash('sha256');
  const walk = async (p: string, rel: string): Promise<void> => {
    const st = lstatSync(p);
    h.update(`${rel}\0${st.mode}\0`);
    if (st.isSymbolicLink()) h.update(readlinkSync(p));
    else if (st.isDirectory()) for (const n of readdirSync(p).sort()) await walk(join(p, n), `${rel}/${n}`);
    else if (st.isFile()) for await (const c of createReadStream(p)) h.update(c as Buffer);
    h.update('\n');
  };
  for (const s of sources) await walk(s.path, s.given);
  return h.digest('hex');
}

const TAR_RE = /\.(tar|tar\.gz|tgz)$/;

async function copyStep(store: ImageStore, state: State, ins: CopyInstruction<'COPY' | 'ADD'>, sources: Source[], fail: (p: string) => never): Promise<Layer> {
  const layers = await layerDirs(store, state);
  let owner = { uid: 0, gid: 0 };
  if (ins.chown) {
    try {
      owner = resolveUser(ins.chown, layers);
    } catch {
      fail(`--chown=${ins.chown}: no such user or group in the image; use numeric ids or a name from the image's /etc/passwd`);
    }
  }
  const dest = posix.resolve(state.config.workdir || '/', ins.dest);
  const intoDir = ins.dest.endsWith('/') || sources.length > 1 || (sources.length === 1 && sources[0]!.isDir) || isDirInImage(layers, dest);
  if (sources.length > 1 && !ins.dest.endsWith('/')) fail(`with several sources the destination must be a directory ending in "/" (got ${JSON.stringify(ins.dest)})`);
  const stage = join(store.dir, `.stage-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(stage, { mode: 0o755 });
  try {
    // Parents of the destination keep the mode and owner the image gives them (e.g. /tmp 1777).
    const destDir = intoDir ? dest : posix.dirname(dest);
    makeParents(stage, layers, destDir);
    for (const s of sources) {
      if (ins.kind === 'ADD' && !s.isDir && TAR_RE.test(s.path)) {
        try {
          await applyLayer(s.path, join(stage, destDir));
        } catch (e) {
          fail(`cannot unpack ${JSON.stringify(s.given)}: ${(e as Error).message}`);
        }
        continue;
      }
      const target = join(stage, s.isDir ? destDir : intoDir ? posix.join(destDir, basename(s.path)) : dest);
      copyTree(s.path, target, owner);
    }
    return await createLayer(stage, { store: store.blobs });
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

async function layerDirs(store: ImageStore, state: State): Promise<string[]> {
  const parent = await store.commit([], state.layers, state.config);
  return (await store.resolve(parent.digest)).layers;
}

function isDirInImage(layers: readonly string[], abs: string): boolean {
  return statInImage(layers, abs.replace(/^\/+/, ''))?.stat.isDirectory() ?? false;
}

function makeParents(stage: string, layers: readonly string[], absDir: string): void {
  let rel = '';
  for (const part of absDir.split('/').filter(Boolean)) {
    rel = rel ? `${rel}/${part}` : part;
    const p = join(stage, rel);
    if (existsSync(p)) continue;
    const st = statInImage(layers, rel)?.stat;
    mkdirSync(p);
    chmodSync(p, st?.isDirectory() ? st.mode & 0o7777 : 0o755);
    if (st?.isDirectory()) chownSync(p, st.uid, st.gid);
  }
}

/** Copies a file or the contents of a directory, owned by `owner`, modes kept. */
function copyTree(src: string, dest: string, owner: { uid: number; gid: number }): void {
  const st = lstatSync(src);
  if (st.isDirectory()) {
    if (!existsSync(dest)) mkdirSync(dest, { recursive: true });
    chmodSync(dest, st.mode & 0o7777);
    chownSync(dest, owner.uid, owner.gid);
    for (const n of readdirSync(src)) copyTree(join(src, n), join(dest, n), owner);
    return;
  }
  mkdirSync(dirname(dest), { recursive: true });
  rmSync(dest, { force: true, recursive: true });
  if (st.isSymbolicLink()) {
    symlinkSync(readlinkSync(src), dest);
    lchownSync(dest, owner.uid, owner.gid);
  } else if (st.isFile()) {
    copyFileSync(src, dest);
    chownSync(dest, owner.uid, owner.gid);
    chmodSync(dest, st.mode & 0o7777);
  }
  // Sockets, devices and FIFOs in a context are not image content.
}
