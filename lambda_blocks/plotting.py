"""Every figure and table of the study, regenerated from the tidy CSVs in ``results/<preset>/``.

Figures never read checkpoints or run folders: only ``runs.csv`` (one row per training run),
``curves.csv`` (training loss per logged step), ``profile.csv`` (cost per variant / U-Net and
resolution) and the small sample arrays in ``samples/`` that ``ablations collect`` copies there.
Files are written atomically, PNG + PDF, with deterministic metadata so git diffs show real changes.
"""
from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .layers.common import RegistryView
from .profiling.analysis import loglog_slope  # noqa: F401  (one slope: plotting.loglog_slope is it)
from .records import atomic_write_bytes  # the one atomic writer of the package

_ALIAS_WORDS = {"baseline": "baseline", "swap_self": "swap self", "swap_cross": "swap cross", "moebius": "Moebius"}
_FIXED_LABELS = {
    # the classical floor (lambda_blocks.classical)
    "mean": "floor: mean colour",
    "biharmonic": "floor: biharmonic",
    "telea": "floor: Telea",
    "ns": "floor: Navier-Stokes",
    # Table 2 arms
    "baseline": "baseline (linear / CA / FFN / conv)",
    "swap_self": "swap self → Local-λ",
    "swap_cross": "swap cross → Interactive-λ",
    "swap_ffn": "swap FFN → Mix-FFN",
    "swap_conv": "swap conv → DW",
    "both_lambda": "both λ",
    "both_lambda_dw": "both λ + DW",
    "moebius": "Moebius (LλMI + DW)",
    "moebius_paper": "Moebius, the authors' exact (BN, table, GN 32, init)",
}
_FALLBACK_COLORS = ("#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD", "#2F4B7C")


def _variant_labels() -> dict[str, str]:
    """A variant arm's label is its mixer's registered label, plus the Table 2 names of the same
    network: "Linear attn (= baseline)"."""
    from .layers.common import get_attention_class
    from .unet import arm_names, variant_arm_names

    out = {}
    for arm in variant_arm_names():
        also = [_ALIAS_WORDS.get(a, a) for a in arm_names(arm)[1:]]
        out[arm] = get_attention_class(arm).label + (f" ({'= ' + ', '.join(also)})" if also else "")
    return out


def _labels() -> dict[str, str]:
    return {**_variant_labels(), **_FIXED_LABELS}


def _palette() -> dict[str, str]:
    """The variant arms' colours: the registered one, else the next unused fallback colour."""
    from .layers.common import get_attention_class
    from .unet import variant_arm_names

    out, spare = {}, iter(_FALLBACK_COLORS)
    for arm in variant_arm_names():
        out[arm] = get_attention_class(arm).color or next(spare, "#000000")
    return out


LABELS = RegistryView(_labels)  # recomputed on use: a mixer registered later gets its label and colour
PALETTE = RegistryView(_palette)
FLOOR_STYLE = {"mean": ":", "biharmonic": "--", "telea": "-.", "ns": (0, (6, 2, 1, 2, 1, 2))}
FLOORS = tuple(FLOOR_STYLE)
TABLE2_ORDER = ["baseline", "swap_self", "swap_cross", "swap_ffn", "swap_conv", "both_lambda", "both_lambda_dw", "moebius",
                "moebius_paper"]
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


# --------------------------------------------------------------------------------------------
# Aggregation


def attach_latency(runs: pd.DataFrame, profile: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``latency_ms`` and ``peak_mem_mb`` of each run's U-Net (forward, batch 1) from profile.csv."""
    runs = runs.copy()
    runs["latency_ms"], runs["peak_mem_mb"] = np.nan, np.nan
    runs["latency_hardware"] = None
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
            if "hardware" in hit:
                runs.loc[i, "latency_hardware"] = str(hit["hardware"].iloc[-1]) + (
                    f" x{int(float(hit['threads'].iloc[-1]))} thread(s)" if "threads" in hit and pd.notna(hit["threads"].iloc[-1]) else "")
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


def human(v: float, _pos=None) -> str:
    """1.2k / 3.4M / 5.6G tick labels."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def log_x_at(ax, values) -> None:
    """Log x axis whose ticks are the data's own values (legible over less than a decade)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    vals = sorted({float(v) for v in values if pd.notna(v) and v > 0})
    ax.set_xscale("log")
    if vals:
        ax.xaxis.set_major_locator(FixedLocator(vals))
        ax.xaxis.set_major_formatter(FuncFormatter(human))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="x", labelrotation=30, labelsize=6)


def log_y_clean(ax, subs=(1.0, 2.0, 5.0)) -> None:
    """Log y axis with labels at 1, 2, 5 x 10^k only (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: human(v) if v >= 1000 else f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def floor_lines(ax, floors: pd.DataFrame | None, metric: str) -> None:
    """The classical fills as horizontal reference lines (grey, one line style each)."""
    if floors is None or not len(floors) or metric not in floors:
        return
    for _, r in floors.drop_duplicates("arm").iterrows():
        v = r[metric]
        if pd.notna(v):
            ax.axhline(v, color="0.45", lw=0.8, ls=FLOOR_STYLE.get(r["arm"], "--"), label=label(r["arm"]), zorder=0)


def fig_quality_vs_size(runs: pd.DataFrame, metric: str, out_dir, name: str | None = None,
                        floors: pd.DataFrame | None = None) -> list[Path]:
    """Quality against parameters, MACs and measured latency: one line per variant, seed error bars,
    and the classical fills of the same test problems as reference lines."""
    import matplotlib.pyplot as plt

    style()
    summ = seed_summary(runs)
    costs = [c for c in COSTS if c in summ and summ[c].notna().any()]
    fig, axes = plt.subplots(1, len(costs), figsize=(2.5 * len(costs) + 1.6, 2.5), squeeze=False, sharey=True)
    for ax, cost in zip(axes[0], costs):
        floor_lines(ax, floors, metric)
        for arm, grp in summ.groupby("arm", sort=False):
            grp = grp.sort_values(cost)
            ax.errorbar(grp[cost], grp[f"{metric}_mean"], yerr=grp[f"{metric}_std"], marker="o", ms=3, capsize=2,
                        label=label(arm), color=color(arm))
        log_x_at(ax, summ[cost])
        ax.set_xlabel(COSTS[cost])
    axes[0][0].set_ylabel(METRICS[metric][0])
    handles, labels_ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6, frameon=False)
    n_img = int(summ["n_eval_images"].max()) if "n_eval_images" in summ else 0
    seeds = int(summ["n_seeds"].max())
    fig.suptitle(f"{METRICS[metric][0]} vs model cost ({n_img} test images, mean ± std over {seeds} seed(s); "
                 "grey: classical fills)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_dir, name or f"quality_vs_size_{metric}")


def consistent_block_rows(profile: pd.DataFrame, pass_: str = "fwd", kind: str = "block") -> pd.DataFrame:
    """The rows of one ``kind`` (``block``: bare mixers; ``arm_block``: a U-Net arm's mixing block) one
    cost line may join: the default construction (empty ``config``), one pass, batch 1, the most
    common thread count, dtype and hardware, one row per (variant, pixels) (the newest), sorted by
    pixels."""
    prof = profile[(profile["kind"] == kind) & (profile["pass"] == pass_)]
    if "config" in prof:  # the default construction only (not e.g. the memory-only explicit_ops rows)
        prof = prof[prof["config"].isna() | (prof["config"].astype(str).isin(["", "nan"]))]
    for col, keep in (("batch", 1), ("threads", None), ("dtype", None), ("hardware", None)):
        if col in prof and prof[col].notna().any():
            prof = prof[prof[col] == (keep if keep is not None else prof[col].mode().iloc[0])]
    if "measured_at" in prof:
        prof = prof.sort_values("measured_at", kind="stable")
    return prof.drop_duplicates(["variant", "pixels"], keep="last").sort_values("pixels", kind="stable")


def cost_rows(profile: pd.DataFrame, pass_: str = "fwd") -> dict[str, pd.DataFrame]:
    """{kind: rows} of the cost figure and the slopes table: the bare mixers' ``consistent_block_rows``
    and, where the profile has them, the arm blocks' measured on the same hardware."""
    out = {"block": consistent_block_rows(profile, pass_)}
    if (profile["kind"] == "arm_block").any():
        arm = consistent_block_rows(profile, pass_, kind="arm_block")
        if "hardware" in arm and len(out["block"]):
            arm = arm[arm["hardware"] == out["block"]["hardware"].iloc[0]]
        out["arm_block"] = arm
    return out


def fig_cost_vs_resolution(profile: pd.DataFrame, out_dir, name: str = "cost_vs_resolution",
                           slope_from: int = 32) -> list[Path]:
    """MACs, latency and peak memory vs pixel count, log-log, with fitted slopes: bare token mixers
    (solid) and, where the profile has them, each U-Net arm's whole mixing block (``arm_block``
    rows: norm, projections, self- and cross-mixer, FFN; dashed), so a block is compared with a block.
    The printed slopes are fitted from ``slope_from``² pixels up, as ``scaling_table``'s are."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    style()
    rows_of = cost_rows(profile)
    prof = rows_of["block"]
    lines = [(prof, "-", "o", "")] + ([(rows_of["arm_block"], "--", "s", " block")] if "arm_block" in rows_of else [])
    panels = [("macs", "MACs / sample"), ("latency_ms_median", "latency (ms)"), ("peak_mem_mb", "peak memory (MiB)")]
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.1))
    for ax, (col, ylabel) in zip(axes, panels):
        for rows, ls, mk, suffix in lines:
            for var, grp in rows.groupby("variant", sort=False):
                if col not in grp or grp[col].isna().all():
                    continue
                fit = grp[grp["pixels"] >= slope_from ** 2]
                slope = loglog_slope(fit["pixels"], fit[col])
                ax.plot(grp["pixels"], grp[col], ls=ls, marker=mk, ms=3, color=color(var), label=label(var) + suffix)
                last = grp.dropna(subset=[col]).iloc[-1]
                ax.annotate(f"{slope:.2f}", (last["pixels"], last[col]), xytext=(3, 0), textcoords="offset points",
                            fontsize=6, color=color(var), va="center")
        log_x_at(ax, prof["pixels"])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(round(v ** 0.5))}²"))
        ax.tick_params(axis="x", labelrotation=0)
        ax.set_xlim(right=ax.get_xlim()[1] * 1.8)  # room for the slope labels
        log_y_clean(ax, subs=(1.0,))
        ax.set_xlabel("pixels H·W")
        ax.set_title(ylabel, fontsize=8)
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=min(len(lab), 5), fontsize=6, frameon=False, bbox_to_anchor=(0.5, 0.0))
    width = int(prof["channels"].iloc[0]) if "channels" in prof and len(prof) else None
    hw = prof["hardware"].iloc[0] if "hardware" in prof and len(prof) else ""
    th = int(prof["threads"].iloc[0]) if "threads" in prof and len(prof) and prof["threads"].notna().any() else None
    what = "token mixers (solid) and arm blocks (dashed)" if len(lines) > 1 else "one token mixer"
    fig.suptitle(f"cost of {what} vs resolution (width {width}, batch 1, forward, {hw}"
                 + (f", {th} thread{'s' if th != 1 else ''}" if th else "")
                 + f"); numbers: log-log slopes from {slope_from}²", fontsize=8)
    fig.tight_layout(rect=(0, 0.08 * (1 + (len(h) > 5)), 1, 1))
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
    axes[0][0].set_ylabel("training loss (the run's target and weighting)")
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
    cols = ["masked input"] + [label(a).replace("floor: ", "").replace(" (= ", "\n(= ") for a in arms] + ["ground truth"]
    fig, axes = plt.subplots(n, len(cols), figsize=(0.95 * len(cols), 0.95 * n + 0.45), squeeze=False)
    for i in range(n):
        tiles = [first["masked"][i]] + [samples[a]["fill"][i] for a in arms] + [first["target"][i]]
        for j, tile in enumerate(tiles):
            ax = axes[i][j]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if i == 0:
                ax.set_title(cols[j], fontsize=5.5)
    return save_figure(fig, out_dir, name)


# --------------------------------------------------------------------------------------------
# Tables


def _fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    if std is None or not np.isfinite(std) or std == 0:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table2_cells(r) -> list[str]:
    """LPIPS, KID, FID, PSNR (mean ± seed std), params, GMACs, latency, peak memory, seeds of a
    ``seed_summary`` row: the columns the Table 2 shapes share."""
    return [
        _fmt(r.get("lpips_mean"), r.get("lpips_std")), _fmt(r.get("kid_mean"), r.get("kid_std"), 4),
        _fmt(r.get("fid_mean"), r.get("fid_std"), 1), _fmt(r.get("psnr_mean"), r.get("psnr_std"), 2),
        _fmt(r.get("params", np.nan) / 1e6, None, 3), _fmt(r.get("macs", np.nan) / 1e9, None, 3),
        _fmt(r.get("latency_ms", np.nan), None, 2), _fmt(r.get("peak_mem_mb", np.nan), None, 1),
        str(int(r["n_seeds"])),
    ]


def table2(runs: pd.DataFrame, caption: str, floors: pd.DataFrame | None = None) -> tuple[str, str]:
    """The paper's Table 2 shape: arm, KD, LPIPS, KID, FID, params, MACs, latency, peak memory, with
    the classical floor of the same test problems as the first rows.

    Arms that build the same network as a variant arm were trained once under the variant's name
    (``unet.canonical_arm``: baseline = linear, swap self = local_lambda, swap cross =
    interactive_lambda, Moebius = lmi); their Table 2 row is that run, and says so.
    Returns (markdown, latex).
    """
    from .unet import canonical_arm

    summ = seed_summary(runs).set_index("arm")
    head = ["arm", "KD", "LPIPS ↓", "KID ↓", "FID ↓", "PSNR ↑", "params (M)", "GMACs", "latency ms", "peak MB", "seeds"]
    rows = floor_table_rows(floors, head) if floors is not None and len(floors) else []
    for t2 in TABLE2_ORDER:
        arm = canonical_arm(t2)
        if arm not in summ.index:
            continue
        r = summ.loc[arm]
        name = label(t2) + ("" if arm == t2 else f" [run: {arm}]")
        rows.append([
            name, "no",
            *_table2_cells(r),
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


def table_kd(runs: pd.DataFrame, caption: str, floors: pd.DataFrame | None = None) -> tuple[str, str]:
    """The Table 2 shape with its KD half: latent-space arms without and with distillation, and the
    teacher(s). Columns: role, arm, KD, LPIPS, KID, FID, PSNR, params, GMACs (the U-Net on the latent),
    latency and peak memory (measured at the end of each run). Returns (markdown, latex)."""
    runs = runs.copy()
    runs["kd_col"] = [kd_label(r) for _, r in runs.iterrows()]
    teachers = set(runs["teacher_run"].dropna()) if "teacher_run" in runs else set()
    runs["role"] = ["teacher" if r["run_id"] in teachers else "student" for _, r in runs.iterrows()]
    if "train_steps" in runs:
        # a student trained for another budget than the KD students (the equal-compute arm: as long
        # as a KD run takes) is its own row, never pooled with the students of the common budget
        kd_steps = runs.loc[(runs["role"] == "student") & is_true(runs["kd"]), "train_steps"].dropna()
        if len(kd_steps):
            base = kd_steps.mode().iloc[0]
            other = (runs["role"] == "student") & runs["train_steps"].notna() & (runs["train_steps"] != base)
            runs.loc[other, "kd_col"] = [f"{k}, {int(n)} steps" + (" (equal compute)" if k == "no" and n > base else "")
                                         for k, n in zip(runs.loc[other, "kd_col"], runs.loc[other, "train_steps"])]
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
    if floors is not None and len(floors):
        for r in floor_table_rows(floors, head):
            r[0] = "floor"
            rows.append(r)
    for _, r in summ.iterrows():
        rows.append([
            r["role"], label(r["arm"]), str(r["size"]), r["kd_col"],
            *_table2_cells(r),
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


def quality_table(runs: pd.DataFrame, caption: str, floors: pd.DataFrame | None = None) -> str:
    """Markdown table of the quality-versus-size study (mean ± std over seeds), the classical floor
    of the same test problems first."""
    summ = seed_summary(runs)
    head = ["variant", "size", "params (M)", "GMACs", "LPIPS ↓", "LPIPS hole ↓", "PSNR ↑", "SSIM ↑", "KID ↓", "FID ↓",
            "seeds"]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    if floors is not None and len(floors):
        md += "".join("| " + " | ".join(r) + " |\n" for r in floor_table_rows(floors, head))
    for _, r in summ.iterrows():
        md += "| " + " | ".join([
            label(r["arm"]), str(r["size"]), _fmt(r["params"] / 1e6, None, 3), _fmt(r["macs"] / 1e9, None, 3),
            _fmt(r.get("lpips_mean"), r.get("lpips_std")), _fmt(r.get("lpips_hole_mean"), r.get("lpips_hole_std")),
            _fmt(r.get("psnr_mean"), r.get("psnr_std"), 2),
            _fmt(r.get("ssim_mean"), r.get("ssim_std")), _fmt(r.get("kid_mean"), r.get("kid_std"), 4),
            _fmt(r.get("fid_mean"), r.get("fid_std"), 1), str(int(r["n_seeds"])),
        ]) + " |\n"
    return md + f"\n{caption}\n"


def scaling_table(profile: pd.DataFrame, min_side: int = 32, pass_: str = "fwd") -> pd.DataFrame:
    """Log-log slopes of MACs, latency and peak memory against pixels, per bare mixer (``block`` rows)
    and per arm's mixing block (``arm_block``), over the sides from ``min_side`` up: the rows the
    cost figure draws (``consistent_block_rows``), so table, figure and README quote one measurement.
    A slope of 1 is linear in the pixels, 2 quadratic. Below 32² fixed per-call costs flatten every
    latency curve, hence the default."""
    rows = []
    for kind, prof in cost_rows(profile, pass_).items():
        prof = prof[prof["pixels"] >= min_side ** 2]
        for var, grp in prof.groupby("variant", sort=False):
            if grp["pixels"].nunique() < 2:
                continue
            lo, hi = (int(round(v ** 0.5)) for v in (grp["pixels"].min(), grp["pixels"].max()))
            rows.append({"variant": var, "kind": {"block": "mixer", "arm_block": "arm block"}[kind],
                         "sides": f"{lo}²→{hi}²",
                         **{f"{m}_slope": loglog_slope(grp["pixels"], grp[c]) if c in grp else np.nan
                            for m, c in (("macs", "macs"), ("latency", "latency_ms_median"), ("memory", "peak_mem_mb"))},
                         "hardware": str(grp["hardware"].iloc[0]) if "hardware" in grp else ""})
    return pd.DataFrame(rows)


def load_samples(samples_dir: Path | str, runs: pd.DataFrame, label_of=None) -> dict[str, dict[str, np.ndarray]]:
    """label -> arrays from ``samples/<run_id>.npz`` (written by ``ablations collect``) for the rows of
    ``runs``, in row order; ``label_of(row)`` names a column (default: ``label(arm)``)."""
    out = {}
    for _, r in runs.iterrows():
        path = Path(samples_dir) / f"{r['run_id']}.npz"
        if path.exists():
            with np.load(path) as z:
                out[(label_of or (lambda row: label(row["arm"])))(r)] = {k: z[k] for k in ("masked", "fill", "target")}
    return out


def caption_for(runs: pd.DataFrame, preset: str) -> str:
    done = runs[runs["status"] == "done"] if "status" in runs else runs
    n_img = int(done["n_eval_images"].max()) if "n_eval_images" in done and len(done) else 0
    res = int(done["image_size"].max()) if "image_size" in done and len(done) else 0
    hw = ", ".join(sorted(set(map(str, done.get("hardware", pd.Series(dtype=str)).dropna())))) or "unknown hardware"
    lat_hw = ", ".join(sorted(set(map(str, done.get("latency_hardware", pd.Series(dtype=str)).dropna()))))
    seeds = int(done.groupby(["arm", "size"])["seed"].nunique().max()) if len(done) else 0
    recipe = preset_recipe(preset)
    steps = sorted(set(int(s) for s in done["steps"].dropna())) if "steps" in done else []
    lat = (f"Latency / peak memory: U-Net forward at batch 1 from the profile sweep on {lat_hw}." if lat_hw
           else "Latency: not profiled for these runs.")
    return (f"Preset `{preset}`: {res}x{res} crops of the embedded test split, {n_img} test images with fixed masks "
            f"(the same for every row, the classical floor included), mean ± std over up to {seeds} seed(s); "
            f"{recipe_label(recipe['prediction'], recipe['loss_weighting'])} training"
            + (f", {'/'.join(map(str, steps))} steps" if steps else "") + f", trained on {hw}; no distillation (KD). "
            + lat)


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
    axes[0].set_ylabel("training loss (rolling mean)")
    key = next((k for k in ("psnr_hole", "psnr") if any(k in r for r in evals)), None)
    if key:
        axes[1].plot([r["step"] for r in evals if key in r], [r[key] for r in evals if key in r], marker="o", ms=3)
        axes[1].set_ylabel(f"{key} (periodic eval, EMA)")
    axes[1].set_xlabel("step")
    return save_figure(fig, out_dir, name)


# --------------------------------------------------------------------------------------------
# The classical floor, the recipe of a preset, convergence, paired comparisons


def split_kinds(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(learned runs, classical-floor runs); rows without ``kind`` are learned (recorded before it)."""
    kind = runs["kind"].fillna("model") if "kind" in runs else pd.Series("model", index=runs.index)
    return runs[kind != "floor"], runs[kind == "floor"]


def floors_at(floors: pd.DataFrame, image_size) -> pd.DataFrame:
    """The floor rows scored at ``image_size`` (the test problems of a table), in ``FLOORS`` order."""
    if floors is None or not len(floors):
        return floors
    sub = floors[floors["image_size"] == image_size]
    order = {a: i for i, a in enumerate(FLOORS)}
    return sub.sort_values("arm", key=lambda c: c.map(order))


def preset_recipe(preset: str) -> dict:
    """The prediction target and loss weighting of a preset (``config.PRESETS``; defaults eps / none)."""
    from .config import PRESETS

    p = PRESETS.get(preset, {})
    return {"prediction": p.get("diffusion.prediction", "eps"), "loss_weighting": p.get("diffusion.loss_weighting", "none"),
            "steps": p.get("train.steps"), "decay_steps": p.get("train.decay_steps", 0), "lr": p.get("train.lr"),
            "lambda_gain": p.get("model.lambda_gain")}


@functools.lru_cache(maxsize=None)
def lambda_arm(arm) -> bool:
    """Whether ``model.lambda_gain`` reaches some mixer of ``arm`` (a network with lambda layers
    that take the preset's gain); False for an unknown arm or a classical fill."""
    from .unet import ARMS, unet_config

    if not isinstance(arm, str) or arm not in ARMS:
        return False
    return unet_config(arm, "tiny", lambda_gain=1.0, table_size=64).uses_lambda_gain  # any valid size


def _gain(x):
    """A recorded lambda gain as a float, or None (none / not recorded)."""
    if _missing(x) or (isinstance(x, str) and x.strip().lower() in ("", "none", "nan")):
        return None
    return float(x)


def _same_gain(a, b) -> bool:
    a, b = _gain(a), _gain(b)
    return (a is None and b is None) or (a is not None and b is not None and bool(np.isclose(a, b, rtol=1e-9, atol=0)))


def with_recipe(runs: pd.DataFrame, preset: str, any_budget: bool = False) -> pd.DataFrame:
    """Learned runs trained with the preset's recipe (the study's rows; convergence variants left out).
    ``any_budget``: keep every ``train.steps`` of that recipe (the budget table), not only the preset's."""
    want = preset_recipe(preset)
    pred = runs["prediction"].fillna("eps") if "prediction" in runs else pd.Series("eps", index=runs.index)
    lw = runs["loss_weighting"].fillna("none") if "loss_weighting" in runs else pd.Series("none", index=runs.index)
    keep = (pred == want["prediction"]) & (lw == want["loss_weighting"])
    if "train_decay_steps" in runs:  # a cool-down is a convergence variant, not a study row
        keep &= runs["train_decay_steps"].fillna(0) == want["decay_steps"]
    if "train_lr" in runs and want["lr"] is not None:  # so is a learning-rate probe
        lr = pd.to_numeric(runs["train_lr"], errors="coerce")
        keep &= lr.isna() | np.isclose(lr.fillna(want["lr"]), want["lr"], rtol=1e-9, atol=0)
    if len(runs):  # an arm with lambda layers trained with another output gain than the preset's is a probe
        gains = runs["lambda_gain"] if "lambda_gain" in runs else pd.Series(None, index=runs.index, dtype=object)
        lam = runs["arm"].map(lambda_arm) if "arm" in runs else pd.Series(False, index=runs.index)
        keep &= ~lam | gains.map(lambda g: _same_gain(g, want["lambda_gain"]))
    if "unet_overrides" in runs and len(runs):
        # an arm with its architecture changed (a wider LλMI) is a variant beside the arm as
        # registered: where an (arm, size) has runs of both, the registered one is the study row
        plain = runs["unet_overrides"].fillna("").astype(str).isin(["", "{}"])
        group = [runs[c].astype(str) for c in ("arm", "size") if c in runs]
        has_plain = plain.groupby(group).transform("any") if group else pd.Series(plain.any(), index=runs.index)
        keep &= plain | ~has_plain
    out = runs[keep]
    if any_budget:
        return out
    if "train_steps" in out and want["steps"] is not None and len(out):
        # the preset's budget only, once any run has it: arms are compared at equal steps (another
        # budget of the same config is a point of the convergence curve). Runs of a config with its
        # own budget (no run at the preset's) are all kept.
        pref = (out["train_steps"].isna() | (out["train_steps"] == want["steps"])).astype(bool)
        if (out["train_steps"] == want["steps"]).any():
            out = out[pref]
    return out


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def recipe_label(prediction, weighting, decay_steps=0, steps=None, lr=None, base_lr=None, unet=None,
                 gain=None, base_gain=None, lambda_layers=False) -> str:
    """"v + Min-SNR", ", cool-down 3000→4000" for a run whose LR decays over its last steps,
    ", lr 0.002" for a run whose learning rate is not the preset's ``base_lr``, ", widths
    [36, 72]" for an arm with architecture overrides (``unet``: their JSON, as collected), and for an
    arm with lambda layers (``lambda_layers``) whose output gain ``gain`` is not the preset's
    ``base_gain``: ", no λ gain" or ", λ gain 0.2"."""
    p = "ε" if _missing(prediction) or prediction == "eps" else str(prediction)
    w = "" if _missing(weighting) or weighting == "none" else " + Min-SNR"
    d = 0 if _missing(decay_steps) else decay_steps
    c = f", cool-down {int(steps) - int(d)}→{int(steps)}" if d and steps is not None else ""
    r = f", lr {float(lr):g}" if not _missing(lr) and not _missing(base_lr) and not np.isclose(float(lr), float(base_lr)) else ""
    a, scales = "", set()
    if not _missing(unet) and str(unet) not in ("", "{}"):
        over = json.loads(unet) if isinstance(unet, str) else dict(unet)
        for key in ("self_kwargs", "cross_kwargs"):  # a layer_scale there is the λ gain, said below
            if isinstance(over.get(key), dict) and "layer_scale" in over[key]:
                scales.add(over[key]["layer_scale"])
                over[key] = {k: v for k, v in over[key].items() if k != "layer_scale"}
                if not over[key]:
                    del over[key]
        a = "".join(f", {k} {json.dumps(v, separators=(', ', ': '))}" for k, v in sorted(over.items()))
    g = ""
    if lambda_layers and not _same_gain(gain, base_gain):
        g = ", no λ gain" if _gain(gain) is None else f", λ gain {_gain(gain):g}"
    if not g and len(scales) == 1:  # set on the layers themselves (an arm whose own layers have none)
        v = scales.pop()
        g = ", no λ gain" if v is None else f", λ gain {float(v):g}"
    return f"{p}{w}{c}{r}{a}{g}"


def _recipes(ev: pd.DataFrame, base_lr=None, base_gain=None) -> list[str]:
    cols = [ev[c] if c in ev else pd.Series(None, index=ev.index) for c in
            ("prediction", "loss_weighting", "train_decay_steps", "train_steps", "train_lr", "unet_overrides",
             "lambda_gain", "arm")]
    return [recipe_label(*vals[:5], base_lr=base_lr, unet=vals[5], gain=vals[6], base_gain=base_gain,
                         lambda_layers=lambda_arm(vals[7])) for vals in zip(*cols)]


CONVERGENCE_PANELS = (("lpips_hole", "LPIPS (hole) ↓"), ("lpips", "LPIPS (whole) ↓"), ("fid", "FID ↓"),
                      ("psnr_hole", "PSNR dB (hole) ↑"))


def fig_convergence(evals: pd.DataFrame, out_dir, floors: pd.DataFrame | None = None,
                    name: str = "convergence", base_lr=None, base_gain=None) -> list[Path]:
    """Periodic full evaluations against training steps: one line per (arm, prediction target,
    weighting), mean over seeds; the classical fills of the same problems as grey lines."""
    import matplotlib.pyplot as plt

    style()
    ev = evals.copy()
    ev["recipe"] = _recipes(ev, base_lr, base_gain)
    panels = [(c, t) for c, t in CONVERGENCE_PANELS if c in ev and ev[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels) + 1.8, 2.4), squeeze=False)
    styles = {"v + Min-SNR": "-", "v": "--", "ε": ":", "ε + Min-SNR": "-.", "x0": (0, (3, 1, 1, 1))}
    for ax, (col, title) in zip(axes[0], panels):
        floor_lines(ax, floors, col)
        for (arm, recipe), grp in ev.groupby(["arm", "recipe"], sort=True):
            curve = grp.groupby("step")[col].mean()
            cool = "cool-down" in recipe
            probe = cool or recipe not in styles  # a cool-down, another lr / architecture / λ gain: faded
            ax.plot(curve.index, curve.values, marker="s" if cool else "o", ms=2.5 if cool else (1.2 if probe else 2),
                    lw=1, color=color(arm), alpha=0.45 if probe else 1.0,
                    ls=(0, (4, 1.5)) if cool else styles.get(recipe, (0, (1, 1))),  # a probe: dotted
                    label=f"{label(arm).split(' (=')[0]}, {recipe}")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("training step")
        if col in ("lpips", "lpips_hole", "fid"):
            log_y_clean(ax)
    handles, labels_ = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels_:
                handles.append(h)
                labels_.append(lab)
    fig.legend(handles, labels_, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6, frameon=False)
    n = int(ev["n"].max()) if "n" in ev and ev["n"].notna().any() else 0
    fig.suptitle(f"convergence: periodic evaluation of the EMA weights on the {n} evaluation images "
                 "(grey: classical fills of the same problems)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_dir, name)


def floor_table_rows(floors: pd.DataFrame, head: list[str]) -> list[list[str]]:
    """Rows for the floor in a table of columns ``head`` (metric columns filled, costs '0' / '–')."""
    col_of = {"LPIPS ↓": ("lpips", 3), "LPIPS hole ↓": ("lpips_hole", 3), "PSNR ↑": ("psnr", 2),
              "PSNR hole ↑": ("psnr_hole", 2), "SSIM ↑": ("ssim", 3), "KID ↓": ("kid", 4), "FID ↓": ("fid", 1),
              "smooth gap ↓": ("smoothness_gap", 3)}
    rows = []
    for _, r in floors.iterrows():
        row = []
        for h in head:
            if h in ("variant", "arm"):
                row.append(label(r["arm"]))
            elif h in col_of:
                c, dg = col_of[h]
                row.append(_fmt(r.get(c), None, dg))
            elif h in ("params (M)", "GMACs"):
                row.append("0")
            elif h == "seeds":
                row.append("–")
            elif h == "KD":
                row.append("–")
            elif h == "size":
                row.append("classical")
            else:
                row.append("–")
        rows.append(row)
    return rows


def paired_rows(per_image: pd.DataFrame, runs: pd.DataFrame, refs: list[str], metrics=("lpips", "psnr"),
                confidence: float = 0.95) -> list[dict]:
    """Every learned (arm, size) of ``runs`` against each reference arm in ``refs`` (a floor method or
    a learned arm at the same size), paired over the test images: a list of ``stats.Paired`` dicts."""
    from .stats import compare

    out = []
    if per_image is None or not len(per_image):
        return out
    pi = per_image[per_image["run_id"].isin(set(runs["run_id"]))]
    learned, floors = split_kinds(runs)
    for (arm, size), grp in learned.groupby(["arm", "size"], sort=False):
        mine = pi[pi["run_id"].isin(set(grp["run_id"]))]
        if not len(mine):
            continue
        for ref in refs:
            if ref == arm:
                continue
            if ref in FLOORS:
                ref_runs = floors[(floors["arm"] == ref) & (floors["image_size"] == grp["image_size"].iloc[0])]
            else:
                ref_runs = learned[(learned["arm"] == ref) & (learned["size"] == size)]
            theirs = pi[pi["run_id"].isin(set(ref_runs["run_id"]))]
            if not len(theirs):
                continue
            for m in metrics:
                if mine[m].notna().any() and theirs[m].notna().any():
                    p = compare(mine, theirs, m, f"{arm}/{size}", ref if ref in FLOORS else f"{ref}/{size}",
                                confidence=confidence)
                    out.append({"arm": arm, "size": size, "ref": ref, **p.to_dict()})
    return out


PAIRED_CAPTION = ("Paired comparisons on the same test problems: A − B is the mean over test images of the "
                  "per-image difference (each arm first averaged over its seeds); the interval is a BCa bootstrap "
                  "over images (scipy, 9,999 resamples, fixed seed). It covers the test problems, not training "
                  "randomness: the seed std of each arm is beside it. LPIPS: lower is better; PSNR: higher.")


def ci_header(rows: list[dict], default: float = 0.95) -> str:
    """The interval column's header, "95% CI", from the rows' ``confidence`` (``stats.Paired``); rows
    at different levels cannot share one column, so that is an error rather than a wrong header."""
    levels = {round(float(r.get("confidence", default)), 6) for r in rows} or {default}
    if len(levels) > 1:
        raise ValueError(f"rows mix confidence levels {sorted(levels)}: one table, one level")
    return f"{levels.pop() * 100:g}% CI"


def paired_table(rows: list[dict], caption: str) -> str:
    """Markdown: A − B with its paired bootstrap interval, the seed spread of each, and the verdict."""
    head = ["A", "B", "metric", "A", "B", "A − B", ci_header(rows), "seeds A / B", "seed std A / B", "verdict"]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    for r in rows:
        dg = 3 if r["metric"].startswith(("lpips", "ssim")) else 2
        f = f"{{:.{dg}f}}"
        sd = " / ".join("–" if not np.isfinite(v) else f.format(v) for v in (r["seed_std_a"], r["seed_std_b"]))
        md += "| " + " | ".join([
            label(r["arm"]) + f" ({r['size']})", label(r["ref"]) if r["ref"] in FLOORS else label(r["ref"]), r["metric"],
            f.format(r["mean_a"]), f.format(r["mean_b"]), f.format(r["diff"]),
            f"[{f.format(r['lo'])}, {f.format(r['hi'])}]", f"{r['seeds_a']} / {r['seeds_b']}", sd, r["verdict"]]) + " |\n"
    return md + f"\n{caption}\n"


BUDGET_CAPTION = ("Every finished run of the preset's recipe, grouped by training budget (a longer budget extends "
                  "the shorter run of the same seed). Mean over seeds. \"Target\" is the issue's floor target: better "
                  "than biharmonic and Telea on whole-image LPIPS, FID and KID (means). The Δ columns are paired "
                  "per-image differences against each fill, with BCa 95% intervals over the test images "
                  "(`lambda_blocks.stats`). FID and KID are set-level, so they get no per-image interval.")


def floor_target(runs: pd.DataFrame, floors: dict) -> str:
    """"yes" / "no": whether the mean over ``runs`` meets the floor target against the fills of
    ``floors`` ({fill: its record}; ``pretrained.versus_floor``: better than biharmonic and Telea on
    LPIPS, FID and KID); "–" when a fill or a metric is missing."""
    from .pretrained import TARGET_METRICS, versus_floor

    mean = {m: float(runs[m].mean()) for m in TARGET_METRICS if m in runs and runs[m].notna().any()}
    ref = {k: {m: float(f[m]) for m in TARGET_METRICS if m in f and pd.notna(f[m])} for k, f in floors.items()}
    return {True: "yes", False: "no", None: "–"}[versus_floor(mean, ref)["target"]]


def budget_table(runs: pd.DataFrame, per_image: pd.DataFrame | None, floors: pd.DataFrame,
                 refs=None) -> str:
    """Markdown: per (arm, size, training budget) of ``runs`` (one recipe, any budget), the mean
    LPIPS / FID / KID / PSNR, the seeds, whether it meets the floor target (``pretrained.versus_floor``:
    beats every fill of ``refs``, default biharmonic and Telea, on LPIPS, FID and KID), and paired
    LPIPS and PSNR differences against each fill."""
    from .pretrained import TARGET_FLOORS
    from .stats import compare

    if refs is None:
        refs = TARGET_FLOORS
    fl = {r["arm"]: r for _, r in floors.iterrows()} if floors is not None else {}
    refs = [r for r in refs if r in fl]
    head = ["arm", "size", "steps", "LPIPS ↓", "FID ↓", "KID ↓", "PSNR ↑", "seeds", "target"]
    for r in refs:
        head += [f"Δ LPIPS vs {label(r).replace('floor: ', '')} [95% CI]", f"Δ PSNR vs {label(r).replace('floor: ', '')} [95% CI]"]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    pi = per_image if per_image is not None else pd.DataFrame(columns=["run_id"])
    for (arm, size, steps), g in runs.groupby(["arm", "size", "train_steps"], sort=True):
        mean = {m: float(g[m].mean()) if m in g and g[m].notna().any() else float("nan")
                for m in ("lpips", "fid", "kid", "psnr")}
        verdict = floor_target(g, {r: fl[r] for r in refs})
        row = [label(arm).split(" (=")[0], str(size), str(int(steps)), _fmt(mean["lpips"]), _fmt(mean["fid"], None, 1),
               _fmt(mean["kid"], None, 4), _fmt(mean["psnr"], None, 2), str(g["seed"].nunique()), verdict]
        mine = pi[pi["run_id"].isin(set(g["run_id"]))]
        for r in refs:
            theirs = pi[pi["run_id"] == fl[r]["run_id"]] if "run_id" in fl[r] else pi.iloc[:0]
            for m, dg in (("lpips", 3), ("psnr", 2)):
                if len(mine) and len(theirs) and mine[m].notna().any():
                    c = compare(mine, theirs, m, arm, r)
                    f = f"{{:+.{dg}f}}"
                    row.append(f"{f.format(c.diff)} [{f.format(c.lo)}, {f.format(c.hi)}]")
                else:
                    row.append("–")
        md += "| " + " | ".join(row) + " |\n"
    return md + f"\n{BUDGET_CAPTION}\n"


def autoencoder_table(ae: pd.DataFrame) -> str:
    """Markdown: every recorded autoencoder run (``results/<preset>/autoencoders.csv``), reconstruction
    quality on the test split beside its factor, widths, steps and perceptual weight."""
    head = ["factor", "widths", "steps", "perceptual weight", "PSNR dB ↑", "SSIM ↑", "LPIPS ↓", "train s", "run"]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    for _, r in ae.sort_values(["factor", "steps", "perceptual_weight"], ascending=[False, True, False]).iterrows():
        widths = ", ".join(str(w) for w in json.loads(r["widths"])) if isinstance(r["widths"], str) else "–"
        md += "| " + " | ".join([str(int(r["factor"])), widths, str(int(r["steps"])), f"{float(r['perceptual_weight']):g}",
                                 _fmt(r["psnr"], None, 1), _fmt(r["ssim"]), _fmt(r["lpips"]),
                                 f"{float(r['train_time_s']):.0f}", str(r["ae_run"])]) + " |\n"
    return md + ("\nAutoencoders on the test split (reconstruction of every test image through the posterior mean; "
                 "LPIPS with real AlexNet weights), one thread.\n")


def convergence_table(evals: pd.DataFrame, floors: pd.DataFrame | None = None,
                      steps=(250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 8000, 9000, 10000, 12000, 15000),
                      base_lr=None, base_gain=None) -> str:
    """Markdown: the periodic full evaluations at a few steps, per (arm, recipe), mean over seeds,
    with the floor of the same problems first; a run whose learning rate is not ``base_lr`` (the
    preset's) is its own recipe."""
    ev = evals.copy()
    ev["recipe"] = _recipes(ev, base_lr, base_gain)
    head = ["arm", "recipe", "step", "LPIPS ↓", "LPIPS hole ↓", "FID ↓", "KID ↓", "PSNR hole ↑", "seeds"]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    if floors is not None and len(floors):
        for _, r in floors.iterrows():
            md += "| " + " | ".join([label(r["arm"]), "–", "–", _fmt(r.get("lpips")), _fmt(r.get("lpips_hole")),
                                     _fmt(r.get("fid"), None, 1), _fmt(r.get("kid"), None, 4),
                                     _fmt(r.get("psnr_hole"), None, 2), "–"]) + " |\n"
    ev = ev[ev["step"].isin(steps)]
    if "seed" in ev and "train_steps" in ev:
        # two runs of one seed and recipe (a short probe and a longer run trained apart) score the same
        # network at their shared steps: the longest run's point is kept, so a seed counts once
        budget = pd.to_numeric(ev["train_steps"], errors="coerce").fillna(0)
        longest = budget.groupby([ev["arm"], ev["recipe"], ev["step"], ev["seed"]]).transform("max")
        ev = ev[budget == longest]
    agg = ev.groupby(["arm", "recipe", "step"], sort=True)
    def mean(g, c):
        return float(g[c].mean()) if c in g and g[c].notna().any() else float("nan")

    for (arm, recipe, step), g in agg:
        md += "| " + " | ".join([label(arm).split(" (=")[0], recipe, str(int(step)), _fmt(mean(g, "lpips")),
                                 _fmt(mean(g, "lpips_hole")), _fmt(mean(g, "fid"), None, 1),
                                 _fmt(mean(g, "kid"), None, 4), _fmt(mean(g, "psnr_hole"), None, 2),
                                 str(g["seed"].nunique() if "seed" in g else g["run_id"].nunique())]) + " |\n"
    n = int(ev["n"].max()) if "n" in ev and ev["n"].notna().any() else 0
    return md + (f"\nConvergence: the EMA weights scored every 250 steps on the {n} evaluation images (20 DDIM steps; "
                 "ε runs: leading spacing, v runs: trailing), the classical fills of the same problems first.\n")


# ---------------------------------------------------------------------------------------------
# The paper's ordering claims for Table 2 (MOEBIUS_SPEC section 10), checked with paired intervals

SINGLE_COMPRESSIONS = ("swap_self", "swap_cross", "swap_ffn", "swap_conv")
COMBINED_COMPRESSIONS = ("both_lambda", "both_lambda_dw", "moebius", "moebius_paper")
CLAIM_ALONE = "each compression alone, without KD, costs quality"
CLAIM_COMBINED = "compressions combined, without KD, cost quality"
CLAIM_KD = "KD recovers quality"
CLAIM_CLOSE = "Moebius with KD is close to the baseline with KD"


def paper_claims(per_image: pd.DataFrame | None, runs: pd.DataFrame, floors: pd.DataFrame | None = None,
                 metrics=("lpips", "psnr"), confidence: float = 0.95) -> list[dict]:
    """The paper's Table 2 ordering claims, each as paired comparisons over the same test images.

    ``runs``: the learned runs of one space and one image size (the pixel-space Table 2 arms, or the
    latent-space students and their teacher). Teachers are left out; KD rows are the adaptive-weight
    students, and where the KD students have a common budget, only runs of that budget count (the
    equal-compute arm is its own comparison, not a Table 2 row). Claims, A against B:

    - ``CLAIM_ALONE``: each single swap without KD against the baseline without KD; holds when the
      baseline is better (the interval excludes 0 on the baseline's side).
    - ``CLAIM_COMBINED``: the combined arms (both λ, both λ + DW, Moebius, the paper's Moebius) the same way.
    - ``CLAIM_KD``: each arm with KD against itself without KD; holds when KD is better.
    - ``CLAIM_CLOSE``: Moebius with KD against the baseline with KD; holds when the interval covers 0.

    ``holds`` is "yes", "no" (the interval excludes 0 the other way, or the baseline + KD is
    better for ``CLAIM_CLOSE``) or "not shown" (an interval that covers 0). ``floor_a`` / ``floor_b``
    say whether each side meets the floor target (``pretrained.versus_floor``: better than biharmonic
    and Telea on LPIPS, FID and KID; "–" without a floor): a claim about arms that lose to a classical
    fill is no evidence about the architecture, whatever its interval says.
    """
    from .stats import compare
    from .unet import canonical_arm

    out: list[dict] = []
    if per_image is None or not len(per_image) or runs is None or not len(runs):
        return out
    r = runs.copy()
    if "teacher_run" in r:
        r = r[~r["run_id"].isin(set(r["teacher_run"].dropna()))]
    r["_kd"] = is_true(r["kd"]) if "kd" in r else False
    if "kd_weighting" in r:
        w = r["kd_weighting"].astype(object)
        r = r[~r["_kd"] | w.isna() | (w == "adaptive")]
    if "train_steps" in r and r["_kd"].any():
        base = r.loc[r["_kd"], "train_steps"].dropna()
        if len(base):
            r = r[r["train_steps"].isna() | (r["train_steps"] == base.mode().iloc[0])]
    pi = per_image[per_image["run_id"].isin(set(r["run_id"]))]
    fl = {f["arm"]: f for _, f in floors.iterrows()} if floors is not None and len(floors) else {}

    def runs_of(arm: str, kd: bool) -> pd.DataFrame:  # recorded arms are canonical (config._build)
        return r[(r["arm"] == canonical_arm(arm)) & (r["_kd"] == kd)]

    def name(arm: str, kd: bool) -> str:
        return label(arm).split(" (=")[0] + (" + KD" if kd else "")

    def add(claim: str, a: tuple[str, bool], b: tuple[str, bool], want: str) -> None:
        """``want``: "a" (A better is the claim), "b" (B better), "close" (no clear difference)."""
        ga, gb = runs_of(*a), runs_of(*b)
        if not len(ga) or not len(gb):
            return
        pa, pb = pi[pi["run_id"].isin(set(ga["run_id"]))], pi[pi["run_id"].isin(set(gb["run_id"]))]
        for m in metrics:
            if not (m in pa and pa[m].notna().any() and pb[m].notna().any()):
                continue
            p = compare(pa, pb, m, name(*a), name(*b), confidence=confidence)
            if want == "close":
                holds = "no" if (p.a_better or p.b_better) else "yes"
            else:
                right, wrong = (p.a_better, p.b_better) if want == "a" else (p.b_better, p.a_better)
                holds = "yes" if right else "no" if wrong else "not shown"
            out.append({"claim": claim, "arm_a": a[0], "kd_a": a[1], "arm_b": b[0], "kd_b": b[1], **p.to_dict(),
                        "holds": holds, "floor_a": floor_target(ga, fl), "floor_b": floor_target(gb, fl)})

    for arm in TABLE2_ORDER:
        if arm in SINGLE_COMPRESSIONS or arm in COMBINED_COMPRESSIONS:
            add(CLAIM_ALONE if arm in SINGLE_COMPRESSIONS else CLAIM_COMBINED, (arm, False), ("baseline", False), "b")
    for arm in TABLE2_ORDER:
        add(CLAIM_KD, (arm, True), (arm, False), "a")
    add(CLAIM_CLOSE, ("moebius", True), ("baseline", True), "close")
    return out


CLAIMS_CAPTION = ("The paper's Table 2 ordering (MOEBIUS_SPEC section 10), each claim as paired comparisons of "
                  "A against B on the same test problems: A − B is the mean per-image difference (each arm first "
                  "averaged over its seeds), the interval a BCa bootstrap over images (`lambda_blocks.stats`). "
                  "\"holds\": yes / no when the interval excludes 0 (for \"close\": yes when it covers 0), "
                  "\"not shown\" otherwise. \"floor\": whether A / B each beat biharmonic and Telea on LPIPS, FID "
                  "and KID; where an arm does not, the row says nothing about the architecture.")


def claims_table(rows: list[dict], caption: str = CLAIMS_CAPTION) -> str:
    """Markdown of ``paper_claims`` rows: claim, A, B, metric, means, A − B [CI], seeds, holds, floor."""
    head = ["claim", "A", "B", "metric", "A", "B", "A − B", ci_header(rows), "seeds A / B", "holds", "floor A / B"]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    for r in rows:
        f = f"{{:.{3 if r['metric'].startswith(('lpips', 'ssim')) else 2}f}}"
        md += "| " + " | ".join([
            r["claim"], r["a"], r["b"], r["metric"], f.format(r["mean_a"]), f.format(r["mean_b"]), f.format(r["diff"]),
            f"[{f.format(r['lo'])}, {f.format(r['hi'])}]", f"{r['seeds_a']} / {r['seeds_b']}", r["holds"],
            f"{r['floor_a']} / {r['floor_b']}"]) + " |\n"
    return md + f"\n{caption}\n"
