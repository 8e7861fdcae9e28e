"""Training runs on 16x16 images: every file written, skip when done, exact resume, NaN detection,
gradient accumulation, re-evaluation CLI."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lambda_blocks import records
from lambda_blocks.config import config_hash, resolve
from lambda_blocks.evaluate import main as evaluate_main
from lambda_blocks.train import TrainingDiverged, planned_run_dir, run, unet_macs

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "data.image_size": 16, "data.n_train": 16, "data.n_test": 4,
    "train.steps": 10, "train.batch_size": 4, "train.warmup": 2, "train.eval_every": 5, "train.ckpt_every": 5,
    "train.log_every": 2, "train.sample_steps": 2, "train.threads": 1,
    "eval.n_eval": 2, "eval.ddim_steps": 2, "eval.periodic_n": 2, "eval.n_grid": 2, "eval.batch_size": 2,
    "eval.fid": False, "unet.widths": [16, 32], "unet.context_dim": 32, "unet.num_tokens": 4,
}


def tiny_cfg(arm="lmi", seed=0, **over):
    return resolve("smoke", arm=arm, seed=seed, overrides={**TINY, **over})


def params_of(run_dir, key="model"):
    return records.load_checkpoint(Path(run_dir) / "ckpt.pt")[key]


def initial_params(cfg):
    from lambda_blocks.seeding import key_seed
    from lambda_blocks.unet import InpaintUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key_seed("init", cfg.seed))
        return InpaintUNet(cfg.unet_config()).state_dict()


def relative_update_gap(run_a, run_b) -> float:
    """|theta_a - theta_b|_1 / |theta_a - theta_0|_1 over all parameters.

    Two runs on the same global batch that differ only in how the batch is split (accumulation,
    ranks) differ by float round-off, which Adam's 1/sqrt(v) amplifies on near-zero gradients;
    element-wise tolerances are therefore brittle, the relative size of the whole update is not.
    """
    cfg = resolve_cfg(run_a)
    p0, pa, pb = initial_params(cfg), params_of(run_a), params_of(run_b)
    num = sum(float((pa[k] - pb[k]).abs().sum()) for k in pa)
    den = sum(float((pa[k] - p0[k]).abs().sum()) for k in pa)
    return num / den


def resolve_cfg(run_dir):
    from lambda_blocks.config import ExpCfg

    return ExpCfg.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))


def test_run_writes_every_file_and_skips_when_done(tmp_path):
    cfg = tiny_cfg(**{"eval.fid": True})
    run_dir = run(cfg, tmp_path, progress=False)
    assert run_dir == planned_run_dir("smoke", tmp_path, arm="lmi", seed=0, overrides=TINY | {"eval.fid": True})
    assert run_dir.name == f"lmi-smoke-tiny-s0-{config_hash(cfg)}"
    p = records.RunPaths(run_dir)
    for f in (p.config, p.env, p.metrics, p.summary, p.ckpt, p.samples_png, p.samples_npz):
        assert f.exists(), f
    assert not p.error.exists()
    conf = json.loads(p.config.read_text())
    assert conf["config_hash"] == config_hash(cfg) and conf["arm"] == "lmi"
    env = json.loads(p.env.read_text())
    assert env["world_size"] == 1 and "runtime_flags" in env and "git_sha" in env
    s = json.loads(p.summary.read_text())
    for k in records.SUMMARY_KEYS:
        assert k in s, k
    assert s["status"] == "done" and s["steps"] == 10 and s["image_size"] == 16
    assert math.isfinite(s["psnr"]) and math.isfinite(s["psnr_hole"]) and math.isfinite(s["ssim"])
    assert s["lpips"] is None and s["lpips_source"].startswith("n/a")  # AlexNet needs >= 31 px
    assert s["n_eval_images"] == 2 and s["params"] > 0 and s["macs"] > 0
    assert s["n_fid_images"] == 2 and s["fid"] is not None and s["kid"] is not None  # packaged Inception
    rows = records.read_jsonl(p.metrics)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10]
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in train_rows)
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [5, 10]
    assert rows[-1]["kind"] == "final"
    ck = records.load_checkpoint(p.ckpt)  # weights_only=True
    assert ck["step"] == 10 and ck["config_hash"] == config_hash(cfg)
    assert set(ck) >= {"model", "ema", "optimizer", "scheduler", "rng", "config", "versions"}
    import numpy as np

    with np.load(p.samples_npz) as z:
        assert z["fill"].shape == (2, 16, 16, 3) and z["fill"].dtype == np.uint8
        assert (z["masked"].shape, z["target"].shape) == ((2, 16, 16, 3), (2, 16, 16, 3))
    # a finished run is skipped: nothing is rewritten
    mtimes = {f: f.stat().st_mtime_ns for f in p.dir.iterdir()}
    assert run(cfg, tmp_path, progress=False) == run_dir
    assert {f: f.stat().st_mtime_ns for f in p.dir.iterdir()} == mtimes


def test_resume_is_identical_to_uninterrupted(tmp_path):
    cfg = tiny_cfg(**{"train.steps": 8, "train.ckpt_every": 0, "train.eval_every": 4})
    full = run(cfg, tmp_path / "a", progress=False)
    part = run(cfg, tmp_path / "b", progress=False, stop_after=4)  # "crash" after step 4's checkpoint
    assert not (part / "summary.json").exists()
    assert records.load_checkpoint(part / "ckpt.pt")["step"] == 4
    part = run(cfg, tmp_path / "b", progress=False)
    for key in ("model", "ema"):
        a, b = params_of(full, key), params_of(part, key)
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    la = [r for r in records.read_jsonl(full / "metrics.jsonl") if r["kind"] != "final"]
    lb = [r for r in records.read_jsonl(part / "metrics.jsonl") if r["kind"] != "final"]
    drop = ("images_per_s", "elapsed", "sample_time_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(la) == strip(lb)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    assert sa["psnr"] == sb["psnr"] and sa["ssim_hole"] == sb["ssim_hole"]


def test_longer_run_starts_from_the_shorter_one_and_is_bit_identical_to_training_from_scratch(tmp_path):
    """train.steps is a budget, not part of each step: a run of 8 steps next to a finished run of 4
    (same config otherwise) starts from the 4-step checkpoint and ends with exactly the weights,
    curve and metrics of an 8-step run trained from nothing."""
    short = tiny_cfg(**{"train.steps": 4, "train.eval_every": 2, "train.ckpt_every": 0})
    long = tiny_cfg(**{"train.steps": 8, "train.eval_every": 2, "train.ckpt_every": 0})
    other_seed = tiny_cfg(seed=1, **{"train.steps": 4, "train.eval_every": 2, "train.ckpt_every": 0})
    other_lr = tiny_cfg(**{"train.steps": 4, "train.eval_every": 2, "train.ckpt_every": 0, "train.lr": 5e-4})
    scratch = run(long, tmp_path / "a", progress=False)
    for c in (other_seed, other_lr, short):  # only the last one is a prefix of `long`
        run(c, tmp_path / "b", progress=False)
    ext = run(long, tmp_path / "b", progress=False)
    summary = json.loads((ext / "summary.json").read_text())
    assert summary["extended_from"] == short.run_name
    assert json.loads((scratch / "summary.json").read_text())["extended_from"] is None
    for key in ("model", "ema"):
        a, b = params_of(scratch, key), params_of(ext, key)
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    drop = ("images_per_s", "elapsed", "sample_time_s")
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in records.read_jsonl(d / "metrics.jsonl")
             if r["kind"] != "final"] for d in (scratch, ext)]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0] if r["kind"] == "eval"] == [2, 4, 6, 8]
    assert summary["psnr"] == json.loads((scratch / "summary.json").read_text())["psnr"]
    assert records.load_checkpoint(tmp_path / "b" / short.run_name / "ckpt.pt")["step"] == 4  # left as it was


def test_a_cool_down_starts_from_a_constant_run_that_ends_before_it(tmp_path):
    """Warm-up / stable / decay: a 6-step run whose last 2 steps take the LR to 0 continues the
    finished 4-step constant-LR run (bit-identical to training it from scratch); one whose cool-down
    would start at step 2 does not, because the 4-step run's LR was not decaying there."""
    base = {"train.eval_every": 0, "train.ckpt_every": 0, "train.log_every": 1, "train.warmup": 1}
    const4 = tiny_cfg(**base, **{"train.steps": 4})
    wsd = tiny_cfg(**base, **{"train.steps": 6, "train.decay_steps": 2})
    early = tiny_cfg(**base, **{"train.steps": 6, "train.decay_steps": 4})
    scratch = run(wsd, tmp_path / "a", progress=False)
    run(const4, tmp_path / "b", progress=False)
    ext, no = run(wsd, tmp_path / "b", progress=False), run(early, tmp_path / "b", progress=False)
    assert json.loads((ext / "summary.json").read_text())["extended_from"] == const4.run_name
    assert json.loads((no / "summary.json").read_text())["extended_from"] is None
    a, b = params_of(scratch), params_of(ext)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = [r["lr"] for r in records.read_jsonl(ext / "metrics.jsonl") if r["kind"] == "train"]
    lr = wsd.train.lr
    assert lrs == pytest.approx([lr, lr, lr, lr, lr / 2, 0.0])  # logged after each step's update
    lrs_early = [r["lr"] for r in records.read_jsonl(no / "metrics.jsonl") if r["kind"] == "train"]
    assert lrs_early == pytest.approx([lr, lr, lr * 3 / 4, lr / 2, lr / 4, 0.0])
    assert config_hash(const4) == config_hash(tiny_cfg(**base, **{"train.steps": 4, "train.decay_steps": 0}))
    with pytest.raises(ValueError, match="decay_steps"):
        tiny_cfg(**{"train.steps": 4, "train.decay_steps": 5})


def test_grad_accum_matches_one_batch(tmp_path):
    a = run(tiny_cfg(**{"train.steps": 3, "train.log_every": 1, "train.eval_every": 0}), tmp_path, progress=False)
    b = run(tiny_cfg(**{"train.steps": 3, "train.log_every": 1, "train.eval_every": 0, "train.grad_accum": 2}),
            tmp_path, progress=False)
    # float64 forward passes are batch-independent to 1e-14, float32 ones to ~1e-6; Adam's first
    # steps amplify that on near-zero gradients, so allow a few percent (a wrong split gives O(1)).
    assert relative_update_gap(a, b) < 1e-1
    la = [r["loss_last"] for r in records.read_jsonl(a / "metrics.jsonl") if r["kind"] == "train"]
    lb = [r["loss_last"] for r in records.read_jsonl(b / "metrics.jsonl") if r["kind"] == "train"]
    assert la[0] == pytest.approx(lb[0], rel=1e-5)  # step 1: the same batch and the same weights


def test_nan_loss_stops_with_step_named(tmp_path):
    def hook(step, loss):
        return loss * float("nan") if step == 2 else loss

    cfg = tiny_cfg(**{"train.steps": 6})
    with pytest.raises(TrainingDiverged, match="step 3"):
        run(cfg, tmp_path, progress=False, loss_hook=hook)
    err = json.loads((tmp_path / cfg.run_name / "error.json").read_text())
    assert err["step"] == 3 and "non-finite loss" in err["error"]
    assert not (tmp_path / cfg.run_name / "summary.json").exists()


def test_huge_lr_diverges(tmp_path):
    cfg = tiny_cfg(**{"train.steps": 6, "train.lr": 1e30, "train.warmup": 0, "train.grad_clip": 0.0})
    with pytest.raises(TrainingDiverged, match=r"at step \d"):
        run(cfg, tmp_path, progress=False)


def test_unet_macs_positive_and_scales():
    from lambda_blocks.unet import build_unet

    m = build_unet("linear", "tiny")
    a, b = unet_macs(m, 16), unet_macs(m, 32)
    assert 0 < a < b <= 4.5 * a


def test_evaluate_cli_and_train_cli(tmp_path, capsys):
    sets = []
    for k, v in {**TINY, "train.steps": 2, "train.eval_every": 0}.items():
        sets += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "lambda_blocks.train", "--preset", "smoke", "--attn", "linear",
                          "--out", str(tmp_path), "--no-progress", *sets], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = Path(res.stdout.strip().splitlines()[-1].split()[0])
    assert run_dir.name.startswith("linear-smoke-tiny-s0-") and (run_dir / "summary.json").exists()
    assert evaluate_main([str(run_dir), "--n", "3", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "psnr" in out
    files = list(run_dir.glob("eval-*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    assert res["n_eval_images"] == 3 and res["steps"] == 2 and math.isfinite(res["psnr"])


def test_fast_fid_equals_metrics_fid():
    import numpy as np

    from lambda_blocks.evaluate import fid_from_features
    from lambda_blocks.metrics import fid

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(7, 64)) * 1.3 + 0.2
    assert fid_from_features(a, b) == pytest.approx(fid(a, b).fid, rel=1e-6)
    big_a, big_b = rng.normal(size=(80, 16)), rng.normal(size=(70, 16)) + 0.1  # N >= D: delegated
    assert fid_from_features(big_a, big_b) == pytest.approx(fid(big_a, big_b).fid, rel=1e-9)


def test_channels_last_is_a_layout_not_a_new_config():
    """``train.channels_last`` (default on) stores the U-Net's conv weights in channels_last, computes
    the same function as the contiguous model, and leaves every existing config hash unchanged."""
    from lambda_blocks.train import init_model

    on = resolve("smoke", arm="lmi")
    off = resolve("smoke", arm="lmi", overrides={"train.channels_last": False})
    assert on.train.channels_last and config_hash(on) != config_hash(off)
    d = on.to_dict()
    del d["train"]["channels_last"]  # a config written before the option existed
    assert config_hash(d) == config_hash(on)
    a, b = init_model(on).eval(), init_model(off).eval()
    assert a.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert b.conv_in.weight.is_contiguous() and not b.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, a.conv_in.in_channels, 16, 16)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(a(x, t), b(x, t), rtol=1e-4, atol=1e-5)


def test_train_compile_is_a_new_config_and_wraps_the_training_forward():
    """train.compile: the step calls torch.compile(model) (the same parameters); checkpoints, EMA and
    evaluation keep the plain module; default-off keeps every existing run name."""
    from lambda_blocks import train as T
    from lambda_blocks.config import resolve

    off, on = resolve("smoke", arm="lmi"), resolve("smoke", arm="lmi", overrides={"train.compile": True})
    assert off.run_name != on.run_name and off.train.compile is False
    st = T.new_state(on, T.init_model(on))
    assert st.forward_model is st.compiled and st.compiled is not st.model
    assert {id(p) for p in st.compiled.parameters()} == {id(p) for p in st.model.parameters()}
    plain = T.new_state(off, T.init_model(off))
    assert plain.compiled is None and plain.forward_model is plain.model


@pytest.mark.slow  # a cold inductor compile of forward + backward: minutes on these CPUs
def test_train_compile_steps_match_eager():
    import torch

    from lambda_blocks import train as T
    from lambda_blocks.config import resolve
    from lambda_blocks.diffusion import Diffusion

    weights = {}
    for comp in (False, True):
        cfg = resolve("smoke", arm="lmi", overrides={"train.compile": comp, "train.batch_size": 2, "data.image_size": 16})
        st = T.new_state(cfg, T.init_model(cfg))
        diff = Diffusion.from_cfg(cfg.diffusion)
        data = T.TrainData(None, torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1,
                           T._Batches(8, 0))
        for _ in range(3):
            T.train_step(st, cfg, diff, lambda s, lo, hi: T.make_batch(cfg, diff, data, s, lo, hi))
        weights[comp] = st.model.state_dict()
    err = max((weights[True][k].float() - weights[False][k].float()).abs().max().item() for k in weights[False])
    assert 0 <= err < 1e-4  # measured: 2.0e-5 after 3 AdamW steps


def test_amp_bf16_takes_effect_on_cuda_and_native_bf16_cpus_only():
    """train.amp_bf16 is honoured on CUDA and on CPUs with AVX512-BF16/AMX; on other CPUs (bf16
    emulated, slower) and other devices the request is ignored."""
    from lambda_blocks.train import amp_active

    cpu = torch.device("cpu")
    assert amp_active(True, torch.device("cuda")) and amp_active(True, torch.device("cuda", 1))
    assert amp_active(True, cpu, isa="avx512-bf16")
    assert not amp_active(True, cpu, isa="avx512") and not amp_active(True, cpu, isa="avx2")
    assert not amp_active(True, torch.device("mps"), isa="avx512-bf16")
    assert not amp_active(False, torch.device("cuda")) and not amp_active(False, cpu, isa="avx512-bf16")


def test_bf16_autocast_step_on_cpu_is_close_to_fp32():
    """The autocast training step (what amp_bf16 runs on a bf16 CPU) from the same init and batches:
    bf16 really runs (the update differs from fp32's) and moves the weights the same way (measured:
    cosine 0.988 over 3 AdamW steps). The loss is no check here: conv_out starts at zero, so the
    first steps' loss is the target's energy in either dtype."""
    from lambda_blocks import train as T
    from lambda_blocks.diffusion import Diffusion

    out, deltas = {}, {}
    for amp in (False, True):
        cfg = resolve("smoke", arm="lmi", overrides={"train.batch_size": 4, "data.image_size": 16})
        st = T.new_state(cfg, T.init_model(cfg))
        before = torch.cat([p.detach().flatten().clone() for p in st.model.parameters()])
        diff = Diffusion.from_cfg(cfg.diffusion)
        data = T.TrainData(None, torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1,
                           T._Batches(8, 0))
        for _ in range(3):
            out[amp] = T.train_step(st, cfg, diff, lambda s, lo, hi: T.make_batch(cfg, diff, data, s, lo, hi), amp=amp)
        deltas[amp] = torch.cat([p.detach().flatten() for p in st.model.parameters()]) - before
    assert math.isfinite(out[True].loss) and math.isfinite(out[True].grad_norm)
    cos = torch.nn.functional.cosine_similarity(deltas[True], deltas[False], dim=0).item()
    assert 0.95 < cos < 1 - 1e-6, cos


def test_the_unet_forward_compiles_as_one_graph():
    """The timestep check reads tensor data, so under torch.compile it would split the forward in two
    (and on an accelerator make every call wait for the device); it runs only in eager mode on CPU
    tensors, and still rejects a bad timestep there."""
    from lambda_blocks.unet import build_unet

    m = build_unet("lmi", "tiny", widths=(8, 16), context_dim=16, num_tokens=4, heads=2).eval()
    x, t = torch.randn(1, 7, 8, 8), torch.tensor([10])
    try:
        ex = torch._dynamo.explain(m)(x, t)
    finally:
        torch._dynamo.reset()
    assert ex.graph_break_count == 0, [str(r.reason)[:120] for r in ex.break_reasons]
    with pytest.raises(ValueError, match="timesteps must be integers"):
        m(x, torch.tensor([2.5]))
