"""Command line of the ablation sweeps; see ``ablations/__init__.py``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lambda_blocks.config import PRESETS  # one list of presets

from .runner import ROOT, load_sweep, run_sweep

STUDY_SWEEPS = ("floor.yaml", "quality_vs_size.yaml", "resolution.yaml", "table2.yaml", "distill.yaml")
FIGURE_NOTEBOOKS = ("notebooks/30_quality_vs_size.ipynb", "notebooks/90_paper_figures.ipynb")


def dirs(preset: str, runs_root: str | None = None, root: str | Path | None = None) -> dict[str, Path]:
    """Folders of a preset's study; ``root`` (default: the repository) holds results/figures/paper_assets."""
    base = Path(root) if root else ROOT
    return {
        "runs": Path(runs_root) if runs_root else base / "runs" / preset,
        "results": base / "results" / preset,
        "figures": base / "figures" / preset,
        "assets": base / "paper_assets" / preset,
    }


def cost_profile(preset: str, root: str | Path | None = None) -> Path | None:
    """The profile table the preset's cost figure is drawn from: for ``dev``, the repository's one
    profile table (``results/profile.csv``: ``benchmarks/bench_scaling.py``, 16-128 px, bare mixers
    and arm blocks; ablations/resolution.yaml's dev sweep stops at 64 px) when it exists; otherwise
    None (the preset's own ``results/<preset>/profile.csv``)."""
    path = (Path(root) if root else ROOT) / "results" / "profile.csv"
    return path if preset == "dev" and path.exists() else None


def _sets(args) -> dict:
    from lambda_blocks.config import parse_sets

    return parse_sets(getattr(args, "sets", []) or [])


def cmd_run(args) -> int:
    try:  # a misspelt sweep or a broken sweep file is one line, before any work
        load_sweep(args.sweep)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    d = dirs(args.preset, args.runs)
    cluster = {k: v for k, v in (("timeout_min", args.timeout_min), ("slurm_partition", args.partition),
                                 ("gpus_per_node", args.gpus), ("cpus_per_task", args.cpus)) if v is not None}
    results = run_sweep(args.sweep, args.preset, d["runs"], jobs=args.jobs, dry_run=args.dry_run, sets=_sets(args),
                        launcher=args.launcher, cluster=cluster, recorded=d["results"] / "runs.csv")
    return 0 if args.dry_run or all(r["status"] != "failed" for r in results) else 1


def cmd_collect(args) -> int:
    from .collect import collect

    from .collect import WouldDropRows

    d = dirs(args.preset, args.runs)
    mode = "merge" if args.merge else "replace" if args.replace else "refuse"
    try:
        out = collect(d["runs"], d["results"], mode=mode)
    except WouldDropRows as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(", ".join(f"{k}: {len(v)} rows" for k, v in out.items()), "->", d["results"])
    return 0


def cmd_figures(args) -> int:
    from .figures import regenerate

    d = dirs(args.preset)
    t0 = time.time()
    written = regenerate(d["results"], d["figures"], d["assets"], args.preset, cost_profile=cost_profile(args.preset))
    print(f"{len(written)} files regenerated from {d['results']} in {time.time() - t0:.1f}s")
    return 0


def cmd_study(args) -> int:
    """Profile, train every sweep, collect, regenerate figures through the figure notebooks."""
    import papermill as pm

    from .collect import collect

    d = dirs(args.preset, args.runs)
    t0 = time.time()
    failed = 0
    for sweep in STUDY_SWEEPS:
        # profiling measures latency: never beside another job
        jobs = 1 if sweep == "resolution.yaml" else args.jobs
        results = run_sweep(ROOT / "ablations" / sweep, args.preset, d["runs"], jobs=jobs, sets=_sets(args))
        failed += sum(r["status"] == "failed" for r in results)
    collect(d["runs"], d["results"], mode="merge")  # a study adds to what is recorded, never drops
    for nb in FIGURE_NOTEBOOKS:
        out = d["runs"] / "notebooks" / Path(nb).name
        out.parent.mkdir(parents=True, exist_ok=True)
        pm.execute_notebook(str(ROOT / nb), str(out), parameters={"preset": args.preset}, cwd=str(ROOT),
                            progress_bar=False, kernel_name="python3")
    wall = time.time() - t0
    print(f"study {args.preset}: finished in {wall / 60:.1f} min; {failed} failed run(s); figures in {d['figures']}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ablations", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run one sweep")
    p.add_argument("sweep", type=Path, help="a sweep file, or a shipped sweep's name (table2 = ablations/table2.yaml)")
    p.add_argument("--preset", choices=PRESETS, default="smoke")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--dry-run", action="store_true", help="print the grid and what is finished")
    p.add_argument("--runs", default=None, help="run folder root (default runs/<preset>)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every point, in its hash (e.g. --set data.dataset=folder)")
    p.add_argument("--launcher", choices=("local", "submitit", "submitit-local"), default="local",
                   help="local: --jobs threads here; submitit: one job per pending run (Slurm where available)")
    p.add_argument("--timeout-min", type=int, default=None, help="submitit: minutes per job")
    p.add_argument("--partition", default=None, help="submitit on Slurm: the partition")
    p.add_argument("--gpus", type=int, default=None, help="submitit: GPUs per job")
    p.add_argument("--cpus", type=int, default=None, help="submitit: CPUs per job")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("collect", help="run folders -> results/<preset>/*.csv")
    p.add_argument("--preset", choices=PRESETS, default="smoke")
    p.add_argument("--runs", default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--merge", action="store_true", help="keep recorded runs that the runs folder does not hold")
    g.add_argument("--replace", action="store_true", help="drop recorded runs that the runs folder does not hold")
    p.set_defaults(fn=cmd_collect)
    p = sub.add_parser("figures", help="results/<preset>/*.csv -> figures/<preset>, paper_assets/<preset>")
    p.add_argument("--preset", choices=PRESETS, default="dev")
    p.set_defaults(fn=cmd_figures)
    p = sub.add_parser("study", help="the whole study end to end")
    p.add_argument("--preset", choices=PRESETS, default="smoke")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--runs", default=None)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run of the study (same strict keys as the train CLI)")
    p.set_defaults(fn=cmd_study)
    args = ap.parse_args(argv)
    if getattr(args, "jobs", 1) < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    try:  # an unknown key or a wrong type is one line before any work, not a traceback mid-sweep
        sets = _sets(args)
        if sets:
            from lambda_blocks.config import resolve

            resolve(args.preset, overrides=sets)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"error: --set: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
