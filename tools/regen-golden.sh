#!/usr/bin/env bash
# Regenerates the project's own golden fixtures (fixtures/golden_*.h5) from the float64
# reference. Run this only when a change to the reference's numbers is intended, and say why
# in the commit: `swift test` compares the reference against these files at float64 tolerance.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product oracle
o=.build/release/oracle
$o dump --backend ref --config tiny --seed 1 --batch 2 --mask-ratio 0.5 --sample 5 --cfg-scale 1.5 \
    --out fixtures/golden_tiny.h5
$o dump --backend ref --config tiny --seed 2 --batch 3 --mask-ratio 0.2 --sample 4 --init-mode dit \
    --out fixtures/golden_tiny_ditinit.h5
