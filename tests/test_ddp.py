"""Data parallel training: 2 CPU processes (torchrun, gloo) match one process on the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_blocks import records
from lambda_blocks.train import run

try:  # tests/ is a package
    from tests.test_train import TINY, relative_update_gap, tiny_cfg
except ImportError:  # tests/ as a plain folder (rootdir-relative imports)
    from test_train import TINY, relative_update_gap, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_two_rank_gloo_matches_single_process(tmp_path):
    over = {**TINY, "train.steps": 4, "train.eval_every": 2, "train.ckpt_every": 2, "train.log_every": 1}
    single = run(tiny_cfg(**over), tmp_path / "single", progress=False)
    # One process accumulating the same two half-batches: rank r's half is micro-batch r, and
    # (g0 + g1) / 2 is what both compute, so the parameters agree to the last bit or nearly.
    accum = run(tiny_cfg(**over, **{"train.grad_accum": 2}), tmp_path / "accum", progress=False)

    sets = []
    for k, v in over.items():
        sets += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lambda_blocks.train", "--preset", "smoke", "--attn", "lmi", "--out", str(tmp_path / "ddp"),
           "--no-progress", *sets]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = tmp_path / "ddp" / single.name  # same config -> same run folder name
    assert (ddp / "summary.json").exists()
    env_rec = json.loads((ddp / "env.json").read_text())
    assert env_rec["world_size"] == 2 and env_rec["backend"] == "gloo"
    # only rank 0 wrote: exactly one row per logged step
    rows = [r for r in records.read_jsonl(ddp / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ref = [r for r in records.read_jsonl(single / "metrics.jsonl") if r["kind"] == "train"]
    assert rows[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-5)  # same batch, same weights
    assert relative_update_gap(accum, ddp) < 1e-4
    # against the unsplit batch: float32 round-off amplified by Adam (see test_train)
    assert relative_update_gap(single, ddp) < 1e-1
    assert relative_update_gap(single, accum) == pytest.approx(relative_update_gap(single, ddp), rel=1e-2, abs=1e-4)
