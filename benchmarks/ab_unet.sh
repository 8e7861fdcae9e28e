#!/usr/bin/env bash
# Two checkouts of lambda-blocks side by side on the U-Net benchmark: bench_unet.py runs in the old
# checkout and in this one, alternating (old, new, old, new, ...), each run timing its arms interleaved;
# the runs are merged into one tidy CSV with `code` (old / new), `commit` and `run` columns, and its
# ratio table beside it (`ab_merge.py`, .md: what the README quotes).
#
#   git worktree add /tmp/old <commit>
#   benchmarks/ab_unet.sh /tmp/old results/unet_ab-<what>.csv [alternations] [bench_unet.py args...]
#
# Compare ratios within a run (moebius / baseline of the same run) and, for an arm a change does not
# touch, old / new of that arm as the control for the machine's drift between runs.
set -euo pipefail
old=$(cd "$1" && pwd); out=$2; n=${3:-2}; shift $(( $# < 3 ? $# : 3 ))
new=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$new/.venv/bin/python}
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--arms baseline moebius --sizes 32 64 --passes fwd train_step
                                          --batch 16 --rounds 3 --dtypes fp32 --formats contiguous)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for i in $(seq "$n"); do
  for code in old new; do
    dir=$new; [ "$code" = old ] && dir=$old
    (cd "$dir" && "$py" benchmarks/bench_unet.py "${args[@]}" --out "$tmp/${code}_$i.csv" > "$tmp/${code}_$i.log")
    echo "run $i $code: done"
  done
done
"$py" "$new/benchmarks/ab_merge.py" "$out" --runs "$tmp" \
     --old-commit "$(git -C "$old" rev-parse --short HEAD)" --new-commit "$(git -C "$new" rev-parse --short HEAD)+worktree"
