#!/usr/bin/env bash
# Boots a guest kernel with a throw-away busybox initramfs and times it. Used to check the
# output of build.sh and debian-fallback.sh (the figures in kernels/README.md come from it).
#
#   bash kernels/smoke-boot.sh [-M microvm|q35|pc] [-a kvm|tcg] [-n BOOTS] [--full] VMLINUX
#
# The initramfs is a static busybox as /init. It mounts /proc, loads the modules listed in
# modules/modules.order next to VMLINUX if there are any (the Debian fallback), prints
# `READY <uname -r>` on the serial console and powers off. For each boot it prints the
# wall time to the READY line and to QEMU's exit.
#
# --full adds devices and checks them from inside the guest (2 vCPUs, virtio-blk with an
# ext4 file system, virtio-net, 9p, virtio-console, overlayfs on tmpfs, cgroup2 with memory
# and pids, ping on loopback, a pty), and ends with `echo c > /proc/sysrq-trigger`: the
# guest must panic and QEMU must exit by itself (panic=-1 reboot=t + -no-reboot).
#
# Knobs: EXTRA_APPEND (more kernel parameters), QEMU_CPU (-cpu model; default host on KVM,
# QEMU's default under TCG), MICROVM_ACPI=on (ACPI on microvm; default off for our kernel).
# Needs qemu-system-x86, busybox-static, cpio, e2fsprogs. Exit code 0 when every boot
# reached READY (and, with --full, every check passed and the crash ended QEMU).
set -euo pipefail

machine=microvm accel= boots=1 full=0 vmlinux=
while [ $# -gt 0 ]; do
  case "$1" in
    -M) machine=$2; shift 2 ;;
    -a) accel=$2; shift 2 ;;
    -n) boots=$2; shift 2 ;;
    --full) full=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "smoke-boot: unknown option $1" >&2; exit 2 ;;
    *) vmlinux=$1; shift ;;
  esac
done
[ -f "$vmlinux" ] || { echo "smoke-boot: usage: smoke-boot.sh [-M microvm|q35|pc] [-a kvm|tcg] [-n N] [--full] VMLINUX" >&2; exit 2; }
if [ -z "$accel" ]; then
  if [ -w /dev/kvm ]; then accel=kvm; else accel=tcg; fi
fi
BUSYBOX=${BUSYBOX:-/bin/busybox}
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || [ ! -x /usr/bin/file ] || { echo "smoke-boot: $BUSYBOX is not static (apt-get install busybox-static)" >&2; exit 2; }

tmp=$(mktemp -d /tmp/hbx-smoke.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# --- the initramfs ------------------------------------------------------------------------
root="$tmp/root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,mnt,lib/modules}
cp "$BUSYBOX" "$root/bin/busybox"
moddir="$(dirname "$vmlinux")/modules"
if [ -f "$moddir/modules.order" ]; then
  cp "$moddir"/*.ko "$moddir/modules.order" "$root/lib/modules/"
fi
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
if [ -f /lib/modules/modules.order ]; then
  for m in $($B cat /lib/modules/modules.order); do $B insmod /lib/modules/$m || echo "CHECK insmod-$m=FAIL"; done
fi
case " $($B cat /proc/cmdline) " in *" smoke=full "*) full=1 ;; *) full=0 ;; esac
if [ $full = 1 ]; then
  check() { if eval "$2" >/dev/null 2>&1; then echo "CHECK $1=ok"; else echo "CHECK $1=FAIL"; fi; }
  $B mount -t sysfs sysfs /sys
  $B mount -t devtmpfs devtmpfs /dev
  $B mount -t tmpfs tmpfs /tmp
  echo "CHECK cpus=$($B nproc)"
  check uname-r '[ -n "$($B uname -r)" ]'
  check virtio-blk-ext4 '$B mount -t ext4 -o ro /dev/vda /mnt && [ "$($B cat /mnt/hello)" = hello-from-host ] && $B umount /mnt'
  check virtio-net '[ -e /sys/class/net/eth0 ] && $B ip link set eth0 up'
  check loopback-ping '$B ip link set lo up && $B ping -c 1 -W 2 127.0.0.1'
  check 9p '$B mkdir -p /share && $B mount -t 9p -o trans=virtio,version=9p2000.L hbx0 /share && [ "$($B cat /share/hello)" = hello-from-host ]'
  check virtio-console '[ -e /dev/hvc0 ]'
  check overlayfs '$B mkdir -p /tmp/l /tmp/u /tmp/w /tmp/m && echo x > /tmp/l/f && $B mount -t overlay overlay -o lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w /tmp/m && echo y > /tmp/m/f && [ "$($B cat /tmp/l/f)" = x ]'
  check cgroup2-memory-pids '$B mkdir -p /sys/fs/cgroup && $B mount -t cgroup2 none /sys/fs/cgroup && $B grep -q memory /sys/fs/cgroup/cgroup.controllers && $B grep -q pids /sys/fs/cgroup/cgroup.controllers'
  check pty '$B mkdir -p /dev/pts && $B mount -t devpts devpts /dev/pts && [ -c /dev/ptmx ]'
  check sysrq '[ -w /proc/sysrq-trigger ]'
  check rtc '[ -e /dev/rtc0 ]'
fi
echo "READY $($B uname -r)"
if [ $full = 1 ]; then $B usleep 300000; echo c > /proc/sysrq-trigger; $B sleep 1; echo "CHECK sysrq-crash=FAIL"; fi
# Power off needs firmware help (ACPI on pc, q35 and microvm,acpi=on). Without ACPI
# (microvm,acpi=off) the kernel can only halt, and QEMU would stay up: reboot instead,
# which reboot=t turns into a triple fault and -no-reboot into QEMU exiting.
$B mount -t sysfs sysfs /sys 2>/dev/null
if [ -d /sys/firmware/acpi ]; then $B poweroff -f; else $B reboot -f; fi
EOF
chmod +x "$root/init"
( cd "$root" && find . | cpio -o -H newc --quiet ) > "$tmp/initrd.cpio"

# --- machine --------------------------------------------------------------------------------
append='console=ttyS0 reboot=t panic=-1 quiet'
if [ "$accel" = tcg ]; then
  mhz=$(awk -F: '/^cpu MHz/ {gsub(/ /, "", $2); print $2; exit}' /proc/cpuinfo)
  append="$append loglevel=0 tsc=reliable no_timer_check i8042.noaux i8042.nokbd cryptomgr.notests"
  [ -n "$mhz" ] && append="$append tsc_early_khz=$(printf '%.0f' "$(echo "$mhz * 1000" | bc)")"
fi
[ "$full" = 1 ] && append="$append smoke=full"
append="$append ${EXTRA_APPEND:-}"
cpu=(); [ "$accel" = kvm ] && cpu=(-cpu host)
[ -n "${QEMU_CPU:-}" ] && cpu=(-cpu "$QEMU_CPU")
case "$machine" in
  microvm)
    # Our kernel boots fastest without ACPI; a Debian kernel finds virtio-mmio devices only
    # through ACPI (it lacks VIRTIO_MMIO_CMDLINE_DEVICES).
    acpi=${MICROVM_ACPI:-off}; [ -d "$moddir" ] && acpi=on
    M="microvm,acpi=$acpi"; sfx=device ;;
  q35|pc) M=$machine; sfx=pci ;;
  *) echo "smoke-boot: unknown machine $machine" >&2; exit 2 ;;
esac
devs=()
if [ "$full" = 1 ]; then
  mkdir -p "$tmp/disk" "$tmp/share"
  echo hello-from-host > "$tmp/disk/hello"
  echo hello-from-host > "$tmp/share/hello"
  mkfs.ext4 -q -F -d "$tmp/disk" "$tmp/disk.img" 8M >/dev/null
  devs=(-smp 2
    -drive "if=none,id=d0,file=$tmp/disk.img,format=raw,readonly=on" -device "virtio-blk-$sfx,drive=d0"
    -netdev user,id=n0,restrict=on -device "virtio-net-$sfx,netdev=n0"
    -fsdev "local,id=fs0,path=$tmp/share,security_model=none,readonly=on" -device "virtio-9p-$sfx,fsdev=fs0,mount_tag=hbx0"
    -device "virtio-serial-$sfx" -chardev null,id=c0 -device virtconsole,chardev=c0)
fi
cmd=(qemu-system-x86_64 -M "$M" -accel "$accel" "${cpu[@]}" -m 256 -nodefaults -no-user-config
  -display none -no-reboot -serial stdio -kernel "$vmlinux" -initrd "$tmp/initrd.cpio"
  -append "$append" "${devs[@]}")

echo "smoke-boot: $machine/$accel $(basename "$(dirname "$vmlinux")")/$(basename "$vmlinux") ($(( $(stat -c %s "$vmlinux") / 1024 )) KiB)" >&2
fails=0; readys=(); exits=()
for i in $(seq 1 "$boots"); do
  log="$tmp/console.$i"
  t0=$(date +%s%N); tr=
  while IFS= read -r line; do
    line=${line%$'\r'}
    printf '%s\n' "$line" >> "$log"
    case "$line" in READY*) tr=$(date +%s%N) ;; esac
  done < <(rc=0; timeout 60 "${cmd[@]}" 2>&1 || rc=$?; echo "QEMU-EXIT $rc")
  t1=$(date +%s%N)
  rc=$(awk '/^QEMU-EXIT/ {print $2}' "$log")
  if [ -z "$tr" ]; then
    echo "boot $i: no READY (qemu exit $rc); console:" >&2; sed 's/^/  | /' "$log" >&2; fails=$((fails + 1)); continue
  fi
  ready_ms=$(( (tr - t0) / 1000000 )); exit_ms=$(( (t1 - t0) / 1000000 ))
  readys+=("$ready_ms"); exits+=("$exit_ms")
  echo "boot $i: READY at ${ready_ms} ms, QEMU exited at ${exit_ms} ms (rc $rc): $(grep -m1 '^READY' "$log")"
  if [ "$full" = 1 ]; then
    grep '^CHECK' "$log" | sed 's/^/  /'
    if grep -q '^CHECK .*=FAIL' "$log"; then fails=$((fails + 1)); fi
    if [ "$rc" = 0 ]; then
      echo "  crash: QEMU exited by itself after the sysrq panic (rc $rc)"
    else
      echo "  crash: FAIL (rc $rc)"; fails=$((fails + 1))
    fi
  fi
  [ "$rc" = 124 ] && { echo "  QEMU did not exit within 60 s (timeout killed it)"; fails=$((fails + 1)); }
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
if [ "${#readys[@]}" -gt 0 ]; then
  echo "median over ${#readys[@]}: READY $(median "${readys[@]}") ms, exit $(median "${exits[@]}") ms; all READY: ${readys[*]}"
fi
[ "$fails" = 0 ]
