#!/usr/bin/env bash
# Installs the system libraries sddit-oracle builds against, when they are missing:
# pkg-config, HDF5 (libhdf5-dev) and OpenBLAS (libopenblas-dev), from Debian's packages;
# and, for the Python package in tools/ and its tests, Debian's python3-numpy, python3-h5py
# and python3-pip (pip, setuptools, wheel: `pip install ./tools` works offline).
# Needs root (or sudo) only when something is missing. Idempotent.
set -euo pipefail
need=()
for pkg in pkg-config libhdf5-dev libopenblas-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# Python: skipped when the python3 on PATH already has them (e.g. a pyenv or venv python).
if ! python3 -c "import numpy, h5py" >/dev/null 2>&1; then
    for pkg in python3-numpy python3-h5py; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
fi
if ! python3 -c "import setuptools, pip" >/dev/null 2>&1; then
    dpkg -s python3-pip >/dev/null 2>&1 || need+=(python3-pip)
fi
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
