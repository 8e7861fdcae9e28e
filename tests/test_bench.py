"""The U-Net benchmark and the GPU check: dispatch and bookkeeping, checked on CPU."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_unet as B  # noqa: E402

from lambda_blocks import profiling as P  # noqa: E402


def test_autocast_and_timer_dispatch_by_device():
    cpu = torch.device("cpu")
    with B.autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with B.autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    assert P.timing_method("cuda") == "cuda_events" and P.timing_method("cpu") == "torch_timer"
    assert P.memory_method("cuda") == "cuda_max_allocated"


def test_rows_and_ratios_are_consistent():
    df = B.run(["baseline", "moebius"], "tiny", [16], 2, torch.device("cpu"), rounds=1, dtypes=["fp32"],
               passes=["fwd", "train_step"], min_run_time=0.01)
    assert set(df["arm"]) == {"baseline", "moebius"} and set(df["pass"]) == {"fwd", "train_step"}
    step = df[df["pass"] == "train_step"].iloc[0]
    assert step["batch"] == 2
    assert step["gmac_per_s"] == pytest.approx(step["macs_per_sample"] * 2 * 3 / (step["latency_ms"] / 1e3) / 1e9)
    r = B.ratios(df)
    fwd = df[df["pass"] == "fwd"].set_index("arm")["latency_ms"]
    got = r[r["pass"] == "fwd"]["baseline_over_moebius"].item()
    assert got == pytest.approx(fwd["baseline"] / fwd["moebius"])
    assert (df["macs_per_sample"] > 0).all() and (df["method"].str.contains("torch_timer")).all()


def test_bf16_error_is_small_but_nonzero():
    err = B.bf16_error("baseline", "tiny", 16, torch.device("cpu"))
    assert 0 < err < 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_gpu_check_says_clearly_there_is_no_gpu():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env={"PY": sys.executable, "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr
