#!/usr/bin/env bash
# Builds the calibration corpus of tools/independent_step.py: clean one-step files in every
# precision mode for seeds 0..5 and planted-bug files for seeds 0 and 1, all on tiny setups
# written by the float64 reference.
#   tools/calib-corpus.sh [OUT_DIR (default /work/calib)] [ORACLE (default .build/release/oracle)]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-/work/calib}"
ORACLE="${2:-$HERE/../.build/release/oracle}"
mkdir -p "$OUT/setups"
MODES="float64 float32 tf32 bf16-autocast fp16-autocast bf16-pure fp16-pure"
BUGS="ln-eps:0 gelu-exact:0 no-sqrt-d:1 shift-scale:0 tau-swap lr10"
for seed in 0 1 2 3 4 5; do
  ratio=$([ $((seed % 2)) -eq 0 ] && echo 0.5 || echo 0.2)
  setup="$OUT/setups/ref-s$seed.h5"
  "$ORACLE" dump --backend ref --config tiny --seed "$seed" --mask-ratio "$ratio" --sample 0 --out "$setup"
  for mode in $MODES; do
    python3 "$HERE/independent_step.py" --setup "$setup" --mode "$mode" --out "$OUT/$mode-s$seed.h5"
    if [ "$seed" -le 1 ] && [ "$mode" != float64 ]; then
      for bug in $BUGS; do
        python3 "$HERE/independent_step.py" --setup "$setup" --mode "$mode" --bug "$bug" \
          --out "$OUT/$mode-s$seed-${bug//:/_}.h5"
      done
    fi
  done
done
