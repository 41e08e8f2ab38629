import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { Builder } from 'xml2js';
import { HostCapabilityError, RuntimeError } from '../../errors.js';
import { lastLine, run, spawnChild, TextTail } from '../../util/exec.js';
import { isSameProcessAlive, pollUntil } from '../../util/proc.js';
import { applyRate } from '../../network/index.js';
import type { VmFiles } from './files.js';
import type { DeviceLimitField } from '../../spec/schema.js';
import { LIBVIRT_IOTUNE } from './limits.js';
import type { MachineHandle, MachineLauncher, MachineSpec } from './machine.js';
import { AGENT_PORT, QEMU } from './microvm.js';

const URI = 'qemu:///system';
const SOCKET = '/run/libvirt/libvirt-sock';
// What QEMU needs on top of guest memory (device model, TCG translation cache): the
// hard limit must leave room for it or the kernel kills QEMU, not the workload.
const QEMU_OVERHEAD_MIB = 256;

export const domainName = (id: string): string => `hbx-${id}`;
const memoryLimitMiB = (spec: MachineSpec): number => spec.memoryMiB + QEMU_OVERHEAD_MIB;

/** The libvirt domain for a VM sandbox, built as an object and serialised by xml2js. */
export function domainXml(spec: MachineSpec, files: VmFiles): string {
  const quota = spec.cpuQuota === null ? null : String(Math.round(spec.cpuQuota * 100_000));
  const devices: Record<string, unknown> = {
    emulator: `/usr/bin/${QEMU}`,
    disk: {
      $: { type: 'file', device: 'disk' },
      driver: { $: { name: 'qemu', type: 'qcow2', discard: 'unmap' } },
      source: { $: { file: files.disk } },
      target: { $: { dev: 'vda', bus: 'virtio' } },
      ...(spec.diskThrottle && Object.keys(spec.diskThrottle).length
        ? { iotune: Object.fromEntries(Object.entries(spec.diskThrottle).map(([f, rate]) => [LIBVIRT_IOTUNE[f as DeviceLimitField], String(rate)])) }
        : {}),
    },
    // ttyS0: the kernel's console, kept for crash reports.
    serial: { $: { type: 'file' }, source: { $: { path: files.console } }, target: { $: { port: '0' } } },
    // The agent's channel, a named virtio-serial port; QEMU listens, hybridbox connects.
    channel: { $: { type: 'unix' }, source: { $: { mode: 'bind', path: files.agentSock } }, target: { $: { type: 'virtio', name: AGENT_PORT } } },
    ...(spec.tap
      ? {
          interface: {
            $: { type: 'ethernet' },
            mac: { $: { address: spec.mac } },
            target: { $: { dev: spec.tap, managed: 'no' } },
            model: { $: { type: 'virtio' } },
          },
        }
      : {}),
    ...(spec.volumes.length
      ? {
          filesystem: spec.volumes.map((v) => ({
            $: { type: 'mount', accessmode: 'passthrough' },
            source: { $: { dir: v.hostPath } },
            target: { $: { dir: v.tag } },
            ...(v.readOnly ? { readonly: '' } : {}),
          })),
        }
      : {}),
    controller: { $: { type: 'usb', model: 'none' } },
    memballoon: { $: { model: 'none' } },
  };
  const domain = {
    domain: {
      $: { type: spec.useKvm ? 'kvm' : 'qemu' },
      name: domainName(spec.id),
      memory: { $: { unit: 'MiB' }, _: String(spec.memoryMiB) },
      vcpu: String(spec.vcpus),
      os: {
        type: { $: { arch: 'x86_64', machine: 'q35' }, _: 'hvm' },
        kernel: spec.boot.kernel,
        initrd: spec.boot.initrd,
        cmdline: spec.cmdline,
      },
      features: { acpi: '' },
      ...(spec.useKvm ? { cpu: { $: { mode: 'host-passthrough' } } } : {}),
      clock: { $: { offset: 'utc' } },
      on_poweroff: 'destroy',
      on_reboot: 'destroy',
      on_crash: 'destroy',
      // The hard limit is applied once the domain exists (see launch): given here, libvirt also
      // raises QEMU's RLIMIT_MEMLOCK to it, which hosts without CAP_SYS_RESOURCE refuse.
      memtune: { soft_limit: { $: { unit: 'MiB' }, _: String(memoryLimitMiB(spec)) } },
      // quota holds each vCPU thread; global_quota all of the domain's QEMU (device emulation too).
      ...(quota !== null ? { cputune: { period: '100000', quota, global_period: '100000', global_quota: quota } } : {}),
      devices,
      // Files stay root's: libvirt would otherwise chown them to its qemu user, and a
      // sandbox directory is not readable by that user.
      seclabel: { $: { type: 'static', model: 'dac', relabel: 'no' }, label: '+0:+0' },
    },
  };
  return new Builder({ headless: true, renderOpts: { pretty: true, indent: '  ', newline: '\n' } }).buildObject(domain);
}

async function virsh(args: string[]): Promise<{ ok: boolean; out: string }> {
  const r = await run('virsh', ['-c', URI, ...args], { timeoutMs: 60_000 });
  return { ok: r.exitCode === 0, out: (r.exitCode === 0 ? r.stdout : r.stderr || r.stdout).trim() };
}

function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * libvirtd must be running. Without systemd nobody starts it, so hybridbox does: virtlogd
 * first (libvirtd's QEMU logs go through it), then libvirtd, both daemonised.
 *
 * `hideKvm`: on a host whose /dev/kvm cannot run guests (no vmx/svm exposed), libvirtd
 * finds KVM "present" but failing, declares its QEMU capability cache stale on every look,
 * and re-probes QEMU a dozen times per domain start (measured: 70 s for one `virsh
 * create`). Started in a private mount namespace where /dev/kvm is /dev/null, it caches
 * TCG-only capabilities once. The host's /dev/kvm is untouched.
 */
export async function ensureLibvirtd(hideKvm: boolean): Promise<void> {
  if (await socketAnswers(SOCKET)) return;
  if (existsSync('/run/systemd/system')) {
    await run('systemctl', ['start', 'virtlogd.socket', 'libvirtd.socket', 'libvirtd']);
  } else {
    if (!existsSync('/run/virtlogd.pid') || !(await pidFileAlive('/run/virtlogd.pid'))) await run('virtlogd', ['-d']);
    // Under tini as a subreaper: the QEMU processes libvirtd double-forks are reaped at once.
    // Left to a PID 1 that reaps slowly, each finished domain lingers (1-2 s measured here)
    // while libvirt waits for its QEMU to be gone.
    const daemon = `exec ${existsSync('/usr/bin/tini-static') ? '/usr/bin/tini-static' : 'tini'} -s -- libvirtd`;
    const script = hideKvm && existsSync('/dev/kvm') ? `mount --bind /dev/null /dev/kvm && ${daemon}` : daemon;
    spawnChild('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { detached: true });
  }
  if (await pollUntil(() => socketAnswers(SOCKET), { timeoutMs: 10_000, intervalMs: 50 })) return;
  throw new HostCapabilityError(`libvirtd did not come up (no ${SOCKET}); start it with \`libvirtd -d\` and check its log`);
}

async function pidFileAlive(path: string): Promise<boolean> {
  try {
    return isSameProcessAlive(Number(readFileSync(path, 'utf8').trim()), null);
  } catch {
    return false;
  }
}

function libvirtQemuPid(id: string): number | null {
  const name = domainName(id);
  try {
    const pid = Number(readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8').trim());
    if (!(pid > 0) || !isSameProcessAlive(pid, null)) return null;
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`guest=${name}`) ? pid : null;
  } catch {
    return null;
  }
}

/** `virsh create`, with its pid told to `onPid` as soon as it exists. */
async function virshCreate(xmlPath: string, onPid: (pid: number) => void): Promise<{ ok: boolean; out: string }> {
  // Both streams in the order virsh wrote them (its error may be on either), each chunk decoded on its own.
  const out = new TextTail();
  const keep = (c: Buffer): void => out.push(c.toString());
  const child = spawnChild('virsh', ['-c', URI, 'create', '--paused', xmlPath], { stdout: keep, stderr: keep, timeoutMs: 60_000, killSignal: 'SIGKILL' });
  if (child.process.pid) onPid(child.process.pid);
  try {
    const { code } = await child.done;
    return { ok: code === 0, out: out.text.trim() || `virsh exited with ${code ?? 'a signal'}` };
  } catch (e) {
    return { ok: false, out: (e as Error).message };
  }
}

/**
 * libvirtd, not hybridbox, is QEMU's parent, so no parent-death signal can tie a domain to
 * its supervisor (a foreground CLI, a detached monitor). This watchdog does: a small process
 * in its own session (a terminal's ^C does not reach it) that reads a pipe from the
 * supervisor. A clean end writes `done`; a supervisor that dies in any way (kill -9 included)
 * closes the pipe, and the watchdog destroys the domain, after a `virsh create` still under
 * way (named by `creator PID`) has finished. It reads /proc rather than `kill -0` because a
 * dead creator may stay a zombie for a while on hosts whose PID 1 reaps slowly.
 */
function startWatchdog(name: string): { creator(pid: number): void; done(): void } {
  const script = [
    'creator=',
    'while read -r what arg; do case "$what" in creator) creator=$arg ;; done) exit 0 ;; esac; done',
    'if [ -n "$creator" ]; then while read -r _ _ st _ < "/proc/$creator/stat" && [ "$st" != Z ]; do sleep 0.05; done; fi 2>/dev/null',
    `exec virsh -q -c ${URI} destroy ${name}`,
  ].join('\n');
  // Detached, its pipe does not keep the supervisor alive: only the supervisor's death is the message.
  const pipe = spawnChild('sh', ['-c', script], { detached: true, cwd: '/', openStdin: true }).process.stdin!;
  let ended = false;
  return {
    creator: (pid) => {
      if (!ended) pipe.write(`creator ${pid}\n`);
    },
    done: () => {
      if (ended) return;
      ended = true;
      pipe.end('done\n');
    },
  };
}

export const libvirtLauncher: MachineLauncher = {
  async launch(spec: MachineSpec, files: VmFiles): Promise<MachineHandle> {
    await ensureLibvirtd(!spec.useKvm);
    rmSync(files.agentSock, { force: true });
    writeFileSync(files.domainXml, domainXml(spec, files));
    const name = domainName(spec.id);
    // Before the domain exists, so that no moment is left in which it could outlive us.
    const watchdog = startWatchdog(name);
    // Paused, so that hybridbox is connected to the agent's channel before the guest runs.
    const created = await virshCreate(files.domainXml, (pid) => watchdog.creator(pid));
    if (!created.ok) {
      watchdog.done();
      throw new RuntimeError(`virsh create failed: ${lastLine(created.out)}`);
    }
    const limited = await virsh(['memtune', name, '--hard-limit', String(memoryLimitMiB(spec) * 1024), '--live']);
    if (!limited.ok) {
      await virsh(['destroy', name]);
      watchdog.done();
      throw new RuntimeError(`virsh memtune failed: ${lastLine(limited.out)}`);
    }
    // libvirt gives the tap of a new domain a noqueue root qdisc, dropping the shaper made
    // with the tap; shaped again while the guest is still paused, so none of its traffic passes unshaped.
    if (typeof spec.netRateKbit === 'number') {
      try {
        await applyRate(spec.id, 'tap', spec.netRateKbit);
      } catch (e) {
        await virsh(['destroy', name]);
        watchdog.done();
        throw e;
      }
    }
    // However long the guest runs: the domain's end is its QEMU gone.
    const stopped = pollUntil(() => libvirtQemuPid(spec.id) === null, { timeoutMs: Infinity, intervalMs: 50 }).then(() => undefined);
    return {
      pid: libvirtQemuPid(spec.id) ?? -1,
      stopped,
      resume: async () => {
        const r = await virsh(['resume', name]);
        if (!r.ok) throw new RuntimeError(`virsh resume failed: ${r.out}`);
      },
      kill: async () => {
        // After a clean power-off the domain is gone already; destroying it would only wait and fail.
        if (libvirtQemuPid(spec.id) !== null) await virsh(['destroy', name]);
        await stopped;
        watchdog.done();
      },
    };
  },

  pid: (id: string) => libvirtQemuPid(id),

  async destroy(id: string): Promise<void> {
    // Transient domains disappear when destroyed: nothing is left in `virsh list --all`.
    if (libvirtQemuPid(id) === null && !existsSync(`/run/libvirt/qemu/${domainName(id)}.xml`)) return;
    await virsh(['destroy', domainName(id)]);
    await pollUntil(() => libvirtQemuPid(id) === null, { timeoutMs: 5000, intervalMs: 50 });
  },

  describe(spec: MachineSpec, files: VmFiles): Record<string, unknown> {
    return { domainXml: domainXml(spec, files) };
  },

  async status(id: string): Promise<Record<string, unknown> | null> {
    if (libvirtQemuPid(id) === null) return null;
    const r = await virsh(['dominfo', domainName(id)]);
    if (!r.ok) return null;
    const info = Object.fromEntries(
      r.out
        .split('\n')
        .map((l) => l.split(/:\s+/, 2) as [string, string])
        .filter(([k, v]) => k && v),
    );
    return { status: info.State, running: info.State === 'running', guestMemoryBytes: parseInt(info['Used memory'] ?? '0', 10) * 1024 };
  },
};
