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
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec sh "$here/../../scripts/cc-static.sh" "$here/hbx-agent.c" "$1" "${MUSL_CC:-musl-gcc}" \
  -Os -s -ffunction-sections -fdata-sections -Wl,--gc-sections -Wl,--build-id=none
