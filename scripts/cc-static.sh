#!/bin/sh
# Usage: cc-static.sh SRC OUT CC [FLAGS...]
# Compiles one C file into a static binary at OUT, unless OUT is already newer than SRC.
# Compiles next to OUT and renames: concurrent builds (parallel tests) and a running copy of
# OUT never see a half-written binary (overwriting a running executable fails with ETXTBSY).
set -eu
if [ $# -lt 3 ] || [ -z "$1" ] || [ -z "$2" ]; then
  echo "usage: cc-static.sh SRC OUT CC [FLAGS...]" >&2
  exit 2
fi
src=$1 out=$2 cc=$3
shift 3
if [ -x "$out" ] && [ "$out" -nt "$src" ]; then
  exit 0
fi
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "cc-static.sh: $cc not found (apt-get install gcc, or musl-tools for musl-gcc)" >&2
  exit 1
fi
mkdir -p "$(dirname -- "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$cc" -std=c11 -static -Wall -Wextra -Werror "$@" -o "$tmp" "$src"
mv -f "$tmp" "$out"
trap - EXIT
