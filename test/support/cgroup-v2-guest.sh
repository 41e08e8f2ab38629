#!/bin/sh
# The guest side of test/cgroup-v2.test.ts: session 0 of the cgroup v2 test guest (run by
# hybridbox's agent as root, chrooted into the guest's disk). Runs each case through the
# real CLI and prints its output between markers, which the test parses:
#   @@begin NAME / stdout / @@stderr / stderr / @@end NAME EXIT-CODE UPTIME-AT-START UPTIME-AT-END
set -u
# What a pure cgroup v2 host has: cgroup2 alone at /sys/fs/cgroup, read-write with systemd's
# nsdelegate, and /run on a tmpfs. The agent shows the workload its cgroup2 read-only: this
# script is root in the guest, and remounts it as such a host has it.
mount -o remount,rw,nsdelegate /sys/fs/cgroup || exit 90
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || exit 91
export HYBRIDBOX_ROOT=/var/lib/hybridbox HOME=/root
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec node /opt/hybridbox/dist/cli.js "$@"\n' > /tmp/bin/hybridbox
chmod 0755 /tmp/bin/hybridbox
export PATH=/tmp/bin:$PATH
up() { read u _ < /proc/uptime; echo "$u"; }
# case NAME CMD...: the command's stdout and stderr, its exit code and guest-side duration.
case_() {
  name=$1; shift
  t0=$(up)
  "$@" > /tmp/case.out 2> /tmp/case.err
  rc=$?
  echo "@@begin $name"
  cat /tmp/case.out
  echo "@@stderr"
  cat /tmp/case.err
  echo "@@end $name $rc $t0 $(up)"
}
echo "@@up $(up)"
case_ info sh -c 'hybridbox info && echo @@json && hybridbox info --json'
case_ setup hybridbox setup
case_ echo hybridbox run --rm --json busybox -- sh -c 'echo hello from cgroup v2; exit 7'
case_ oom hybridbox run --rm --json --memory 32m busybox -- sh -c 'x=$(head -c 200000000 /dev/zero | tr "\000" a); echo survived'
case_ sigkill hybridbox run --rm --json --memory 32m busybox -- sh -c 'kill -9 $$'
# Builtins only once the bomb runs: it leaves no pid free for a command. A bomb process whose
# fork is refused exits (ash), so the number in use is sampled over the whole run.
case_ pids hybridbox run --rm --json --pids 32 --cpus 1 --timeout 90s busybox -- sh -c '
  f() { while :; do f & done; }
  f 2>/dev/null &
  read u _ < /proc/uptime; end=$(( ${u%.*} + 4 ))
  peak=0
  while read u _ < /proc/uptime; [ ${u%.*} -lt $end ]; do
    read cur < /sys/fs/cgroup/pids.current; [ $cur -gt $peak ] && peak=$cur
  done
  read max < /sys/fs/cgroup/pids.max; read ev < /sys/fs/cgroup/pids.events
  echo "peak=$peak max=$max events=$ev"'
case_ cpu hybridbox run --rm --json --cpus 0.5 busybox -- sh -c '
  usage() { while read k v; do [ "$k" = usage_usec ] && echo "$v"; done < /sys/fs/cgroup/cpu.stat; }
  read t0 _ < /proc/uptime; u0=$(usage)
  timeout 3 sh -c "while :; do :; done"
  read t1 _ < /proc/uptime; u1=$(usage)
  echo "cpu.max=$(cat /sys/fs/cgroup/cpu.max) usage_usec=$((u1 - u0)) wall=$t0:$t1"'
# CPU time of the whole group from the sandbox's cpu.stat: two spinners, foreground (the CLI
# watches) and detached (hbx-shim watches, with nobody else).
case_ cputime hybridbox run --rm --json --cpu-time 500ms busybox -- sh -c 'while :; do :; done & while :; do :; done'
cputime_detached() {
  id=$(hybridbox run -d --cpu-time 500ms busybox -- sh -c 'while :; do :; done & while :; do :; done') || return 1
  i=0
  while [ $i -lt 200 ] && ! hybridbox inspect "$id" | grep -q '"state": "exited"'; do sleep 0.1; i=$((i + 1)); done
  hybridbox inspect "$id" | grep -e '"stateReason"' -e '"signal"'
  hybridbox rm "$id" > /dev/null
}
case_ cputime-detached cputime_detached
case_ io hybridbox run --rm --json --io-weight 500 busybox -- sh -c 'for f in io.max io.weight io.bfq.weight; do [ -e /sys/fs/cgroup/$f ] && echo "$f=$(cat /sys/fs/cgroup/$f)"; done; true'
# Disk limits land in io.max (blk-throttling). An fsync is throttled on v1 too (the writer
# submits); what only v2 holds is writeback that the kernel's flusher does for the sandbox,
# here the pages that a global sync makes it write (on this v1 host that escapes the cap).
case_ iomax hybridbox run --rm --json --device-write-bps 4mb --device-read-iops 200 busybox -- sh -c '
  echo "io.max=$(cat /sys/fs/cgroup/io.max)"
  read t0 _ < /proc/uptime; dd if=/dev/zero of=/f bs=1M count=8 oflag=direct 2>/dev/null; read t1 _ < /proc/uptime
  echo "direct=$t0:$t1"
  read t0 _ < /proc/uptime; dd if=/dev/zero of=/g bs=1M count=8 conv=fsync 2>/dev/null; read t1 _ < /proc/uptime
  echo "buffered=$t0:$t1"
  read t0 _ < /proc/uptime; dd if=/dev/zero of=/h bs=1M count=8 2>/dev/null; sync; read t1 _ < /proc/uptime
  echo "writeback=$t0:$t1"'
traces() {
  echo "cgroups=$(ls -A /sys/fs/cgroup/hybridbox 2>/dev/null | tr '\n' ' ')"
  echo "cgroup-parent=$([ -e /sys/fs/cgroup/hybridbox ] && echo present || echo absent)"
  echo "mounts=$(wc -l < /proc/self/mountinfo)"
  echo "hybridbox-mounts=$(grep -c -e /var/lib/hybridbox -e overlay /proc/self/mountinfo)"
  echo "run-crun=$(ls -A /run/crun 2>/dev/null | tr '\n' ' ')"
  echo "sandbox-dirs=$(ls -A $HYBRIDBOX_ROOT/sandboxes 2>/dev/null | tr '\n' ' ')"
  echo "procs=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -c -e crun -e tini -e hbx-shim)"
}
leak() {
  traces | sed 's/^/before:/'
  i=0
  while [ $i -lt $LEAK_CYCLES ]; do
    hybridbox run --rm --json --memory 64m --pids 64 --cpus 1 --io-weight 100 busybox -- true > /tmp/leak.json || { echo "cycle $i failed"; cat /tmp/leak.json; return 1; }
    i=$((i + 1))
  done
  echo "cycles=$i"
  traces | sed 's/^/after:/'
  echo "ps=$(hybridbox ps -a --json | tr -d '\n ')"
}
case_ leak leak
