#!/usr/bin/env bash
# Builds the calibration corpus of tools/independent_step.py: clean one-step files in every
# precision mode for seeds 0..5 and planted-bug files for seeds 0 and 1 (block 0 for
# ln-eps / gelu-exact / shift-scale, block 1 for no-sqrt-d; no bugs in float64), all on tiny
# setups written by the float64 reference (mask ratio 0.5 for even seeds, 0.2 for odd).
# Autocast modes twice: torch.autocast("cpu") as is ({mode}-s...) and with CUDA's float32
# ops ({mode}-cuda-s..., --autocast-style cuda). Files that exist are kept (FORCE=1
# rewrites them). The runs go through independent_step.py --plan, JOBS processes (default 2).
#   tools/calib-corpus.sh [OUT_DIR (default calib/ in the repository, git-ignored)] [ORACLE (default .build/release/oracle)]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/../calib}"
ORACLE="${2:-$HERE/../.build/release/oracle}"
JOBS="${JOBS:-2}"
mkdir -p "$OUT/setups"
MODES="float64 float32 tf32 bf16-autocast fp16-autocast bf16-pure fp16-pure bf16-autocast-cuda fp16-autocast-cuda"
BUGS="ln-eps:0 gelu-exact:0 no-sqrt-d:1 shift-scale:0 tau-swap lr10"
PLAN="$OUT/plan.txt"
: > "$PLAN"
line() {  # OUT_FILE SETUP MODE [BUG]
  local out="$1" setup="$2" mode="$3" style=cpu
  shift 3
  [ -e "$out" ] && [ "${FORCE:-0}" != 1 ] && return 0
  case "$mode" in *-cuda) mode="${mode%-cuda}"; style=cuda ;; esac
  echo "--setup $setup --mode $mode --autocast-style $style ${1:+--bug $1 }--out $out" >> "$PLAN"
}
for seed in 0 1 2 3 4 5; do
  ratio=$([ $((seed % 2)) -eq 0 ] && echo 0.5 || echo 0.2)
  setup="$OUT/setups/ref-s$seed.h5"
  [ -e "$setup" ] || "$ORACLE" dump --backend ref --config tiny --seed "$seed" --mask-ratio "$ratio" --sample 0 --out "$setup"
  for mode in $MODES; do
    line "$OUT/$mode-s$seed.h5" "$setup" "$mode"
    if [ "$seed" -le 1 ] && [ "$mode" != float64 ]; then
      for bug in $BUGS; do
        line "$OUT/$mode-s$seed-${bug//:/_}.h5" "$setup" "$mode" "$bug"
      done
    fi
  done
done
exec bash "$HERE/run-plan.sh" "$PLAN" "$JOBS"
