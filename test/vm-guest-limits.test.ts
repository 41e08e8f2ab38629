import test from 'ava';
import type { Hybridbox } from '../src/index.js';
import { findGuestBoot } from '../src/runtimes/vm/boot.js';
import { GUEST_CGROUP } from '../src/runtimes/vm/limits.js';
import { freshHybridbox } from './helpers.js';

// pids and memory limits inside a VM's own kernel: the agent's cgroup holds a fork bomb and
// OOM-kills a memory bomb, and the VM (its agent, its channel) lives on. Real guests under
// TCG; each test does several checks on one or two boots.

let hb: Hybridbox;
let cleanup: () => Promise<void>;

test.before(async () => {
  if (!findGuestBoot()) throw new Error('no guest kernel: run `npm run setup` first');
  ({ hb, cleanup } = await freshHybridbox('hbx-guestlimits-'));
});
test.after.always(async () => {
  await cleanup?.();
});

const FORK_BOMB = `f() { while :; do f & done; }; f 2>/dev/null & sleep 3; read cur < ${GUEST_CGROUP}/pids.current; read max < ${GUEST_CGROUP}/pids.max; echo "current=$cur max=$max"; cat ${GUEST_CGROUP}/pids.events`;
const MEMORY_BOMB = 'x=$(head -c 200000000 /dev/zero | tr "\\000" a); echo survived';

for (const kind of ['microvm', 'vm'] as const) {
  test.serial(`${kind}: a fork bomb is held at --pids and the VM keeps answering; the agent is out of the OOM killer's reach`, async (t) => {
    const s = await hb.sandboxes.runDetached({ image: 'busybox', command: ['sleep', '300'], isolation: kind, resources: { pids: 32 } });
    const bomb = await hb.sandboxes.exec(s.id, ['sh', '-c', FORK_BOMB]);
    t.is(bomb.exitCode, 0, bomb.stderr);
    const m = /current=(\d+) max=(\d+)/.exec(bomb.stdout);
    t.truthy(m, bomb.stdout);
    t.is(m?.[2], '32');
    t.true(Number(m?.[1]) <= 32, bomb.stdout);
    t.regex(bomb.stdout, /^max [1-9]\d*$/m, 'forks were refused at the cap');
    t.log(`${kind} fork bomb under --pids 32: ${bomb.stdout.trim().replace(/\n/g, ', ')}`);
    // The bomb is still running: a new session joins the full cgroup and still starts.
    const after = await hb.sandboxes.exec(s.id, [
      'sh',
      '-c',
      'echo still answering; read a < /proc/1/oom_score_adj; echo "agent=$a"; read b < /proc/self/oom_score_adj; echo "workload=$b"; cat /proc/self/cgroup',
    ]);
    t.is(after.exitCode, 0, after.stderr);
    t.regex(after.stdout, /^still answering$/m);
    t.regex(after.stdout, /^agent=-1000$/m);
    t.regex(after.stdout, /^workload=0$/m);
    t.regex(after.stdout, /^0::\/hbx$/m);
    t.is((await hb.sandboxes.get(s.id)).state, 'running');
    await hb.sandboxes.remove(s.id, { force: true });
  });

  test.serial(`${kind}: a memory bomb is OOM-killed in the guest cgroup and reported as oomKilled, not as a crashed VM`, async (t) => {
    const r = await hb.sandboxes.run({ image: 'busybox', command: ['sh', '-c', `cat ${GUEST_CGROUP}/memory.max; ${MEMORY_BOMB}`], isolation: kind, resources: { memoryMiB: 64 } }, { remove: true });
    t.is(r.crash, null);
    t.true(r.oomKilled, JSON.stringify(r));
    t.is(r.signal, 'SIGKILL');
    t.regex(r.stdout, new RegExp(`^${64 * 1048576}$`, 'm'));
    t.false(r.stdout.includes('survived'));
  });
}

test.serial('microvm without a memory limit: the workload still cannot take the guest down', async (t) => {
  const r = await hb.sandboxes.run({ image: 'busybox', command: ['sh', '-c', MEMORY_BOMB.replace('200000000', '300000000')], isolation: 'microvm' }, { remove: true });
  t.is(r.crash, null, 'the VM did not crash');
  t.true(r.oomKilled, JSON.stringify(r));
});
