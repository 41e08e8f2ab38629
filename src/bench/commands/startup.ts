import { writeResultFile } from './output.js';
import type { Hybridbox } from '../../api/index.js';
import { SpecError } from '../../errors.js';
import { runStartupBench, SCENARIOS, VM_SCENARIOS, type ScenarioName } from '../startup.js';
import { formatStartup } from '../startup/format.js';

/** Other names a scenario answers to in `--backends` (the baselines by their tool). */
const ALIASES: Record<string, ScenarioName> = { crun: 'crun-raw', qemu: 'qemu-raw', 'microvm-raw': 'qemu-raw', virsh: 'virsh-raw', 'vm-raw': 'virsh-raw', 'podman-run': 'podman' };

function int(name: string, value: unknown, min: number): number {
  const s = String(value);
  if (!/^\d+$/.test(s) || Number(s) < min) throw new SpecError(`--${name}`, s, `allowed: a whole number >= ${min}`);
  return Number(s);
}

export function parseScenarios(list: unknown): ScenarioName[] {
  if (list === undefined) return [...SCENARIOS];
  const asked = String(list)
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
  const names = asked.map((x) => ((SCENARIOS as readonly string[]).includes(x) ? (x as ScenarioName) : ALIASES[x]));
  if (!asked.length || names.some((n) => !n)) {
    throw new SpecError('--backends', list, `allowed: a comma-separated list of ${SCENARIOS.join(', ')} (or crun, qemu, virsh for the raw baselines)`);
  }
  return SCENARIOS.filter((s) => names.includes(s));
}

/** `hybridbox bench startup`: runs, stores (for `report` and the scheduler) and prints the result. */
export async function benchStartup(hb: Hybridbox, opts: Record<string, unknown>): Promise<void> {
  const scenarios = parseScenarios(opts.backends);
  const runs = int('runs', opts.runs ?? 30, 1);
  const warmup = int('warmup', opts.warmup ?? 2, 0);
  const vmRuns = opts.vmRuns === undefined ? runs : int('vm-runs', opts.vmRuns, 1);
  const command = String(opts.command ?? 'echo ready');
  if (!command.trim()) throw new SpecError('--command', command, 'allowed: a shell command, e.g. "echo ready"');
  const err = process.stderr;
  const tty = err.isTTY === true;
  err.write(
    `bench startup: ${scenarios.join(', ')}; ${runs} runs${vmRuns < runs && scenarios.some((s) => VM_SCENARIOS.includes(s)) ? ` (VM scenarios ${vmRuns})` : ''} + ${warmup} warm-up each, interleaved` +
      `${scenarios.some((s) => VM_SCENARIOS.includes(s)) && !hb.host.kvm.usable ? ' (no KVM: every VM run takes seconds)' : ''}\n`,
  );

  // The first signal stops after the current iteration and cleans up; a second exits at once.
  let interrupted: string | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) process.exit(130);
    interrupted = sig;
    err.write(`\nbench startup: ${sig}: stopping after this iteration (again to exit without clean-up)\n`);
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, onSignal);
  let outcome: Awaited<ReturnType<typeof runStartupBench>>;
  try {
    outcome = await runStartupBench(hb, {
      scenarios,
      runs,
      warmup,
      vmRuns,
      image: String(opts.image ?? 'busybox'),
      command,
      progress: tty ? (text) => void err.write(`\r\x1b[K${text}`) : undefined,
      interrupted: () => interrupted,
    });
  } finally {
    for (const s of signals) process.off(s, onSignal);
  }
  const { result, failures } = outcome;
  const id = hb.measurements.save(result);
  const table = formatStartup(result);
  if (opts.json) {
    // stdout stays machine-readable; the tables go to stderr for whoever is watching.
    process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    err.write(table);
  } else process.stdout.write(table);
  err.write(`stored as result ${id} for host ${result.host.key}: \`hybridbox place\` now predicts start-up from it\n`);
  if (opts.out) {
    err.write(`wrote ${writeResultFile(String(opts.out), result)}\n`);
  }
  for (const f of failures) err.write(`hybridbox: bench startup: ${f}\n`);
  if (failures.length) process.exitCode = 1;
}
