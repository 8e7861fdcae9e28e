"""Every figure and table of the study, regenerated from the tidy CSVs in ``results/<preset>/``.

Figures never read checkpoints or run folders: only ``runs.csv`` (one row per training run),
``curves.csv`` (training loss per logged step), ``profile.csv`` (cost per variant / U-Net and
resolution) and the small sample arrays in ``samples/`` that ``ablations collect`` copies there.
Files are written atomically, PNG + PDF, with deterministic metadata so git diffs show real changes.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .records import atomic_write_bytes, atomic_write_text  # the one atomic writer of the package

LABELS = {
    "vanilla": "Softmax attn",
    "linear": "Linear attn",
    "local_lambda": "Local-λ",
    "interactive_lambda": "Interactive-λ",
    "lmi": "LλMI",
    "baseline": "baseline (linear / CA / FFN / conv)",
    "swap_self": "swap self → Local-λ",
    "swap_cross": "swap cross → Interactive-λ",
    "swap_ffn": "swap FFN → Mix-FFN",
    "swap_conv": "swap conv → DW",
    "both_lambda": "both λ",
    "both_lambda_dw": "both λ + DW",
    "moebius": "Moebius (LλMI + DW)",
}
PALETTE = {
    "vanilla": "#4C72B0",
    "linear": "#DD8452",
    "local_lambda": "#55A868",
    "interactive_lambda": "#8172B3",
    "lmi": "#C44E52",
}
TABLE2_ORDER = ["baseline", "swap_self", "swap_cross", "swap_ffn", "swap_conv", "both_lambda", "both_lambda_dw", "moebius"]
METRICS = {  # column -> (axis label, lower is better)
    "lpips": ("LPIPS (whole image) ↓", True),
    "lpips_hole": ("LPIPS (hole) ↓", True),
    "psnr": ("PSNR dB (whole image) ↑", False),
    "psnr_hole": ("PSNR dB (hole) ↑", False),
    "ssim": ("SSIM ↑", False),
    "kid": ("KID ↓", True),
    "fid": ("FID ↓", True),
    "smoothness_gap": ("smoothness gap ↓ (fill smoother than context > 0)", True),
}
COSTS = {"params": "parameters", "macs": "MACs / sample", "latency_ms": "latency ms / step (batch 1)"}


def style() -> None:
    """One place for rcParams: column-width figures, one font, deterministic SVG/PDF output."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcdefaults()
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "font.size": 8,
            "axes.titlesize": 9,
            "axes.labelsize": 8,
            "legend.fontsize": 7,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "svg.hashsalt": "lambda-blocks",
            "pdf.compression": 6,
        }
    )


def save_figure(fig, out_dir: Path | str, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf atomically with deterministic metadata."""
    import matplotlib.pyplot as plt

    out = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, metadata=meta, bbox_inches="tight")
        path = Path(out_dir) / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    plt.close(fig)
    return out


def label(key: str) -> str:
    return LABELS.get(key, key)


def color(key: str) -> str | None:
    return PALETTE.get(key)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log(y) against log(x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


# --------------------------------------------------------------------------------------------
# Aggregation


def attach_latency(runs: pd.DataFrame, profile: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``latency_ms`` and ``peak_mem_mb`` of each run's U-Net (forward, batch 1) from profile.csv."""
    runs = runs.copy()
    runs["latency_ms"], runs["peak_mem_mb"] = np.nan, np.nan
    if profile is None or profile.empty or "kind" not in profile:
        return runs
    prof = profile[(profile["kind"] == "unet") & (profile["pass"] == "fwd")]
    if "batch" in prof:
        prof = prof[prof["batch"] == 1]
    for i, row in runs.iterrows():
        hit = prof[(prof["variant"] == row["arm"]) & (prof["preset"] == row["size"]) & (prof["height"] == row["image_size"])]
        if len(hit):
            runs.loc[i, "latency_ms"] = hit["latency_ms_median"].iloc[-1]
            runs.loc[i, "peak_mem_mb"] = hit["peak_mem_mb"].iloc[-1]
    return runs


def seed_summary(runs: pd.DataFrame, metrics=tuple(METRICS), by=("arm", "size")) -> pd.DataFrame:
    """Mean and std over seeds of each metric, per (arm, size); costs are per config (first value)."""
    done = runs[runs["status"] == "done"] if "status" in runs else runs
    cols = [m for m in metrics if m in done]
    agg = done.groupby(list(by), sort=False)
    out = agg[cols].mean().add_suffix("_mean").join(agg[cols].std(ddof=1).fillna(0).add_suffix("_std"))
    out["n_seeds"] = agg["seed"].nunique()
    for c in ("params", "macs", "latency_ms", "peak_mem_mb", "n_eval_images", "image_size"):
        if c in done:
            out[c] = agg[c].first()
    return out.reset_index()


# --------------------------------------------------------------------------------------------
# Figures


def fig_quality_vs_size(runs: pd.DataFrame, metric: str, out_dir, name: str | None = None) -> list[Path]:
    """Quality against parameters, MACs and measured latency: one line per variant, seed error bars."""
    import matplotlib.pyplot as plt

    style()
    summ = seed_summary(runs)
    costs = [c for c in COSTS if c in summ and summ[c].notna().any()]
    fig, axes = plt.subplots(1, len(costs), figsize=(2.6 * len(costs), 2.4), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        for arm, grp in summ.groupby("arm", sort=False):
            grp = grp.sort_values(cost)
            ax.errorbar(grp[cost], grp[f"{metric}_mean"], yerr=grp[f"{metric}_std"], marker="o", ms=3, capsize=2,
                        label=label(arm), color=color(arm))
        ax.set_xscale("log")
        ax.set_xlabel(COSTS[cost])
    axes[0][0].set_ylabel(METRICS[metric][0])
    axes[0][-1].legend(loc="best")
    n_img = int(summ["n_eval_images"].max()) if "n_eval_images" in summ else 0
    seeds = int(summ["n_seeds"].max())
    fig.suptitle(f"{METRICS[metric][0]} vs model cost ({n_img} test images, mean ± std over {seeds} seed(s))", fontsize=8)
    return save_figure(fig, out_dir, name or f"quality_vs_size_{metric}")


def fig_cost_vs_resolution(profile: pd.DataFrame, out_dir, name: str = "cost_vs_resolution") -> list[Path]:
    """MACs, latency and peak memory of single blocks vs pixel count, log-log, with fitted slopes."""
    import matplotlib.pyplot as plt

    style()
    prof = profile[(profile["kind"] == "block") & (profile["pass"] == "fwd")]
    panels = [("macs", "MACs / sample"), ("latency_ms_median", "latency ms"), ("peak_mem_mb", "peak memory MB")]
    fig, axes = plt.subplots(1, 3, figsize=(7.8, 2.5))
    for ax, (col, ylabel) in zip(axes, panels):
        for var, grp in prof.groupby("variant", sort=False):
            grp = grp.sort_values("pixels")
            if col not in grp or grp[col].isna().all():
                continue
            slope = loglog_slope(grp["pixels"], grp[col])
            ax.plot(grp["pixels"], grp[col], marker="o", ms=3, color=color(var), label=f"{label(var)} (slope {slope:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels H·W")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=5.5)
    width = int(prof["channels"].iloc[0]) if "channels" in prof and len(prof) else None
    hw = prof["hardware"].iloc[0] if "hardware" in prof and len(prof) else ""
    fig.suptitle(f"cost of one token mixer vs resolution (width {width}, batch 1, {hw})", fontsize=8)
    return save_figure(fig, out_dir, name)


def fig_training_curves(curves: pd.DataFrame, out_dir, name: str = "training_curves", smooth: int = 20) -> list[Path]:
    """Training loss per step (rolling mean), one panel per U-Net size, mean over seeds."""
    import matplotlib.pyplot as plt

    style()
    sizes = list(dict.fromkeys(curves["size"]))
    fig, axes = plt.subplots(1, len(sizes), figsize=(2.6 * len(sizes), 2.3), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        sub = curves[curves["size"] == size]
        for arm, grp in sub.groupby("arm", sort=False):
            mean = grp.groupby("step")["loss"].mean().rolling(smooth, min_periods=1).mean()
            ax.plot(mean.index, mean.values, color=color(arm), label=label(arm), lw=1)
        ax.set_yscale("log")
        ax.set_title(f"U-Net {size}")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("ε-MSE (train)")
    axes[0][-1].legend()
    return save_figure(fig, out_dir, name)


def fig_smoothness_gap(runs: pd.DataFrame, out_dir, name: str = "smoothness_gap") -> list[Path]:
    """Smoothness gap of the fills per variant and size, with seed error bars."""
    import matplotlib.pyplot as plt

    style()
    summ = seed_summary(runs)
    sizes = list(dict.fromkeys(summ["size"]))
    arms = list(dict.fromkeys(summ["arm"]))
    fig, ax = plt.subplots(figsize=(3.4, 2.3))
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        sub = summ[summ["arm"] == arm].set_index("size").reindex(sizes)
        ax.bar(np.arange(len(sizes)) + j * width, sub["smoothness_gap_mean"], width, yerr=sub["smoothness_gap_std"],
               color=color(arm), label=label(arm), capsize=2)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(np.arange(len(sizes)) + width * (len(arms) - 1) / 2, sizes)
    ax.set_ylabel(METRICS["smoothness_gap"][0], fontsize=6)
    ax.legend(fontsize=6)
    return save_figure(fig, out_dir, name)


def fig_qualitative(samples: dict[str, dict[str, np.ndarray]], out_dir, name: str = "qualitative", n: int = 4) -> list[Path]:
    """Masked input | each variant's fill | ground truth on the same fixed test images and masks.

    Args:
        samples: arm -> {"masked", "fill", "target"} uint8 arrays (N, H, W, 3), as saved by the runs.
    """
    import matplotlib.pyplot as plt

    style()
    arms = list(samples)
    first = samples[arms[0]]
    n = min(n, len(first["target"]))
    cols = ["masked input"] + [label(a) for a in arms] + ["ground truth"]
    fig, axes = plt.subplots(n, len(cols), figsize=(0.9 * len(cols), 0.9 * n + 0.3), squeeze=False)
    for i in range(n):
        tiles = [first["masked"][i]] + [samples[a]["fill"][i] for a in arms] + [first["target"][i]]
        for j, tile in enumerate(tiles):
            ax = axes[i][j]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if i == 0:
                ax.set_title(cols[j], fontsize=6)
    return save_figure(fig, out_dir, name)


# --------------------------------------------------------------------------------------------
# Tables


def _fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    if std is None or not np.isfinite(std) or std == 0:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table2(runs: pd.DataFrame, caption: str) -> tuple[str, str]:
    """The paper's Table 2 shape: arm, KD, LPIPS, KID, FID, params, MACs, latency, peak memory.

    Returns (markdown, latex).
    """
    summ = seed_summary(runs)
    order = [a for a in TABLE2_ORDER if a in set(summ["arm"])] + [a for a in summ["arm"] if a not in TABLE2_ORDER]
    summ = summ.set_index("arm").loc[list(dict.fromkeys(order))].reset_index()
    head = ["arm", "KD", "LPIPS ↓", "KID ↓", "FID ↓", "PSNR ↑", "params (M)", "GMACs", "latency ms", "peak MB"]
    rows = []
    for _, r in summ.iterrows():
        rows.append([
            label(r["arm"]), "no",
            _fmt(r.get("lpips_mean"), r.get("lpips_std")), _fmt(r.get("kid_mean"), r.get("kid_std"), 4),
            _fmt(r.get("fid_mean"), r.get("fid_std"), 1), _fmt(r.get("psnr_mean"), r.get("psnr_std"), 2),
            _fmt(r.get("params", np.nan) / 1e6, None, 3), _fmt(r.get("macs", np.nan) / 1e9, None, 3),
            _fmt(r.get("latency_ms", np.nan), None, 2), _fmt(r.get("peak_mem_mb", np.nan), None, 1),
        ])
    return _md_tex(head, rows, caption, "tab:ablation")


def is_true(col: pd.Series) -> pd.Series:
    """A CSV boolean column (True / False / empty) as bool."""
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def split_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pixel-space runs without KD, latent-space runs): the quality-vs-size / Table 2 studies use the
    first, the distillation study the second."""
    space = (runs["space"].astype(object).where(runs["space"].notna(), "pixel") if "space" in runs
             else pd.Series("pixel", index=runs.index))
    kd = is_true(runs["kd"]) if "kd" in runs else pd.Series(False, index=runs.index)
    return runs[(space == "pixel") & ~kd], runs[space == "latent"]


def kd_label(row) -> str:
    if not is_true(pd.Series([row.get("kd")])).iloc[0]:
        return "no"
    return f"yes ({row.get('kd_weighting')})"


def table_kd(runs: pd.DataFrame, caption: str) -> tuple[str, str]:
    """The Table 2 shape with its KD half: latent-space arms without and with distillation, and the
    teacher(s). Columns: role, arm, KD, LPIPS, KID, FID, PSNR, params, GMACs (the U-Net on the latent),
    latency and peak memory (measured at the end of each run). Returns (markdown, latex)."""
    runs = runs.copy()
    runs["kd_col"] = [kd_label(r) for _, r in runs.iterrows()]
    teachers = set(runs["teacher_run"].dropna()) if "teacher_run" in runs else set()
    runs["role"] = ["teacher" if r["run_id"] in teachers else "student" for _, r in runs.iterrows()]
    for c in ("latency_ms_inrun", "peak_mem_mb_inrun"):
        if c not in runs:
            runs[c] = np.nan
    # One network, one cost: the minimum over every run of the same (arm, size, work size) of the
    # in-run medians (the least disturbed by the shared machine; timeit's advice), so a student with
    # and without KD shows the same latency, as it must.
    net = ["arm", "size"] + (["work_size"] if "work_size" in runs else [])
    runs["latency_ms"] = runs.groupby(net, dropna=False)["latency_ms_inrun"].transform("min")
    runs["peak_mem_mb"] = runs.groupby(net, dropna=False)["peak_mem_mb_inrun"].transform("min")
    summ = seed_summary(runs, by=("role", "arm", "size", "kd_col"))
    rank = {a: i for i, a in enumerate(TABLE2_ORDER + list(PALETTE))}
    summ["_o"] = [(r["role"] != "teacher", rank.get(r["arm"], 99), r["size"], r["kd_col"]) for _, r in summ.iterrows()]
    summ = summ.sort_values("_o").drop(columns="_o")
    head = ["role", "arm", "size", "KD", "LPIPS ↓", "KID ↓", "FID ↓", "PSNR ↑", "params (M)", "GMACs", "latency ms",
            "peak MB", "seeds"]
    rows = []
    for _, r in summ.iterrows():
        rows.append([
            r["role"], label(r["arm"]), str(r["size"]), r["kd_col"],
            _fmt(r.get("lpips_mean"), r.get("lpips_std")), _fmt(r.get("kid_mean"), r.get("kid_std"), 4),
            _fmt(r.get("fid_mean"), r.get("fid_std"), 1), _fmt(r.get("psnr_mean"), r.get("psnr_std"), 2),
            _fmt(r.get("params", np.nan) / 1e6, None, 3), _fmt(r.get("macs", np.nan) / 1e9, None, 3),
            _fmt(r.get("latency_ms", np.nan), None, 2), _fmt(r.get("peak_mem_mb", np.nan), None, 1),
            str(int(r["n_seeds"])),
        ])
    return _md_tex(head, rows, caption, "tab:ablation_kd")


def _md_tex(head: list[str], rows: list[list[str]], caption: str, tex_label: str) -> tuple[str, str]:
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    md += "".join("| " + " | ".join(row) + " |\n" for row in rows)
    md += f"\n{caption}\n"
    esc = lambda s: s.replace("±", r"$\pm$").replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$").replace("λ", r"$\lambda$").replace("→", r"$\to$").replace("&", r"\&")
    tex = "\\begin{table}[t]\n\\centering\n\\small\n\\begin{tabular}{l" + "c" * (len(head) - 1) + "}\n\\toprule\n"
    tex += " & ".join(esc(h) for h in head) + " \\\\\n\\midrule\n"
    tex += "".join(" & ".join(esc(c) for c in row) + " \\\\\n" for row in rows)
    tex += "\\bottomrule\n\\end{tabular}\n\\caption{" + esc(caption) + "}\n\\label{" + tex_label + "}\n\\end{table}\n"
    return md, tex


def caption_kd(runs: pd.DataFrame, preset: str) -> str:
    done = runs[runs["status"] == "done"] if "status" in runs else runs
    n_img = int(done["n_eval_images"].max()) if len(done) else 0
    res = int(done["image_size"].max()) if len(done) else 0
    ws = int(done["work_size"].max()) if "work_size" in done and done["work_size"].notna().any() else 0
    ae = done["ae_psnr"].dropna() if "ae_psnr" in done else pd.Series(dtype=float)
    ae_txt = f"; autoencoder reconstruction PSNR {ae.iloc[0]:.2f} dB" if len(ae) else ""
    hw = ", ".join(sorted(set(map(str, done.get("hardware", pd.Series(dtype=str)).dropna())))) or "unknown hardware"
    return (f"Preset `{preset}`, latent space: {res}x{res} crops encoded to {ws}x{ws}x4 latents by the repo's "
            f"autoencoder{ae_txt}; {n_img} test images with fixed masks, metrics on decoded images. KD: "
            "task + output KD + feature KD + weight-free latent multi-scale loss (our substitute for E-LatentLPIPS), "
            f"weights adaptive (gradient-norm ratios, MOEBIUS_SPEC 8) or fixed. GMACs: the U-Net on the latent. "
            f"Latency / memory: batch-1 forward measured at the end of each run on {hw}; minimum over the runs "
            "of the same network (a shared machine: treat as rough).")


def fig_kd_quality(runs: pd.DataFrame, out_dir, metric: str = "lpips", name: str | None = None) -> list[Path]:
    """Quality against parameters in latent space: teacher, each student arm without KD and with KD."""
    import matplotlib.pyplot as plt

    style()
    runs = runs.copy()
    runs["kd_col"] = [kd_label(r) for _, r in runs.iterrows()]
    summ = seed_summary(runs, by=("arm", "size", "kd_col"))
    fig, ax = plt.subplots(figsize=(3.6, 2.6))
    markers = {"no": "o"}
    for (kdc), grp in summ.groupby("kd_col", sort=True):
        m = markers.get(kdc, "s" if "adaptive" in kdc else "^")
        ax.errorbar(grp["params"], grp[f"{metric}_mean"], yerr=grp[f"{metric}_std"], ls="none", marker=m, ms=4,
                    capsize=2, label=f"KD {kdc}")
        for _, r in grp.iterrows():
            ax.annotate(f"{r['arm']}/{r['size']}", (r["params"], r[f"{metric}_mean"]), fontsize=5,
                        xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # the 2x10^6 ... minor labels overlap
    ax.set_xlabel("parameters")
    ax.set_ylabel(METRICS.get(metric, (metric,))[0])
    ax.legend(fontsize=6)
    return save_figure(fig, out_dir, name or f"kd_{metric}_vs_params")


def fig_kd_weights(kd_log: pd.DataFrame, out_dir, name: str = "kd_weights", smooth: int = 10) -> list[Path]:
    """Adaptive weights and loss terms over the distillation steps, one line per run."""
    import matplotlib.pyplot as plt

    style()
    cols = [("w_c", "w_C"), ("w_fkd", "w_FKD"), ("w_lp", "w_lp"), ("loss_task", "L_task")]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.3 * len(cols), 2.2))
    for ax, (c, lab) in zip(axes, cols):
        for run_id, grp in kd_log.groupby("run_id", sort=True):
            grp = grp.sort_values("step")
            tag = str(grp["tag"].iloc[0]) + (f" s{grp['seed'].iloc[0]}" if "seed" in grp else "")
            ax.plot(grp["step"], grp[c].rolling(smooth, min_periods=1).mean(), lw=0.9, label=tag)
        ax.set_yscale("log")
        ax.set_title(lab, fontsize=8)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=5)
    return save_figure(fig, out_dir, name)


def quality_table(runs: pd.DataFrame, caption: str) -> str:
    """Markdown table of the quality-versus-size study (mean ± std over seeds)."""
    summ = seed_summary(runs)
    head = ["variant", "size", "params (M)", "GMACs", "LPIPS ↓", "PSNR ↑", "SSIM ↑", "KID ↓", "smooth gap ↓", "seeds"]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    for _, r in summ.iterrows():
        md += "| " + " | ".join([
            label(r["arm"]), str(r["size"]), _fmt(r["params"] / 1e6, None, 3), _fmt(r["macs"] / 1e9, None, 3),
            _fmt(r.get("lpips_mean"), r.get("lpips_std")), _fmt(r.get("psnr_mean"), r.get("psnr_std"), 2),
            _fmt(r.get("ssim_mean"), r.get("ssim_std")), _fmt(r.get("kid_mean"), r.get("kid_std"), 4),
            _fmt(r.get("smoothness_gap_mean"), r.get("smoothness_gap_std")), str(int(r["n_seeds"])),
        ]) + " |\n"
    return md + f"\n{caption}\n"


def scaling_table(profile: pd.DataFrame) -> pd.DataFrame:
    """Per variant: log-log slopes of MACs, latency and memory vs pixels, from the block rows."""
    prof = profile[(profile["kind"] == "block") & (profile["pass"] == "fwd")]
    rows = []
    for var, grp in prof.groupby("variant", sort=False):
        rows.append(dict(variant=var,
                         macs_slope=loglog_slope(grp["pixels"], grp["macs"]),
                         latency_slope=loglog_slope(grp["pixels"], grp["latency_ms_median"]),
                         memory_slope=loglog_slope(grp["pixels"], grp["peak_mem_mb"]) if "peak_mem_mb" in grp else np.nan))
    return pd.DataFrame(rows)


def load_samples(samples_dir: Path | str, size: str, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """arm -> arrays from ``samples/<arm>-<size>-s<seed>.npz`` (written by ``ablations collect``)."""
    out = {}
    for path in sorted(Path(samples_dir).glob(f"*-{size}-s{seed}.npz")):
        arm = path.name[: -len(f"-{size}-s{seed}.npz")]
        with np.load(path) as z:
            out[arm] = {k: z[k] for k in ("masked", "fill", "target")}
    order = [a for a in PALETTE if a in out] + [a for a in out if a not in PALETTE]
    return {a: out[a] for a in order}


def caption_for(runs: pd.DataFrame, preset: str) -> str:
    done = runs[runs["status"] == "done"] if "status" in runs else runs
    n_img = int(done["n_eval_images"].max()) if "n_eval_images" in done and len(done) else 0
    res = int(done["image_size"].max()) if "image_size" in done and len(done) else 0
    hw = ", ".join(sorted(set(map(str, done.get("hardware", pd.Series(dtype=str)).dropna())))) or "unknown hardware"
    seeds = int(done.groupby(["arm", "size"])["seed"].nunique().max()) if len(done) else 0
    return (f"Preset `{preset}`: {res}x{res} crops of the embedded test split, {n_img} test images with fixed masks, "
            f"mean ± std over {seeds} seed(s); no distillation (KD). Latency: U-Net forward at batch 1 on {hw}.")



def fig_run_curves(rows: list[dict], out_dir, name: str = "curves") -> list[Path]:
    """One run's training loss and periodic evaluation metrics (from its metrics.jsonl rows)."""
    import matplotlib.pyplot as plt

    style()
    train = [r for r in rows if "loss" in r and "step" in r]
    evals = [r for r in rows if r.get("kind") == "eval" or any(k.startswith("psnr") for k in r)]
    fig, axes = plt.subplots(1, 2, figsize=(5.4, 2.2))
    if train:
        steps = np.array([r["step"] for r in train])
        loss = pd.Series([r["loss"] for r in train]).rolling(5, min_periods=1).mean()
        axes[0].plot(steps, loss, lw=1)
        axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("ε-MSE (train, rolling mean)")
    key = next((k for k in ("psnr_hole", "psnr") if any(k in r for r in evals)), None)
    if key:
        axes[1].plot([r["step"] for r in evals if key in r], [r[key] for r in evals if key in r], marker="o", ms=3)
        axes[1].set_ylabel(f"{key} (periodic eval, EMA)")
    axes[1].set_xlabel("step")
    return save_figure(fig, out_dir, name)
