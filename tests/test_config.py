"""Config: strict overrides (unknown keys / wrong types rejected before work), presets, stable hash,
round trip; runtime: importing the package changes no global torch setting."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lambda_blocks import runtime
from lambda_blocks.config import PRESETS, ExpCfg, config_hash, resolve, valid_keys
from lambda_blocks.unet import ARMS, SIZES, variant_arm_names

ROOT = Path(__file__).resolve().parents[1]
VARIANT_ARMS = variant_arm_names()  # one arm per registered mixer


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("arm", VARIANT_ARMS)
def test_presets_resolve_for_every_variant(preset, arm):
    cfg = resolve(preset, arm=arm)
    assert cfg.arm == arm and cfg.preset == preset
    assert cfg.data.image_size % 2 == 0
    assert cfg.eval.n_eval <= cfg.data.n_test
    assert cfg.eval.init == "noise"  # the leaking start is never a preset default


def test_every_arm_and_size_is_accepted():
    for arm in ARMS:
        for size in SIZES:
            assert resolve("smoke", arm=arm, size=size).size == size


def test_overrides_dotted_flat_and_unet():
    cfg = resolve("smoke", arm="lmi", overrides={"train.lr": 1e-3, "data.image_size": 16, "unet.heads": 2}, warmup=3)
    assert cfg.train.lr == 1e-3 and cfg.data.image_size == 16 and cfg.train.warmup == 3
    assert cfg.model.unet == {"heads": 2} and cfg.unet_config().heads == 2
    # int accepted for float (and stored as float, so the hash does not depend on the spelling)
    a = resolve("smoke", overrides={"train.lr": 1})
    b = resolve("smoke", overrides={"train.lr": 1.0})
    assert isinstance(a.train.lr, float) and config_hash(a) == config_hash(b)


@pytest.mark.parametrize("key", ["trian.lr", "train.lrr", "bogus", "unet.bogus", "model.depth"])
def test_unknown_key_rejected_with_valid_keys_listed(key):
    with pytest.raises(KeyError) as err:
        resolve("smoke", overrides={key: 1})
    msg = str(err.value)
    assert key in msg and "train.lr" in msg and "valid keys" in msg


def test_ambiguous_flat_key_rejected():
    with pytest.raises(KeyError, match="ambiguous"):
        resolve("smoke", overrides={"seed": 1})  # data.seed / eval.seed


@pytest.mark.parametrize("key,value", [
    ("train.steps", "10"),      # str for int
    ("train.steps", 1.5),       # float for int
    ("train.steps", True),      # bool for int
    ("data.dataset", 3),        # int for str
    ("train.lr", "1e-3"),       # str for float
    ("train.amp_bf16", 1),      # int for bool
    ("unet.heads", "2"),        # str for a UNetConfig int
    ("data.root", 5),           # int for str | None
])
def test_wrong_type_rejected(key, value):
    with pytest.raises(TypeError, match=key.replace(".", r"\.")):
        resolve("smoke", overrides={key: value})


@pytest.mark.parametrize("over,match", [
    ({"train.steps": 0}, "train.steps"),
    ({"diffusion.schedule": "sqrt"}, "diffusion.schedule"),
    ({"eval.init": "leak"}, "eval.init"),
    ({"train.batch_size": 6, "train.grad_accum": 4}, "grad_accum"),
    ({"eval.n_eval": 10_000}, "n_eval"),
    ({"data.image_size": 33}, "divisible"),
    ({"data.dataset": "folder"}, "data.root"),
])
def test_bad_values_rejected(over, match):
    with pytest.raises(ValueError, match=match):
        resolve("smoke", overrides=over)


def test_unknown_arm_size_preset():
    with pytest.raises(ValueError, match="arm"):
        resolve("smoke", arm="flash")
    with pytest.raises(ValueError, match="size"):
        resolve("smoke", size="huge")
    with pytest.raises(ValueError, match="preset"):
        resolve("fast")


def test_roundtrip_and_hash_sensitivity():
    cfg = resolve("dev", arm="local_lambda", seed=3, overrides={"unet.heads": 2, "train.lr": 5e-4})
    d = cfg.to_dict()
    json.dumps(d)  # plain JSON
    back = ExpCfg.from_dict({**d, "config_hash": config_hash(cfg)})
    assert back == cfg and config_hash(back) == config_hash(cfg)
    assert config_hash(resolve("dev", arm="local_lambda", seed=4, overrides={"unet.heads": 2, "train.lr": 5e-4})) \
        != config_hash(cfg)
    assert len(config_hash(cfg)) == 10
    assert cfg.run_name == f"local_lambda-dev-tiny-s3-{config_hash(cfg)}"


def test_hash_stable_across_processes():
    code = ("from lambda_blocks.config import resolve, config_hash;"
            "print(config_hash(resolve('smoke', arm='lmi', seed=1, overrides={'train.lr': 1e-3, 'unet.heads': 2})))")
    here = config_hash(resolve("smoke", arm="lmi", seed=1, overrides={"train.lr": 1e-3, "unet.heads": 2}))
    outs = set()
    for hseed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hseed, "PYTHONPATH": str(ROOT)}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        outs.add(res.stdout.strip())
    assert outs == {here}


def test_cli_rejects_before_any_work(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for bad in ("trian.lr=1e-3", "train.steps=ten"):
        res = subprocess.run([sys.executable, "-m", "lambda_blocks.train", "--preset", "smoke", "--attn", "lmi",
                              "--out", str(tmp_path / "out"), "--set", bad], capture_output=True, text=True, env=env,
                             cwd=ROOT)
        assert res.returncode != 0
        assert bad.split("=")[0] in res.stderr
        assert not (tmp_path / "out").exists()


def test_valid_keys_cover_sections():
    keys = valid_keys()
    for k in ("train.lr", "data.image_size", "eval.n_eval", "diffusion.schedule", "unet.heads"):
        assert k in keys


def test_import_changes_no_global_torch_setting():
    code = (
        "import json, torch\n"
        "def flags():\n"
        "    return [torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,\n"
        "            torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,\n"
        "            torch.backends.cudnn.allow_tf32, torch.get_num_threads(), torch.initial_seed()]\n"
        "before = flags()\n"
        "import lambda_blocks, lambda_blocks.config, lambda_blocks.diffusion, lambda_blocks.train\n"
        "import lambda_blocks.evaluate, lambda_blocks.records, lambda_blocks.seeding, lambda_blocks.runtime\n"
        "print(json.dumps([before, flags()]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    before, after = json.loads(res.stdout.strip().splitlines()[-1])
    assert before == after


def test_configured_restores_flags():
    before = runtime.current_flags()
    with runtime.configured(deterministic=not before["deterministic"], tf32=not before["tf32_matmul"]) as f:
        assert f["deterministic"] != before["deterministic"]
        assert torch.backends.cuda.matmul.allow_tf32 != before["tf32_matmul"]
    assert runtime.current_flags() == before


def test_environment_info_is_host_free():
    import socket

    info = runtime.environment_info("cpu")
    for k in ("git_sha", "git_dirty", "versions", "device", "threads", "cpu_model", "hardware", "torch_version"):
        assert k in info
    assert {"python", "torch", "torchvision", "timm", "fvcore", "lpips", "lambda_blocks"} <= set(info["versions"])
    host = socket.gethostname()

    def values(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from values(v)
        else:
            yield obj

    assert host not in list(values(info))
    assert not any("host" in k.lower() or k.lower() == "node" for k in info)
    assert runtime.select_device("cpu").type == "cpu"


def test_parse_overrides_forms():
    from lambda_blocks.config import parse_overrides

    assert parse_overrides(None) == {} and parse_overrides("") == {}
    assert parse_overrides('{"train.lr": 0.001}') == {"train.lr": 0.001}
    assert parse_overrides("train.lr=1e-3; unet.widths=[16, 32]; eval.fid=false; data.dataset=folder") == {
        "train.lr": 1e-3, "unet.widths": [16, 32], "eval.fid": False, "data.dataset": "folder"}
    with pytest.raises(ValueError):
        parse_overrides("train.lr")


class _FakeLibc:
    """Records mallopt calls; answers like glibc (1: accepted)."""

    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


def _fresh_allocator(monkeypatch):
    monkeypatch.setattr(runtime, "_ALLOCATOR", {"tuned": False, "reason": "not requested"})
    for var in (runtime.ALLOCATOR_ENV_OFF, "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"):
        monkeypatch.delenv(var, raising=False)


def test_tune_allocator_sets_both_thresholds_once(monkeypatch):
    _fresh_allocator(monkeypatch)
    lib = _FakeLibc()
    state = runtime.tune_allocator(libc=lib)
    assert state["tuned"] and state["mmap_threshold"] == runtime.ALLOCATOR_MMAP_BYTES
    # both thresholds, by glibc's parameter numbers (M_MMAP_THRESHOLD -3, M_TRIM_THRESHOLD -1)
    assert sorted(lib.calls) == sorted([(-3, runtime.ALLOCATOR_MMAP_BYTES), (-1, runtime.ALLOCATOR_TRIM_BYTES)])
    assert runtime.tune_allocator(libc=lib) == state and len(lib.calls) == 2  # idempotent
    assert runtime.environment_info("cpu")["allocator"] == state  # recorded in every run's env.json


@pytest.mark.parametrize("env, reason", [
    ({runtime.ALLOCATOR_ENV_OFF: "0"}, "=0"),
    ({"MALLOC_TRIM_THRESHOLD_": "1000"}, "environment"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "preloaded"),
])
def test_tune_allocator_leaves_a_users_choice_alone(monkeypatch, env, reason):
    _fresh_allocator(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lib = _FakeLibc()
    state = runtime.tune_allocator(libc=lib)
    assert not state["tuned"] and reason in state["reason"] and lib.calls == []


def test_tune_allocator_reports_a_refusal(monkeypatch):
    _fresh_allocator(monkeypatch)
    state = runtime.tune_allocator(libc=_FakeLibc(answer=0))
    assert not state["tuned"] and "refused" in state["reason"]


def test_tune_allocator_on_this_libc():
    """On glibc (every project machine) the real mallopt accepts both settings."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    state = runtime.tune_allocator()
    assert state["tuned"] or "LAMBDA_BLOCKS_TUNE_MALLOC" in state["reason"] or "environment" in state["reason"]


def test_lambda_gain_is_one_key_that_keeps_old_hashes_and_is_dropped_where_it_does_nothing():
    """``model.lambda_gain`` (also ``unet.lambda_gain`` / ``lambda_gain``) is the presets' recipe; at
    None it leaves the hash of every run recorded before it; for an arm without lambda layers it is
    dropped, so that arm keeps its one run; a bad value names the key before any work."""
    from lambda_blocks.config import PRESETS

    assert {PRESETS[p]["model.lambda_gain"] for p in ("smoke", "dev", "paper")} == {0.05}
    lmi = resolve("dev", arm="lmi")
    assert lmi.model.lambda_gain == 0.05 and lmi.unet_config().lambda_gain == 0.05
    legacy = resolve("dev", arm="lmi", overrides={"model.lambda_gain": None})
    d = legacy.to_dict()
    del d["model"]["lambda_gain"]  # a config.json written before the field existed
    assert ExpCfg.from_dict(d) == legacy and config_hash(d) == config_hash(legacy) != config_hash(lmi)
    for key in ("unet.lambda_gain", "model.lambda_gain", "lambda_gain"):
        assert resolve("dev", arm="lmi", overrides={key: 0.2}).model.lambda_gain == 0.2
    lin = resolve("dev", arm="linear")
    assert lin.model.lambda_gain is None
    assert config_hash(lin) == config_hash(resolve("dev", arm="linear", overrides={"model.lambda_gain": None}))
    assert resolve("dev", arm="moebius_paper").model.lambda_gain is None  # the authors' layers take none
    with pytest.raises(ValueError, match="lambda_gain"):
        resolve("dev", arm="lmi", overrides={"model.lambda_gain": -1})
    with pytest.raises(TypeError, match="model.lambda_gain"):
        resolve("dev", arm="lmi", overrides={"model.lambda_gain": "big"})
