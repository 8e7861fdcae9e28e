"""DDPM training loss and a DDIM sampler for masked inpainting (eps, v or x0 prediction).

Conventions: images in [-1, 1], shape (B, C, H, W); masks (B, 1, H, W) with 1 = hole. The network
input is ``cat(x_t, masked, mask)`` with ``masked = x0 * (1 - mask)`` (holes at 0, mid-grey), the
paper's 9-channel layout in pixel space (MOEBIUS_SPEC section 7) with 2C + 1 channels.

Noise schedules (``Diffusion(schedule=...)``, T = 1000 by default):

* ``cosine`` (default; Nichol & Dhariwal 2021, s = 0.008, betas clipped at 0.999). The models here
  are pixel-space at 32-128 px. The linear schedules were tuned for 256 px pixels (``linear``) or for
  4x64x64 latents (``scaled_linear``); on small images they destroy the signal early, so most
  timesteps are nearly pure noise and train little. The cosine schedule spreads the log-SNR evenly
  and reaches alpha_bar ~ 0 at t = T - 1, which makes a pure-noise start consistent.
* ``linear``: beta from ``beta_start`` = 1e-4 to ``beta_end`` = 0.02 (Ho et al. 2020).
* ``scaled_linear``: sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012): the paper's diffusers
  schedule (set ``beta_start=0.00085, beta_end=0.012``). alpha_bar(999) = 0.0047, so even t = T - 1
  keeps 7% of the signal's amplitude.

DDIM sampling (Song et al. 2021, eta = 0 by default) over a subset of timesteps:

* ``leading`` (default; diffusers' default and the paper's): t = k * (T // S) reversed, e.g. 950,
  900, ..., 0 for S = 20. With epsilon prediction the clean estimate is
  x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), which multiplies the network's error by
  1 / sqrt(abar_t): 13x at t = 950 under the cosine schedule, but 2e4x at t = 999 (abar = 2.5e-9).
  Measured on a dev-preset LλMI checkpoint (16 test images, 10 steps): hole PSNR 9.8 dB leading vs
  9.0 dB trailing. The start at t = 950 from pure noise ignores the 8% of signal amplitude that
  x_950 would carry: a small, documented mismatch.
* ``trailing``: t = round(T - k T / S) - 1 for k = 0..S-1, e.g. 999, 949, ..., 49. The first step is
  at t = T - 1, where the cosine schedule has no signal left, so a pure-noise start is exact
  (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed"); it pays off with
  v-prediction, not with the epsilon prediction used here (see above).

After the last step the clean estimate is returned (alpha_bar_prev = 1 at the end).

Prediction targets (``Diffusion(prediction=...)``). With x_t = sqrt(abar) x0 + sqrt(1 - abar) eps:

* ``eps`` (the paper's; DDPM): the network predicts the noise. The clean estimate
  x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies its error by 1 / sqrt(abar): large at the
  noisy end of sampling, where a [-1, 1] clamp then turns the error into saturated colour.
* ``v`` (Salimans & Ho 2022): v = sqrt(abar) eps - sqrt(1 - abar) x0. Then
  x0 = sqrt(abar) x_t - sqrt(1 - abar) v and eps = sqrt(1 - abar) x_t + sqrt(abar) v: both are
  rotations of (x_t, v), so no error is amplified anywhere, and at abar = 0 (t = T - 1 of the cosine
  schedule, the ``trailing`` start) the prediction is x0 itself.
* ``x0``: the network predicts the clean sample; eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).

Loss weighting (``loss_weighting``): ``none`` is the plain MSE on the target. ``min_snr``
(Min-SNR-gamma, Hang et al. 2023) weights each sample so that the loss equals
min(SNR, gamma) * ||x0_hat - x0||^2 with SNR = abar / (1 - abar): per target, the weight on the
target's MSE is min(SNR, gamma) / SNR (eps), min(SNR, gamma) / (SNR + 1) (v), min(SNR, gamma) (x0).

Start of sampling. By default the sampler starts from **pure noise** and never receives the
hidden content: ``ddim_sample`` takes the masked image, not the ground truth. The paper's pipeline
instead starts from a partially noised copy of the *unmasked* input (strength 0.99 -> x_900 with
0.119 * z0; MOEBIUS_SPEC section 11.13), which leaks the hole's ground truth into the start. That is
available only as ``init="noised_input_LEAKS_GT"`` together with an explicit ``leak_image=x0`` and
warns every time. Known pixels are pasted back at the end: ``x = mask * x + (1 - mask) * masked``.

Randomness is per sample (``lambda_blocks.seeding``): the caller passes one generator per image, so
a sample does not depend on the batch it is computed in.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch

from .seeding import randn_like_per_sample, randn_per_sample

__all__ = ["Diffusion", "make_betas", "ddim_timesteps", "LEAK_INIT", "GroundTruthLeakWarning", "SCHEDULES",
           "SPACINGS", "PREDICTIONS", "LOSS_WEIGHTINGS"]

LEAK_INIT = "noised_input_LEAKS_GT"
INITS = ("noise", LEAK_INIT)  # how sampling starts: pure noise, or the paper's leaking noised input
T_SAMPLING = ("uniform", "logit_normal")
SCHEDULES = ("cosine", "linear", "scaled_linear")
SPACINGS = ("trailing", "leading")
PREDICTIONS = ("eps", "v", "x0")
LOSS_WEIGHTINGS = ("none", "min_snr")


class GroundTruthLeakWarning(UserWarning):
    """Sampling started from a noised copy of the ground truth: hole metrics are optimistic."""


def make_betas(schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """(T,) float64 betas of a named schedule (see the module docstring)."""
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def ddim_timesteps(timesteps: int, steps: int, spacing: str = "leading", strength: float = 1.0) -> list[int]:
    """Descending DDIM timesteps; ``strength < 1`` drops the first ``S - int(S * strength)`` of them
    (diffusers' img2img rule: strength 0.99 with 20 leading steps -> 900, 850, ..., 0)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    if spacing == "leading":
        ratio = timesteps // steps
        ts = [k * ratio for k in range(steps)][::-1]
    elif spacing == "trailing":
        ts = [int(round(timesteps - k * timesteps / steps)) - 1 for k in range(steps)]
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    keep = int(steps * strength)
    return ts[steps - keep:]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


class Diffusion:
    """Noise schedule, training loss and DDIM sampler for one prediction target.

    Args:
        schedule: ``cosine`` | ``linear`` | ``scaled_linear``.
        timesteps: T.
        beta_start, beta_end: for the linear schedules.
        t_sampling: training timesteps ``uniform`` on {0..T-1}, or ``logit_normal``
            (t = floor(T * sigmoid(z)), z ~ N(0, 1), as the paper).
        prediction: what the network outputs: ``eps`` (the paper's), ``v`` or ``x0`` (module docstring).
        loss_weighting: ``none`` or ``min_snr`` (Min-SNR-gamma with ``min_snr_gamma``).
    """

    def __init__(self, schedule: str = "cosine", timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, t_sampling: str = "uniform", prediction: str = "eps",
                 loss_weighting: str = "none", min_snr_gamma: float = 5.0):
        if t_sampling not in T_SAMPLING:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; choose one of {T_SAMPLING}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}; choose one of {LOSS_WEIGHTINGS}")
        if not (math.isfinite(min_snr_gamma) and min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma must be a finite number > 0, got {min_snr_gamma}")
        self.schedule, self.timesteps, self.t_sampling = schedule, int(timesteps), t_sampling
        self.prediction, self.loss_weighting, self.min_snr_gamma = prediction, loss_weighting, float(min_snr_gamma)
        self.betas = make_betas(schedule, self.timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,) float64

    @classmethod
    def from_cfg(cls, d) -> "Diffusion":
        """From a ``config.DiffusionCfg``."""
        return cls(d.schedule, d.timesteps, d.beta_start, d.beta_end, d.t_sampling, d.prediction,
                   d.loss_weighting, d.min_snr_gamma)

    # -- forward process ------------------------------------------------------------------------

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t broadcast to ``like``; t may be -1 (alpha_bar = 1, the clean end)."""
        t = torch.as_tensor(t, device="cpu").long().reshape(-1)
        if t.numel() == 1 and like.shape[0] != 1:
            t = t.expand(like.shape[0])
        a = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return _bcast(a, like)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def predict_v(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
        a = self.abar(t, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output: the noise, v, or x0."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "v":
            return self.predict_v(x0, t, noise)
        return x0

    def split_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) implied by the network output ``out`` at (x_t, t)."""
        a = self.abar(t, x_t)
        if self.prediction == "eps":
            return (x_t - (1 - a).sqrt() * out) / a.sqrt(), out
        if self.prediction == "v":
            return a.sqrt() * x_t - (1 - a).sqrt() * out, (1 - a).sqrt() * x_t + a.sqrt() * out
        return out, (x_t - a.sqrt() * out) / (1 - a).sqrt()

    def x0_from_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The clean estimate implied by a network output (``predict_x0`` for eps prediction)."""
        return self.split_output(x_t, t, out)[0]

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = abar_t / (1 - abar_t), float64 (B,)."""
        a = self.alphas_cumprod[torch.as_tensor(t, device="cpu").long().reshape(-1)]
        return a / (1 - a)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight on the target's MSE (B,), float64; all ones for ``loss_weighting="none"``.

        Min-SNR-gamma: min(SNR, gamma) / SNR (eps), min(SNR, gamma) / (SNR + 1) (v), min(SNR, gamma) (x0),
        i.e. the loss is min(SNR, gamma) * ||x0_hat - x0||^2 whatever the target.
        """
        t = torch.as_tensor(t, device="cpu").long().reshape(-1)
        if self.loss_weighting == "none":
            return torch.ones(t.shape, dtype=torch.float64)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            return clipped / snr
        if self.prediction == "v":
            return clipped / (snr + 1)
        return clipped

    @staticmethod
    def model_input(x_t: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 2C+1, H, W) = cat(x_t, masked, mask)."""
        return torch.cat([x_t, masked, mask.to(x_t.dtype)], dim=1)

    # -- training -------------------------------------------------------------------------------

    def sample_t(self, gens: Sequence[torch.Generator], device: str | torch.device = "cpu") -> torch.Tensor:
        """One training timestep per generator (per-sample streams: batch-independent)."""
        if self.t_sampling == "uniform":
            u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
            t = (u * self.timesteps).long()
        else:
            z = torch.stack([torch.randn((), generator=g, dtype=torch.float64) for g in gens])
            t = (torch.sigmoid(z) * self.timesteps).long()
        return t.clamp(0, self.timesteps - 1).to(device)

    def training_loss(self, model: Callable, x0: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor, reduction: str = "mean", masked: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted MSE between the network output and its target (``target``) on input
        cat(x_t, masked, mask); the weight per sample is ``loss_weights(t)`` (1 unless Min-SNR).

        ``masked`` defaults to ``x0 * (1 - mask)`` (pixel space); in latent space it is the latent of
        the masked image, which is not the masked latent. ``reduction="none"`` returns the per-sample
        weighted mean (B,).
        """
        x_t = self.q_sample(x0, t, noise)
        if masked is None:
            masked = x0 * (1 - mask)
        out = model(self.model_input(x_t, masked, mask), t)
        target = self.target(x0, t, noise)
        err = (out.float() - target.float()).square().flatten(1).mean(1)
        if self.loss_weighting != "none":
            err = err * self.loss_weights(t).to(device=err.device, dtype=err.dtype)
        return err.mean() if reduction == "mean" else err

    # -- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def ddim_sample(
        self,
        model: Callable,
        masked: torch.Tensor,
        mask: torch.Tensor,
        *,
        generators: Sequence[torch.Generator] | None = None,
        noise: torch.Tensor | None = None,
        steps: int = 20,
        spacing: str = "leading",
        eta: float = 0.0,
        init: str = "noise",
        strength: float = 1.0,
        leak_image: torch.Tensor | None = None,
        clip_x0: bool = True,
        paste: bool = True,
    ) -> torch.Tensor:
        """Inpaint: DDIM from pure noise (default) conditioned on the masked image.

        Args:
            model: out = model(cat(x_t, masked, mask), t), read as ``self.prediction``.
            masked: (B, C, H, W) known pixels, holes zero (``x0 * (1 - mask)``).
            mask: (B, 1, H, W), 1 = hole.
            generators: one per sample (``seeding.sample_generators``); used for the start noise
                (if ``noise`` is None) and for eta > 0.
            noise: explicit start noise (B, C, H, W) instead of drawing from ``generators``.
            steps, spacing: see ``ddim_timesteps``.
            eta: DDIM stochasticity (0 = deterministic).
            init: ``"noise"`` (start from pure noise at the first timestep), or
                ``"noised_input_LEAKS_GT"``: start from sqrt(abar) * leak_image + sqrt(1 - abar) * noise
                at the timestep given by ``strength``, as the paper's pipeline does. This puts the
                hidden ground truth into the start and warns.
            strength: img2img strength (``LEAK_INIT`` only; ignored for a pure-noise start).
            leak_image: the full (unmasked) image; required by ``LEAK_INIT`` and refused otherwise.
            clip_x0: clamp the clean estimate to [-1, 1] at every step.
            paste: paste the known pixels back at the end.

        Returns:
            (B, C, H, W) samples (float32 unless the inputs are float64).
        """
        if init not in ("noise", LEAK_INIT):
            raise ValueError(f"unknown init {init!r}; choose 'noise' or {LEAK_INIT!r}")
        if init == "noise" and leak_image is not None:
            raise ValueError("leak_image is only used with init='noised_input_LEAKS_GT'; the default start "
                             "is pure noise and must not see the ground truth")
        if noise is None:
            if generators is None:
                raise ValueError("pass generators (one per sample) or an explicit start noise")
            noise = randn_like_per_sample(masked, generators)
        if eta > 0 and generators is None:
            raise ValueError("eta > 0 needs per-sample generators")
        mask = mask.to(masked.dtype)
        if init == LEAK_INIT:
            if leak_image is None:
                raise ValueError(f"init={LEAK_INIT!r} needs leak_image=<full ground-truth image>")
            warnings.warn(
                "DDIM starts from a noised copy of the ground truth (init='noised_input_LEAKS_GT', "
                f"strength={strength}): hidden hole content leaks into the sample (MOEBIUS_SPEC 11.13).",
                GroundTruthLeakWarning, stacklevel=2,
            )
            ts = ddim_timesteps(self.timesteps, steps, spacing, strength)
            x = self.q_sample(leak_image.to(masked.dtype), torch.tensor(ts[0]), noise)
        else:
            ts = ddim_timesteps(self.timesteps, steps, spacing)
            x = noise
        b = masked.shape[0]
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            tt = torch.full((b,), t, device=masked.device, dtype=torch.long)
            out = model(self.model_input(x, masked, mask), tt).to(x.dtype)
            a_t, a_prev = self.abar(t, x), self.abar(t_prev, x)
            x0_hat, eps = self.split_output(x, tt, out)
            if clip_x0:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
                eps = (x - a_t.sqrt() * x0_hat) / (1 - a_t).sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
            x = a_prev.sqrt() * x0_hat + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and t_prev >= 0:
                x = x + sigma * randn_per_sample(generators, x.shape[1:], dtype=x.dtype, device=x.device)
        if paste:
            x = mask * x + (1 - mask) * masked
        return x

    @torch.no_grad()
    def validation_loss(self, model: Callable, x0: torch.Tensor, mask: torch.Tensor,
                        gens: Sequence[torch.Generator], n_t: int = 4,
                        masked: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample training loss (weighted as in training) averaged over ``n_t`` evenly spaced timesteps with keyed noise (B,)."""
        ts = [int((k + 0.5) * self.timesteps / n_t) for k in range(n_t)]
        total = torch.zeros(x0.shape[0], dtype=torch.float64)
        for t in ts:
            noise = randn_like_per_sample(x0, gens)
            tt = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
            total += self.training_loss(model, x0, mask, tt, noise, reduction="none", masked=masked).double().cpu()
        return total / n_t
