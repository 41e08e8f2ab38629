#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to the point where hybridbox runs: Debian packages,
# npm packages, the bundled CLI in dist/, and the base images. Idempotent; when everything
# is in place it finishes in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: hybridbox drives namespaces, cgroups and mounts: run as root" >&2
  exit 1
fi

# What each package is for: crun/runc run containers, tini is PID 1 inside them,
# busybox-static is the base image, iproute2 builds the bridge network, gcc/libc6-dev build
# the hbx-shim helper.
PACKAGES=(crun runc tini busybox-static iproute2 gcc libc6-dev)
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
node dist/cli.js setup >/dev/null
