#!/usr/bin/env bash
# The fast path's element-wise functions over all 2^32 float32 bit patterns (fp16 / bf16 / TF32
# rounding bit for bit, exp and erf within 2 ulp); `swift test` runs a sample of them.
set -euo pipefail
cd "$(dirname "$0")/.."
SDDIT_FULL_SWEEP=1 swift test -c release --filter FastMathTests
