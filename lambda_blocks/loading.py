"""Loading what a run folder holds: its (EMA) U-Net and, for a latent-space run, its latent space.

Used by training (the teacher of a distilled run, the autoencoder of a latent run), evaluation and
the notebooks; it imports neither ``train`` nor ``evaluate``, so both can import it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import records
from .config import ExpCfg

__all__ = ["MissingStage", "latent_space", "load_run_model"]


class MissingStage(RuntimeError):
    """A run needs a stage (its autoencoder, its teacher) that has not been trained yet."""


def latent_space(cfg: ExpCfg, root: Path, device: torch.device):
    """(LatentSpace, summary fields) of a latent-space run, from its trained autoencoder in
    ``root``; (None, {}) in pixel space. The autoencoder is a stage of its own, trained before
    (``train.run_stages``): a missing one is ``MissingStage``, never trained here."""
    if cfg.latent.space != "latent":
        return None, {}
    from .latent.autoencoder import DiffusersAutoencoder, LatentSpace, ae_hash, ae_run_dir, load_autoencoder

    if cfg.latent.ae_path:  # a diffusers AutoencoderKL on disk: loaded, never trained or downloaded
        ae = DiffusersAutoencoder(cfg.latent.ae_path)
        info = {"ae_run": None, "ae_path": str(cfg.latent.ae_path), "ae_hash": ae.content_hash, "ae_factor": ae.factor,
                "ae_latent_channels": ae.latent_channels}
        return LatentSpace(ae.to(device)), info
    acfg = cfg.ae_config()
    ae_dir = ae_run_dir(acfg, root)
    if not records.is_done(ae_dir):
        raise MissingStage(f"the autoencoder stage {ae_dir} is not trained: train the run's stages first "
                           "(train.run_stages, or the train / distill CLIs, which do it before the run)")
    summ = records.read_json(Path(ae_dir) / "summary.json") or {}
    info = {"ae_run": Path(ae_dir).name, "ae_hash": ae_hash(acfg), "ae_psnr": summ.get("psnr"),
            "ae_ssim": summ.get("ssim"), "ae_lpips": summ.get("lpips"), "ae_factor": acfg.factor,
            "ae_latent_channels": acfg.latent_channels}
    return LatentSpace(load_autoencoder(ae_dir).to(device)), info


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu",
                   use_ema: bool = True) -> tuple[nn.Module, int]:
    """(the (EMA) U-Net of a finished or checkpointed run, in eval mode and frozen; its step)."""
    from .unet import InpaintUNet

    paths = records.RunPaths(run_dir)
    raw = records.read_json(paths.config)
    if raw is None:
        raise FileNotFoundError(f"{paths.config} is missing or unreadable")
    ck = records.load_checkpoint(paths.ckpt, map_location=device)
    if ck.get("config_hash") is not None and raw.get("config_hash") is not None \
            and ck["config_hash"] != raw["config_hash"]:
        raise RuntimeError(f"{paths.ckpt} belongs to config {ck['config_hash']}, but {paths.config} is config "
                           f"{raw['config_hash']}: the checkpoint was copied from another run")
    model = InpaintUNet(ExpCfg.from_dict(raw).unet_config())
    try:
        model.load_state_dict(ck["ema" if use_ema else "model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:200]
        raise RuntimeError(f"{paths.ckpt} does not fit the architecture of {paths.config} "
                           f"(arm {raw.get('arm')}, size {raw.get('size')}): {first}") from None
    return model.to(device).eval().requires_grad_(False), int(ck["step"])
