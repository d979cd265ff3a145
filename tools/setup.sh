#!/usr/bin/env bash
# Installs the system libraries sddit-oracle builds against, when they are missing:
# pkg-config, HDF5 (libhdf5-dev) and OpenBLAS (libopenblas-dev), from Debian's packages.
# Needs root (or sudo) only when something is missing. Idempotent.
set -euo pipefail
need=()
for pkg in pkg-config libhdf5-dev libopenblas-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "setup: installing ${need[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root to apt-get install ${need[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${need[@]}" >/dev/null
