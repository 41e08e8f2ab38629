// A judge request: its compile step once, then each test as its own sandboxed step, each
// output compared by the checker. A custom checker is compiled once and run sandboxed per
// test, reading the test's input, expected and actual output from a read-only /judge.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { check } from './checkers.js';
import type { JudgeRequest, Step, Verdict } from './schemas.js';
import { type LanguageRuntime, type StepInput, withDefaults, writeBox } from './steps.js';
import type { RequestContext } from './runs.js';

export interface JudgeOutcome {
  verdict: Verdict;
  compile: Step | null;
  tests: (Step & { index: number; checker: string | null })[];
  compileOutput: string;
}

const JUDGE_DIR = '/judge';

export async function judge(ctx: RequestContext, req: JudgeRequest): Promise<JudgeOutcome> {
  const rt = req.runtime ? ctx.runtime(req.runtime) : null;
  const image = req.image ?? rt!.image;
  const box = join(ctx.workDir, 'box');
  writeBox(box, req.files);
  const base = { image, env: req.env, isolation: req.isolation, trust: req.trust };
  const compileCmd = req.compile ?? rt?.compile ?? null;
  const runCmd = req.run ?? rt?.run;
  if (!runCmd) throw new Error('unreachable: validated requests name a runtime or a run command');

  let compile: Step | null = null;
  if (compileCmd) {
    const c = await ctx.step('compile', { ...base, name: ctx.stepName('compile'), command: compileCmd, stdin: '', limits: withDefaults(req.limits), box: { hostDir: box, writable: true } });
    compile = c;
    if (c.verdict !== 'accepted') {
      return { verdict: 'compile-error', compile, tests: [], compileOutput: "the compile step's output is in compile.stdout and compile.stderr" };
    }
  }

  const checker = req.checker.kind === 'custom' ? await prepareChecker(ctx, req.checker, base) : null;
  const tests: JudgeOutcome['tests'] = [];
  let verdict: Verdict = 'accepted';
  for (const [index, t] of req.tests.entries()) {
    const input: StepInput = { ...base, name: ctx.stepName(`test-${index}`), command: runCmd, stdin: t.stdin, limits: withDefaults(req.limits, t.limits), box: { hostDir: box, writable: false } };
    const s = await ctx.step(`test-${index}`, input);
    let checked: Step & { index: number; checker: string | null } = { ...s, index, checker: null };
    if (s.verdict === 'accepted') {
      const c = checker
        ? await checker.run(index, t.stdin, t.expected, s.stdout)
        : check(req.checker.kind as 'exact', s.stdout, t.expected, 'epsilon' in req.checker ? req.checker.epsilon : undefined);
      checked = { ...s, index, verdict: c.accepted ? 'accepted' : 'wrong-answer', message: c.message, checker: c.message };
    }
    tests.push(checked);
    ctx.emit('test', { index, verdict: checked.verdict, message: checked.message, cpuMs: checked.cpuMs, wallMs: checked.wallMs, peakMemoryBytes: checked.peakMemoryBytes });
    if (checked.verdict !== 'accepted' && verdict === 'accepted') verdict = checked.verdict;
    if (checked.verdict !== 'accepted' && req.stopOnFirstFailure) break;
  }
  return { verdict, compile, tests, compileOutput: compile ? "the compile step's output is in compile.stdout and compile.stderr" : 'no compile step' };
}

type Checker = { run(index: number, input: string, expected: string, actual: string): Promise<{ accepted: boolean; message: string | null }> };

async function prepareChecker(ctx: RequestContext, c: { runtime: string; source: string }, base: Pick<StepInput, 'env' | 'isolation' | 'trust'>): Promise<Checker> {
  const rt: LanguageRuntime = ctx.runtime(c.runtime);
  const box = join(ctx.workDir, 'checker');
  writeBox(box, [{ path: rt.fileName, content: c.source, encoding: 'utf8', executable: false }]);
  const limits = withDefaults({});
  const env = { ...base, image: rt.image, env: {} };
  if (rt.compile) {
    const s = await ctx.step('checker-compile', { ...env, name: ctx.stepName('checker-compile'), command: rt.compile, stdin: '', limits, box: { hostDir: box, writable: true } });
    if (s.verdict !== 'accepted') throw new CheckerError(`the custom checker does not compile: ${s.message}: ${s.stderr.trim().split('\n').slice(-1)[0] ?? ''}`);
  }
  return {
    async run(index, input, expected, actual) {
      const data = join(ctx.workDir, `judge-${index}`);
      mkdirSync(data, { mode: 0o755 });
      for (const [f, v] of [
        ['input', input],
        ['expected', expected],
        ['actual', actual],
      ] as const)
        writeFileSync(join(data, f), v, { flag: 'wx', mode: 0o644 });
      const s = await ctx.step(`checker-${index}`, {
        ...env,
        name: ctx.stepName(`checker-${index}`),
        command: [...rt.run, `${JUDGE_DIR}/input`, `${JUDGE_DIR}/expected`, `${JUDGE_DIR}/actual`],
        stdin: '',
        limits,
        box: { hostDir: box, writable: false },
        mounts: [{ hostDir: data, guestPath: JUDGE_DIR }],
      });
      if (s.verdict === 'accepted') return { accepted: true, message: null };
      if (s.verdict === 'runtime-error' && s.exitCode === 1) return { accepted: false, message: s.stdout.trim().split('\n')[0] || 'the checker rejected the output' };
      throw new CheckerError(`the custom checker failed on test ${index}: ${s.verdict}${s.message ? ` (${s.message})` : ''}`);
    },
  };
}

/** The judge's own checker failed: the verdict is internal-error, not the submission's fault. */
export class CheckerError extends Error {}
