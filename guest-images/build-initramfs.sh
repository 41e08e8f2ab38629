#!/usr/bin/env bash
# Usage: build-initramfs.sh [OUT] [--modules-dir DIR]
#
# Builds the guest initramfs (gzip'd newc cpio) whose /init is hbx-agent, and prints the
# path of the cached artefact:
#   ${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/initramfs/<sha256 of the inputs>.cpio.gz
# When that file exists already, nothing is built. OUT, if given, receives a copy (left
# alone when it already has the same bytes).
#
# --modules-dir DIR: kernel modules for a stock distro kernel. DIR holds modules.order,
# one path per line relative to DIR (dependencies first), and those files; they land in
# /lib/modules of the initramfs and the agent loads them when the kernel command line says
# hbx.modules=1. Only the listed files are copied.
#
# The archive is reproducible: entries sorted, owner 0:0, mtime 0, renumbered inodes,
# gzip without name or time. The same inputs give the same bytes on any machine.
set -euo pipefail
shopt -s inherit_errexit

usage() {
  echo "usage: build-initramfs.sh [OUT] [--modules-dir DIR]" >&2
  exit 2
}

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
self="$here/$(basename -- "$0")"
out=""
mods=""
while [ $# -gt 0 ]; do
  case "$1" in
    --modules-dir) [ $# -ge 2 ] || usage; mods=$2; shift 2 ;;
    --modules-dir=*) mods=${1#*=}; shift ;;
    -h|--help) usage ;;
    -*) echo "build-initramfs.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
  esac
done

for tool in cpio gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-initramfs.sh: $tool not found" >&2; exit 1; }
done
if [ -n "$mods" ]; then
  [ -f "$mods/modules.order" ] || { echo "build-initramfs.sh: $mods/modules.order not found" >&2; exit 1; }
  mods=$(CDPATH= cd -- "$mods" && pwd)
fi

# Lines of modules.order, without blanks and comments, as the agent reads them.
module_list() {
  sed -e 's#^/*##' -e '/^[[:space:]]*$/d' -e '/^#/d' "$mods/modules.order"
}

# The key covers everything that decides the archive's bytes: the agent's source and build
# flags, this script, the compiler, and each module's content.
key=$(
  {
    echo "hbx-initramfs 1"
    sha256sum <"$here/agent/hbx-agent.c"
    sha256sum <"$here/agent/build.sh"
    sha256sum <"$here/../scripts/cc-static.sh"
    sha256sum <"$self"
    "${MUSL_CC:-musl-gcc}" --version 2>/dev/null | head -n 1 || true
    if [ -n "$mods" ]; then
      sha256sum <"$mods/modules.order"
      module_list | while IFS= read -r m; do
        [ -f "$mods/$m" ] || { echo "build-initramfs.sh: $mods/$m (listed in modules.order) not found" >&2; exit 1; }
        printf '%s ' "$m"
        sha256sum <"$mods/$m"
      done
    fi
  } | sha256sum | cut -c1-64
)

cache="${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/initramfs"
artefact="$cache/$key.cpio.gz"

if [ ! -f "$artefact" ]; then
  mkdir -p "$cache"
  stage=$(mktemp -d "$cache/.stage.XXXXXX")
  tmp="$artefact.tmp.$$"
  trap 'rm -rf "$stage" "$tmp"' EXIT
  root="$stage/root"
  mkdir -p "$root"/{dev,proc,sys,run/hbx/lower,run/hbx/rw,run/hbx/root,lib/modules}
  sh "$here/agent/build.sh" "$root/init"
  # The kernel opens /dev/console for init's fds 0-2 before any devtmpfs exists. Without
  # the node (mknod refused) the agent opens it itself after mounting devtmpfs.
  mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null ||
    echo "build-initramfs.sh: warning: cannot create dev/console (the agent will open it after mounting /dev)" >&2
  if [ -n "$mods" ]; then
    cp "$mods/modules.order" "$root/lib/modules/modules.order"
    module_list | while IFS= read -r m; do
      mkdir -p "$root/lib/modules/$(dirname -- "$m")"
      cp "$mods/$m" "$root/lib/modules/$m"
    done
  fi
  find "$root" -type d -exec chmod 0755 {} +
  find "$root" -type f ! -name init -exec chmod 0644 {} +
  chmod 0755 "$root/init"
  find "$root" -exec touch -h -d @0 {} +
  (cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 >"$tmp"
  mv -f "$tmp" "$artefact"
  rm -rf "$stage"
  trap - EXIT
fi

if [ -n "$out" ] && ! cmp -s "$artefact" "$out" 2>/dev/null; then
  mkdir -p "$(dirname -- "$out")"
  cp "$artefact" "$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
fi
echo "$artefact"
