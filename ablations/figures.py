"""Regenerate every figure and table of the study from ``results/<preset>/*.csv`` alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from lambda_blocks import plotting as P
from lambda_blocks.records import atomic_write_text, csv_text
from lambda_blocks.unet import canonical_arm



def variant_arms() -> list[str]:
    """One arm per registered mixer (``lambda_blocks.unet.variant_arm_names``)."""
    from lambda_blocks.unet import variant_arm_names

    return variant_arm_names()


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() and path.stat().st_size > 0 else None


def _write(path: Path, text: str, written: list[Path]) -> None:
    atomic_write_text(path, text)
    written.append(path)


def _write_rows(assets_dir: Path, name: str, rows: list[dict], md: str, written: list[Path]) -> None:
    """Comparison rows as ``<name>.md`` (``md``, the README's table) and ``<name>.csv``; nothing when empty."""
    if rows:
        _write(assets_dir / f"{name}.md", md, written)
        _write(assets_dir / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"), written)


def _write_pairs(assets_dir: Path, name: str, pairs: list[dict], written: list[Path]) -> None:
    """Paired comparisons (``plotting.paired_rows``)."""
    _write_rows(assets_dir, name, pairs, P.paired_table(pairs, P.PAIRED_CAPTION), written)


def _write_claims(assets_dir: Path, name: str, rows: list[dict], space: str, written: list[Path]) -> None:
    """The paper's ordering claims (``plotting.paper_claims``) of one space ("Pixel space, no KD")."""
    _write_rows(assets_dir, name, rows, P.claims_table(rows, f"{space}. {P.CLAIMS_CAPTION}"), written)


def regenerate(results_dir: Path | str, figures_dir: Path | str, assets_dir: Path | str, preset: str,
               cost_profile: Path | str | None = None) -> list[Path]:
    """Write all figures (PNG + PDF) and tables (Markdown + LaTeX); returns the written paths.

    Reads ``results_dir`` (and ``cost_profile``, when given: the profile table the cost figure and
    ``scaling_slopes.md`` are drawn from instead of ``results_dir/profile.csv``; the dev study's is
    the repository's one profile table, ``results/profile.csv``, which ``benchmarks/bench_scaling.py``
    measures up to 128² with arm blocks) and writes only ``figures_dir`` and ``assets_dir``. Missing inputs are
    reported (a study without profiling has no cost figure) rather than faked. Every quality figure
    and table carries the classical floor scored on the same test problems; the study's rows are the
    runs trained with the preset's recipe (``plotting.with_recipe``), the other recipes appear in the
    convergence figure only.
    """
    results_dir, figures_dir, assets_dir = Path(results_dir), Path(figures_dir), Path(assets_dir)
    runs, curves, profile, kd_log, evals, per_image, autoencoders = (
        _read(results_dir / f"{n}.csv") for n in ("runs", "curves", "profile", "kd_log", "evals", "per_image", "autoencoders"))
    cost = _read(Path(cost_profile)) if cost_profile is not None else profile
    written: list[Path] = []
    if autoencoders is not None and len(autoencoders):
        _write(assets_dir / "autoencoders.md", P.autoencoder_table(autoencoders), written)
    if runs is None and profile is None:
        raise FileNotFoundError(f"no results in {results_dir}: run `python -m ablations collect` first")
    floors_all = None
    if runs is not None and len(runs):
        runs = P.attach_latency(runs, profile)
        done_all = runs[runs["status"] == "done"]
        learned_all, floors_all = P.split_kinds(done_all)
        learned = P.with_recipe(learned_all, preset)
        done, latent = P.split_runs(learned)  # pixel-space runs without KD | the distillation study
        variants = done[done["arm"].isin(variant_arms())]
        caption = P.caption_for(done, preset)
        if len(variants):
            size_px = int(variants["image_size"].mode().iloc[0])
            fl = P.floors_at(floors_all, size_px)
            for metric in ("lpips", "lpips_hole", "psnr", "kid", "fid"):
                if metric in variants and variants[metric].notna().any():
                    written += P.fig_quality_vs_size(variants, metric, figures_dir, floors=fl)
            _write(assets_dir / "quality_vs_size.md", P.quality_table(variants, caption, fl), written)
            pairs = P.paired_rows(per_image, pd.concat([variants, fl]), refs=["biharmonic", "telea", "linear"])
            _write_pairs(assets_dir, "paired_quality", pairs, written)
            budgets = P.with_recipe(learned_all, preset, any_budget=True)
            budgets = P.split_runs(budgets)[0]
            budgets = budgets[budgets["arm"].isin(variant_arms()) & (budgets["image_size"] == size_px)]
            if budgets["train_steps"].nunique() > 1:  # the same recipe at more than one budget
                _write(assets_dir / "budgets.md", P.budget_table(budgets, per_image, fl), written)
            size = variants["size"].value_counts().index[0]
            seed = int(variants["seed"].min())
            pick = variants[(variants["size"] == size) & (variants["seed"] == seed)]
            order = {a: i for i, a in enumerate(variant_arms())}
            pick = pick.sort_values("arm", key=lambda c: c.map(order))
            samples = P.load_samples(results_dir / "samples", pd.concat([fl, pick]), label_of=lambda r: r["arm"])
            if samples:
                written += P.fig_qualitative(samples, figures_dir)
        t2_arms = {canonical_arm(a) for a in P.TABLE2_ORDER}
        t2 = done[done["arm"].isin(t2_arms)]
        if len(t2):  # one size: the one the Table 2-only arms were trained at (else the most common)
            own = t2[~t2["arm"].isin(variant_arms())]
            t2 = t2[t2["size"] == (own if len(own) else t2)["size"].mode().iloc[0]]
            fl = P.floors_at(floors_all, int(t2["image_size"].mode().iloc[0]))
            md, tex = P.table2(t2, P.caption_for(t2, preset), fl)
            _write(assets_dir / "table2_ablation.md", md, written)
            _write(assets_dir / "table2_ablation.tex", tex, written)
            # each Table 2-only arm against the floor, the baseline (= linear) and Moebius (= lmi),
            # paired over the same test images (the paper's ordering claims need intervals)
            pairs = P.paired_rows(per_image, pd.concat([own, fl]), refs=["biharmonic", "telea"])
            pairs += [r for r in P.paired_rows(per_image, t2, refs=["linear", "lmi"])
                      if r["arm"] in set(own["arm"])]
            _write_pairs(assets_dir, "paired_table2", pairs, written)
            _write_claims(assets_dir, "paper_claims", P.paper_claims(per_image, t2, fl), "Pixel space, no KD", written)
        if len(latent):
            fl = P.floors_at(floors_all, int(latent["image_size"].mode().iloc[0]))
            md, tex = P.table_kd(latent, P.caption_kd(latent, preset), fl)
            _write_claims(assets_dir, "paper_claims_kd", P.paper_claims(per_image, latent, fl),
                          "Latent space, with and without KD", written)
            _write(assets_dir / "table2_kd.md", md, written)
            _write(assets_dir / "table2_kd.tex", tex, written)
            for metric in ("lpips", "kid"):
                if latent[metric].notna().any():
                    written += P.fig_kd_quality(latent, figures_dir, metric)
            # fills of the classical floor, the teacher and every student with / without KD (lowest seed)
            seed = int(latent["seed"].min())
            teachers = set(latent["teacher_run"].dropna())

            def short(r):
                if r["run_id"] in teachers:
                    return "teacher"
                if P.is_true(pd.Series([r["kd"]])).iloc[0]:
                    return f"{r['arm']}+KD" + ("" if r["kd_weighting"] == "adaptive" else f" {r['kd_weighting']}")
                return f"{r['arm']} no KD"

            rows = latent[latent["seed"] == seed].sort_values(["kd", "tag"], key=lambda c: c.astype(str))
            tiles = P.load_samples(results_dir / "samples", fl, label_of=lambda r: r["arm"])
            tiles.update(P.load_samples(results_dir / "samples", rows, label_of=short))
            if tiles:
                written += P.fig_qualitative(tiles, figures_dir, name="qualitative_kd")
        if len(done):
            _write(assets_dir / "seed_summary.csv", csv_text(P.seed_summary(done)), written)
    if evals is not None and len(evals) and runs is not None:
        pixel_ids = set(P.split_runs(P.split_kinds(runs)[0])[0]["run_id"])
        ev = evals[evals["run_id"].isin(pixel_ids)]
        if len(ev) and ev["lpips"].notna().any():
            size_px = int(runs[runs["run_id"].isin(set(ev["run_id"]))]["image_size"].mode().iloc[0])
            base = P.preset_recipe(preset)
            base_lr, base_gain = base["lr"], base["lambda_gain"]
            written += P.fig_convergence(ev, figures_dir, floors=P.floors_at(floors_all, size_px), base_lr=base_lr,
                                         base_gain=base_gain)
            _write(assets_dir / "convergence.md", P.convergence_table(ev, P.floors_at(floors_all, size_px), base_lr=base_lr,
                                                                      base_gain=base_gain), written)
    if kd_log is not None and len(kd_log):
        written += P.fig_kd_weights(kd_log, figures_dir)
    if curves is not None and len(curves):
        if runs is not None and "space" in runs:  # the pixel-space study's curves only
            pixel_ids = set(P.split_runs(runs)[0]["run_id"])
            curves = curves[curves["run_id"].isin(pixel_ids)]
        if runs is not None:
            curves = curves[curves["run_id"].isin(set(P.with_recipe(P.split_kinds(runs)[0], preset)["run_id"]))]
        curves = curves[curves["arm"].isin(variant_arms())]
        if len(curves):
            written += P.fig_training_curves(curves, figures_dir)
    if cost is not None and len(cost) and (cost["kind"] == "block").any():
        written += P.fig_cost_vs_resolution(cost, figures_dir)
        slopes = P.scaling_table(cost)
        atomic_write_text(assets_dir / "scaling_slopes.md", slopes.to_markdown(index=False, floatfmt=".2f") + "\n")
        written.append(assets_dir / "scaling_slopes.md")
    # stable-named copies of the key figures for the paper
    for stem in ("quality_vs_size_lpips", "convergence", "cost_vs_resolution", "qualitative", "kd_lpips_vs_params",
                 "kd_weights", "qualitative_kd"):
        src = figures_dir / f"{stem}.pdf"
        if src.exists():
            dst = assets_dir / "fig" / f"{stem}.pdf"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            written.append(dst)
    return written
