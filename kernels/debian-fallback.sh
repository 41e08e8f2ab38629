#!/usr/bin/env bash
# The no-build fallback guest kernel: Debian's own cloud kernel, unpacked (never installed).
#
#   bash kernels/debian-fallback.sh                # fetch if needed; prints the vmlinux path
#   bash kernels/debian-fallback.sh --print-path   # print the path it has / would have
#
# What it does: resolves the linux-image-*-cloud-amd64 package that linux-image-cloud-amd64
# depends on, `apt-get download`s it, unpacks it with `dpkg-deb -x`, turns
# /boot/vmlinuz-* into the ELF vmlinux inside it (QEMU boots that directly through its PVH
# entry: no in-guest decompression), and copies the modules a guest needs, with their
# dependencies from modules.dep, flattened into modules/ with a modules.order in load order.
# Debian builds virtio as modules, so an initramfs must `insmod` them (in modules.order's
# order) before it can see a virtio disk, console or NIC. Modules that this kernel has
# built in, or lacks, are listed in `info` (the cloud flavour has no 9p at all:
# HYBRIDBOX_DEBIAN_FLAVOUR=amd64 picks the generic kernel, which has it as modules).
#
# Result: ${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/kernels/debian-<release>_<pkg version>/
#   vmlinux  config  info  key  modules/{*.ko,modules.order}
#
# Environment: HYBRIDBOX_CACHE, HYBRIDBOX_DEBIAN_FLAVOUR (cloud-amd64 | amd64).
# Only the path goes to stdout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FLAVOUR=${HYBRIDBOX_DEBIAN_FLAVOUR:-cloud-amd64}
META="linux-image-$FLAVOUR"
CACHE_ROOT="${HYBRIDBOX_CACHE:-/var/cache/hybridbox}/kernels"
WANTED=(virtio_mmio virtio_pci virtio_blk virtio_net virtio_console 9p 9pnet 9pnet_virtio overlay ext4 jbd2 mbcache crc16 crc32c_generic)

log() { printf 'kernels/debian-fallback.sh: %s\n' "$*" >&2; }
die() { printf 'kernels/debian-fallback.sh: error: %s\n' "$*" >&2; exit 1; }

print_only=0
case "${1:-}" in
  '') ;;
  --print-path) print_only=1 ;;
  -h|--help) sed -n '2,24p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (usage: debian-fallback.sh [--print-path])" ;;
esac
case "$FLAVOUR" in cloud-amd64|amd64) ;; *) die "HYBRIDBOX_DEBIAN_FLAVOUR must be cloud-amd64 or amd64" ;; esac

# --- which package ------------------------------------------------------------------------
# Two apt-cache calls cost ~1.4 s here; their answer is remembered with the mtime of
# /var/lib/apt/lists (it changes when `apt-get update` brings new lists).
resolve() {
  local record="$CACHE_ROOT/.resolved/$META" stamp pkg ver rstamp
  stamp=$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)
  if [ -f "$record" ]; then
    read -r rstamp pkg ver < "$record" || true
    if [ "${rstamp:-}" = "$stamp" ] && [ -n "${ver:-}" ]; then printf '%s %s\n' "$pkg" "$ver"; return; fi
  fi
  pkg=$(apt-cache depends "$META" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || die "apt-cache depends $META names no linux-image-<abi>-$FLAVOUR package (run 'apt-get update')"
  ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
  { [ -n "$ver" ] && [ "$ver" != "(none)" ]; } || die "apt has no candidate for $pkg (run 'apt-get update')"
  if mkdir -p "$CACHE_ROOT/.resolved" 2>/dev/null; then
    printf '%s %s %s\n' "$stamp" "$pkg" "$ver" > "$record.$$" && mv -f "$record.$$" "$record" || rm -f "$record.$$"
  fi
  printf '%s %s\n' "$pkg" "$ver"
}

read -r PKG VERSION < <(resolve)
[ -n "${VERSION:-}" ] || exit 1
RELEASE=${PKG#linux-image-}
DEST="$CACHE_ROOT/debian-${RELEASE}_${VERSION}"
VMLINUX="$DEST/vmlinux"
KEY=$( { cat "$SELF"; printf '%s=%s\n' "$PKG" "$VERSION"; } | sha256sum | cut -c1-16)

if [ "$print_only" = 1 ]; then printf '%s\n' "$VMLINUX"; exit 0; fi
if [ -f "$VMLINUX" ] && [ "$(cat "$DEST/key" 2>/dev/null)" = "$KEY" ]; then
  printf '%s\n' "$VMLINUX"; exit 0
fi

# --- fetch and unpack ----------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, and the cache in $CACHE_ROOT)"
mkdir -p "$CACHE_ROOT/.locks"
exec 9> "$CACHE_ROOT/.locks/debian-$RELEASE"
flock -n 9 || { log "another run for $RELEASE is going on; waiting"; flock 9; }
if [ -f "$VMLINUX" ] && [ "$(cat "$DEST/key" 2>/dev/null)" = "$KEY" ]; then
  printf '%s\n' "$VMLINUX"; exit 0
fi

WORK="$CACHE_ROOT/.build-debian-$RELEASE"
rm -rf "$WORK"
mkdir -p "$WORK/deb"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# kmod: depmod writes modules.dep (the .deb has none: its postinst makes it at install time)
apt_install() {
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed (try 'apt-get update')"
}
command -v depmod >/dev/null || apt_install kmod

log "downloading $PKG=$VERSION"
( cd "$WORK/deb" && apt-get download -qq -o APT::Sandbox::User=root "$PKG=$VERSION" >&2 ) \
  || die "apt-get download $PKG=$VERSION failed (try 'apt-get update')"
deb=$(ls "$WORK"/deb/*.deb)
dpkg-deb -x "$deb" "$WORK/root"
rm -f "$deb"
VMLINUZ="$WORK/root/boot/vmlinuz-$RELEASE"
[ -f "$VMLINUZ" ] || die "$PKG has no /boot/vmlinuz-$RELEASE"

OUT="$WORK/result"
mkdir -p "$OUT/modules"

# --- vmlinuz -> vmlinux ------------------------------------------------------------------
# A bzImage is: real-mode setup ((setup_sects+1) * 512 bytes), then the protected-mode
# decompressor, inside which the compressed kernel sits at payload_offset (header field at
# 0x248) for payload_length (0x24c) bytes. The compressed data is the stripped ELF vmlinux
# (+ relocations), followed by its uncompressed size as 4 little-endian bytes. Like the
# kernel's scripts/extract-vmlinux we recognise the compressor by its magic, decompress,
# and accept the output only if it is an ELF file (and has the expected size).
le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
magic_of() {  # prints the decompression command for the data at offset $2 of $1, if any
  local hex; hex=$(od -An -tx1 -j "$2" -N6 "$1" | tr -d ' \n')
  case "$hex" in
    1f8b08*)       echo 'gzip -dc' ;;
    fd377a585a00)  echo 'xz -dc' ;;
    425a68*)       echo 'bzip2 -dc' ;;
    5d0000*)       echo 'xz -dc --format=lzma' ;;
    894c5a*)       echo 'lzop -dc' ;;
    02214c18*)     echo 'lz4 -dc' ;;
    28b52ffd*)     echo 'zstd -dc' ;;
  esac
}
try_decompress() {  # $1 file, $2 offset, $3 length (0 = to the end), $4 output
  local cmd tool; cmd=$(magic_of "$1" "$2")
  [ -n "$cmd" ] || return 1
  tool=${cmd%% *}
  if ! command -v "$tool" >/dev/null; then
    case "$tool" in xz) apt_install xz-utils ;; *) apt_install "$tool" ;; esac
  fi
  if [ "$3" -gt 0 ]; then
    tail -c +"$(( $2 + 1 ))" "$1" | head -c "$3" | $cmd > "$4" 2>/dev/null || true
  else
    tail -c +"$(( $2 + 1 ))" "$1" | $cmd > "$4" 2>/dev/null || true
  fi
  [ "$(head -c 4 "$4" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && echo "${cmd%% *}"
}
extract_vmlinux() {  # $1 bzImage, $2 output ELF; prints the compressor's name
  local img=$1 out=$2 sects off len start used
  if [ "$(od -An -c -j $((0x202)) -N4 "$img" | tr -d ' ')" = HdrS ]; then
    sects=$(u8 "$img" $((0x1f1))); [ "$sects" -eq 0 ] && sects=4
    off=$(le32 "$img" $((0x248))); len=$(le32 "$img" $((0x24c)))
    start=$(( (sects + 1) * 512 + off ))
    if used=$(try_decompress "$img" "$start" "$len" "$out"); then
      local want; want=$(le32 "$img" $(( start + len - 4 )))
      [ "$(stat -c %s "$out")" = "$want" ] || die "decompressed $used payload is $(stat -c %s "$out") bytes, its trailer says $want"
      echo "$used"; return 0
    fi
  fi
  # No usable header: scan for each magic, as extract-vmlinux does.
  local m pos
  for m in '\x1f\x8b\x08' '\xfd7zXZ\x00' 'BZh' '\x5d\x00\x00\x00' '\x89LZ' '\x02!L\x18' '(\xb5/\xfd'; do
    for pos in $(LC_ALL=C grep -obUaP "$m" "$img" | cut -d: -f1 | head -n 20); do
      if used=$(try_decompress "$img" "$pos" 0 "$out"); then echo "$used"; return 0; fi
    done
  done
  return 1
}

log "extracting vmlinux from vmlinuz-$RELEASE"
compressor=$(extract_vmlinux "$VMLINUZ" "$OUT/vmlinux") || die "found no compressed ELF kernel in $VMLINUZ"
pvh=unknown
if command -v readelf >/dev/null; then
  # XEN_ELFNOTE_PHYS32_ENTRY (type 0x12) in a "Xen" note is the PVH entry QEMU looks for
  if readelf -n "$OUT/vmlinux" 2>/dev/null | grep -E '^\s+Xen\s' | grep -qE '\(0x00000012\)|PHYS32_ENTRY'; then pvh=yes; else pvh=no; fi
fi
[ "$pvh" = no ] && die "$RELEASE's vmlinux has no PVH entry note: QEMU could not boot it directly"
cp "$WORK/root/boot/config-$RELEASE" "$OUT/config"

# --- modules --------------------------------------------------------------------------------
MODROOT="$WORK/root/lib/modules/$RELEASE"
depmod -b "$WORK/root" "$RELEASE" || die "depmod failed"
declare -A path_of=() deps_of=()
while IFS= read -r line; do
  p=${line%%:*}
  n=${p##*/}; n=${n%%.ko*}; n=${n//-/_}
  path_of[$n]=$p
  deps_of[$n]=${line#*:}
done < "$MODROOT/modules.dep"
declare -A builtin=()
while IFS= read -r p; do n=${p##*/}; n=${n%%.ko*}; builtin[${n//-/_}]=1; done < "$MODROOT/modules.builtin"

declare -A seen=()
order=()
visit() {  # depth first: dependencies before the module
  local n=$1 d dn
  [ -n "${seen[$n]:-}" ] && return 0
  seen[$n]=1
  for d in ${deps_of[$n]}; do
    dn=${d##*/}; dn=${dn%%.ko*}; visit "${dn//-/_}"
  done
  order+=("$n")
}
missing=(); inkernel=()
for w in "${WANTED[@]}"; do
  w=${w//-/_}
  if [ -n "${path_of[$w]:-}" ]; then visit "$w"
  elif [ -n "${builtin[$w]:-}" ]; then inkernel+=("$w")
  else missing+=("$w")
  fi
done
: > "$OUT/modules/modules.order"
for n in "${order[@]}"; do
  src="$MODROOT/${path_of[$n]}"
  case "$src" in
    *.ko)     cp "$src" "$OUT/modules/$n.ko" ;;
    *.ko.xz)  xz -dc "$src" > "$OUT/modules/$n.ko" ;;
    *.ko.zst) zstd -qdc "$src" > "$OUT/modules/$n.ko" ;;
    *.ko.gz)  gzip -dc "$src" > "$OUT/modules/$n.ko" ;;
    *) die "unexpected module file $src" ;;
  esac
  echo "$n.ko" >> "$OUT/modules/modules.order"
done
[ "${#missing[@]}" -gt 0 ] && log "warning: $RELEASE has no ${missing[*]} (neither module nor built in)"

{
  echo "package=$PKG=$VERSION"
  echo "release=$RELEASE"
  echo "compression=$compressor"
  echo "pvh_entry=$pvh"
  echo "vmlinux_bytes=$(stat -c %s "$OUT/vmlinux")"
  echo "modules=${order[*]}"
  echo "builtin=${inkernel[*]}"
  echo "missing=${missing[*]}"
  echo "virtio_mmio_cmdline_devices=$(grep -q '^CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y' "$OUT/config" && echo yes || echo 'no (microvm needs acpi=on to find its devices)')"
  echo "made=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$OUT/info"
echo "$KEY" > "$OUT/key"

rm -rf "$DEST"   # absent, or made by an older version of this script
mv -T "$OUT" "$DEST"
log "ready: $RELEASE ($compressor), ${#order[@]} modules: $VMLINUX"
printf '%s\n' "$VMLINUX"
