// The CLI as a client of a running `hybridbox serve` (`--host` or HYBRIDBOX_HOST), as the
// docker and podman remote clients are. It loads the client and node:util's parser only:
// none of the library, so a remote `run` costs little more than starting Node.
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { ApiError, Client, type JudgeRequest, type RunRequest } from '../client/index.js';
import { HybridboxError } from '../errors.js';
import { parseDuration, parseSize } from '../spec/units.js';

// The same units as the local CLI (spec/units.ts is self-contained: it loads no library code).
const mib = (text: string, flag: string): number => Math.ceil(parseSize(text, flag) / 1048576);
const ms = parseDuration;

class UsageError extends Error {}

const WORKLOAD = {
  isolation: { type: 'string' },
  trust: { type: 'string' },
  memory: { type: 'string', short: 'm' },
  cpus: { type: 'string' },
  pids: { type: 'string' },
  timeout: { type: 'string' },
  'cpu-time': { type: 'string' },
  env: { type: 'string', short: 'e', multiple: true },
  runtime: { type: 'string' },
  image: { type: 'string' },
} as const;

function workload(v: Record<string, string | boolean | string[] | undefined>): Partial<RunRequest> {
  const env: Record<string, string> = {};
  for (const kv of (v.env as string[] | undefined) ?? []) {
    const i = kv.indexOf('=');
    if (i < 1) throw new UsageError(`--env: ${kv} is not KEY=VALUE`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  const limits: NonNullable<RunRequest['limits']> = {};
  if (v.memory) limits.memoryMiB = mib(String(v.memory), '--memory');
  if (v.cpus) limits.cpus = Number(v.cpus);
  if (v.pids) limits.pids = Number(v.pids);
  if (v.timeout) limits.wallTimeMs = ms(String(v.timeout), '--timeout');
  if (v['cpu-time']) limits.cpuTimeMs = ms(String(v['cpu-time']), '--cpu-time');
  return {
    env,
    limits,
    ...(v.isolation ? { isolation: v.isolation as RunRequest['isolation'] } : {}),
    ...(v.trust ? { trust: v.trust as RunRequest['trust'] } : {}),
    ...(v.runtime ? { runtime: String(v.runtime) } : {}),
  };
}

/** `hybridbox [--host H] run [flags] IMAGE COMMAND...` through the service: streams, exits with the workload's code. */
async function run(client: Client, args: string[]): Promise<number> {
  // Flags end at the image (or, with --runtime, at the command): what follows is the workload's own argv.
  let i = 0;
  const opts = WORKLOAD as Record<string, { type: string; short?: string }>;
  const byShort = Object.fromEntries(Object.entries(opts).flatMap(([k, o]) => (o.short ? [[o.short, k]] : [])));
  while (i < args.length && args[i]!.startsWith('-') && args[i] !== '--') {
    const a = args[i]!;
    const name = a.startsWith('--') ? a.slice(2).split('=')[0]! : byShort[a.slice(1, 2)];
    i += name && opts[name]?.type === 'string' && !a.includes('=') && !(a.length > 2 && !a.startsWith('--')) ? 2 : 1;
  }
  const { values } = parseArgs({ args: args.slice(0, i), options: WORKLOAD, allowPositionals: false, strict: true });
  const positionals = args.slice(args[i] === '--' ? i + 1 : i);
  const image = values.runtime ? undefined : positionals[0];
  const command = values.runtime ? positionals : positionals.slice(1);
  if (!values.runtime && !image) throw new UsageError('run: give an image (or --runtime NAME) and a command');
  const req: RunRequest = { ...workload(values), ...(image ? { image } : {}), ...(command.length ? { command: command[0] === '--' ? command.slice(1) : command } : {}) };
  let exit = 1;
  for await (const e of client.runs.submitAndStream(req)) {
    if (e.type === 'stdout') process.stdout.write(String(e.data.text));
    else if (e.type === 'stderr') process.stderr.write(String(e.data.text));
    else if (e.type === 'exit' && e.data.phase === 'run') exit = typeof e.data.exitCode === 'number' ? e.data.exitCode : 125;
    else if (e.type === 'verdict') {
      if (e.data.verdict !== 'accepted' && e.data.verdict !== 'runtime-error') {
        process.stderr.write(`hybridbox: ${e.data.verdict}${e.data.message ? `: ${e.data.message}` : ''}\n`);
        if (e.data.verdict === 'internal-error' || e.data.verdict === 'compile-error') exit = 125;
      }
      // Everything the CLI reports is known: it need not wait for the sandbox's teardown.
      break;
    }
  }
  return exit;
}

/** `hybridbox judge --tests DIR (--runtime R | --image I --run CMD) [--compile CMD] FILE...`: prints a verdict table. */
async function judge(client: Client, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...WORKLOAD,
      tests: { type: 'string' },
      compile: { type: 'string' },
      run: { type: 'string' },
      checker: { type: 'string' },
      'stop-on-first-failure': { type: 'boolean' },
      json: { type: 'boolean' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (!values.tests) throw new UsageError('judge: --tests DIR is needed (files N.in and N.out)');
  const dir = String(values.tests);
  const names = readdirSync(dir)
    .filter((f) => f.endsWith('.in'))
    .map((f) => f.slice(0, -3))
    .sort((a, b) => Number(a) - Number(b) || a.localeCompare(b));
  if (!names.length) throw new UsageError(`judge: ${dir} has no N.in files`);
  const req: JudgeRequest = {
    ...workload(values),
    ...(values.image ? { image: String(values.image) } : {}),
    files: positionals.map((p) => ({ path: basename(p), content: readFileSync(p, 'utf8') })),
    tests: names.map((n) => ({ stdin: readFileSync(join(dir, `${n}.in`), 'utf8'), expected: readFileSync(join(dir, `${n}.out`), 'utf8') })),
    ...(values.compile ? { compile: ['sh', '-c', String(values.compile)] } : {}),
    ...(values.run ? { run: ['sh', '-c', String(values.run)] } : {}),
    ...(values.checker ? { checker: { kind: values.checker as 'exact' } } : {}),
    ...(values['stop-on-first-failure'] ? { stopOnFirstFailure: true } : {}),
  };
  const created = await client.judge(req);
  const r = await client.runs.get(created.id, { waitMs: 60_000 }).then((x) => (x.status === 'queued' || x.status === 'running' ? client.runs.get(x.id, { waitMs: 60_000 }) : x));
  if (values.json) {
    process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    return r.judge?.verdict === 'accepted' ? 0 : 1;
  }
  if (!r.judge) {
    process.stderr.write(`hybridbox: judge ${r.id}: ${r.status}${r.reason ? `: ${r.reason}` : ''}\n`);
    return 125;
  }
  if (r.judge.compile && r.judge.verdict === 'compile-error') process.stdout.write(`compile-error\n${r.judge.compile.stderr}${r.judge.compile.stdout}`);
  const rows = [
    ['test', 'verdict', 'cpu ms', 'wall ms', 'peak memory', 'message'],
    ...r.judge.tests.map((t) => [names[t.index]!, t.verdict, String(t.cpuMs ?? '-'), String(t.wallMs), t.peakMemoryBytes ? `${(t.peakMemoryBytes / 1048576).toFixed(1)} MiB` : '-', t.message ?? '']),
  ];
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  for (const row of rows)
    process.stdout.write(
      `${row
        .map((c, i) => c.padEnd(w[i]!))
        .join('  ')
        .trimEnd()}\n`,
    );
  process.stdout.write(`verdict: ${r.judge.verdict} (${r.placement?.backend ?? '?'})\n`);
  return r.judge.verdict === 'accepted' ? 0 : 1;
}

export async function remote(host: string, argv: string[]): Promise<void> {
  const client = new Client({ host, keepAlive: false });
  const [verb, ...args] = argv;
  try {
    process.exitCode = verb === 'judge' ? await judge(client, args) : await run(client, args);
  } catch (e) {
    const msg =
      e instanceof ApiError || e instanceof UsageError || e instanceof HybridboxError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? (e as Error).message : `${(e as Error).message}`;
    process.stderr.write(`hybridbox: ${msg}\n`);
    process.exitCode = 125;
  }
}
