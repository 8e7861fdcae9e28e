"""Regenerate every figure and table of the study from ``results/<preset>/*.csv`` alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from lambda_blocks import plotting as P

VARIANT_ARMS = ["vanilla", "linear", "local_lambda", "interactive_lambda", "lmi"]


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() and path.stat().st_size > 0 else None


def regenerate(results_dir: Path | str, figures_dir: Path | str, assets_dir: Path | str, preset: str) -> list[Path]:
    """Write all figures (PNG + PDF) and tables (Markdown + LaTeX); returns the written paths.

    Missing inputs are reported (a study without profiling has no cost figure) rather than faked.
    """
    results_dir, figures_dir, assets_dir = Path(results_dir), Path(figures_dir), Path(assets_dir)
    runs, curves, profile, kd_log = (_read(results_dir / f"{n}.csv") for n in ("runs", "curves", "profile", "kd_log"))
    written: list[Path] = []
    if runs is None and profile is None:
        raise FileNotFoundError(f"no results in {results_dir}: run `python -m ablations collect` first")
    if runs is not None and len(runs):
        runs = P.attach_latency(runs, profile)
        done_all = runs[runs["status"] == "done"]
        done, latent = P.split_runs(done_all)  # pixel-space runs without KD | the distillation study
        variants = done[done["arm"].isin(VARIANT_ARMS)]
        caption = P.caption_for(done, preset)
        if len(variants):
            for metric in ("lpips", "psnr", "kid", "smoothness_gap"):
                if metric in variants and variants[metric].notna().any():
                    written += P.fig_quality_vs_size(variants, metric, figures_dir)
            if variants["smoothness_gap"].notna().any():
                written += P.fig_smoothness_gap(variants, figures_dir)
            md = P.quality_table(variants, caption)
            for name, text in (("quality_vs_size.md", md),):
                P.atomic_write_text(assets_dir / name, text)
                written.append(assets_dir / name)
            size = variants["size"].value_counts().index[0]
            seed = int(variants["seed"].min())
            samples = P.load_samples(results_dir / "samples", size, seed)
            samples = {a: s for a, s in samples.items() if a in VARIANT_ARMS}
            if samples:
                written += P.fig_qualitative(samples, figures_dir)
        t2 = done[done["arm"].isin(P.TABLE2_ORDER)]
        if len(t2):
            md, tex = P.table2(t2, P.caption_for(t2, preset))
            for name, text in (("table2_ablation.md", md), ("table2_ablation.tex", tex)):
                P.atomic_write_text(assets_dir / name, text)
                written.append(assets_dir / name)
        if len(latent):
            md, tex = P.table_kd(latent, P.caption_kd(latent, preset))
            for name, text in (("table2_kd.md", md), ("table2_kd.tex", tex)):
                P.atomic_write_text(assets_dir / name, text)
                written.append(assets_dir / name)
            for metric in ("lpips", "kid"):
                if latent[metric].notna().any():
                    written += P.fig_kd_quality(latent, figures_dir, metric)
            # fills of the teacher and of every student with / without KD (lowest seed), same images
            seed = int(latent["seed"].min())
            tiles = {}
            for _, r in latent[latent["seed"] == seed].sort_values(["kd", "tag"], key=lambda c: c.astype(str)).iterrows():
                path = results_dir / "samples" / f"{r['tag']}-{r['size']}-s{seed}.npz"
                if path.exists():
                    with np.load(path) as z:
                        if r["run_id"] in set(latent["teacher_run"].dropna()):
                            short = "teacher"
                        elif P.is_true(pd.Series([r["kd"]])).iloc[0]:
                            short = f"{r['arm']}+KD" + ("" if r["kd_weighting"] == "adaptive" else f" {r['kd_weighting']}")
                        else:
                            short = f"{r['arm']} no KD"
                        tiles[short] = {k: z[k] for k in ("masked", "fill", "target")}
            if tiles:
                written += P.fig_qualitative(tiles, figures_dir, name="qualitative_kd")
        if len(done):
            P.atomic_write_text(results_dir / "seed_summary.csv", P.seed_summary(done).to_csv(index=False, float_format="%.6g"))
    if kd_log is not None and len(kd_log):
        written += P.fig_kd_weights(kd_log, figures_dir)
    if curves is not None and len(curves):
        if runs is not None and "space" in runs:  # the pixel-space study's curves only
            pixel_ids = set(P.split_runs(runs)[0]["run_id"])
            curves = curves[curves["run_id"].isin(pixel_ids)]
        curves = curves[curves["arm"].isin(VARIANT_ARMS)]
        if len(curves):
            written += P.fig_training_curves(curves, figures_dir)
    if profile is not None and len(profile) and (profile["kind"] == "block").any():
        written += P.fig_cost_vs_resolution(profile, figures_dir)
        slopes = P.scaling_table(profile)
        P.atomic_write_text(assets_dir / "scaling_slopes.md", slopes.to_markdown(index=False, floatfmt=".2f") + "\n")
        written.append(assets_dir / "scaling_slopes.md")
    # stable-named copies of the key figures for the paper
    for stem in ("quality_vs_size_lpips", "cost_vs_resolution", "qualitative", "kd_lpips_vs_params", "kd_weights", "qualitative_kd"):
        src = figures_dir / f"{stem}.pdf"
        if src.exists():
            dst = assets_dir / "fig" / f"{stem}.pdf"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            written.append(dst)
    return written
