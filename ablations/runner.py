"""Expand an ablation grid and execute its notebook with papermill, one run folder per config.

A sweep file (``ablations/*.yaml``)::

    name: quality_vs_size
    notebook: notebooks/10_train_inpaint.ipynb
    kind: train                  # train | distill | profile | notebook | floor (no notebook: the
                                 # classical fills of lambda_blocks.classical, run in-process)
    grid:                        # the Cartesian product of these lists (a list of such
                                 # mappings is the union of their products)
      arm: [vanilla, linear, local_lambda, lmi]
      size: [tiny, small, base]
      seed: [0, 1]
                                 # arm: variants  -> one arm per registered mixer (unet.variant_arms)
    fixed: {}                    # parameters shared by every point
    presets:                     # per-preset replacements of grid lists / fixed values
      smoke: {grid: {size: [tiny, small], seed: [0]}}

Every grid point becomes the ``parameters`` of the notebook (plus ``preset`` and ``out_root``).
Its run folder is named by the hash of its resolved config (``train`` / ``distill``: the package's
config hash, so the notebook and the runner agree), finished runs are skipped, an interrupted sweep resumes,
and a failed run leaves ``error.json`` (message + traceback tail) while the sweep goes on.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from lambda_blocks.records import write_json

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("train", "distill", "profile", "notebook", "floor")
SWEEP_KEYS = {"name", "notebook", "kind", "grid", "fixed", "presets", "description"}


@dataclass
class Sweep:
    name: str
    notebook: Path
    kind: str
    grid: dict
    fixed: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)
    description: str = ""

    def points(self, preset: str) -> list[dict]:
        """The grid for ``preset`` as a list of parameter dicts (fixed values included)."""
        over = self.presets.get(preset, {}) or {}
        unknown = set(over) - {"grid", "fixed"}
        if unknown:
            raise ValueError(f"sweep {self.name}: preset {preset!r} has unknown section(s) {sorted(unknown)}")
        fixed = {**self.fixed, **(over.get("fixed") or {})}
        grids = over.get("grid") or self.grid
        if isinstance(grids, dict):
            grids = [{**(self.grid if isinstance(self.grid, dict) else {}), **grids}]
        points = []
        for grid in grids:  # a list of grids is the union of their products
            keys = list(grid)
            grid = {k: (_variant_arms() if k == "arm" and v == "variants" else v) for k, v in grid.items()}
            for k in keys:
                if not isinstance(grid[k], list) or not grid[k]:
                    raise ValueError(f"sweep {self.name}: grid entry {k!r} must be a non-empty list")
            for vals in itertools.product(*(grid[k] for k in keys)):
                point = {**fixed, **dict(zip(keys, vals))}
                if point not in points:
                    points.append(point)
        return points


def _variant_arms() -> list[str]:
    from lambda_blocks.unet import variant_arm_names

    return variant_arm_names()


def sweep_names() -> list[str]:
    """The sweeps shipped in ``ablations/`` (file stems: ``table2`` for ``ablations/table2.yaml``)."""
    return sorted(f.stem for f in (ROOT / "ablations").glob("*.yaml"))


def find_sweep(name: Path | str) -> Path:
    """A sweep file from a path or from a shipped sweep's name (``table2``, ``table2.yaml``).

    An existing path wins (relative to here, then to the repository); otherwise
    ``ablations/<name>.yaml``. Neither: FileNotFoundError naming
    the shipped sweeps."""
    path = Path(name)
    if path.is_file():
        return path
    if not path.is_absolute() and (ROOT / path).is_file():  # ablations/table2.yaml from another folder
        return ROOT / path
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    shipped = ROOT / "ablations" / f"{stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no sweep {str(name)!r}: not a file, and not one of the shipped sweeps "
                            f"{sweep_names()} (ablations/<name>.yaml)")


def load_sweep(path: Path | str) -> Sweep:
    path = find_sweep(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep file must be a mapping")
    unknown = set(raw) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(SWEEP_KEYS)}")
    kind = raw.get("kind", "notebook")
    if kind not in KINDS:
        raise ValueError(f"{path}: unknown kind {kind!r}; choose one of {KINDS}")
    for key in ("name", "grid") + (() if kind == "floor" else ("notebook",)):
        if key not in raw:
            raise ValueError(f"{path}: missing key {key!r}")
    nb = Path(raw.get("notebook") or "")
    if kind != "floor":
        if not nb.is_absolute():
            nb = ROOT / nb
        if not nb.exists():
            raise FileNotFoundError(f"{path}: notebook {nb} does not exist")
    return Sweep(raw["name"], nb, kind, raw["grid"], raw.get("fixed") or {}, raw.get("presets") or {}, raw.get("description", ""))


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def point_config(sweep: Sweep, params: dict, preset: str):
    """The ExpCfg of a train / distill point (None for other kinds)."""
    if sweep.kind == "train":
        from lambda_blocks.train import planned_config

        return planned_config(preset=preset, **params)
    if sweep.kind == "distill":
        from lambda_blocks.latent.distill import resolve_distill

        return resolve_distill(preset=preset, **params)
    return None


def plan_stages(sweep: Sweep, points: list[dict], preset: str, out_root: Path) -> list[tuple[object, bool]]:
    """The stages (autoencoders, teachers) the points need, in training order, each once, with
    whether it is already done. The runner trains them before any point, as runs of their own."""
    from lambda_blocks.records import is_done
    from lambda_blocks.train import stages

    out: dict = {}
    for p in points:
        cfg = point_config(sweep, p, preset)
        for st in (stages(cfg) if cfg is not None else []):
            out.setdefault(st, is_done(out_root / st.name))
    return list(out.items())


def plan(sweep: Sweep, params: dict, preset: str, out_root: Path) -> tuple[Path, bool]:
    """The run folder of one grid point and whether it already finished."""
    if sweep.kind == "train":
        from lambda_blocks.train import planned_run_dir

        run_dir = Path(planned_run_dir(preset=preset, out=out_root, **params))
    elif sweep.kind == "floor":
        from lambda_blocks.classical import floor_config, floor_run_name
        from lambda_blocks.config import parse_overrides

        p = dict(params)
        fcfg = floor_config(preset, p.pop("method"), parse_overrides(p.pop("overrides", None)))
        if p:
            raise ValueError(f"sweep {sweep.name}: a floor point takes method and overrides, not {sorted(p)}")
        run_dir = out_root / floor_run_name(fcfg)
    elif sweep.kind == "distill":
        from lambda_blocks.latent.distill import planned_run_dir as planned_distill_dir

        run_dir = Path(planned_distill_dir(preset=preset, out=out_root, **params))
    else:
        run_dir = out_root / f"{sweep.name}-{_hash({'preset': preset, **params})}"
    from lambda_blocks.records import ForeignRun, is_done

    expect = run_dir.name.rsplit("-", 1)[-1] if sweep.kind in ("train", "distill", "floor") else None
    try:
        done = is_done(run_dir, expect)
    except ForeignRun:
        done = False  # executing it fails with the clear error of train.run, recorded in error.json
    return run_dir, done


def execute(sweep: Sweep, params: dict, preset: str, out_root: Path, run_dir: Path, kernel: str = "python3") -> dict:
    """Execute the sweep notebook for one point; the executed copy lands in the run folder."""
    if sweep.kind == "floor":
        return _execute_floor(sweep, params, preset, out_root, run_dir)
    import papermill as pm

    run_dir.mkdir(parents=True, exist_ok=True)
    nb_params = {"preset": preset, "out_root": str(out_root), **params}
    if sweep.kind not in ("train", "distill"):
        nb_params["out_dir"] = str(run_dir)
    err_file = run_dir / "error.json"
    t0 = time.time()
    try:
        pm.execute_notebook(
            str(sweep.notebook), str(run_dir / "notebook.ipynb"), parameters=nb_params, kernel_name=kernel,
            cwd=str(ROOT), progress_bar=False, log_output=False,
        )
    except Exception as exc:  # recorded, and the sweep goes on
        msg = str(exc).strip().splitlines()
        rec = {"status": "failed", "notebook_params": nb_params, "error": (msg[-1] if msg else repr(exc))[:500],
               "traceback": traceback.format_exc()[-4000:], "elapsed_s": time.time() - t0, "sweep": sweep.name}
        write_json(err_file, rec)
        return rec
    if err_file.exists():
        err_file.unlink()
    if sweep.kind not in ("train", "distill") and not (run_dir / "summary.json").exists():
        write_json(run_dir / "summary.json", {"status": "done", "sweep": sweep.name, "params": nb_params,
                                              "elapsed_s": time.time() - t0})
    return {"status": "done", "elapsed_s": time.time() - t0}


def _execute_floor(sweep: Sweep, params: dict, preset: str, out_root: Path, run_dir: Path) -> dict:
    """A classical-floor point, in-process (seconds); failures are recorded like a notebook's."""
    from lambda_blocks.classical import run_floor
    from lambda_blocks.config import parse_overrides

    t0 = time.time()
    try:
        run_floor(preset, params["method"], out_root, parse_overrides(params.get("overrides")))
    except Exception as exc:  # recorded, and the sweep goes on
        run_dir.mkdir(parents=True, exist_ok=True)
        rec = {"status": "failed", "params": params, "error": f"{type(exc).__name__}: {exc}"[:500],
               "traceback": traceback.format_exc()[-4000:], "elapsed_s": time.time() - t0, "sweep": sweep.name}
        write_json(run_dir / "error.json", rec)
        return rec
    return {"status": "done", "elapsed_s": time.time() - t0}


def with_sets(sweep: Sweep, points: list[dict], sets: Mapping[str, Any] | None, echo=print) -> list[dict]:
    """``--set KEY=VALUE`` overrides merged into every point's ``overrides`` (so into its config and
    its hash); a floor point takes the ``data.*`` / ``eval.*`` ones (the test problems), a sweep
    without a run config (profile, notebook) none. Unknown keys fail when the points are planned."""
    if not sets:
        return points
    from lambda_blocks.config import canonical_key, parse_overrides

    if sweep.kind not in ("train", "distill", "floor"):
        echo(f"{sweep.name}: --set does not apply to a {sweep.kind} sweep (it has no run config); ignored")
        return points
    use = dict(sets)
    if sweep.kind == "floor":
        use = {k: v for k, v in sets.items() if canonical_key(k).startswith(("data.", "eval."))}
    out = []
    for p in points:
        merged = {**parse_overrides(p.get("overrides")), **use}
        out.append({**p, "overrides": json.dumps(merged, sort_keys=True)})
    return out


LAUNCHERS = ("local", "submitit", "submitit-local")


def run_sweep(path: Path | str, preset: str, out_root: Path | str, jobs: int = 1, dry_run: bool = False,
              kernel: str = "python3", echo=print, sets: Mapping[str, Any] | None = None,
              launcher: str = "local", cluster: Mapping[str, Any] | None = None,
              recorded: Path | str | None = None) -> list[dict]:
    """Run every unfinished point of a sweep. Returns one record per point (skipped/done/failed).

    ``recorded``: a collected ``runs.csv``; a dry run marks the unfinished points whose run it
    records as finished (their results are committed, their folders are not here: running the sweep
    would train them again).

    ``sets``: config overrides for every point (``with_sets``). ``launcher``: ``local`` (``jobs``
    threads on this machine), ``submitit`` (one job per pending point through submitit: Slurm
    where it is available, else local processes) or ``submitit-local`` (submitit's local executor:
    every job at once, as processes of this machine). ``cluster``: submitit parameters (e.g.
    ``timeout_min``, ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``). The run folders are
    content-addressed and locked, so concurrent workers never write the same run twice."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; choose one of {LAUNCHERS}")
    sweep = load_sweep(path)
    out_root = Path(out_root)
    points = with_sets(sweep, sweep.points(preset), sets, echo)
    planned, seen = [], {}
    for p in points:  # aliased arms (moebius = lmi, ...) plan the same run folder: run it once
        run_dir, done = plan(sweep, p, preset, out_root)
        if run_dir in seen:
            echo(f"same run as {json.dumps(seen[run_dir], sort_keys=True)}: {json.dumps(p, sort_keys=True)}")
            continue
        seen[run_dir] = p
        planned.append((p, run_dir, done))
    stage_plan = plan_stages(sweep, [p for p, _, d in planned if not d], preset, out_root)
    if dry_run:
        known = recorded_runs(recorded)
        if recorded is not None and Path(recorded).resolve().is_relative_to(ROOT):
            recorded = Path(recorded).resolve().relative_to(ROOT)  # results/dev/runs.csv
        for st, done in stage_plan:
            echo(f"{'done ' if done else 'todo '} {st.name:<48} (stage: {st.kind}, trained first)")
        for p, run_dir, done in planned:
            note = f"  (recorded in {recorded}; its folder is not here)" if not done and run_dir.name in known else ""
            echo(f"{'done ' if done else 'todo '} {run_dir.name:<48} {json.dumps(p, sort_keys=True)}{note}")
        more = sum(not d and r.name in known for _, r, d in planned)
        echo(f"{sweep.name}: {len(planned)} runs, {sum(d for *_, d in planned)} finished"
             + (f", {more} more recorded in {recorded}" if more else ""))
        return [dict(params=p, run_dir=str(r), status="done" if d else "planned", recorded=r.name in known)
                for p, r, d in planned]
    todo = [(p, r) for p, r, d in planned if not d]
    results = [dict(params=p, run_dir=str(r), status="skipped") for p, r, d in planned if d]
    if not todo:
        echo(f"{sweep.name}: all {len(planned)} runs already finished")
        return results
    for st, done in stage_plan:  # each stage once, as its own run, before the points that load it
        if done:
            continue
        from lambda_blocks.train import run_stage

        echo(f"{sweep.name}: stage {st.kind} {st.name}")
        run_stage(st, out_root, progress=False)
    if launcher != "local":
        results += _submit(sweep, todo, preset, out_root, kernel, launcher, cluster or {}, echo)
        failed = sum(r["status"] == "failed" for r in results)
        echo(f"{sweep.name}: {len(todo) - failed} ran through {launcher}, {len(results) - len(todo)} skipped, {failed} failed")
        return results
    if jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"{sweep.name} ({len(results)} skipped)", unit="run", dynamic_ncols=True)
    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(execute, sweep, p, preset, out_root, r, kernel): (p, r) for p, r in todo}
        for fut in cf.as_completed(futures):
            p, r = futures[fut]
            rec = fut.result()
            results.append({**rec, "params": p, "run_dir": str(r)})
            bar.update(1)
            if rec["status"] == "failed":
                bar.write(f"FAILED {r.name}: {rec['error']}")
    bar.close()
    failed = sum(r["status"] == "failed" for r in results)
    echo(f"{sweep.name}: {len(todo) - failed} ran, {len(results) - len(todo)} skipped, {failed} failed")
    return results


def recorded_runs(path: Path | str | None) -> set[str]:
    """The run ids a collected ``runs.csv`` records as finished (empty without one)."""
    if path is None or not Path(path).is_file():
        return set()
    import pandas as pd

    df = pd.read_csv(path, usecols=lambda c: c in ("run_id", "status"))
    if "run_id" not in df:
        return set()
    done = df["status"] == "done" if "status" in df else True
    return set(df.loc[done, "run_id"].astype(str))


def _submit(sweep: Sweep, todo, preset: str, out_root: Path, kernel: str, launcher: str,
            cluster: Mapping[str, Any], echo) -> list[dict]:
    """One submitit job per pending point (a job array where the cluster has them); waits for all."""
    import submitit

    folder = out_root / ".submitit" / sweep.name
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if launcher == "submitit-local" else None)
    ex.update_parameters(name=f"lb-{sweep.name}", **dict(cluster))
    with ex.batch():
        jobs = [(ex.submit(execute, sweep, p, preset, out_root, r, kernel), p, r) for p, r in todo]
    echo(f"{sweep.name}: submitted {len(jobs)} job(s) to {ex.cluster} (logs in {folder})")
    out = []
    for job, p, r in jobs:
        try:
            rec = job.result()
        except Exception as exc:  # the job itself died (killed, out of time): recorded, the sweep goes on
            rec = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:] or ''}"[:500]}
            write_json(r / "error.json", {**rec, "sweep": sweep.name, "job_id": job.job_id})
        out.append({**rec, "params": p, "run_dir": str(r), "job_id": job.job_id})
    return out

