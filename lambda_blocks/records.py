"""Run folders: content-addressed names, atomic files, JSONL logs, checkpoints without pickled modules.

Layout of ``{out}/{arm}-{preset}-{size}-s{seed}-{config_hash}/``::

    config.json     resolved config (ExpCfg.to_dict()) + "config_hash"; written before training
    env.json        runtime.environment_info() + the runtime flags + world size + AMP state
    metrics.jsonl   one JSON object per line, appended and flushed whole:
                      {"kind": "train", "step", "loss", "lr", "grad_norm", "images_per_s", "elapsed"}
                      {"kind": "eval", "step", "val_loss", "psnr", "psnr_hole", "ssim", "ssim_hole", "n", ...}
                      {"kind": "final", "step", ...the summary metrics}
    ckpt.pt         {"model", "ema", "optimizer", "scheduler", "step", "rng", "config", "config_hash",
                     "versions"}; tensors and plain containers only (torch.load(weights_only=True))
    samples.png     grid, one row per fixed test image: masked input | fill | ground truth
    samples.npz     the same as uint8 (N, H, W, 3) arrays "masked", "fill", "target", plus "mask", "ids"
    summary.json    final metrics and "status": "done" (a run with it is skipped)
    error.json      {"error", "step", "traceback"} when training stopped on an error
    eval-<hash>.json  re-evaluations by ``python -m lambda_blocks.evaluate``

Every file except the JSONL log is written to a temporary name and moved into place with
``os.replace``, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "SUMMARY_KEYS", "RunPaths", "atomic_write_bytes", "atomic_write_text", "write_json", "read_json",
    "append_jsonl", "read_jsonl", "truncate_jsonl", "save_checkpoint", "load_checkpoint", "is_done",
    "to_uint8", "write_samples", "run_lock", "claim_config", "RunBusy", "ForeignRun",
]

SUMMARY_KEYS = (
    "status", "config_hash", "arm", "size", "preset", "seed", "image_size",
    "psnr", "psnr_hole", "ssim", "ssim_hole", "lpips", "lpips_hole", "lpips_source",
    "fid", "kid", "kid_std", "kid_subset_size", "n_fid_images", "n_eval_images",
    "smoothness_gap", "smoothness_gap_gt", "hole_ratio", "params", "macs", "macs_source",
    "train_time_s", "eval_time_s", "images_per_s", "steps", "final_loss", "eval_init", "eval_ddim_steps",
)


class RunPaths:
    """File names inside one run folder."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.config = self.dir / "config.json"
        self.env = self.dir / "env.json"
        self.metrics = self.dir / "metrics.jsonl"
        self.summary = self.dir / "summary.json"
        self.ckpt = self.dir / "ckpt.pt"
        self.samples_png = self.dir / "samples.png"
        self.samples_npz = self.dir / "samples.npz"
        self.error = self.dir / "error.json"
        self.per_image = self.dir / "per_image.csv"

    def eval_file(self, key: str) -> Path:
        return self.dir / f"eval-{key}.json"


def claim_config(paths: "RunPaths", config: dict, chash: str) -> None:
    """Create the run folder and write ``config.json`` (config + ``config_hash``), or check that the
    one already there has the same hash (RuntimeError otherwise: the folder belongs to another run)."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    old = read_json(paths.config)
    if old is not None and old.get("config_hash") != chash:
        raise RuntimeError(f"{paths.config} holds config_hash {old.get('config_hash')}, not {chash}")
    if old is None:
        write_json(paths.config, {**config, "config_hash": chash})


_HELD: dict[str, int] = {}  # lock paths this process holds (re-entrant: a teacher run inside its lock)


class RunBusy(RuntimeError):
    """Another process holds the run folder's lock (``run_lock(wait=False)``)."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path, wait: bool = True, echo=None):
    """Exclusive lock on ``{run_dir}.lock`` (fcntl, released when the process dies).

    Two processes on one run folder never interleave its records: the second waits (saying which
    process holds the lock, ``echo``) and then finds the run done or resumes it; with ``wait=False``
    it raises ``RunBusy`` naming the holder. Re-entrant within a process. No-op where fcntl is
    unavailable."""
    path = Path(str(run_dir) + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            msg = f"{run_dir} is in use by {holder} (lock {path})"
            if not wait:
                raise RunBusy(msg) from None
            if echo is not None:
                echo(f"[wait] {msg}; waiting for it to finish")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)
            with contextlib.suppress(OSError):
                fh.seek(0)
                fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# atomic files


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600: give the file the mode open() would
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """NaN / inf become None (strict JSON); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def csv_text(df) -> str:
    """A tidy CSV: floats with 6 significant digits, whole-number columns (params, MACs, steps,
    counts) as integers even with gaps (an empty cell would otherwise turn 377561088 into 3.77561e+08)."""
    import numpy as np
    import pandas as pd

    df = df.copy()
    for c in df.columns:
        col = df[c]
        if col.dtype == object and col.notna().any() and all(
                isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in col.dropna()):
            df[c] = col = pd.to_numeric(col)  # numbers in an object column (a concat with an empty frame makes one)
        if col.dtype.kind == "f" and col.notna().any() and (col.dropna() % 1 == 0).all() and (col.dropna().abs() < 2**53).all():
            df[c] = col.astype("Int64")
    return df.to_csv(index=False, float_format="%.6g")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one whole line (a single write of line + newline, flushed and fsynced)."""
    line = json.dumps(_jsonable(row), sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a last line cut by a crash is skipped."""
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop rows logged after ``max_step`` (a resumed run re-logs them), atomically."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step and r.get("kind") != "final"]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


class ForeignRun(RuntimeError):
    """A run folder holds the records of another config than the one looking at it."""


def is_done(run_dir: str | Path, config_hash: str | None = None) -> bool:
    """Whether ``run_dir`` holds a finished run. With ``config_hash``, a finished run of another
    config raises ``ForeignRun`` instead of passing for this one."""
    s = read_json(RunPaths(run_dir).summary)
    done = bool(s) and s.get("status") == "done"
    if done and config_hash is not None and s.get("config_hash") != config_hash:
        raise ForeignRun(f"{run_dir} holds a finished run of config {s.get('config_hash')}, not {config_hash}: "
                         "it was copied or renamed by hand; move it away to train this config")
    return done


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save into memory, then an atomic write (tensors + plain containers only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with ``weights_only=True``: no pickled code is executed."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ---------------------------------------------------------------------------------------------
# sample grids


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, 3) uint8 (grey replicated)."""
    x = x.detach().float().cpu().clamp(-1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_samples(paths: RunPaths, masked: torch.Tensor, fill: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor, ids: Iterable[str], scale: int = 4, pad: int = 2) -> None:
    """samples.png (rows: masked input | fill | ground truth, upscaled ``scale``x nearest) and samples.npz."""
    from PIL import Image

    m_u8, f_u8, t_u8 = to_uint8(masked), to_uint8(fill), to_uint8(target)
    n, h, w, _ = m_u8.shape
    hs, ws = h * scale, w * scale
    canvas = np.full((n * (hs + pad) + pad, 3 * (ws + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        for j, arr in enumerate((m_u8, f_u8, t_u8)):
            tile = arr[i].repeat(scale, 0).repeat(scale, 1)
            y, x = pad + i * (hs + pad), pad + j * (ws + pad)
            canvas[y:y + hs, x:x + ws] = tile
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    atomic_write_bytes(paths.samples_png, buf.getvalue())
    buf = io.BytesIO()
    np.savez_compressed(buf, masked=m_u8, fill=f_u8, target=t_u8,
                        mask=(mask.detach().cpu().numpy()[:, 0] > 0.5).astype(np.uint8), ids=np.asarray(list(ids)))
    atomic_write_bytes(paths.samples_npz, buf.getvalue())
