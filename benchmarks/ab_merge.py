"""Merge the runs of ``ab_unet.sh`` (two checkouts, alternating) into one tidy CSV and its ratio table.

    python benchmarks/ab_merge.py OUT.csv --runs DIR --old-commit SHA --new-commit SHA   # from DIR/<code>_<run>.csv
    python benchmarks/ab_merge.py OUT.csv                                                 # the table again, from OUT.csv

The table (``OUT.md``, what the README quotes) gives, per side and pass, the range over runs of the
first arm's time over each other arm's in the old and in the new code (> 1: the other arm faster),
and of each arm's old time over its new one (> 1: the new code faster). An arm the change does not
touch is the control: its old / new is the machine's drift between runs.
"""
from __future__ import annotations

import argparse
import glob
import os

import _common  # noqa: F401  (puts the repo on sys.path)
import pandas as pd

KEYS = ["side", "pass"]


def merge(runs_dir: str, old_commit: str, new_commit: str) -> pd.DataFrame:
    """One frame of every ``<code>_<run>.csv`` in ``runs_dir`` (code: old / new), labelled by code, commit, run."""
    frames = []
    for f in sorted(glob.glob(os.path.join(runs_dir, "*_*.csv"))):
        code, run = os.path.basename(f)[:-4].split("_")
        if code not in ("old", "new"):
            raise ValueError(f"{f}: expected <old|new>_<run>.csv")
        frames.append(pd.read_csv(f).assign(code=code, commit=old_commit if code == "old" else new_commit, run=int(run)))
    if not frames:
        raise FileNotFoundError(f"no <old|new>_<run>.csv in {runs_dir}")
    return pd.concat(frames, ignore_index=True)


def _span(s: pd.Series) -> str:
    lo, hi = f"{s.min():.2f}", f"{s.max():.2f}"
    return lo if lo == hi else f"{lo}–{hi}"


def ratio_table(df: pd.DataFrame) -> str:
    """The Markdown table of time ratios (see the module docstring), from `merge`'s frame."""
    arms = list(dict.fromkeys(df["arm"]))
    t = df.pivot_table(index=KEYS + ["run"], columns=["code", "arm"], values="latency_ms")
    ref, others = arms[0], arms[1:]
    cols = {}
    for a in others:
        for code, when in (("old", "before"), ("new", "after")):
            cols[f"{ref} / {a}, {when}"] = t[(code, ref)] / t[(code, a)]
    for a in arms:
        cols[f"{a} before / after"] = t[("old", a)] / t[("new", a)]
    r = pd.DataFrame(cols).groupby(level=KEYS).agg(_span).reset_index()
    head = "| " + " | ".join(r.columns) + " |"
    lines = [head, "|" + "---|" * len(r.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in r.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the merged CSV (its table: the same path, .md)")
    ap.add_argument("--runs", help="folder of <old|new>_<run>.csv from bench_unet.py; without it OUT is read back")
    ap.add_argument("--old-commit", default="old")
    ap.add_argument("--new-commit", default="new")
    args = ap.parse_args(argv)
    df = merge(args.runs, args.old_commit, args.new_commit) if args.runs else pd.read_csv(args.out)
    table = ratio_table(df)
    print(table)
    if args.runs:
        _common.write_results(args.out, df, table)
    else:  # the CSV stays as measured; only its table is written again
        from lambda_blocks.records import atomic_write_text

        atomic_write_text(os.path.splitext(args.out)[0] + ".md", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
