#!/bin/sh
# Usage: build.sh OUT
# Builds hbx-probe (static; musl when musl-gcc is installed, else glibc) into OUT unless OUT
# is already newer than the source.
set -eu
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: build.sh OUT" >&2
  exit 2
fi
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
cc=${CC:-}
if [ -z "$cc" ]; then
  if command -v musl-gcc >/dev/null 2>&1; then cc=musl-gcc; else cc=gcc; fi
fi
exec sh "$here/../../../scripts/cc-static.sh" "$here/hbx-probe.c" "$1" "$cc" -O2 -s
