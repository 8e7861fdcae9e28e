"""Shared bits of the benchmark scripts (run them from the repo root: ``python benchmarks/<script>.py``)."""
from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the scripts import the package from the work tree
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from lambda_blocks.profiling import cpu_isa, hardware_name  # noqa: E402
from lambda_blocks.runtime import allocator_state, tune_allocator  # noqa: E402

tune_allocator()  # every benchmark measures with the allocator a training run uses (LAMBDA_BLOCKS_TUNE_MALLOC=0: off)


def isa(device) -> str:
    """The vector ISA of a CPU device (``profiling.cpu_isa``), "" for a GPU."""
    return cpu_isa() if str(getattr(device, "type", device)) == "cpu" else ""


def tag(device: str = "cpu") -> str:
    """File-name tag: device, hardware (with the vector ISA on CPU, ``profiling.cpu_isa``), torch
    version, threads (timm's latency-file naming)."""
    hw = re.sub(r"[^a-z0-9]+", "-", hardware_name(device).lower()).strip("-")
    if isa(device):
        hw += f"-{isa(device)}"
    ver = torch.__version__.split("+")[0]
    return f"{device}-{hw}-pt{ver}-t{torch.get_num_threads()}"


def header(title: str, device: str = "cpu") -> None:
    print(f"# {title}")
    print(f"# hardware={hardware_name(device)!r} isa={isa(device) or '-'} device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"# allocator: {allocator_state()}")
    try:
        load = os.getloadavg()
        print(f"# load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine: compare ratios measured side by side)")
    except OSError:
        pass


def write_results(out_csv: str, df, table: str | None = None) -> None:
    """The tidy CSV (atomic) and, when given, its Markdown table beside it (``.md``, what the README
    quotes verbatim; tests/test_ablations.py checks the README against every ``results/*.md``)."""
    from lambda_blocks.records import atomic_write_text

    atomic_write_text(out_csv, df.to_csv(index=False, float_format="%.6g"))
    print(f"wrote {out_csv}")
    if table is not None:
        md = os.path.splitext(out_csv)[0] + ".md"
        atomic_write_text(md, table)
        print(f"wrote {md}")
