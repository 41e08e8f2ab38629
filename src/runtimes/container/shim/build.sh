#!/bin/sh
# Usage: build.sh OUT
# Builds hbx-shim into OUT unless OUT is already newer than the source.
set -eu
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: build.sh OUT" >&2
  exit 2
fi
out=$1
src=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)/hbx-shim.c
if [ -x "$out" ] && [ "$out" -nt "$src" ]; then
  exit 0
fi
mkdir -p "$(dirname -- "$out")"
# Compile next to OUT and rename: concurrent builds (parallel tests) and a running copy of
# OUT never see a half-written binary (overwriting a running executable fails with ETXTBSY).
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
${CC:-gcc} -std=c11 -O2 -Wall -Wextra -Werror -static -o "$tmp" "$src"
mv -f "$tmp" "$out"
trap - EXIT
