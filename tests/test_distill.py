"""Latent-space distillation wired into the training pipeline: config, run records, every KD term
logged each step, exact resume, the no-KD / fixed-weight arms, collect + the KD table, DDP."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lambda_blocks.latent import kd as K
from lambda_blocks import records
from lambda_blocks.config import KDCfg, LatentCfg, config_hash, resolve
from lambda_blocks.latent.distill import DISTILL_PRESETS, planned_run_dir, resolve_distill
from lambda_blocks.latent.distill import run as run_pipeline
from lambda_blocks.train import MissingStage, run, stages

try:  # tests/ is a package
    from tests.test_train import relative_update_gap
except ImportError:  # tests/ as a plain folder
    from test_train import relative_update_gap

ROOT = Path(__file__).resolve().parents[1]

# 32 px images -> 8x8x4 latents; everything a few steps long
TINY = {
    "data.image_size": 32, "data.n_train": 32, "data.n_test": 4,
    "train.steps": 6, "train.batch_size": 4, "train.warmup": 2, "train.eval_every": 3, "train.ckpt_every": 3,
    "train.log_every": 1, "train.sample_steps": 2, "train.threads": 1,
    "eval.n_eval": 4, "eval.ddim_steps": 2, "eval.periodic_n": 2, "eval.n_grid": 2, "eval.batch_size": 4,
    "eval.fid": False, "eval.lpips": False,
    "unet.widths": [16, 32], "unet.context_dim": 32, "unet.num_tokens": 4,
    "latent.ae_overrides": {"steps": 8, "n_train": 32, "n_test": 4, "ckpt_every": 0},
}
TEACHER = {"kd.teacher_size": "tiny", "kd.teacher_overrides": {"train.steps": 6, "unet.widths": [24, 48]}}


def kd_cfg(kd=True, weighting="adaptive", **over):
    extra = TEACHER if kd else {}
    return resolve_distill("smoke", "lmi", "tiny", 0, kd, weighting, {**TINY, **extra, **over})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One root with the autoencoder, the teacher, a KD student and the same student without KD."""
    root = tmp_path_factory.mktemp("distill")
    student = run_pipeline(kd_cfg(), root, progress=False)  # stages first: autoencoder, teacher
    plain = run(kd_cfg(kd=False), root, progress=False)
    return root, student, plain


def test_a_student_run_only_loads_its_stages(study, tmp_path):
    """The autoencoder and the teacher are stages, trained before the student as runs of their own
    (once); the student run itself never trains them: a missing one is a clear error naming it."""
    root, student, _ = study
    cfg = kd_cfg()
    st = stages(cfg)
    s = records.read_json(student / "summary.json")
    assert [(x.kind, x.name) for x in st] == [("autoencoder", s["ae_run"]), ("teacher", s["teacher_run"])]
    with pytest.raises(MissingStage, match=f"autoencoder stage .*{s['ae_run']}"):
        run(cfg, tmp_path / "empty", progress=False)
    shutil.copytree(root / s["ae_run"], tmp_path / "ae_only" / s["ae_run"])
    with pytest.raises(MissingStage, match=f"teacher stage .*{s['teacher_run']}"):
        run(cfg, tmp_path / "ae_only", progress=False)
    assert not (tmp_path / "ae_only" / s["teacher_run"]).exists()  # nothing was trained on the side
    before = {p.name: p.stat().st_mtime_ns for p in (root / s["teacher_run"]).iterdir()}
    assert run_pipeline(cfg, root, progress=False) == student  # every stage done: no work, same folder
    assert {p.name: p.stat().st_mtime_ns for p in (root / s["teacher_run"]).iterdir()} == before


def test_the_runner_trains_the_stages_first_and_lists_them(tmp_path):
    from ablations.runner import load_sweep, plan_stages

    sweep = load_sweep(ROOT / "ablations" / "distill.yaml")
    plan = plan_stages(sweep, sweep.points("smoke"), "smoke", tmp_path)
    kinds = [st.kind for st, _ in plan]
    assert kinds[0] == "autoencoder" and "teacher" in kinds and not any(done for _, done in plan)
    assert len({st.name for st, _ in plan}) == len(plan)  # each stage once, however many points need it


def test_new_sections_keep_old_run_names():
    """Pixel-space configs hash as before the latent / kd sections existed."""
    cfg = resolve("dev", arm="lmi", size="tiny", seed=0)
    d = cfg.to_dict()
    assert d["latent"] == json.loads(json.dumps(LatentCfg().__dict__)) and d["kd"]["enabled"] is False
    legacy = {k: v for k, v in d.items() if k not in ("latent", "kd")}
    assert config_hash(cfg) == config_hash(legacy)
    assert config_hash(cfg) == config_hash(resolve("dev", arm="moebius"))  # one network, one run
    kd = kd_cfg()
    assert config_hash(kd) != config_hash({k: v for k, v in kd.to_dict().items() if k != "kd"})


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="decoded_lpips"):
        resolve("smoke", overrides={"kd.enabled": True, "kd.perceptual": "decoded_lpips"})
    with pytest.raises(KeyError, match="train.stepz"):
        resolve("smoke", overrides={"kd.enabled": True, "kd.teacher_overrides": {"train.stepz": 1}})
    with pytest.raises(ValueError, match="never distilled"):
        resolve("smoke", overrides={"kd.enabled": True, "kd.teacher_overrides": {"kd.enabled": True}})
    with pytest.raises(ValueError, match="kd.weighting"):
        resolve("smoke", overrides={"kd.weighting": "magic"})
    with pytest.raises(ValueError, match="latent.space"):
        resolve("smoke", overrides={"latent.space": "pixels"})
    with pytest.raises(ValueError, match="divisible by 8"):  # factor 4 x 2 levels
        resolve("smoke", overrides={"latent.space": "latent", "data.image_size": 36})
    with pytest.raises(ValueError, match="teacher_config"):
        resolve("smoke").teacher_config()
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_distill("huge")


def test_no_kd_student_ignores_teacher_settings():
    a = resolve_distill("dev", "moebius", kd=False)
    assert a.kd == KDCfg() and a.latent.space == "latent" and a.data.image_size == 64
    assert a.run_name.startswith("lmi-latent-dev-tiny-s0-")  # moebius is the lmi network: one name
    b = resolve_distill("dev", "moebius", kd=True)
    assert b.kd.teacher_size == DISTILL_PRESETS["dev"]["kd.teacher_size"] and b.run_name.startswith("lmi-latent-kd-")
    t = b.teacher_config()
    assert (t.arm, t.size, t.kd.enabled, t.latent.space) == ("vanilla", "base", False, "latent")
    assert t.train.steps == DISTILL_PRESETS["dev"]["kd.teacher_overrides"]["train.steps"]
    assert t.data == b.data and t.eval == b.eval and t.diffusion == b.diffusion


def test_distillation_run_records_every_term_each_step(study):
    root, student, _ = study
    cfg = kd_cfg()
    assert student == planned_run_dir("smoke", root, "lmi", "tiny", 0, True, "adaptive", {**TINY, **TEACHER})
    s = records.read_json(student / "summary.json")
    assert s["status"] == "done" and s["space"] == "latent" and s["kd"] is True and s["work_size"] == 8
    teacher = root / s["teacher_run"]
    t = records.read_json(teacher / "summary.json")
    assert t["status"] == "done" and t["arm"] == "vanilla" and t["kd"] is False
    assert t["params"] == s["teacher_params"] > s["params"]
    assert records.read_json(root / s["ae_run"] / "summary.json")["status"] == "done"
    assert s["kd_anchor_o"] == "conv_out.weight" and s["kd_anchor_f"].startswith(s["kd_feat_student"] + ".")
    rows = [r for r in records.read_jsonl(student / "metrics.jsonl") if r["kind"] == "kd"]
    assert [r["step"] for r in rows] == list(range(1, cfg.train.steps + 1))
    want = [f"loss_{k}" for k in K.TERM_KEYS] + ["loss_total", *K.WEIGHT_KEYS] + [f"gnorm_{k}" for k in K.NORM_KEYS]
    for r in rows:
        assert set(want) <= set(r), set(want) - set(r)
        assert all(math.isfinite(r[k]) for k in want)
        # the logged total is the paper's formula of the logged terms and weights
        w = cfg.kd
        total = w.lambda_kd * r["loss_ckd"] + r["w_c"] * (
            w.lambda_task * r["loss_task"] + w.lambda_kd * r["w_fkd"] * r["loss_fkd"] + w.lambda_lp * r["w_lp"] * r["loss_lp"])
        assert r["loss_total"] == pytest.approx(total, rel=1e-4)
        assert r["w_fkd"] == pytest.approx(min(r["gnorm_task@o"] / (r["gnorm_fkd@o"] + 1e-6), 1e6), rel=1e-4)
    # the train rows' "loss" is the task loss, comparable with the student trained without KD
    train = {r["step"]: r["loss_last"] for r in records.read_jsonl(student / "metrics.jsonl") if r["kind"] == "train"}
    assert train[cfg.train.steps] == pytest.approx(rows[-1]["loss_task"], rel=1e-5)
    ck = records.load_checkpoint(student / "ckpt.pt")
    assert "projector" in ck and any(v.numel() for v in ck["projector"].values())


def test_no_kd_student_is_the_same_network_in_latent_space(study):
    root, student, plain = study
    a, b = records.read_json(student / "summary.json"), records.read_json(plain / "summary.json")
    assert b["kd"] is False and b["space"] == "latent" and b["params"] == a["params"] and b["macs"] == a["macs"]
    assert b["ae_run"] == a["ae_run"]  # one autoencoder serves both
    assert not [r for r in records.read_jsonl(plain / "metrics.jsonl") if r["kind"] == "kd"]


def test_latent_run_reevaluates_in_latent_space(study):
    """python -m lambda_blocks.evaluate on a latent-space run samples latents and decodes them."""
    from lambda_blocks.evaluate import evaluate_run

    root, _, plain = study
    res, path = evaluate_run(plain, n=2, steps=2)
    assert path.exists() and res["n"] == 2 and res["n_eval_images"] == 2
    assert res["image_size"] == 32 and math.isfinite(res["psnr"])  # metrics on decoded 32 px images


def _copy_shared(src_root: Path, dst_root: Path, student: Path) -> None:
    s = records.read_json(student / "summary.json")
    dst_root.mkdir(parents=True, exist_ok=True)
    for name in (s["ae_run"], s["teacher_run"]):
        shutil.copytree(src_root / name, dst_root / name)


def test_interrupted_distillation_resumes_exactly(study, tmp_path):
    root, student, _ = study
    _copy_shared(root, tmp_path, student)
    cfg = kd_cfg()
    part = run(cfg, tmp_path, progress=False, stop_after=3)
    assert not (part / "summary.json").exists()
    resumed = run(cfg, tmp_path, progress=False)
    a, b = records.load_checkpoint(student / "ckpt.pt"), records.load_checkpoint(resumed / "ckpt.pt")
    for key in ("model", "projector"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    rows = [r["step"] for r in records.read_jsonl(resumed / "metrics.jsonl") if r["kind"] == "kd"]
    assert rows == list(range(1, cfg.train.steps + 1))  # no duplicated steps after the resume


def test_fixed_weights_are_logged_as_given(study, tmp_path):
    root, student, _ = study
    _copy_shared(root, tmp_path, student)
    cfg = kd_cfg(weighting="fixed", **{"train.steps": 2, "kd.fixed_w_fkd": 2.0, "kd.fixed_w_c": 0.5})
    out = run(cfg, tmp_path, progress=False)
    assert out.name.startswith("lmi-latent-kdfixed-")
    rows = [r for r in records.read_jsonl(out / "metrics.jsonl") if r["kind"] == "kd"]
    assert len(rows) == 2 and all((r["w_fkd"], r["w_lp"], r["w_c"]) == (2.0, 1.0, 0.5) for r in rows)
    assert all(r["gnorm_task@o"] > 0 for r in rows)  # norms are measured in both modes


def test_collect_and_kd_table(study, tmp_path):
    from ablations.collect import collect
    from ablations.figures import regenerate

    root, student, plain = study
    out = collect(root, tmp_path / "results")
    runs = out["runs"]
    assert not runs["arm"].isna().any()  # the autoencoder folder is not a training run
    assert set(runs["tag"]) == {"lmi-latent-kd", "lmi-latent", "vanilla-latent"}
    assert set(runs["space"]) == {"latent"}
    assert len(out["kd_log"]) == kd_cfg().train.steps
    written = regenerate(tmp_path / "results", tmp_path / "fig", tmp_path / "assets", "smoke")
    md = (tmp_path / "assets" / "table2_kd.md").read_text()
    assert "| teacher |" in md and "yes (adaptive)" in md and "| no |" in md
    assert "latent" in md and "substitute for E-LatentLPIPS" in md
    assert (tmp_path / "fig" / "kd_weights.png") in written
    # the pixel-space tables are not polluted by latent runs
    assert not (tmp_path / "assets" / "quality_vs_size.md").exists()
    assert not (tmp_path / "assets" / "table2_ablation.md").exists()


def test_two_rank_distillation_matches_accumulation(study, tmp_path):
    """Adaptive weights are computed per micro-batch, so 2 gloo ranks = 1 process accumulating 2."""
    root, student, _ = study
    over = {**TINY, **TEACHER, "train.steps": 2, "train.eval_every": 0, "train.ckpt_every": 0}
    cfg = resolve_distill("smoke", "lmi", "tiny", 0, True, "adaptive", {**over, "train.grad_accum": 2})
    _copy_shared(root, tmp_path / "accum", student)
    accum = run_pipeline(cfg, tmp_path / "accum", progress=False)  # its teacher (other train.* settings) is a new stage
    _copy_shared(root, tmp_path / "ddp", student)
    sets = []
    for k, v in over.items():
        sets += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lambda_blocks.latent.distill", "--preset", "smoke", "--arm", "lmi", "--size", "tiny",
           "--out", str(tmp_path / "ddp"), "--no-progress", *sets]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp_dir = tmp_path / "ddp" / resolve_distill("smoke", "lmi", "tiny", 0, True, "adaptive", over).run_name
    assert json.loads((ddp_dir / "env.json").read_text())["world_size"] == 2
    rows = [r for r in records.read_jsonl(ddp_dir / "metrics.jsonl") if r["kind"] == "kd"]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 logs once per step
    assert relative_update_gap(accum, ddp_dir) < 1e-4


def test_w_c_sits_at_its_clamp_only_at_step_one_and_only_with_the_zero_init(study, tmp_path):
    """The conv_out init decides w_C at step 0 (issue: KD that does not hinge on an init accident).
    Zero-initialised conv_out (ours): the task gradient at the feature anchor is exactly 0 at the
    first step, so w_C = G_f(ckd) / eps_f there (clamped at clamp_f): a number set by eps_f, not by
    a ratio of gradients; from the second step on it is a ratio of measured norms. The authors'
    default init (``unet.zero_init_out=false``): a ratio of measured norms from the first step."""
    root, student, _ = study
    clamp, eps = K.KDWeights().clamp_f, K.KDWeights().eps_f
    zero = [r for r in records.read_jsonl(student / "metrics.jsonl") if r["kind"] == "kd"]
    assert zero[0]["step"] == 1 and zero[0]["gnorm_task@f"] == 0.0
    assert zero[0]["w_c"] == pytest.approx(min(clamp, zero[0]["gnorm_ckd@f"] / eps), rel=1e-5)
    assert all(0 < r["w_c"] < clamp and r["gnorm_task@f"] > 0 for r in zero[1:])
    _copy_shared(root, tmp_path, student)
    out = run(kd_cfg(**{"unet.zero_init_out": False, "train.steps": 2}), tmp_path, progress=False)
    default = [r for r in records.read_jsonl(out / "metrics.jsonl") if r["kind"] == "kd"]
    assert len(default) == 2 and all(0 < r["w_c"] < clamp and r["gnorm_task@f"] > 0 for r in default)
