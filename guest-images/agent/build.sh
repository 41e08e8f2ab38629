#!/bin/sh
# Usage: build.sh OUT
# Builds hbx-agent (static, musl) into OUT unless OUT is already newer than the source.
# musl rather than glibc: a static glibc binary is ~10x larger and warns about NSS; the
# agent needs neither locales nor name services.
set -eu
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: build.sh OUT" >&2
  exit 2
fi
out=$1
src=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)/hbx-agent.c
if [ -x "$out" ] && [ "$out" -nt "$src" ]; then
  exit 0
fi
cc=${MUSL_CC:-musl-gcc}
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "build.sh: $cc not found: apt-get install musl-tools" >&2
  exit 1
fi
mkdir -p "$(dirname -- "$out")"
# Compile next to OUT and rename: parallel builds never see a half-written binary.
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$cc" -std=c11 -Os -static -s -Wall -Wextra -Werror \
  -ffunction-sections -fdata-sections -Wl,--gc-sections -Wl,--build-id=none \
  -o "$tmp" "$src"
mv -f "$tmp" "$out"
trap - EXIT
