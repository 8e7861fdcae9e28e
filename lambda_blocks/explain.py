"""The tested functions behind ``notebooks/00_lambda_walkthrough.ipynb``, which explains LλMI.

The notebook only calls what is defined here, so each claim it makes is backed by a test in
``tests/test_explain.py``:

* `validate_params`: checks the notebook's flat parameters (papermill injects any name, so types
  and ranges are all we can check).
* `walkthrough` / `check_walkthrough` / `shape_table`: Local-λ step by step (projections, key
  softmax, content lambda, lambda convolution, output). `check_walkthrough` asserts that the steps
  reproduce the module's forward and the per-pixel loop in `layers._reference`.
* `receptive_field(s)` / `window_mask`: the gradient of one output pixel with respect to the
  input. The position part of Local-λ sees exactly an r x r window, and its content part sees the
  whole image.
* `implied_attention`: every mixer here is linear in its values, y = A V (+ offset). This returns
  the N x M matrix A, which for Local-λ is a global content part plus an r x r banded position part.
* `f_*`, `uniform_weights_case`, `lambda_linear_reduction`, `comparison_table`: where softmax
  attention, linear attention and the lambda layer coincide, and where they differ.
* `local_lambda_mac_terms`, `mac_curves`, `crossover_pixels`, `block_breakdown`,
  `interactive_position_params`, `load_profile`: cost formulas, and the measured profile if one exists.
* `fig_*`: figures written through `plotting.save_figure`; `show` displays the saved PNGs inline.

Everything runs on CPU in float64 on tiny tensors, in seconds.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from einops import rearrange

from . import plotting
from .layers import _reference
from .layers.attention import FEATURE_MAPS, LinearAttention, VanillaAttention
from .layers.blocks import LMIBlock
from .layers.common import create_attention
from .layers.lambda_layers import InteractiveLambda, LocalLambda, lambda_conv

__all__ = [
    "WalkthroughParams", "validate_params",
    "make_input", "build", "walkthrough", "shape_table", "check_walkthrough", "STEP_DOCS",
    "window_mask", "receptive_field", "receptive_fields", "RF_KINDS",
    "implied_attention", "implied_attention_panels",
    "f_softmax_attention", "f_linear_attention", "f_kernel_attention", "f_lambda", "softmax_over_positions",
    "uniform_weights_case", "lambda_linear_reduction", "comparison_table",
    "local_lambda_mac_terms", "mac_curves", "crossover_pixels", "block_breakdown",
    "interactive_position_params", "load_profile",
    "fig_receptive_fields", "fig_lambdas", "fig_key_softmax", "fig_implied_attention", "fig_costs", "show",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class WalkthroughParams:
    """The notebook's parameters, once validated."""

    dim: int = 16
    heads: int = 4
    height: int = 6
    width: int = 7
    r: int = 5
    seed: int = 0
    rf_side: int = 15
    cost_width: int = 320
    cost_heads: int = 8
    cost_r: int = 15
    context_len: int = 10
    max_side: int = 256
    out_dir: str = "runs/walkthrough"
    profile_csv: str = "results/profile.csv"

    def as_dict(self) -> dict:
        return asdict(self)


_LIMITS = {  # name -> (min, max): keeps the O(N^2) pictures and the per-pixel reference fast
    "dim": (1, 256),
    "heads": (1, 64),
    "height": (1, 16),
    "width": (1, 16),
    "r": (1, 31),
    "seed": (0, 2**63 - 1),
    "rf_side": (3, 41),
    "cost_width": (1, 8192),
    "cost_heads": (1, 256),
    "cost_r": (1, 63),
    "context_len": (1, 4096),
    "max_side": (8, 8192),
}


def validate_params(**params) -> WalkthroughParams:
    """Check the notebook's parameters and return them as a `WalkthroughParams`.

    Every argument is optional and defaults to the value in `WalkthroughParams`. Arguments this
    function does not know raise TypeError, which catches misspelt names in Python callers. In the
    notebook, papermill injects any name without complaint, so this check cannot help there.

    Raises:
        TypeError: an unknown argument; an int field given a non-int (bools are rejected too); a
            path field given something other than a non-empty string.
        ValueError: a value out of range (see ``_LIMITS``); an even ``r`` or ``cost_r``; ``heads``
            not dividing ``dim``; ``cost_heads`` not dividing ``cost_width``.
    """
    fields = WalkthroughParams.__dataclass_fields__
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown}; known: {sorted(fields)}")
    for name, (lo, hi) in _LIMITS.items():
        if name not in params:
            continue
        val = params[name]
        if not isinstance(val, (int, np.integer)) or isinstance(val, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int, got {type(val).__name__} {val!r}")
        if not lo <= val <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {val}")
        params[name] = int(val)
    for name in ("out_dir", "profile_csv"):
        if name in params and (not isinstance(params[name], str) or not params[name].strip()):
            raise TypeError(f"{name} must be a non-empty string, got {params[name]!r}")
    p = WalkthroughParams(**params)
    for name in ("r", "cost_r"):
        if getattr(p, name) % 2 == 0:
            raise ValueError(f"{name} (lambda-convolution scope) must be odd, got {getattr(p, name)}")
    if p.dim % p.heads:
        raise ValueError(f"heads={p.heads} must divide dim={p.dim} (v = dim / heads)")
    if p.cost_width % p.cost_heads:
        raise ValueError(f"cost_heads={p.cost_heads} must divide cost_width={p.cost_width}")
    return p


# --------------------------------------------------------------------------------------------
# Local-λ step by step


def make_input(dim: int, height: int, width: int, seed: int = 0, batch: int = 1, smooth: bool = True) -> torch.Tensor:
    """A float64 input (batch, dim, height, width). If ``smooth``, it is a low-frequency random field
    plus a little noise, so the key-softmax maps show spatial structure rather than white noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, dim, height, width, generator=g, dtype=torch.float64)
    if not smooth:
        return noise
    coarse = torch.randn(batch, dim, 3, 3, generator=g, dtype=torch.float64)
    field = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return field + 0.3 * noise


def build(name: str, dim: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``create_attention(name, dim, **kwargs)`` with a fixed seed, in float64 and eval mode."""
    torch.manual_seed(seed)
    return create_attention(name, dim, **kwargs).double().eval()


STEP_DOCS = {  # step -> (formula, meaning); the order is the order of the computation
    "x": ("x", "input map"),
    "q": ("Q = norm(W_Q x)", "|h| queries of depth k per pixel"),
    "k_logits": ("W_K x", "keys before normalisation, intra-depth u"),
    "keys": ("K̄ = softmax_m(W_K x)", "each (u, k) key channel is a distribution over the N pixels"),
    "v": ("V = norm(W_V x)", "values of depth v = C/|h|"),
    "content_lambda": ("λc = Σ_u Σ_m K̄[u,k,m] V[u,v,m]", "one k x v matrix per sample, shared by every pixel and query"),
    "y_content": ("λcᵀ q_n", "content output per query head"),
    "position_lambda": ("λp_n = Σ_u Σ_Δ R[k,u,Δ] V[u,v,n+Δ] (+ b_k)", "lambda convolution: one k x v matrix per pixel"),
    "y_position": ("(λp_n)ᵀ q_n", "position output per query head"),
    "lambda": ("λ_n = λc + λp_n", "the linear map pixel n applies to each of its |h| queries"),
    "y": ("concat_h λ_nᵀ q_n", "|h| * v = C channels"),
}


def walkthrough(m: LocalLambda, x: torch.Tensor, content: bool = True, position: bool = True) -> dict[str, torch.Tensor]:
    """Run Local-λ one step at a time and return every intermediate tensor (see `STEP_DOCS`).

    Like the module, ``y`` applies the summed lambda λ_n = λc + λp_n to the queries once (then the
    layer's output gain, when it has one; ``y_content`` / ``y_position`` are before the gain).
    ``y_content`` and ``y_position`` are the two terms applied separately, and
    y = y_content + y_position because λ_n is linear. Setting ``content=False`` or
    ``position=False`` drops that term from ``lambda`` and ``y``; every other tensor is still
    returned. This switches off the content or the position lambda without touching the module.

    Shapes: q (B,|h|,k,N), k_logits/keys (B,u,k,N), v (B,u,v,N), content_lambda (B,k,v),
    y_content/y_position (B,|h|,v,N), position_lambda/lambda (B,k,v,N), y (B,C,H,W).
    """
    if not isinstance(m, LocalLambda):
        raise TypeError(f"walkthrough explains LocalLambda, got {type(m).__name__}")
    _, _, hh, ww = x.shape
    s: dict[str, torch.Tensor] = {"x": x}
    s["q"] = rearrange(m.norm_q(m.to_q(x)), "b (h k) x y -> b h k (x y)", h=m.heads)
    s["k_logits"] = rearrange(m.to_k(x), "b (u k) x y -> b u k (x y)", u=m.dim_u)
    s["keys"] = s["k_logits"].softmax(dim=-1)  # over the N positions, not over channels
    s["v"] = rearrange(m.norm_v(m.to_v(x)), "b (u v) x y -> b u v (x y)", u=m.dim_u)
    s["content_lambda"] = torch.einsum("bukn,buvn->bkv", s["keys"], s["v"])
    s["y_content"] = torch.einsum("bhkn,bkv->bhvn", s["q"], s["content_lambda"])
    s["position_lambda"] = lambda_conv(s["v"], m.pos_weight, m.pos_bias, hh, ww, m.lambda_conv)
    s["y_position"] = torch.einsum("bhkn,bkvn->bhvn", s["q"], s["position_lambda"])
    lam = torch.zeros_like(s["position_lambda"])
    if content:
        lam = lam + s["content_lambda"].unsqueeze(-1)
    if position:
        lam = lam + s["position_lambda"]
    s["lambda"] = lam
    y = torch.einsum("bhkn,bkvn->bhvn", s["q"], lam)
    s["y"] = m.gain(rearrange(y, "b h v (x y) -> b (h v) x y", x=hh, y=ww))  # the output gain: identity without one
    return s


def shape_table(steps: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per step: name, shape, formula and meaning."""
    rows = []
    for name, t in steps.items():
        formula, meaning = STEP_DOCS.get(name, ("", ""))
        rows.append(dict(step=name, shape=tuple(t.shape), formula=formula, meaning=meaning))
    return pd.DataFrame(rows)


@torch.no_grad()
def check_walkthrough(m: LocalLambda, x: torch.Tensor, mine: dict[str, torch.Tensor] | None = None, atol: float = 1e-10,
                      reference: bool = True) -> pd.DataFrame:
    """Assert that the step-by-step computation reproduces the module and the per-pixel loop.

    Compares `walkthrough` ``y`` with ``m(x)`` and with ``_reference.reference_local_lambda``. If
    ``mine`` is given (tensors computed by hand, e.g. in the notebook), each of them is also
    compared with the step of the same name. ``reference=False`` skips the (slow) per-pixel loop.

    Returns:
        A table of the comparisons and their max abs errors.

    Raises:
        AssertionError: a shape or value mismatch beyond ``atol``.
    """
    steps = walkthrough(m, x)
    pairs = [("walkthrough y vs module forward", steps["y"], m(x))]
    if reference:
        pairs.append(("walkthrough y vs per-pixel reference loop", steps["y"], _reference.reference_local_lambda(m, x)))
    for name, t in (mine or {}).items():
        if name not in steps:
            raise AssertionError(f"unknown step {name!r}; steps are {list(steps)}")
        pairs.append((f"notebook {name} vs walkthrough", t, steps[name]))
    rows = []
    for what, a, b in pairs:
        if tuple(a.shape) != tuple(b.shape):
            raise AssertionError(f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}")
        err = float((a - b).abs().max()) if a.numel() else 0.0
        if not err <= atol:
            raise AssertionError(f"{what}: max abs error {err:.3g} > {atol:g}")
        rows.append(dict(comparison=what, shape=tuple(a.shape), max_abs_err=err))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Receptive fields


def window_mask(height: int, width: int, pixel: tuple[int, int], r: int) -> torch.Tensor:
    """Boolean (H, W) mask of the r x r window centred on ``pixel``, clipped to the image."""
    i, j = pixel
    ys, xs = torch.arange(height)[:, None], torch.arange(width)[None, :]
    return ((ys - i).abs() <= r // 2) & ((xs - j).abs() <= r // 2)


def receptive_field(fn, x: torch.Tensor, pixel: tuple[int, int]) -> torch.Tensor:
    """Σ_c' Σ_c |∂y[0, c', i, j] / ∂x[0, c]|: an (H, W) map of where output pixel (i, j) looks.

    ``fn`` maps (1, C, H, W) to (1, C', H, W). Uses one backward pass per output channel, so the
    absolute values of individual Jacobian entries are summed and nothing cancels.
    """
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    i, j = pixel
    if y.shape[0] != 1 or tuple(y.shape[-2:]) != tuple(x.shape[-2:]):
        raise ValueError(f"receptive_field needs a (1, C, H, W) -> (1, C', H, W) map, got {tuple(x.shape)} -> {tuple(y.shape)}")
    field = torch.zeros(x.shape[-2:], dtype=x.dtype)
    for c in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[0, c, i, j], x, retain_graph=True)
        field += g[0].abs().sum(0)
    return field


RF_KINDS = ("lambda_position", "lambda_content", "local_lambda", "vanilla", "linear")
RF_TITLES = {
    "lambda_position": "Local-λ\nposition λ only",
    "lambda_content": "Local-λ\ncontent λ only",
    "local_lambda": "Local-λ\ncontent + position",
    "vanilla": "Softmax attn",
    "linear": "Linear attn",
}


def receptive_fields(dim: int, heads: int, side: int, r: int, seed: int = 0, pixel: tuple[int, int] | None = None,
                     kinds=RF_KINDS) -> dict:
    """Receptive fields (see `receptive_field`) of one pixel (default: the centre) on a side x side
    input, for each of ``kinds`` (a subset of ``RF_KINDS``).

    The ``lambda_*`` kinds reuse one Local-λ module and switch off one term with `walkthrough`.

    Returns:
        {"pixel", "r", "side", "fields": {kind: (side, side) tensor}}.
    """
    bad = sorted(set(kinds) - set(RF_KINDS))
    if bad:
        raise ValueError(f"unknown receptive-field kind(s) {bad}; choose from {RF_KINDS}")
    pixel = pixel if pixel is not None else (side // 2, side // 2)
    x = make_input(dim, side, side, seed)
    lam = build("local_lambda", dim, seed, heads=heads, r=r)
    fns = {
        "lambda_position": lambda t: walkthrough(lam, t, content=False)["y"],
        "lambda_content": lambda t: walkthrough(lam, t, position=False)["y"],
        "local_lambda": lam,
        "vanilla": lambda t: build("vanilla", dim, seed, heads=heads)(t),
        "linear": lambda t: build("linear", dim, seed, heads=heads)(t),
    }
    return dict(pixel=pixel, r=r, side=side, fields={k: receptive_field(fns[k], x, pixel) for k in kinds})


# --------------------------------------------------------------------------------------------
# Every mixer is linear in its values: y = A V (+ offset)


@torch.no_grad()
def implied_attention(m, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The matrix A with which a self-mixer combines its values, y_n = Σ_m A[n, m] v_m.

    * ``VanillaAttention`` (self): weights = softmax(q kᵀ/√d), shape (B, heads, N, N).
    * ``LinearAttention``: weights = φ(q)φ(k)ᵀ / row sums (+ eps), shape (B, heads, N, N).
    * ``LocalLambda``: content[b,h,u,n,m] = q_n · K̄[u,:,m] (global, dense) and
      position[b,h,u,n,m] = q_n · R[:, u, Δ(m - n)] inside the r x r window and 0 outside (banded),
      plus offset[b,h,v,n] = q_n · b (the position bias; it does not multiply any value).

    The returned ``y`` is rebuilt from these matrices only (plus the output projection for the
    attention variants and the per-channel output gain of a lambda layer that has one), so comparing
    it with ``m(x)`` checks them.
    """
    b, _, hh, ww = x.shape
    n = hh * ww
    if isinstance(m, VanillaAttention):
        q = rearrange(m.to_q(x), "b (h d) x y -> b h (x y) d", h=m.heads)
        k, v = rearrange(m.to_kv_self(x), "b (two h d) x y -> two b h (x y) d", two=2, h=m.heads)
        weights = (q @ k.transpose(-1, -2) * m.dim_head**-0.5).softmax(dim=-1)
        y = m.to_out(rearrange(weights @ v, "b h (x y) d -> b (h d) x y", x=hh, y=ww))
        return dict(weights=weights, values=v, y=y)
    if isinstance(m, LinearAttention):
        phi = FEATURE_MAPS[m.feature_map]
        q, k, v = rearrange(m.to_qkv(x), "b (three h d) x y -> three b h (x y) d", three=3, h=m.heads)
        kernel = phi(q) @ phi(k).transpose(-1, -2)
        weights = kernel / (kernel.sum(dim=-1, keepdim=True) + m.eps)
        y = m.to_out(rearrange(weights @ v, "b h (x y) d -> b (h d) x y", x=hh, y=ww))
        return dict(weights=weights, values=v, y=y)
    if isinstance(m, LocalLambda):
        s = walkthrough(m, x)
        q, keys, v = s["q"], s["keys"], s["v"]
        content = torch.einsum("bhkn,bukm->bhunm", q, keys)
        position = torch.zeros_like(content)
        r, pad = m.r, m.r // 2
        ii, jj = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
        for di in range(r):
            for dj in range(r):
                ti, tj = ii + di - pad, jj + dj - pad
                ok = (ti >= 0) & (ti < hh) & (tj >= 0) & (tj < ww)
                src, dst = torch.arange(n)[ok], (ti * ww + tj)[ok]
                coef = torch.einsum("bhkn,ku->bhun", q[..., src], m.pos_weight[:, :, di, dj])
                position[:, :, :, src, dst] = coef
        bias = m.pos_bias if m.pos_bias is not None else torch.zeros(m.dim_k, dtype=x.dtype)
        offset = torch.einsum("bhkn,k->bhn", q, bias)[:, :, None, :].expand(b, m.heads, m.dim_v, n)
        y = torch.einsum("bhunm,buvm->bhvn", content + position, v) + offset
        y = m.gain(rearrange(y, "b h v (x y) -> b (h v) x y", x=hh, y=ww))  # per-channel output gain, if any
        return dict(content=content, position=position, offset=offset, values=v, y=y)
    raise TypeError(f"implied_attention supports vanilla, linear and local_lambda, got {type(m).__name__}")


def implied_attention_panels(dim: int, heads: int, side: int, r: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Implied (N, N) matrices of head 0 on a side x side input, for `fig_implied_attention`:
    softmax attention, linear attention, and Local-λ's content part, position part and their sum."""
    x = make_input(dim, side, side, seed)
    va = implied_attention(build("vanilla", dim, seed, heads=heads), x)
    la = implied_attention(build("linear", dim, seed, heads=heads), x)
    lam = implied_attention(build("local_lambda", dim, seed, heads=heads, r=r), x)
    content, position = lam["content"][0, 0, 0], lam["position"][0, 0, 0]
    return {
        "Softmax attn": va["weights"][0, 0],
        "Linear attn": la["weights"][0, 0],
        "Local-λ content": content,
        "Local-λ position": position,
        "Local-λ content + position": content + position,
    }


# --------------------------------------------------------------------------------------------
# Functional forms (one head, no projections): where the mixers coincide and where they differ


def softmax_over_positions(k: torch.Tensor) -> torch.Tensor:
    """The lambda layer's key normalisation: softmax over the M positions (dim 0), per channel."""
    return k.softmax(dim=0)


def f_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q (N, d), k (M, d), v (M, e)."""
    return (q @ k.T / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v


def f_kernel_attention(q, k, v, phi_q=None, phi_k=None, normalise: bool = True, eps: float = 0.0) -> torch.Tensor:
    """y_n = Σ_m (φq(q)_n · φk(k)_m) v_m [ / Σ_m φq(q)_n · φk(k)_m ].

    φq and φk map a whole (N, d) / (M, d) matrix (identity if None), so a φk that normalises over
    positions, like the lambda layer's key softmax, fits too. The sums are computed in the linear
    order, (φ(k)ᵀ v) first, costing O((N+M)·d·e) instead of O(N·M·d).
    """
    fq = q if phi_q is None else phi_q(q)
    fk = k if phi_k is None else phi_k(k)
    num = fq @ (fk.T @ v)
    if not normalise:
        return num
    return num / (fq @ fk.sum(dim=0, keepdim=True).T + eps)


def f_linear_attention(q, k, v, feature_map: str = "elu", eps: float = 0.0) -> torch.Tensor:
    """Katharopoulos et al. 2020: φ per token (elu+1 or relu), normalised."""
    phi = FEATURE_MAPS[feature_map]
    return f_kernel_attention(q, k, v, phi, phi, normalise=True, eps=eps)


def f_lambda(q, k, v) -> torch.Tensor:
    """One-head content lambda: y_n = λcᵀ q_n with λc = softmax_m(k)ᵀ v (a d x e matrix)."""
    return q @ (softmax_over_positions(k).T @ v)


def _qkv(n: int, d: int, e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g, dtype=torch.float64) for s in ((n, d), (n, d), (n, e)))


def uniform_weights_case(n: int = 42, d: int = 4, e: int = 4, seed: int = 0) -> dict:
    """Zero queries and keys give uniform weights, and softmax and linear attention both return the
    mean of the values. The lambda layer has no normaliser: with zero keys, y_n = (Σ_k q_n[k])·mean(v),
    so it gives the mean when the query's entries sum to 1 and 0 when the query is zero.

    Returns:
        {"outputs": {case: (n, e)}, "errors": {case: max |y - target|}}.
    """
    _, _, v = _qkv(n, d, e, seed)
    zeros = torch.zeros(n, d, dtype=v.dtype)
    mean = v.mean(dim=0, keepdim=True).expand(n, e)
    sum_one = torch.full((n, d), 1.0 / d, dtype=v.dtype)
    outputs = {
        "softmax attn, q=k=0": f_softmax_attention(zeros, zeros, v),
        "linear attn (elu+1), q=k=0": f_linear_attention(zeros, zeros, v, "elu"),
        "lambda, k=0, Σ_k q_n[k]=1": f_lambda(sum_one, zeros, v),
        "lambda, q=k=0": f_lambda(zeros, zeros, v),
    }
    targets = {name: (torch.zeros_like(mean) if name == "lambda, q=k=0" else mean) for name in outputs}
    errors = {name: float((outputs[name] - targets[name]).abs().max()) for name in outputs}
    return dict(outputs=outputs, mean=mean, errors=errors)


@torch.no_grad()
def lambda_linear_reduction(dim: int = 16, height: int = 6, width: int = 7, seed: int = 0) -> dict[str, float]:
    """Measure how far a one-head Local-λ is from linear attention with softmax-normalised keys.

    The claim: with one query head, u = 1 and the position term removed (R = 0, b = 0), Local-λ is
        y_n = Σ_m (q_n · k̄_m) v_m,   k̄_m[j] = exp(K[j,m]) / Σ_m' exp(K[j,m'])
    which is linear attention with φq = id and φk = softmax over positions. It has **no**
    normaliser: the weights of row n sum to Σ_j q_n[j], not to 1. Dividing by that sum gives the
    normalised kernel form. With r = 1 the position term is not removed but shrinks to the diagonal:
    A_pos[n, m] = 0 for m != n, and A_pos[n, n] = q_n · R.

    Returns max abs errors (all ~1e-15 when the claims hold):
        ``content_vs_kernel_attention``: the walkthrough's content output vs `f_kernel_attention`;
        ``module_without_position_vs_kernel_attention``: m(x) with R = b = 0 vs `f_kernel_attention`;
        ``content_row_sums_vs_query_sums``: row sums of the implied content matrix vs Σ_j q_n[j];
        ``r1_position_offdiagonal``: the largest off-diagonal entry of A_pos for r = 1;
        ``r1_position_diagonal_vs_qR``: the diagonal vs q_n · R;
    and one value that is not an error:
        ``query_sums_max_abs``: max_n |Σ_j q_n[j]|. This is ~0 here: the default per-pixel
        LayerNorm (unit weight, zero bias at initialisation) centres the |h|·k = k query channels of
        the single head, so the implied weights of every pixel sum to zero. No normaliser could
        divide by that sum.
    """
    m = build("local_lambda", dim, seed, heads=1, r=1)
    x = make_input(dim, height, width, seed)
    s = walkthrough(m, x)
    q, kl, v = s["q"][0, 0].T, s["k_logits"][0, 0].T, s["v"][0, 0].T  # (N, k), (N, k), (N, v)
    kernel = f_kernel_attention(q, kl, v, None, softmax_over_positions, normalise=False)
    y_content = s["y_content"][0, 0].T
    out = {"content_vs_kernel_attention": float((y_content - kernel).abs().max())}
    implied = implied_attention(m, x)
    out["content_row_sums_vs_query_sums"] = float((implied["content"][0, 0, 0].sum(dim=1) - q.sum(dim=1)).abs().max())
    out["query_sums_max_abs"] = float(q.sum(dim=1).abs().max())
    A = implied["position"][0, 0, 0]  # (N, N)
    diag = torch.diagonal(A)
    out["r1_position_offdiagonal"] = float((A - torch.diag(diag)).abs().max())
    out["r1_position_diagonal_vs_qR"] = float((diag - q @ m.pos_weight[:, 0, 0, 0]).abs().max())
    m.pos_weight.zero_()
    m.pos_bias.zero_()
    out["module_without_position_vs_kernel_attention"] = float((m(x)[0].reshape(dim, -1).T - kernel).abs().max())
    return out


def comparison_table(n: int = 42, d: int = 4, e: int = 4, seed: int = 0, scale: float = 4.0) -> pd.DataFrame:
    """Properties of softmax attention, linear attention (Katharopoulos, φ = elu+1 or relu) and the
    one-head content lambda, measured on random q, k, v (one head, no projections).

    Rows:
        * ``q=k=0 -> mean(v)``: max |y - mean(v)| with zero queries and keys. It is 0 for softmax and
          for elu+1 (φ(0) = 1, so the weights are uniform). relu gives φ(0) = 0 and a 0/0 that eps
          turns into 0. The lambda also returns 0: it has no normaliser.
        * ``min weight``: the smallest entry of the implied weight matrix A (y = A v). It is >= 0 for
          the attentions, and negative for the lambda, whose queries are not positive.
        * ``max |row sum - 1|``: the attentions' rows sum to 1, except relu rows whose query is
          all negative (φ(q_n) = 0, so the row is 0). The lambda's rows sum to Σ_j q_n[j].
        * ``y(c·q) vs y(q)``: relative change when the queries are scaled by ``scale``. Softmax
          sharpens. Linear attention with relu does not change (φ is 1-homogeneous and the
          normaliser cancels c); with elu+1 it changes a little. The lambda scales by c.
        * ``max |y(c·q) - c·y(q)|``: 0 only for a map that is linear in q (the lambda).
        * ``weight entropy at c·q - at q``: mean change of the row entropy. Only softmax sharpens.
    """
    q, k, v = _qkv(n, d, e, seed)
    zeros = torch.zeros(n, d, dtype=v.dtype)
    mean = v.mean(dim=0, keepdim=True)
    fns = {
        "softmax attn": (lambda q_, k_: f_softmax_attention(q_, k_, v),
                         lambda q_, k_: (q_ @ k_.T / math.sqrt(d)).softmax(dim=-1)),
        "linear attn (elu+1)": (lambda q_, k_: f_linear_attention(q_, k_, v, "elu"),
                                lambda q_, k_: _row_normalise(FEATURE_MAPS["elu"](q_) @ FEATURE_MAPS["elu"](k_).T)),
        "linear attn (relu)": (lambda q_, k_: f_linear_attention(q_, k_, v, "relu", eps=1e-12),
                               lambda q_, k_: _row_normalise(torch.relu(q_) @ torch.relu(k_).T)),
        "lambda (content, 1 head)": (lambda q_, k_: f_lambda(q_, k_, v),
                                     lambda q_, k_: q_ @ softmax_over_positions(k_).T),
    }
    rows: dict[str, dict[str, float]] = {}
    for name, (f, weights) in fns.items():
        col = {}
        col["q=k=0 -> mean(v): max err"] = float((f(zeros, zeros) - mean).abs().max())
        A = weights(q, k)
        col["min weight"] = float(A.min())
        col["max |row sum - 1|"] = float((A.sum(dim=1) - 1).abs().max())
        y, yc = f(q, k), f(scale * q, k)
        col[f"‖y({scale:g}q) - y(q)‖ / ‖y(q)‖"] = float((yc - y).norm() / y.norm())
        col[f"max |y({scale:g}q) - {scale:g}·y(q)|"] = float((yc - scale * y).abs().max())
        col[f"mean row entropy at {scale:g}q minus at q"] = float(_entropy(weights(scale * q, k)) - _entropy(A))
        rows[name] = col
    return pd.DataFrame(rows)


def _row_normalise(a: torch.Tensor) -> torch.Tensor:
    return a / (a.sum(dim=-1, keepdim=True) + 1e-12)


def _entropy(a: torch.Tensor) -> float:
    """Mean row entropy of |A| normalised to sum 1 per row (defined for signed A too)."""
    p = a.abs() / a.abs().sum(dim=-1, keepdim=True).clamp_min(1e-300)  # an all-zero row has entropy 0
    return float(-(p * torch.log(p.clamp_min(1e-300))).sum(dim=-1).mean())


# --------------------------------------------------------------------------------------------
# Costs


def local_lambda_mac_terms(m: LocalLambda, h: int, w: int) -> dict[str, int]:
    """The terms of Local-λ's MAC count (they sum to ``m.macs(h, w)``). As in the module, λc + λp_n
    is formed first, so the queries see a single lambda (the addition is element-wise work and is
    not counted)."""
    n, k, u, v, nh, c = h * w, m.dim_k, m.dim_u, m.dim_v, m.heads, m.dim
    return {
        "projections N·C·(|h|k + uk + uv)": n * c * (nh * k + u * k + u * v),
        "content lambda N·k·v·u": n * k * v * u,
        "position lambda N·k·v·u·r²": n * k * v * u * m.r**2,
        "apply λc + λp_n to the queries |h|·N·k·v": nh * n * k * v,
    }


def mac_curves(width: int, heads: int, r: int, context_len: int, sides) -> pd.DataFrame:
    """Analytic MACs per sample (from each module's ``.macs()``) at side x side inputs.

    Variants: vanilla (self-attention), linear, local_lambda, interactive_lambda (L =
    ``context_len``), lmi (the whole block). Also ``2N²d``: the attention products alone.

    Returns:
        Long table: variant, side, pixels, macs.
    """
    mods = {
        "vanilla": create_attention("vanilla", width, heads=heads, mode="self"),
        "linear": create_attention("linear", width, heads=heads),
        "local_lambda": create_attention("local_lambda", width, heads=heads, r=r),
        "interactive_lambda": create_attention("interactive_lambda", width, heads=heads),
        "lmi": create_attention("lmi", width, heads=heads, r=r),
    }
    rows = []
    for s in sides:
        s = int(s)
        for name, mod in mods.items():
            ctx = context_len if mod.requires_context else 0
            rows.append(dict(variant=name, side=s, pixels=s * s, macs=int(mod.macs(s, s, ctx))))
        rows.append(dict(variant="2N²d", side=s, pixels=s * s, macs=2 * (s * s) ** 2 * width))
    return pd.DataFrame(rows)


def crossover_pixels(table: pd.DataFrame, a: str = "vanilla", b: str = "local_lambda") -> int | None:
    """The smallest pixel count in ``table`` at which variant ``a`` costs more MACs than ``b``.
    Returns None if ``a`` never does."""
    pa = table[table["variant"] == a].set_index("pixels")["macs"]
    pb = table[table["variant"] == b].set_index("pixels")["macs"]
    both = pa.to_frame("a").join(pb.to_frame("b"), how="inner").sort_index()
    hit = both[both["a"] > both["b"]]
    return int(hit.index[0]) if len(hit) else None


def block_breakdown(dim: int, heads: int, r: int, height: int, width: int, context_len: int, seed: int = 0) -> pd.DataFrame:
    """Parameters and analytic MACs of each part of one LλMI block (``lmi``) at height x width with
    ``context_len`` tokens. The last row is the total, which equals the block's own counts."""
    torch.manual_seed(seed)
    blk: LMIBlock = create_attention("lmi", dim, heads=heads, r=r)
    b = blk.block
    n = height * width
    parts = [
        ("GroupNorm + proj_in/out (1x1)", [b.norm_in, b.proj_in, b.proj_out], 2 * n * dim * dim),
        ("LayerNorms (3)", [b.norm1, b.norm2, b.norm3], 0),
        ("Local-λ (self)", [b.self_mixer], b.self_mixer.macs(height, width)),
        ("Interactive-λ (cross, Fourier position)", [b.cross_mixer], b.cross_mixer.macs(height, width, context_len)),
        ("Mix-FFN (GLUMBConv)", [b.ffn], b.ffn.macs(height, width)),
    ]
    rows = [dict(part=p, params=sum(x.numel() for mod in mods for x in mod.parameters()), macs=int(mc)) for p, mods, mc in parts]
    rows.append(dict(part="total", params=sum(r_["params"] for r_ in rows), macs=sum(r_["macs"] for r_ in rows)))
    return pd.DataFrame(rows)


def interactive_position_params(dim: int, heads: int, sides, context_len: int, n_freq: int = 4) -> pd.DataFrame:
    """Parameters of Interactive-λ's position term: the paper's absolute N x L x k x u table
    (one per resolution and token count) vs our Fourier term (the same at every size)."""
    torch.manual_seed(0)
    four: InteractiveLambda = create_attention("interactive_lambda", dim, heads=heads, n_freq=n_freq)
    fourier = sum(p.numel() for mod in (four.to_pos_k, four.pos_gate) for p in mod.parameters())
    rows = []
    for s in sides:
        s = int(s)
        rows.append(dict(side=s, pixels=s * s, tokens=context_len,
                         table_params=s * s * context_len * four.dim_k * four.dim_u, fourier_params=fourier))
    return pd.DataFrame(rows)


def load_profile(path: str | Path) -> pd.DataFrame | None:
    """The measured profile (written by ``python -m lambda_blocks.profiling``), or None if it does not exist.

    A relative path is tried against the current directory, then against the repository root.
    """
    path = Path(path)
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path]
    for p in candidates:
        if p.is_file():
            return pd.read_csv(p)
    return None


# --------------------------------------------------------------------------------------------
# Figures (written with plotting.save_figure; `show` puts the PNGs inline)


def _plt():
    plotting.style()
    import matplotlib.pyplot as plt

    return plt


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def fig_receptive_fields(rf: dict, out_dir, name: str = "walkthrough_receptive_fields") -> list[Path]:
    """One panel per kind: log10 of the receptive field (normalised to its max); white = exactly 0;
    the dashed square is the r x r window."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    plt = _plt()
    kinds = list(rf["fields"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(1.75 * len(kinds), 2.2), squeeze=False)
    i, j = rf["pixel"]
    r = rf["r"]
    im = None
    for ax, kind in zip(axes[0], kinds):
        f = rf["fields"][kind].detach().numpy()
        logf = np.full_like(f, np.nan)
        nz = f > 0
        logf[nz] = np.log10(f[nz] / f.max())
        cmap = plt.get_cmap("magma").with_extremes(bad="white")
        im = ax.imshow(np.ma.masked_invalid(logf), cmap=cmap, norm=Normalize(-6, 0), interpolation="nearest")
        ax.add_patch(Rectangle((j - r // 2 - 0.5, i - r // 2 - 0.5), r, r, fill=False, ls="--", lw=0.8, ec="tab:cyan"))
        ax.plot([j], [i], marker="+", color="tab:cyan", ms=5)
        ax.set_title(f"{RF_TITLES.get(kind, kind)}\nnon-zero: {int(nz.sum())}/{f.size}", fontsize=6)
        _clean(ax)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="log10 |∂y_n/∂x| / max")
    fig.suptitle(f"receptive field of the centre pixel (r = {r}; white = exactly zero)", fontsize=8)
    return plotting.save_figure(fig, out_dir, name)


def fig_lambdas(steps: dict[str, torch.Tensor], pixel: int, out_dir, name: str = "walkthrough_lambdas") -> list[Path]:
    """Heat maps (k x v) of the content lambda, the position lambda at flat pixel index ``pixel``,
    and their sum: the linear map that pixel applies to each of its queries."""
    plt = _plt()
    lc = steps["content_lambda"][0].detach().numpy()
    lp = steps["position_lambda"][0, :, :, pixel].detach().numpy()
    mats = [("λc: content\n(shared by all pixels)", lc), (f"λp_n: position\n(pixel n = {pixel})", lp), ("λc + λp_n\n(applied to q_n)", lc + lp)]
    vmax = max(np.abs(m).max() for _, m in mats)
    fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.4), squeeze=False)
    im = None
    for c, (ax, (title, mat)) in enumerate(zip(axes[0], mats)):
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("v (value depth)")
        if c == 0:
            ax.set_ylabel("k (query/key depth)")
        ax.grid(False)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return plotting.save_figure(fig, out_dir, name)


def fig_key_softmax(steps: dict[str, torch.Tensor], out_dir, name: str = "walkthrough_key_softmax", max_channels: int = 4) -> list[Path]:
    """The normalised keys K̄[u=0, j] over the image, one panel per key channel j. Each map sums to 1.
    A channel's map is the weighting with which the content lambda pools the values."""
    plt = _plt()
    hh, ww = steps["x"].shape[-2:]
    keys = steps["keys"][0, 0].detach().numpy()  # (k, N)
    nk = min(max_channels, keys.shape[0])
    fig, axes = plt.subplots(1, nk, figsize=(1.9 * nk, 1.9), squeeze=False)
    for j, ax in enumerate(axes[0]):
        im = ax.imshow(keys[j].reshape(hh, ww), cmap="viridis", vmin=0, interpolation="nearest")
        ax.set_title(f"K̄[{j}, :]  (sum {keys[j].sum():.3f})", fontsize=6.5)
        _clean(ax)
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle("key softmax over the pixels (uniform would be 1/N = %.4f)" % (1 / (hh * ww)), fontsize=8)
    return plotting.save_figure(fig, out_dir, name)


def fig_implied_attention(mats: dict[str, torch.Tensor], side: int, pixel: tuple[int, int], r: int, out_dir,
                          name: str = "walkthrough_implied_attention") -> list[Path]:
    """One row of each implied matrix A (see `implied_attention`) drawn as a side x side image: the
    weight with which the pixel takes each other pixel's value. ``mats``: title -> (N, N) tensor."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    n = pixel[0] * side + pixel[1]
    fig, axes = plt.subplots(1, len(mats), figsize=(1.9 * len(mats), 2.2), squeeze=False)
    for ax, (title, A) in zip(axes[0], mats.items()):
        row = A[n].detach().numpy().reshape(side, side)
        vmax = np.abs(row).max() or 1.0
        signed = row.min() < 0
        im = ax.imshow(row, cmap="RdBu_r" if signed else "viridis", vmin=-vmax if signed else 0, vmax=vmax, interpolation="nearest")
        ax.add_patch(Rectangle((pixel[1] - r // 2 - 0.5, pixel[0] - r // 2 - 0.5), r, r, fill=False, ls="--", lw=0.7, ec="k"))
        ax.set_title(f"{title}\nrow sum {row.sum():.2f}", fontsize=6)
        _clean(ax)
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle("one row of y = A·V: the weight the centre pixel gives every pixel's value (head 0)", fontsize=8)
    return plotting.save_figure(fig, out_dir, name)


def fig_costs(table: pd.DataFrame, profile: pd.DataFrame | None, out_dir, name: str = "walkthrough_costs") -> list[Path]:
    """Log-log analytic MACs vs pixels (slopes in the legend). A second panel shows measured
    forward latency per variant from ``profile`` (block rows), or says that it is missing."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6), squeeze=False)
    ax = axes[0][0]
    for var, grp in table.groupby("variant", sort=False):
        grp = grp.sort_values("pixels")
        slope = plotting.loglog_slope(grp["pixels"], grp["macs"])
        ref = var == "2N²d"
        ax.plot(grp["pixels"], grp["macs"], ls="--" if ref else "-", marker=None if ref else "o", ms=2.5,
                color="0.4" if ref else plotting.color(var), label=f"{plotting.label(var)} (slope {slope:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels N = H·W")
    ax.set_ylabel("analytic MACs / sample")
    ax.set_title("analytic (.macs())")
    ax.legend(fontsize=5.5)
    ax = axes[0][1]
    prof = None
    if profile is not None and {"kind", "pass", "variant", "pixels", "latency_ms_median"} <= set(profile.columns):
        prof = plotting.consistent_block_rows(profile)  # one thread count, pass and batch per line
    if prof is not None and len(prof):
        for var, grp in prof.groupby("variant", sort=False):
            grp = grp.sort_values("pixels")
            slope = plotting.loglog_slope(grp["pixels"], grp["latency_ms_median"])
            ax.plot(grp["pixels"], grp["latency_ms_median"], marker="o", ms=2.5, color=plotting.color(var),
                    label=f"{plotting.label(var)} (slope {slope:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels N = H·W")
        ax.set_ylabel("latency ms (median, fwd)")
        hw = prof["hardware"].iloc[0] if "hardware" in prof else ""
        th = int(prof["threads"].iloc[0]) if "threads" in prof and prof["threads"].notna().any() else None
        ax.set_title(f"measured (profile.csv) {hw}" + (f", {th} thread(s), batch 1" if th else ""))
        ax.legend(fontsize=5.5)
    else:
        ax.text(0.5, 0.5, "no results/profile.csv\n(run python -m lambda_blocks.profiling)", ha="center", va="center",
                transform=ax.transAxes, fontsize=7)
        _clean(ax)
        ax.set_title("measured latency")
    return plotting.save_figure(fig, out_dir, name)


def show(paths) -> None:
    """Display the PNGs among ``paths`` inline when running inside IPython; elsewhere do nothing."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover
        return
    if get_ipython() is None:
        return
    for p in map(Path, paths):
        if p.suffix == ".png":
            display(Image(filename=str(p)))
