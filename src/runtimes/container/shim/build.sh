#!/bin/sh
# Usage: build.sh OUT
# Builds hbx-shim into OUT unless OUT is already newer than the source.
set -eu
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: build.sh OUT" >&2
  exit 2
fi
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec sh "$here/../../../../scripts/cc-static.sh" "$here/hbx-shim.c" "$1" "${CC:-gcc}" -O2
