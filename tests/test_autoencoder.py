"""The latent autoencoder: shapes, strict config, training / resume / skip, loading, latent problems."""
from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import torch

from lambda_blocks import records
from lambda_blocks.latent.autoencoder import (
    AECfg, LatentAutoencoder, LatentSpace, ae_config, ae_hash, ae_run_dir, cached_latents, downsample_mask,
    ensure_autoencoder, load_autoencoder, main, train_autoencoder,
)
from lambda_blocks.metrics import psnr
from lambda_blocks.seeding import key_seed

# tiny and fast: 16 px images (LPIPS is skipped below 31 px), two narrow levels
TINY = dict(image_size=16, widths=(8, 16), n_train=48, n_test=8, steps=80, batch_size=8, lr=3e-3, warmup=5,
            ckpt_every=30, log_every=10, threads=1, device="cpu")


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    cfg = ae_config("smoke", **TINY)
    run_dir = train_autoencoder(cfg, out, progress=False)
    return cfg, out, run_dir


def test_shapes_and_round_trip_square_and_non_square():
    torch.manual_seed(0)
    ae = LatentAutoencoder(latent_channels=4, factor=4, widths=(8, 16)).eval()
    for h, w in ((32, 32), (32, 64)):
        x = torch.rand(2, 3, h, w) * 2 - 1
        z = ae.encode(x)
        assert z.shape == (2, 4, h // 4, w // 4)
        assert ae.decode(z).shape == (2, 3, h, w)
        assert ae(x).shape == x.shape
        # deterministic (the mean, never a sample), also in train mode, and per-sample (GroupNorm)
        assert torch.equal(ae.train().encode(x), ae.eval().encode(x))
        torch.testing.assert_close(ae.encode(x[1:]), z[1:], rtol=1e-5, atol=1e-6)
    ae8 = LatentAutoencoder(latent_channels=3, factor=8, widths=(4, 8, 8))
    assert ae8.encode(torch.zeros(1, 3, 16, 24)).shape == (1, 3, 2, 3)
    assert (ae.factor, ae.latent_channels) == (4, 4)


def test_scaling_factor_buffer_scales_latents():
    torch.manual_seed(0)
    ae = LatentAutoencoder(4, 2, (8,)).eval()
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    z1 = ae.encode(x)
    ae.scaling_factor.fill_(0.25)
    torch.testing.assert_close(ae.encode(x), 0.25 * z1)
    torch.testing.assert_close(ae.decode(ae.encode(x)), ae.decode_unscaled(z1))
    assert "scaling_factor" in ae.state_dict()


def test_non_divisible_size_raises_naming_the_factor():
    ae = LatentAutoencoder(4, 4, (8, 16))
    with pytest.raises(ValueError, match="factor 4"):
        ae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="factor 4"):
        downsample_mask(torch.zeros(1, 1, 32, 18), 4)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ae.encode(torch.zeros(1, 1, 32, 32))


def test_strict_config_errors_and_hash():
    cfg = ae_config("smoke")
    assert isinstance(cfg, AECfg) and cfg.factor == 4 and len(cfg.widths) == 2
    with pytest.raises(KeyError, match="valid keys:.*widths"):
        ae_config("smoke", stepz=3)
    with pytest.raises(TypeError, match="steps"):
        ae_config("smoke", steps="10")
    with pytest.raises(TypeError, match="steps"):
        ae_config("smoke", steps=True)
    with pytest.raises(TypeError, match="widths"):
        ae_config("smoke", widths=(8.5, 16))
    with pytest.raises(ValueError, match="factor"):
        ae_config("smoke", factor=3)
    with pytest.raises(ValueError, match="log2"):
        ae_config("smoke", factor=8)  # widths still has 2 levels
    with pytest.raises(ValueError, match="preset"):
        ae_config("huge")
    with pytest.raises(ValueError, match="image_size"):
        ae_config("smoke", image_size=18)
    assert ae_config("smoke", lr=1).lr == 1.0  # int accepted for float
    assert ae_config("smoke", widths=[8, 16]).widths == (8, 16)  # JSON list -> tuple
    h = ae_hash(cfg)
    assert re.fullmatch(r"[0-9a-f]{10}", h) and h == ae_hash(ae_config("smoke"))
    assert h == ae_hash(cfg.to_dict()) and h != ae_hash(ae_config("smoke", seed=1))
    assert AECfg.from_dict({**cfg.to_dict(), "config_hash": h}) == cfg
    assert ae_run_dir(cfg, "x").name == f"ae-smoke-{h}"


def test_training_beats_untrained_and_zero_baseline(tiny_run):
    cfg, out, run_dir = tiny_run
    s = records.read_json(run_dir / "summary.json")
    assert s["status"] == "done" and s["config_hash"] == ae_hash(cfg)
    assert s["latent_shape"] == [4, 4, 4] and s["params"] > 0 and s["train_time_s"] > 0
    assert s["lpips"] is None  # 16 px < AlexNet's 31 px minimum
    assert json.loads((run_dir / "config.json").read_text())["config_hash"] == ae_hash(cfg)
    assert (run_dir / "env.json").exists()
    rows = [r for r in records.read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(10, 81, 10))
    assert rows[-1]["loss"] < rows[0]["loss"]

    from lambda_blocks.latent.autoencoder import _build_model, _load_split

    test = _load_split(cfg, "test")
    ae = load_autoencoder(run_dir)
    with torch.random.fork_rng():
        torch.manual_seed(key_seed("ae-init", cfg.seed))
        untrained = _build_model(cfg).eval()
    with torch.no_grad():
        err_trained = (ae(test).clamp(-1, 1) - test).pow(2).mean()
        err_untrained = (untrained(test).clamp(-1, 1) - test).pow(2).mean()
    assert err_trained < 0.7 * err_untrained
    zeros = float(psnr(torch.zeros_like(test), test).mean())
    assert s["psnr"] == pytest.approx(float(psnr(LatentSpace(ae).decode(ae.encode(test)), test).mean()), abs=1e-4)
    assert s["psnr"] > zeros + 1.0
    assert s["psnr_zeros_baseline"] == pytest.approx(zeros)


def test_scaling_factor_gives_unit_std_latents(tiny_run):
    cfg, _, run_dir = tiny_run
    from lambda_blocks.latent.autoencoder import _load_split

    ae = load_autoencoder(run_dir)
    sf = float(ae.scaling_factor)
    assert sf != 1.0 and sf == pytest.approx(records.read_json(run_dir / "summary.json")["scaling_factor"])
    assert float(records.load_checkpoint(run_dir / "ckpt.pt")["scaling_factor"]) == pytest.approx(sf)
    with torch.no_grad():
        z = ae.encode(_load_split(cfg, "train"))
    assert float(z.std()) == pytest.approx(1.0, abs=1e-3)


def test_interrupted_training_resumes_to_identical_weights(tiny_run, tmp_path):
    cfg, out, run_dir = tiny_run
    part = train_autoencoder(cfg, tmp_path, progress=False, stop_after=47)  # not a ckpt_every multiple
    assert not (part / "summary.json").exists()
    assert records.load_checkpoint(part / "ckpt.pt")["step"] == 47
    with pytest.raises(RuntimeError, match="unfinished"):
        load_autoencoder(part)
    assert train_autoencoder(cfg, tmp_path, progress=False) == part
    full = records.load_checkpoint(run_dir / "ckpt.pt")
    resumed = records.load_checkpoint(part / "ckpt.pt")
    assert resumed["step"] == full["step"] == cfg.steps
    assert _state_equal(resumed["model"], full["model"])
    losses = lambda d: [(r["step"], r["loss"]) for r in records.read_jsonl(d / "metrics.jsonl") if r["kind"] == "train"]
    assert losses(part) == losses(run_dir)  # no duplicated or missing rows, same values


def test_finished_run_is_skipped(tiny_run):
    cfg, out, run_dir = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    t0 = time.perf_counter()
    assert train_autoencoder(cfg, out, progress=False) == run_dir
    ae, d = ensure_autoencoder(cfg, out)
    assert time.perf_counter() - t0 < 5.0 and d == run_dir and isinstance(ae, LatentAutoencoder)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_load_autoencoder_round_trips_exactly(tiny_run):
    cfg, _, run_dir = tiny_run
    a, b = load_autoencoder(run_dir), load_autoencoder(run_dir)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    ck = torch.load(run_dir / "ckpt.pt", weights_only=True)  # plain tensors and containers only
    manual = LatentAutoencoder(cfg.latent_channels, cfg.factor, cfg.widths).eval()
    manual.load_state_dict(ck["model"])
    x = torch.rand(3, 3, 16, 32) * 2 - 1
    with torch.no_grad():
        za, zb, zm = a.encode(x), b.encode(x), manual.encode(x)
        assert torch.equal(za, zb) and torch.equal(za, zm)
        assert torch.equal(a.decode(za), manual.decode(zm))


def test_missing_or_corrupt_checkpoint_gives_clear_error(tiny_run, tmp_path):
    _, _, run_dir = tiny_run
    with pytest.raises(FileNotFoundError, match="no autoencoder checkpoint"):
        load_autoencoder(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt"):
        load_autoencoder(bad)


def test_downsample_mask_is_a_max_pool():
    m = torch.zeros(2, 1, 8, 12)
    m[0, 0, 5, 2] = 1.0  # one hole pixel -> its whole 4x4 cell is a hole
    zm = downsample_mask(m, 4)
    assert zm.shape == (2, 1, 2, 3)
    expected = torch.zeros(2, 1, 2, 3)
    expected[0, 0, 1, 0] = 1.0
    assert torch.equal(zm, expected)
    r = (torch.rand(3, 1, 16, 16) > 0.9).float()
    cells = r.reshape(3, 1, 4, 4, 4, 4).amax(dim=(3, 5))
    assert torch.equal(downsample_mask(r, 4), cells)


def test_encode_problem_and_decode(tiny_run):
    _, _, run_dir = tiny_run
    ae = load_autoencoder(run_dir)
    space = LatentSpace(ae)
    assert space.factor == 4
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, 4:9, 6:12] = 1.0
    z0, zmask, zmasked = space.encode_problem(x, m)
    with torch.no_grad():
        assert torch.equal(z0, ae.encode(x))
        assert torch.equal(zmasked, ae.encode(x * (1 - m)))
    assert torch.equal(zmask, downsample_mask(m, 4))
    assert not torch.equal(z0, zmasked)
    out = space.decode(z0 * 50)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1


def test_cached_latents(tiny_run, tmp_path):
    _, _, run_dir = tiny_run
    ae = load_autoencoder(run_dir)
    imgs = torch.rand(5, 3, 16, 16) * 2 - 1
    path = tmp_path / "lat.pt"
    lat = cached_latents(ae, imgs, path, batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(lat, ae.encode(imgs), rtol=1e-5, atol=1e-6)
    mtime = path.stat().st_mtime_ns
    assert torch.equal(cached_latents(ae, imgs, path), lat) and path.stat().st_mtime_ns == mtime
    path.write_bytes(b"garbage")
    assert torch.equal(cached_latents(ae, imgs, path, batch_size=2), lat)
    assert records.load_checkpoint(path)["latents"].shape == (5, 4, 4, 4)
    other = cached_latents(ae, imgs.flip(0), path)  # other images: rebuilt, not the stale cache
    torch.testing.assert_close(other, lat.flip(0), rtol=1e-5, atol=1e-6)


def test_cli_dry_run(tmp_path, capsys):
    assert main(["--preset", "smoke", "--out", str(tmp_path), "--set", "steps=3", "--set", "widths=[8,16]",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"steps": 3' in out and "ae-smoke-" in out
    assert not any(tmp_path.iterdir())


def _tiny_autoencoder_kl(path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                                  block_out_channels=(8, 8, 16), norm_num_groups=4, sample_size=32)
    vae.save_pretrained(str(path))
    return vae


def test_ae_path_uses_a_local_diffusers_autoencoder_kl(tmp_path):
    from lambda_blocks.config import resolve

    """latent.ae_path: a diffusers AutoencoderKL from a local folder (a small random config here) is
    the run's latent space: its factor and channels shape the U-Net, no autoencoder stage is trained,
    and encode / decode are the VAE's (posterior mean x scaling factor)."""
    from lambda_blocks import train as T
    from lambda_blocks.config import resolve
    from lambda_blocks.latent.autoencoder import DiffusersAutoencoder, external_ae_info
    from lambda_blocks.loading import latent_space

    vae = _tiny_autoencoder_kl(tmp_path / "vae")
    cfg = resolve("smoke", arm="lmi", overrides={"latent.space": "latent", "latent.ae_path": str(tmp_path / "vae")})
    info = external_ae_info(tmp_path / "vae")
    assert (info["factor"], info["latent_channels"]) == (4, 4) == cfg.ae_shape()
    assert cfg.work_size == cfg.data.image_size // 4 and cfg.unet_config().image_channels == 4
    assert [s.kind for s in T.stages(cfg)] == []  # nothing to train first
    space, ae_info = latent_space(cfg, tmp_path / "runs", torch.device("cpu"))
    assert isinstance(space.ae, DiffusersAutoencoder) and ae_info["ae_hash"] == info["hash"] and ae_info["ae_run"] is None
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z0, zmask, zmasked = space.encode_problem(x, torch.zeros(2, 1, 32, 32))
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        # the same function, up to float32 rounding (the loaded copy's kernels may sum in another order)
        assert z0.shape == (2, 4, 8, 8)
        torch.testing.assert_close(z0, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(space.decode(z0), vae.decode(z0 / vae.config.scaling_factor).sample.clamp(-1, 1),
                                   rtol=1e-5, atol=1e-5)
    assert cfg.run_name != resolve("smoke", arm="lmi", overrides={"latent.space": "latent"}).run_name


def test_ae_path_errors_are_clear_and_never_download(tmp_path):
    from lambda_blocks.config import resolve
    from lambda_blocks.latent.autoencoder import external_ae_info

    with pytest.raises(FileNotFoundError, match="config.json is missing.*nothing is downloaded"):
        resolve("smoke", arm="lmi", overrides={"latent.space": "latent", "latent.ae_path": str(tmp_path / "nope")})
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"_class_name": "AutoencoderKL", "block_out_channels": [8, 16]}')
    with pytest.raises(FileNotFoundError, match="no diffusion_pytorch_model"):
        external_ae_info(tmp_path / "half")
    with pytest.raises(ValueError, match="set latent.space=latent"):
        resolve("smoke", arm="lmi", overrides={"latent.ae_path": str(tmp_path / "half")})
    # a run without ae_path keeps the hash it had before the field existed (the shipped card's)
    from lambda_blocks.config import ExpCfg, config_hash
    from lambda_blocks.pretrained import WEIGHTS_DIR

    card = json.loads((WEIGHTS_DIR / "lmi-dev-tiny.json").read_text())
    legacy = json.loads(json.dumps(card["config"]))
    assert legacy["latent"].pop("ae_path", None) is None  # a config.json written before the field existed
    assert config_hash(ExpCfg.from_dict(legacy)) == config_hash(ExpCfg.from_dict(card["config"])) == card["config_hash"]


def test_perceptual_term_is_validated_hash_optional_and_enters_the_loss():
    """``perceptual_weight`` adds w * LPIPS(rec, x) (real AlexNet weights) to the loss; at 0 (the
    default) configs keep the hashes they had before the option existed."""
    from lambda_blocks.latent.autoencoder import _build_model, _losses
    from lambda_blocks.metrics import load_lpips

    assert ae_hash(ae_config("smoke")) == "63d6c5fc69" and ae_hash(ae_config("dev")) == "939e7d9b04"
    assert ae_hash(ae_config("dev", perceptual_weight=0.5)) != ae_hash(ae_config("dev"))
    with pytest.raises(ValueError, match="perceptual_weight"):
        ae_config("dev", perceptual_weight=-1.0)
    assert ae_config("smoke", perceptual_weight=1.0).perceptual_weight == 1.0  # 32 px: AlexNet fits
    with pytest.raises(ValueError, match="perceptual_weight.*31"):
        ae_config("smoke", perceptual_weight=1.0, image_size=16)
    lp = load_lpips()
    if lp is None:
        pytest.skip("no real LPIPS AlexNet weights on this machine")
    cfg = ae_config("smoke", perceptual_weight=2.0, kl_weight=0.0, device="cpu")
    torch.manual_seed(0)
    model = _build_model(cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    parts = _losses(model, x, cfg, step=0, lpips_model=lp)
    assert parts["perceptual"] > 0
    torch.testing.assert_close(parts["loss"], parts["l1"] + parts["mse"] + 2.0 * parts["perceptual"])
    parts["perceptual"].backward()
    assert model.dec_out.weight.grad is not None and model.dec_out.weight.grad.abs().sum() > 0
    plain = _losses(model, x, ae_config("smoke", kl_weight=0.0), step=0)
    assert float(plain["perceptual"]) == 0.0


def test_dev_latent_runs_default_to_the_f2_autoencoder_and_pixel_runs_are_untouched():
    """A dev latent-space run with no ``latent.ae_preset`` gets ``dev-f2`` written into its config
    (so into its hash: a run made when null meant the `dev` autoencoder keeps its own name); an
    explicit preset or a diffusers folder is kept; pixel-space configs, and the other presets, are
    exactly as before."""
    from lambda_blocks.config import ExpCfg, config_hash, resolve
    from lambda_blocks.latent.autoencoder import AE_PRESETS

    lat = resolve("dev", arm="lmi", overrides={"latent.space": "latent", "data.image_size": 64})
    assert lat.latent.ae_preset == "dev-f2" and "dev-f2" in AE_PRESETS
    acfg = lat.ae_config()
    assert (acfg.preset, acfg.factor, acfg.widths, acfg.perceptual_weight) == ("dev-f2", 2, (32,), 0.5)
    assert acfg.image_size == 64 and lat.work_size == 32
    assert config_hash(ExpCfg.from_dict(lat.to_dict())) == config_hash(lat)  # a written config reads back
    null_meant_dev = lat.to_dict()
    null_meant_dev["latent"]["ae_preset"] = None
    assert config_hash(null_meant_dev) != config_hash(lat)
    kept = resolve("dev", overrides={"latent.space": "latent", "latent.ae_preset": "dev"})
    assert kept.latent.ae_preset == "dev" and kept.ae_config().factor == 4
    assert resolve("dev").latent.ae_preset is None and resolve("dev").latent == type(lat.latent)()
    assert resolve("smoke", overrides={"latent.space": "latent"}).latent.ae_preset is None
    with pytest.raises(ValueError, match="dev-f2"):  # the message lists the autoencoder presets
        resolve("dev", overrides={"latent.space": "latent", "latent.ae_preset": "nope"})
