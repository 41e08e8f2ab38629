#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to the point where hybridbox runs: Debian packages,
# npm packages, the bundled CLI in dist/, the base images and the language runtimes' images
# (docs/RUNTIMES.md). Idempotent; when everything is in place it finishes in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: hybridbox drives namespaces, cgroups and mounts: run as root" >&2
  exit 1
fi

# What each package is for: crun/runc run containers, tini is PID 1 inside them,
# busybox-static is the base image, iproute2 builds the bridge network, gcc/libc6-dev build
# the hbx-shim helper; qemu-system-x86/qemu-utils run VMs and make their disks (e2fsprogs),
# libvirt-* run full VMs (libxml2-utils for virt-xml-validate), musl-tools/cpio build the
# guest agent and its initramfs; flex, bison, libelf-dev, bc, make, xz-utils build the
# guest kernel; skopeo and umoci read and write OCI images independently of hybridbox (the
# tests use them as the other side of interop); attr (setfattr/getfattr) reads and writes the
# overlayfs xattrs that mark opaque directories in image layers; podman and buildah are the
# other side of the image import/export interop tests; mmdebstrap bootstraps the
# debian:bookworm base image from Debian's mirror; rclone is the S3 client the registry
# benchmark compares push and pull with; chromium opens the HTML report in its test.
PACKAGES=(crun runc tini busybox-static iproute2 gcc libc6-dev
  qemu-system-x86 qemu-utils e2fsprogs libvirt-daemon-system libvirt-clients libxml2-utils
  musl-tools cpio flex bison libelf-dev bc make xz-utils skopeo umoci attr podman buildah mmdebstrap rclone chromium)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

node scripts/build.mjs

# The guest kernel and the agent's initramfs: slow to build the first time, then cached
# outside the clone by their inputs (see kernels/README.md and guest-images/README.md).
# HYBRIDBOX_GUEST_KERNEL=debian skips the kernel build: Debian's cloud kernel, unpacked,
# with its virtio modules in the initramfs (no 9p volumes: that kernel has no 9p).
cache="${HYBRIDBOX_CACHE:-/var/cache/hybridbox}"
mkdir -p "$cache"
if [ "${HYBRIDBOX_GUEST_KERNEL:-custom}" = debian ]; then
  flavour=debian
  kernel=$(bash kernels/debian-fallback.sh | tail -n 1)
  initrd=$(bash guest-images/build-initramfs.sh --modules-dir "$(dirname "$kernel")/modules" | tail -n 1)
  release=$(basename "$(dirname "$kernel")" | sed -e 's/^debian-//' -e 's/_.*//')
else
  flavour=custom
  kernel=$(bash kernels/build.sh | tail -n 1)
  initrd=$(bash guest-images/build-initramfs.sh | tail -n 1)
  release=$(sed -n 's/^release=//p' "$(dirname "$kernel")/build-info" 2>/dev/null)
fi
boot_json=$(printf '{"kernel":"%s","initrd":"%s","flavour":"%s","kernelRelease":"%s"}\n' "$kernel" "$initrd" "$flavour" "$release")
if [ "$(cat "$cache/guest-boot.json" 2>/dev/null)" != "$boot_json" ]; then
  printf '%s\n' "$boot_json" > "$cache/guest-boot.json.tmp" && mv "$cache/guest-boot.json.tmp" "$cache/guest-boot.json"
fi

# The root disk of the cgroup v2 test guest (test/cgroup-v2.test.ts): busybox, node, crun and
# tini copied from this host onto an ext4 image, cached by their content (guest-images/README.md).
bash guest-images/build-cgroup2-root.sh >/dev/null

# The base images and the runtimes' images (debian:bookworm plus packages): built once, kept
# as archives in $cache/bases by their inputs, imported from there into a new state root.
node dist/cli.js setup >/dev/null
