#!/usr/bin/env bash
# Builds the test corpus for `oracle diff --explain`: one-step files of
# tools/independent_step.py, each with known planted bugs (root attribute planted_bugs), on
# tiny setups written by the float64 reference (seeds 0 and 1, mask ratio 0.5), in float64
# and float32: per seed and mode one clean file and one file per bug below (block bugs in
# encoder block 0, block 1 and all blocks; the valued bugs at a value 10x or so off the
# setup's: its lr is 1e-4, so lr:1e-3) and four compositions of two bugs. betas:B1,B2 is left
# out: at a first step it changes after_step only by rounding (1e-17 in float64).
# Names: {mode}-s{seed}.h5 clean, {mode}-s{seed}-{bugs}.h5 with ':' and ',' as '_', a trailing
# '.' dropped, compositions joined by '+'. Files that exist are kept (FORCE=1 rewrites them).
# The runs go through independent_step.py --plan, JOBS processes (default 2).
#   tools/explain-corpus.sh [OUT_DIR (default explain-corpus/ in the repository, git-ignored)] [ORACLE (default .build/release/oracle)]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/../explain-corpus}"
ORACLE="${2:-$HERE/../.build/release/oracle}"
JOBS="${JOBS:-2}"
mkdir -p "$OUT/setups"
MODES="float64 float32"
BUGS="ln-eps:0 ln-eps:1 ln-eps:all gelu-exact:0 gelu-exact:1 gelu-exact:all
      no-sqrt-d:0 no-sqrt-d:1 no-sqrt-d:all shift-scale:0 shift-scale:1 shift-scale:all
      c-noise-ln temb-sin-first mask-token head-gelu-tanh unpatchify-cij teacher-clean edm-no-weight
      tau-t:0.04 tau-s:0.2 tau-swap no-centering center-before-loss center-momentum:0.99
      weight-g-trained frozen:final_layer. lr:1e-3 lr10 weight-decay:0.01 adam-eps:1e-4 no-bias-correction
      ema-before-step ema-reversed ema-beta:0.99
      gelu-exact:0+weight-decay:0.01 ln-eps:1+tau-t:0.04 c-noise-ln+ema-reversed shift-scale:0+gelu-exact:1"
PLAN="$OUT/plan.txt"
: > "$PLAN"
name() {  # BUGS (joined by +) -> file name part
  local n="" b
  IFS=+ read -ra parts <<< "$1"
  for b in "${parts[@]}"; do b="${b//[:,]/_}"; n="${n:+$n+}${b%.}"; done
  echo "$n"
}
line() {  # OUT_FILE SETUP MODE [BUGS joined by +]
  local out="$1" setup="$2" mode="$3" flags="" b
  [ -e "$out" ] && [ "${FORCE:-0}" != 1 ] && return 0
  if [ -n "${4:-}" ]; then
    IFS=+ read -ra parts <<< "$4"
    for b in "${parts[@]}"; do flags="$flags--bug $b "; done
  fi
  echo "--setup $setup --mode $mode $flags--out $out" >> "$PLAN"
}
for seed in 0 1; do
  setup="$OUT/setups/ref-s$seed.h5"
  [ -e "$setup" ] || "$ORACLE" dump --backend ref --config tiny --seed "$seed" --mask-ratio 0.5 --sample 0 --out "$setup"
  for mode in $MODES; do
    line "$OUT/$mode-s$seed.h5" "$setup" "$mode"
    for bug in $BUGS; do
      line "$OUT/$mode-s$seed-$(name "$bug").h5" "$setup" "$mode" "$bug"
    done
  done
done
exec bash "$HERE/run-plan.sh" "$PLAN" "$JOBS"
