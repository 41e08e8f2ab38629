#!/usr/bin/env bash
# Builds the hybridbox guest kernel (an ELF vmlinux with a PVH entry) from Debian's
# linux-source-6.1 package: `make tinyconfig` + kernels/hybridbox-guest.config.
#
#   bash kernels/build.sh                # build if needed; prints the vmlinux path on stdout
#   bash kernels/build.sh --print-path   # print the path it has / would have; build nothing
#
# Result: ${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/kernels/<key>/{vmlinux,config,build-info}
# <key> = first 16 hex of sha256(fragment + this script + linux-source package version).
# When the result is cached this only prints its path (no apt, no make).
#
# Environment:
#   HYBRIDBOX_CACHE                    cache root (default /var/cache/hybridbox)
#   HYBRIDBOX_LINUX_SOURCE_VERSION     pin the linux-source-6.1 version (default: apt's candidate)
#   HYBRIDBOX_KERNEL_JOBS              make -j (default: nproc)
#   HYBRIDBOX_KERNEL_VERBOSE=1         stream make's output to stderr (default: to build.log)
#
# Only the path goes to stdout; progress and errors go to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$HERE/hybridbox-guest.config"
PKG=linux-source-6.1
CACHE_ROOT="${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/kernels"
BUILD_DEPS=(flex bison libelf-dev bc build-essential xz-utils)
ARCH_ARGS=(ARCH=x86_64)

log() { printf 'kernels/build.sh: %s\n' "$*" >&2; }
die() { printf 'kernels/build.sh: error: %s\n' "$*" >&2; exit 1; }

print_only=0
case "${1:-}" in
  '') ;;
  --print-path) print_only=1 ;;
  -h|--help) sed -n '2,20p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (usage: build.sh [--print-path])" ;;
esac

[ -f "$FRAGMENT" ] || die "$FRAGMENT is missing"

# --- which linux-source version --------------------------------------------------------
# `apt-cache policy` costs ~0.6 s here, so its answer is remembered together with the
# mtime of /var/lib/apt/lists (which changes when `apt-get update` brings new lists).
resolve_version() {
  if [ -n "${HYBRIDBOX_LINUX_SOURCE_VERSION:-}" ]; then
    printf '%s\n' "$HYBRIDBOX_LINUX_SOURCE_VERSION"; return
  fi
  local record="$CACHE_ROOT/.resolved/$PKG" stamp ver
  stamp=$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)
  if [ -f "$record" ]; then
    read -r rstamp ver < "$record" || true
    if [ "${rstamp:-}" = "$stamp" ] && [ -n "${ver:-}" ]; then printf '%s\n' "$ver"; return; fi
  fi
  ver=$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    die "apt knows no $PKG package: run 'apt-get update' first (Debian 12 main or security)"
  fi
  if mkdir -p "$CACHE_ROOT/.resolved" 2>/dev/null; then
    printf '%s %s\n' "$stamp" "$ver" > "$record.$$" && mv -f "$record.$$" "$record" || rm -f "$record.$$"
  fi
  printf '%s\n' "$ver"
}

VERSION=$(resolve_version)
KEY=$( { cat "$FRAGMENT"; cat "$SELF"; printf '%s=%s\n' "$PKG" "$VERSION"; } | sha256sum | cut -c1-16)
DEST="$CACHE_ROOT/$KEY"
VMLINUX="$DEST/vmlinux"

if [ "$print_only" = 1 ] || [ -f "$VMLINUX" ]; then
  printf '%s\n' "$VMLINUX"
  exit 0
fi

# --- build ------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "building needs root (apt-get, and the cache in $CACHE_ROOT)"
mkdir -p "$CACHE_ROOT"

# One build per key at a time; a second caller waits, then finds the result.
# (Lock files stay: deleting one that another process waits on would let a third in.)
mkdir -p "$CACHE_ROOT/.locks"
exec 9> "$CACHE_ROOT/.locks/$KEY"
if ! flock -n 9; then
  log "another build of $KEY is running; waiting for it"
  flock 9
fi
if [ -f "$VMLINUX" ]; then printf '%s\n' "$VMLINUX"; exit 0; fi

# Work trees of interrupted builds (of any key) whose lock nobody holds are garbage.
for stale in "$CACHE_ROOT"/.build-*; do
  [ -d "$stale" ] || continue
  k=${stale##*/.build-}
  [ "$k" = "$KEY" ] && continue
  ( flock -n 8 && rm -rf "$stale" ) 8> "$CACHE_ROOT/.locks/$k" || true
done

# Everything is written below WORK (same filesystem as the cache, so the final rename is
# atomic) and renamed into place at the end. A leftover WORK from an interrupted build is
# safe to delete: we hold the lock for this key.
WORK="$CACHE_ROOT/.build-$KEY"
rm -rf "$WORK"
mkdir -p "$WORK"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
t0=$(date +%s)

missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing build dependencies: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed (try 'apt-get update' first)"
fi

log "building kernel $KEY from $PKG $VERSION (several minutes)"
log "downloading $PKG=$VERSION"
mkdir -p "$WORK/deb"
( cd "$WORK/deb" && apt-get download -qq -o APT::Sandbox::User=root "$PKG=$VERSION" >&2 ) \
  || die "apt-get download $PKG=$VERSION failed (is the version still in the archive? try 'apt-get update')"
deb=$(ls "$WORK"/deb/*.deb)
got=$(dpkg-deb -f "$deb" Version)
[ "$got" = "$VERSION" ] || die "downloaded $PKG $got, expected $VERSION"

log "unpacking"
dpkg-deb -x "$deb" "$WORK/pkg"
rm -f "$deb"
tarball=$(ls "$WORK"/pkg/usr/src/linux-source-*.tar.xz)
tar -xJf "$tarball" -C "$WORK"
rm -rf "$WORK/pkg"
SRC=$(ls -d "$WORK"/linux-source-*/)
SRC=${SRC%/}

JOBS=${HYBRIDBOX_KERNEL_JOBS:-$(nproc)}
BUILD_LOG="$WORK/build.log"
run_make() {
  if [ "${HYBRIDBOX_KERNEL_VERBOSE:-0}" = 1 ]; then
    make -C "$SRC" "${ARCH_ARGS[@]}" "$@" >&2
  else
    make -C "$SRC" "${ARCH_ARGS[@]}" "$@" >> "$BUILD_LOG" 2>&1 || {
      tail -n 40 "$BUILD_LOG" >&2
      die "make $* failed (last lines above)"
    }
  fi
}

log "configuring: tinyconfig + $(basename "$FRAGMENT")"
run_make tinyconfig
( cd "$SRC" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >> "$BUILD_LOG" 2>&1 ) \
  || { tail -n 20 "$BUILD_LOG" >&2; die "merge_config.sh failed"; }
run_make olddefconfig

# Every line of the fragment must have survived olddefconfig. Kconfig silently drops an
# option whose dependencies are not met, and silently keeps one that something selects.
lost=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qxF -- "$line" "$SRC/.config" || {
        sym=${line%%=*}
        have=$(grep -E "^$sym=|^# $sym is not set" "$SRC/.config" || true)
        lost+=("$line  (got: ${have:-absent: its dependencies are not met})")
      } ;;
    '# CONFIG_'*' is not set')
      sym=${line#\# }; sym=${sym%% *}
      if have=$(grep -E "^$sym=" "$SRC/.config"); then
        lost+=("$line  (got: $have: something selects it)")
      fi ;;
  esac
done < "$FRAGMENT"
if [ "${#lost[@]}" -gt 0 ]; then
  printf 'kernels/build.sh: error: %d line(s) of %s did not survive make olddefconfig:\n' "${#lost[@]}" "$(basename "$FRAGMENT")" >&2
  printf '  %s\n' "${lost[@]}" >&2
  die "add the missing dependencies to the fragment (see 'make menuconfig', '/' searches show 'Depends on')"
fi
log "configuration verified: every line of the fragment is in .config"

log "make -j$JOBS vmlinux"
tb=$(date +%s)
KBUILD_BUILD_USER=hybridbox KBUILD_BUILD_HOST=hybridbox run_make -j"$JOBS" vmlinux
tm=$(( $(date +%s) - tb ))

OUT="$WORK/result"
mkdir -p "$OUT"
cp "$SRC/vmlinux" "$OUT/vmlinux"
cp "$SRC/.config" "$OUT/config"
release=$(cat "$SRC/include/config/kernel.release")
{
  echo "key=$KEY"
  echo "package=$PKG=$VERSION"
  echo "release=$release"
  echo "fragment_sha256=$(sha256sum < "$FRAGMENT" | cut -d' ' -f1)"
  echo "vmlinux_bytes=$(stat -c %s "$OUT/vmlinux")"
  echo "make_seconds=$tm"
  echo "total_seconds=$(( $(date +%s) - t0 ))"
  echo "jobs=$JOBS"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$OUT/build-info"
head -c 4 "$OUT/vmlinux" | grep -q 'ELF' || die "$SRC/vmlinux is not an ELF file"

rm -rf "$DEST"          # nothing valid can be there: vmlinux was absent
mv -T "$OUT" "$DEST"
log "built $release in $(( $(date +%s) - t0 )) s (make: $tm s): $VMLINUX"
# cleanup (trap) deletes the source tree and the download.
printf '%s\n' "$VMLINUX"
