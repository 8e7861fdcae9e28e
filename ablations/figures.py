"""Regenerate every figure and table of the study from ``results/<preset>/*.csv`` alone."""
from __future__ import annotations

import shutil
from pathlib import Path

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
    runs, curves, profile = (_read(results_dir / f"{n}.csv") for n in ("runs", "curves", "profile"))
    written: list[Path] = []
    if runs is None and profile is None:
        raise FileNotFoundError(f"no results in {results_dir}: run `python -m ablations collect` first")
    if runs is not None and len(runs):
        runs = P.attach_latency(runs, profile)
        done = runs[runs["status"] == "done"]
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
            md, tex = P.table2(t2, caption)
            for name, text in (("table2_ablation.md", md), ("table2_ablation.tex", tex)):
                P.atomic_write_text(assets_dir / name, text)
                written.append(assets_dir / name)
        if len(done):
            P.atomic_write_text(results_dir / "seed_summary.csv", P.seed_summary(done).to_csv(index=False, float_format="%.6g"))
    if curves is not None and len(curves):
        written += P.fig_training_curves(curves[curves["arm"].isin(VARIANT_ARMS)], figures_dir)
    if profile is not None and len(profile) and (profile["kind"] == "block").any():
        written += P.fig_cost_vs_resolution(profile, figures_dir)
        slopes = P.scaling_table(profile)
        P.atomic_write_text(assets_dir / "scaling_slopes.md", slopes.to_markdown(index=False, floatfmt=".2f") + "\n")
        written.append(assets_dir / "scaling_slopes.md")
    # stable-named copies of the key figures for the paper
    for stem in ("quality_vs_size_lpips", "cost_vs_resolution", "qualitative"):
        src = figures_dir / f"{stem}.pdf"
        if src.exists():
            dst = assets_dir / "fig" / f"{stem}.pdf"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            written.append(dst)
    return written
