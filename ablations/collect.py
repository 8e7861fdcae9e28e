"""Turn run folders into the tidy CSVs in ``results/<preset>/``: the only input of the figures.

* ``runs.csv``: one row per training run (finished or failed), fixed columns ``RUN_COLUMNS``.
* ``curves.csv``: the training loss of every run per logged step.
* ``profile.csv``: every profiling row of the profile runs (deduplicated, newest wins).
* ``kd_log.csv``: every distillation step's loss terms and adaptive weights (``kind: kd`` rows).
* ``evals.csv``: every periodic evaluation (``kind: eval`` rows: validation loss, PSNR / SSIM and,
  with ``eval.periodic_full``, LPIPS / FID / KID on the whole evaluation set): the convergence curves.
* ``per_image.csv``: the final metrics of every finished run per test problem (the input of the
  paired comparisons); the classical floor (``floor-*`` folders, ``kind`` = ``floor``) included.
* ``samples/<run_id>.npz``: the fixed test fills of each finished run (a few small images).

* ``autoencoders.csv``: one row per finished autoencoder run (``ae-*`` folders): its config and
  reconstruction metrics on the test split (kept across collections, a run's new row replacing its old).

Autoencoder run folders are not training runs: they are in no other table. ``tag`` is the arm, plus
``-latent`` in latent space and ``-kd`` / ``-kdfixed`` when distilled; ``kind`` is ``model`` or
``floor`` (a classical fill, ``lambda_blocks.classical``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from lambda_blocks.config import run_tag
from lambda_blocks.records import atomic_write_text, csv_text

RUN_COLUMNS = [
    "run_id", "config_hash", "status", "error", "arm", "size", "seed", "preset", "image_size",
    "params", "macs", "psnr", "psnr_hole", "ssim", "ssim_hole", "lpips", "lpips_hole", "lpips_source",
    "fid", "kid", "kid_std", "n_eval_images", "smoothness_gap", "hole_ratio", "steps", "train_time_s",
    "images_per_s", "device", "threads", "hardware", "torch_version", "git_sha",
    # latent space and distillation (empty for the pixel-space runs recorded before them)
    "tag", "space", "work_size", "kd", "kd_weighting", "kd_perceptual", "teacher_run", "teacher_params",
    "projector_params", "ae_run", "ae_psnr", "ae_ssim", "ae_lpips", "latency_ms_inrun", "peak_mem_mb_inrun",
    # recipe and run kind (empty = model / eps / none for runs recorded before them)
    "kind", "prediction", "loss_weighting", "eval_spacing", "eval_ddim_steps", "train_batch_size", "train_lr",
    # the schedule: planned steps, the LR cool-down, and the shorter run a longer one started from
    "train_steps", "train_decay_steps", "extended_from",
    # architecture overrides of the arm (`--set unet.widths=[36,72]`): JSON, empty for the arm as registered
    "unet_overrides",
    # the starting value of the lambda layers' output gain (model.lambda_gain): empty = none (the paper's
    # layers, and every run recorded before it) or an arm without lambda layers
    "lambda_gain",
    # data-parallel ranks of the run (torchrun); ``threads`` and ``hardware`` are per rank. Empty for
    # the runs recorded before it, all of which ran as one process
    "world_size",
]
EVAL_COLUMNS = ["run_id", "tag", "arm", "size", "seed", "prediction", "loss_weighting", "step", "val_loss", "n",
                "ddim_steps", "psnr", "psnr_hole", "ssim", "ssim_hole", "lpips", "lpips_hole", "fid", "kid", "kid_std",
                "train_steps", "train_decay_steps", "train_lr", "unet_overrides", "lambda_gain"]
_EVAL_FROM_RECORD = EVAL_COLUMNS[7:20]  # the metrics of one periodic evaluation
PER_IMAGE_KEY = ["run_id", "tag", "arm", "size", "seed", "kind", "space", "image_size"]
CURVE_COLUMNS = ["run_id", "arm", "size", "seed", "step", "loss"]
KD_COLUMNS = ["run_id", "tag", "arm", "size", "seed", "step", "loss_total", "loss_task", "loss_fkd", "loss_ckd",
              "loss_lp", "w_fkd", "w_lp", "w_c"]
PROFILE_KEY = ["kind", "variant", "preset", "channels", "height", "width", "batch", "pass", "dtype", "device"]


AE_COLUMNS = ["ae_run", "config_hash", "preset", "image_size", "factor", "latent_channels", "widths", "steps",
              "batch_size", "lr", "kl_weight", "perceptual_weight", "n_test", "psnr", "ssim", "lpips", "lpips_source",
              "params", "train_time_s", "device", "threads", "hardware", "torch_version"]


def _ae_row(name: str, config: dict, summary: dict, env: dict) -> dict:
    """One row of ``autoencoders.csv``: a finished autoencoder run's config and reconstruction metrics."""
    row = {c: None for c in AE_COLUMNS}
    row.update({k: config.get(k) for k in AE_COLUMNS if k in config})
    row["widths"] = json.dumps(config.get("widths")) if config.get("widths") is not None else None
    row["perceptual_weight"] = config.get("perceptual_weight", 0.0)
    row.update({k: summary.get(k) for k in ("config_hash", "psnr", "ssim", "lpips", "lpips_source", "params",
                                            "train_time_s", "steps", "n_test") if summary.get(k) is not None})
    row.update({k: env.get(k) for k in ("device", "threads", "hardware", "torch_version") if env.get(k) is not None})
    row["ae_run"] = name
    return row


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, csv_text(df))


MODES = ("refuse", "merge", "replace")


class WouldDropRows(RuntimeError):
    """``collect`` would remove recorded runs from ``results/`` that the runs folder cannot rebuild."""


def _drop_copied_evals(ev: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """A run that started from a shorter one (``extended_from``) carries that run's curve as its
    first part, bit for bit: each evaluation is kept once, in the run that made it. An evaluation of
    run R at step s is a copy when R descends (through ``extended_from`` links among ``runs``) from a
    recorded run that had finished s steps. Decided by the links, not by comparing values: rows merged
    back from a CSV are rounded, the copies in a new run are not."""
    steps = dict(zip(runs["run_id"].astype(str), pd.to_numeric(runs["steps"], errors="coerce")))
    parent = {str(r): p for r, p in zip(runs["run_id"], runs["extended_from"]) if isinstance(p, str) and p}

    def inherited_until(run_id: str) -> float:  # the most steps any recorded ancestor finished
        most, seen, p = float("-inf"), {run_id}, parent.get(run_id)
        while p is not None and p not in seen:
            seen.add(p)
            if p in steps and steps[p] == steps[p]:
                most = max(most, float(steps[p]))
            p = parent.get(p)
        return most

    limit = {r: inherited_until(r) for r in set(ev["run_id"].astype(str))}
    copied = ev["step"].astype(float) <= ev["run_id"].astype(str).map(limit)
    return ev[~copied]


def _effective_gain(config: dict):
    """The output gain the run's lambda mixers started at: ``model.lambda_gain``, or the one
    ``layer_scale`` its mixer kwargs give them all (a probe set through ``unet.self_kwargs``);
    None when they have none (the paper's layers) or when the run has no lambda mixer."""
    from lambda_blocks.config import ExpCfg

    try:
        scales = set(ExpCfg.from_dict(config).unet_config().lambda_layer_scales())
    except (ValueError, TypeError, KeyError):
        return (config.get("model") or {}).get("lambda_gain")
    return scales.pop() if len(scales) == 1 else None


def collect(runs_root: Path | str, results_dir: Path | str, mode: str = "refuse") -> dict[str, pd.DataFrame]:
    """Collect ``runs_root`` into ``results_dir``.

    ``mode``: what to do with runs recorded in ``results_dir/runs.csv`` that are not in
    ``runs_root`` (a runs folder of another machine, a deleted run): ``refuse`` (default) raises
    ``WouldDropRows`` naming them and writes nothing; ``merge`` keeps their rows in every table;
    ``replace`` drops them.
    """
    if mode not in MODES:
        raise ValueError(f"unknown collect mode {mode!r}; choose one of {MODES}")
    runs_root, results_dir = Path(runs_root), Path(results_dir)
    rows, curves, profiles, kd_rows, eval_rows, per_image, ae_rows = [], [], [], [], [], [], []
    samples_dir = results_dir / "samples"
    for run_dir in sorted(p for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith(".")) if runs_root.exists() else []:
        summary, config = _read_json(run_dir / "summary.json"), _read_json(run_dir / "config.json")
        env, error = _read_json(run_dir / "env.json"), _read_json(run_dir / "error.json")
        if (run_dir / "profile.csv").exists():
            profiles.append(pd.read_csv(run_dir / "profile.csv"))
            continue
        if not config and not error:
            continue
        is_train = "arm" in config or error.get("notebook_params", {}).get("arm") is not None  # not an autoencoder
        if not is_train:
            if run_dir.name.startswith("ae-") and summary.get("status") == "done":
                ae_rows.append(_ae_row(run_dir.name, config, summary, env))
            continue
        params = error.get("notebook_params", {})
        row = {c: None for c in RUN_COLUMNS}
        row.update(run_id=run_dir.name, arm=config.get("arm", params.get("arm")), size=config.get("size", params.get("size")),
                   seed=config.get("seed", params.get("seed")), preset=config.get("preset", params.get("preset")))
        row.update({k: v for k, v in summary.items() if k in RUN_COLUMNS})
        row.update({k: env.get(k) for k in ("device", "threads", "hardware", "torch_version", "git_sha") if env.get(k) is not None})
        if row["image_size"] is None and isinstance(config.get("data"), dict):  # unfinished: from the config
            row["image_size"] = config["data"].get("image_size")
        row["kind"] = config.get("kind", "model")
        if row["kind"] == "model" and config:
            dif, ev, tr = config.get("diffusion") or {}, config.get("eval") or {}, config.get("train") or {}
            row.update(prediction=dif.get("prediction", "eps"), loss_weighting=dif.get("loss_weighting", "none"),
                       eval_spacing=ev.get("spacing"), eval_ddim_steps=ev.get("ddim_steps"),
                       train_batch_size=tr.get("batch_size"), train_lr=tr.get("lr"),
                       train_steps=tr.get("steps"), train_decay_steps=tr.get("decay_steps", 0))
            unet_over = (config.get("model") or {}).get("unet") or {}
            row["unet_overrides"] = json.dumps(unet_over, sort_keys=True, separators=(",", ":")) if unet_over else ""
            row["lambda_gain"] = _effective_gain(config)
        lat, kdc = config.get("latent") or {}, config.get("kd") or {}
        row["space"] = lat.get("space", "pixel") if config else params.get("space")
        row["kd"] = bool(kdc.get("enabled", False)) if config else params.get("kd")
        if row["kd"]:
            row["kd_weighting"], row["kd_perceptual"] = kdc.get("weighting"), kdc.get("perceptual")
        if row["arm"] is not None:
            row["tag"] = run_tag(row["arm"], row["space"], bool(row["kd"]), row["kd_weighting"] or "adaptive")
        if summary.get("status") == "done":
            row["status"] = "done"
        elif error:
            row["status"], row["error"] = "failed", error.get("error")
        else:
            row["status"] = "incomplete"
        rows.append(row)
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if rec.get("kind") == "eval":
                    eval_rows.append({"run_id": run_dir.name, "tag": row["tag"], "arm": row["arm"], "size": row["size"],
                                      "seed": row["seed"], "prediction": row["prediction"],
                                      "loss_weighting": row["loss_weighting"],
                                      **{k: rec.get(k) for k in _EVAL_FROM_RECORD},
                                      "train_steps": row["train_steps"], "train_decay_steps": row["train_decay_steps"],
                                      "train_lr": row["train_lr"], "unet_overrides": row["unet_overrides"],
                                      "lambda_gain": row["lambda_gain"]})
                elif rec.get("kind") == "kd":
                    kd_rows.append({"run_id": run_dir.name, "tag": row["tag"], "arm": row["arm"], "size": row["size"],
                                    "seed": row["seed"], **{k: rec.get(k) for k in KD_COLUMNS[5:]}})
                elif "loss" in rec and "step" in rec:
                    curves.append(dict(run_id=run_dir.name, arm=row["arm"], size=row["size"], seed=row["seed"],
                                       step=rec["step"], loss=rec["loss"]))
        if (run_dir / "per_image.csv").exists() and row["status"] == "done":
            pi = pd.read_csv(run_dir / "per_image.csv")
            for k in PER_IMAGE_KEY:
                pi.insert(PER_IMAGE_KEY.index(k), k, row.get(k) if k != "image_size" else summary.get("image_size"))
            per_image.append(pi)
        if (run_dir / "samples.npz").exists() and row["status"] == "done":
            samples_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / "samples.npz", samples_dir / f"{run_dir.name}.npz")
    out = {
        "runs": pd.DataFrame(rows, columns=RUN_COLUMNS),
        "curves": pd.DataFrame(curves, columns=CURVE_COLUMNS),
    }
    if kd_rows:
        out["kd_log"] = pd.DataFrame(kd_rows, columns=KD_COLUMNS)
    if eval_rows:
        out["evals"] = pd.DataFrame(eval_rows, columns=EVAL_COLUMNS)
    if per_image:
        out["per_image"] = pd.concat(per_image, ignore_index=True)
    if profiles:
        prof = pd.concat(profiles, ignore_index=True)
        key = [k for k in PROFILE_KEY if k in prof]
        out["profile"] = prof.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    old_runs = results_dir / "runs.csv"
    if mode != "replace" and old_runs.exists() and old_runs.stat().st_size:
        old_ids = set(pd.read_csv(old_runs)["run_id"].astype(str))
        lost = sorted(old_ids - set(out["runs"]["run_id"].astype(str)))
        if lost and mode == "refuse":
            raise WouldDropRows(
                f"collecting {runs_root} into {results_dir} would drop {len(lost)} recorded run(s) that {runs_root} "
                f"does not hold (e.g. {lost[:3]}): pass --merge to keep them or --replace to drop them")
        if lost:  # merge: the recorded rows of runs that are not here stay
            for name in ("runs", "curves", "kd_log", "evals", "per_image"):
                path = results_dir / f"{name}.csv"
                if path.exists() and path.stat().st_size:
                    old = pd.read_csv(path)
                    keep = old[old["run_id"].astype(str).isin(lost)]
                    if len(keep):
                        here = out.get(name)
                        out[name] = keep if here is None or not len(here) else pd.concat([here, keep], ignore_index=True)
    if "evals" in out:  # after the merge: it may bring back the shorter run an extended one copied
        out["evals"] = _drop_copied_evals(out["evals"].reset_index(drop=True), out["runs"])
    if ae_rows:  # finished autoencoders; unless replacing, earlier rows stay and a run's new row replaces its old
        ae = pd.DataFrame(ae_rows, columns=AE_COLUMNS)
        path = results_dir / "autoencoders.csv"
        if mode != "replace" and path.exists() and path.stat().st_size:
            old = pd.read_csv(path)
            ae = pd.concat([old[~old["ae_run"].isin(set(ae["ae_run"]))], ae], ignore_index=True)
        out["autoencoders"] = ae.sort_values("ae_run").reset_index(drop=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, df in out.items():
        _write_csv(df, results_dir / f"{name}.csv")
    return out
