#!/usr/bin/env bash
# Runs an independent_step.py plan (one argument line per run) in JOBS processes; exit 1 if
# any process failed. Used by calib-corpus.sh and explain-corpus.sh.
#   tools/run-plan.sh PLAN JOBS
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PLAN="$1"; JOBS="$2"
n=$(wc -l < "$PLAN")
echo "$n runs in $PLAN, $JOBS processes"
[ "$n" -gt 0 ] || exit 0
split -n "l/$JOBS" -d "$PLAN" "$PLAN.part."
status=0
for part in "$PLAN".part.*; do python3 "$HERE/independent_step.py" --plan "$part" & done
for job in $(jobs -p); do wait "$job" || status=1; done
rm -f "$PLAN".part.*
exit $status
