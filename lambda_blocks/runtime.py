"""Global torch settings and the environment record: the ONLY module that touches torch.backends.

Importing ``lambda_blocks`` changes no global torch setting. A run calls ``configure(...)`` (or the
``configured(...)`` context manager, which restores the previous settings afterwards) and stores
the returned dict in ``env.json``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch

__all__ = ["select_device", "configure", "configured", "current_flags", "environment_info", "git_info"]

REPO_ROOT = Path(__file__).resolve().parents[1]


DEVICES = ("auto", "cpu", "cuda")


def select_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` fails clearly without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device='cuda' but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def current_flags() -> dict:
    """The global settings ``configure`` manages, as they are now."""
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "threads": torch.get_num_threads(),
    }


def configure(deterministic: bool = True, tf32: bool = False, threads: int = 0) -> dict:
    """Set torch's global switches and return them (record the dict in env.json).

    Args:
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN
            deterministic and no benchmark autotuning.
        tf32: allow TF32 matmuls / convolutions on Ampere+ GPUs (off: full fp32).
        threads: intra-op CPU threads (0: leave as is).
    """
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    if threads and threads > 0:
        torch.set_num_threads(int(threads))
    return current_flags()


def _restore(flags: dict) -> None:
    torch.use_deterministic_algorithms(flags["deterministic"], warn_only=flags["deterministic_warn_only"])
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = flags["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = flags["tf32_cudnn"]
    if torch.get_num_threads() != flags["threads"]:
        torch.set_num_threads(flags["threads"])


@contextlib.contextmanager
def configured(deterministic: bool = True, tf32: bool = False, threads: int = 0) -> Iterator[dict]:
    """``configure`` for the duration of a block, then restore the previous settings."""
    before = current_flags()
    try:
        yield configure(deterministic=deterministic, tf32=tf32, threads=threads)
    finally:
        _restore(before)


def git_info(root: Path = REPO_ROOT) -> dict:
    """{"git_sha", "git_dirty"} of the repo holding this package (None outside a git checkout)."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"git_sha": sha, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device | str | None = None) -> dict:
    """Versions, git state, hardware and threads (no host name, no user paths)."""
    from ._version import __version__

    dev = torch.device(device) if device is not None else select_device("auto")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    cpu = _cpu_model()
    info = {
        **git_info(),
        "python": sys.version.split()[0],
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "versions": {
            "python": sys.version.split()[0],
            "torch": str(torch.__version__),
            "torchvision": _version("torchvision"),
            "timm": _version("timm"),
            "fvcore": _version("fvcore"),
            "lpips": _version("lpips"),
            "numpy": _version("numpy"),
            "lambda_blocks": __version__,
        },
        "device": dev.type,
        "gpu_name": gpu,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "hardware": gpu or f"{cpu} x{torch.get_num_threads()} threads",
    }
    return info
