#!/usr/bin/env bash
# Usage: build-cgroup2-root.sh
#
# Builds the root disk of the cgroup v2 test guest (test/cgroup-v2.test.ts) and prints its
# path:
#   ${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/cgroup2-root/<sha256 of the inputs>.ext4
# When that file exists already, nothing is built.
#
# The disk holds what a user's pure cgroup v2 host would have for hybridbox to run:
# busybox (the shell, and the source of the busybox base image), node, crun and tini, each
# copied from this host with the shared libraries `ldd` names. hybridbox itself (dist/ and
# better-sqlite3's addon) is not on it: the test shares the clone read-only over 9p, so a
# rebuilt CLI needs no new disk. The guest's /init is hybridbox's own agent (initramfs).
#
# The key covers this script and the content of every copied file, so a new node, crun,
# tini or busybox on the host gives a new disk. mkfs.ext4 -d writes the image without
# mounting anything; the file is written under a temporary name and renamed.
set -euo pipefail
shopt -s inherit_errexit

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
self="$here/$(basename -- "$0")"
die() { echo "build-cgroup2-root.sh: $*" >&2; exit 1; }

for tool in mkfs.ext4 sha256sum ldd; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install e2fsprogs libc-bin)"
done

node_bin=$(command -v node) || die "node not found"
node_bin=$(readlink -f "$node_bin")
busybox=/bin/busybox
crun=$(command -v crun) || die "crun not found (apt-get install crun)"
tini=$(command -v tini) || die "tini not found (apt-get install tini)"
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || [ ! -x /usr/bin/file ] || die "$busybox is not static (apt-get install busybox-static)"
# tini-static is what hybridbox bind-mounts into containers when it exists (host/probe.ts).
bins=("$node_bin" "$crun" "$tini")
[ -x /usr/bin/tini-static ] && bins+=(/usr/bin/tini-static)

# Every binary and the libraries it loads, by the path the dynamic loader will look for.
files() {
  printf '%s\n' "$busybox" "${bins[@]}"
  for b in "${bins[@]}"; do
    ldd "$b" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}'
  done
}
mapfile -t all < <(files | LC_ALL=C sort -u)

key=$(
  {
    echo "hbx-cgroup2-root 1"
    sha256sum <"$self"
    for f in "${all[@]}"; do printf '%s ' "$f"; sha256sum <"$f"; done
  } | sha256sum | cut -c1-64
)
cache="${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/cgroup2-root"
artefact="$cache/$key.ext4"
if [ -f "$artefact" ]; then
  echo "$artefact"
  exit 0
fi

mkdir -p "$cache"
stage=$(mktemp -d "$cache/.stage.XXXXXX")
tmp="$artefact.tmp.$$"
trap 'rm -rf "$stage" "$tmp"' EXIT
root="$stage/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,var/lib,var/tmp,opt/hybridbox,mnt}
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"

# Libraries (and the loader) first, at their own paths: the binaries find them as on the host.
for f in "${all[@]}"; do
  mkdir -p "$root$(dirname -- "$f")"
  cp -L "$f" "$root$f"
done
# The same commands at the paths hybridbox probes first ($PATH order in the guest).
for b in "${bins[@]}"; do
  [ -e "$root/usr/bin/$(basename -- "$b")" ] || cp -L "$b" "$root/usr/bin/$(basename -- "$b")"
done
for a in $("$busybox" --list-full); do
  [ -e "$root/$a" ] || [ -L "$root/$a" ] || ln -s /bin/busybox "$root/$a"
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo '127.0.0.1 localhost' >"$root/etc/hosts"
echo cgroup2-guest >"$root/etc/hostname"

# Room for hybridbox's state in the guest (images, one sandbox at a time): the content is
# ~110 MB; the image is sparse, and the VM writes into its own qcow2 overlay anyway.
used_mb=$(du -sm "$root" | cut -f1)
mkfs.ext4 -q -F -L hbx-cg2 -E root_owner=0:0 -d "$root" "$tmp" "$(( used_mb + 384 ))M" >/dev/null
mv -f "$tmp" "$artefact"
rm -rf "$stage"
trap - EXIT
echo "$artefact"
