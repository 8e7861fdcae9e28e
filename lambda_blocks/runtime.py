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

__all__ = ["select_device", "configure", "configured", "current_flags", "environment_info", "git_info",
           "tune_allocator", "allocator_state"]

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


# glibc malloc, tuned for a tensor program (see tune_allocator). mallopt parameter numbers from malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_TRIM_BYTES = 1 << 30  # keep up to 1 GiB of freed heap instead of returning it to the kernel
ALLOCATOR_MMAP_BYTES = 1 << 28  # blocks up to 256 MiB come from the heap (reused), not from a fresh mmap
ALLOCATOR_ENV_OFF = "LAMBDA_BLOCKS_TUNE_MALLOC"  # =0 leaves the allocator alone
_ALLOCATOR: dict = {"tuned": False, "reason": "not requested"}


def _libc():
    """The process's C library when it is glibc (mallopt exists), else None."""
    import ctypes

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        lib = ctypes.CDLL(None)
        return lib if hasattr(lib, "mallopt") else None
    except OSError:
        return None


def tune_allocator(libc=None) -> dict:
    """Keep freed tensor memory in the process instead of handing it back to the kernel.

    PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (dynamic,
    at most 32 MiB) with a fresh ``mmap`` and returns freed heap above its trim threshold to the
    kernel, so a freshly allocated large tensor is page-faulted in on first touch. On the project's
    VMs a fault costs about 2 µs: a (16, 160, 32, 32) depthwise 3x3 convolution timed alone took
    22 ms instead of 3.3 ms. Inside a whole step glibc's dynamic threshold mostly recycles the same
    blocks already: a dev training step moves 0.97-1.07x, a batch-16 U-Net forward 1.03-1.18x
    (``benchmarks/bench_allocator.py``, ``results/allocator-*.md``); above all, benchmarks of single
    ops time the op, not the kernel's page faults. It sets
    ``M_MMAP_THRESHOLD`` to 256 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB (both: a fixed trim threshold
    alone turns the dynamic mmap threshold off, and every block over 128 KiB faults). Numbers do not
    change, only where memory comes from; resident memory can stay up to 1 GiB above what is live.

    Process-wide and not undone; idempotent. Skipped off glibc, when ``LAMBDA_BLOCKS_TUNE_MALLOC=0``,
    when ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` are set (the user chose), or when a
    replacement allocator (jemalloc, tcmalloc, mimalloc) is preloaded. Returns ``allocator_state()``.
    """
    global _ALLOCATOR
    if _ALLOCATOR["tuned"]:
        return allocator_state()
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get(ALLOCATOR_ENV_OFF, "1").strip().lower() in ("0", "false", "no", "off"):
        _ALLOCATOR = {"tuned": False, "reason": f"{ALLOCATOR_ENV_OFF}=0"}
    elif any(os.environ.get(v) for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        _ALLOCATOR = {"tuned": False, "reason": "MALLOC_*_THRESHOLD_ set in the environment"}
    elif any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        _ALLOCATOR = {"tuned": False, "reason": f"allocator preloaded ({preload})"}
    else:
        lib = libc if libc is not None else _libc()
        if lib is None:
            _ALLOCATOR = {"tuned": False, "reason": "not glibc"}
        else:
            ok_mmap = lib.mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_MMAP_BYTES) == 1
            ok_trim = lib.mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_TRIM_BYTES) == 1
            if ok_mmap and ok_trim:
                _ALLOCATOR = {"tuned": True, "reason": "glibc mallopt",
                              "mmap_threshold": ALLOCATOR_MMAP_BYTES, "trim_threshold": ALLOCATOR_TRIM_BYTES}
            else:
                _ALLOCATOR = {"tuned": False, "reason": f"mallopt refused (mmap {ok_mmap}, trim {ok_trim})"}
    return allocator_state()


def allocator_state() -> dict:
    """What ``tune_allocator`` did in this process (recorded in every run's env.json)."""
    return dict(_ALLOCATOR)


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

    Also tunes the C allocator once per process (`tune_allocator`; numbers unchanged, steps faster).
    """
    tune_allocator()
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
        "allocator": allocator_state(),
    }
    return info
