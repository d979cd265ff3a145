#!/usr/bin/env bash
# Runs `oracle diff` on every file of a calibration corpus (tools/calib-corpus.sh) against
# the float64 reference and against the fast-path backend of the file's mode; full outputs in
# DIR/diffs/, one line per file in DIR/diff-vs-ref.txt and DIR/diff-vs-fast.txt.
#   tools/calib-diff.sh [DIR (default calib/ in the repository, git-ignored)] [ORACLE (default .build/release/oracle)]
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${1:-$HERE/../calib}"
O="${2:-$HERE/../.build/release/oracle}"
cd "$DIR" || exit 2
mkdir -p diffs
: > diff-vs-ref.txt; : > diff-vs-fast.txt
for f in $(ls *.h5 | sort); do
  s="${f%.h5}"; m="${s%%-s[0-9]*}"; m="${m%-cuda}"
  "$O" diff --a "$f" --b ref > "diffs/$s.vs-ref.txt" 2>&1; rc=$?
  printf "%-40s --b %-15s exit %s | %s | %s\n" "$f" ref "$rc" "$(tail -1 "diffs/$s.vs-ref.txt")" \
    "$(grep -m1 -E '^ *FAIL' "diffs/$s.vs-ref.txt" | sed 's/^ *//' | cut -c1-200)" >> diff-vs-ref.txt
  case "$m" in float32) b=fast;; tf32) b=fast-tf32;; bf16-autocast) b=fast-bf16;; fp16-autocast) b=fast-fp16;;
    bf16-pure) b=fast-bf16-pure;; fp16-pure) b=fast-fp16-pure;; *) continue;; esac
  "$O" diff --a "$f" --b "$b" > "diffs/$s.vs-$b.txt" 2>&1; rc=$?
  printf "%-40s --b %-15s exit %s | %s | %s\n" "$f" "$b" "$rc" "$(tail -1 "diffs/$s.vs-$b.txt")" \
    "$(grep -m1 -E '^ *FAIL' "diffs/$s.vs-$b.txt" | sed 's/^ *//' | cut -c1-200)" >> diff-vs-fast.txt
done
# a table: mode x bug, one letter per seed (p: exit 0, F: exit 1)
python3 - "$DIR" <<'PY'
import re, sys, os
for name in ("diff-vs-ref.txt", "diff-vs-fast.txt"):
    rows = {}
    for ln in open(os.path.join(sys.argv[1], name)):
        f = ln.split()[0]; rc = ln.split("exit ")[1][0]
        mode, seed, bug = re.match(r"(.+)-s(\d)(?:-(.+))?\.h5", f).groups()
        rows.setdefault(mode, {}).setdefault(bug or "clean", "")
        rows[mode][bug or "clean"] += {"0": "p", "1": "F"}.get(rc, rc)
    bugs = ["clean", "ln-eps_0", "gelu-exact_0", "no-sqrt-d_1", "shift-scale_0", "tau-swap", "lr10"]
    print(f"\n{name} (p: exit 0, F: exit 1; one letter per seed, clean seeds 0..5, bugs seeds 0, 1)")
    print(f"{'mode':20s}" + "".join(f"{b:>14s}" for b in bugs))
    for mode in ["float64", "float32", "tf32", "bf16-autocast", "bf16-autocast-cuda", "fp16-autocast",
                 "fp16-autocast-cuda", "bf16-pure", "fp16-pure"]:
        if mode in rows:
            print(f"{mode:20s}" + "".join(f"{rows[mode].get(b, '-'):>14s}" for b in bugs))
PY
