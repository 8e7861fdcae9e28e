"""Lambda layers: Local-λ (``local_lambda``) and Interactive-λ (``interactive_lambda``).

LambdaNetworks (Bello 2021, arXiv 2102.08602) summarise a context into linear functions
("lambdas") applied to each query, instead of attention maps. With |h| queries of depth k per
position, keys of depth k, values of depth v = C/|h| and intra-depth u (MOEBIUS_SPEC section 2):

    Q = norm(W_Q x)        (B, |h|, k, N)      multi-query: |h| queries share one lambda
    K = softmax_m(W_K c)   (B, u, k, M)        keys normalised over the M context positions
    V = norm(W_V c)        (B, u, v, M)
    content lambda   λc   = Σ_u Σ_m K[u,k,m] V[u,v,m]            (B, k, v)        Bello eq. (2)
    position lambda  λp_n = Σ_u Σ_m E[n,m,k,u] V[u,v,m]          (B, k, v, N)
    output           y_n  = (λc + λp_n)^T q_n  for each of the |h| queries, concatenated -> |h|*v = C

Local-λ (Moebius section 3) uses self-context (c = x, M = N) and computes λp with a *lambda
convolution* of scope r: E is a learned r x r kernel R[k, u, Δ] shared over the v axis and over
positions, λp_n[k, v] = Σ_u Σ_Δ R[k,u,Δ] V[u, v, n+Δ] (+ bias_k). The cost is linear in N and
nothing depends on the resolution. Six equivalent formulations of that convolution are
selectable (``lambda_conv``): ``conv3d`` (Bello's / lucidrains' form), ``conv2d`` (the v axis
folded into the batch), ``unfold``, ``rfft`` (products of real 2-D FFTs), ``toeplitz`` (one GEMM
with the kernel's block-Toeplitz matrix) and ``band`` (one convolution over row tiles, its kernel
banded); the default ``auto`` picks per pass and map size, by measurement on CPU.
The per-pixel application of the lambdas to the queries (``apply_lambdas``) is a custom autograd
Function: torch lowers its einsum to one tiny bmm per pixel.

Interactive-λ (Moebius section 4) takes keys and values from L context tokens. The paper's position
term is an absolute table E ∈ R^{N x L x k x u} tied to one resolution and one token count
(``position="table"``, kept for the ablation). Our default ``position="fourier"`` is
resolution- and token-count-agnostic: E[n, l, k, u] = G(p_n)[k, u] * P[u, k, l], where G is a
linear map of Fourier features of the pixel's normalised coordinates p_n ∈ [-1, 1]^2 and P are
position keys projected from the tokens, so λp_n[k, v] = Σ_u G(p_n)[k, u] Σ_l P[u,k,l] V[u,v,l].

Status: the normalisation default is ``layer`` (per-pixel LayerNorm), not the paper's BatchNorm,
because BatchNorm couples the samples of a batch; ``norm="batch"`` restores the paper's choice.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .common import (
    NORMS,
    TokenMixer,
    check_divides,
    check_positive,
    explicit_ops_enabled,
    exporting,
    make_norm2d,
    register_attention,
)

LAMBDA_CONVS = ("conv2d", "conv3d", "unfold", "rfft", "toeplitz", "band", "auto")
BAND_TILE = 4  # output pixels per row tile of the ``band`` formulation


def _check_lambda_args(dim: int, heads: int, dim_k: int | None, dim_u: int, norm: str) -> int:
    check_positive(dim=dim, heads=heads, dim_k=dim_k, dim_u=dim_u)
    check_divides(dim, heads=heads)
    if dim_k is None:
        dim_k = dim // heads
    check_divides(dim, dim_k=dim_k)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    return dim_k


def _fft_size(n: int) -> int:
    """The smallest 5-smooth integer >= n (fast sizes for pocketfft / cuFFT)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1




_DIAG_INDEX: dict = {}


def _toeplitz_diagonals(h: int, w: int, r: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each kernel tap sits in the flattened (M, N) Toeplitz matrix of `_ToeplitzConv`.

    For output pixel n and tap Δ the input pixel is m = n + Δ; in the flipped order m' = M-1-m the
    entry is row m', column n. Returns (flat index (r*r, N) into M*N, in-bounds mask), cached."""
    key = (h, w, r, str(device))
    if key not in _DIAG_INDEX:
        p = r // 2
        ny, nx = (t.reshape(-1) for t in torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
        d = torch.arange(r * r)
        my, mx = ny[None] + (d // r - p)[:, None], nx[None] + (d % r - p)[:, None]  # (r*r, N)
        ok = (my >= 0) & (my < h) & (mx >= 0) & (mx < w)
        flat = ((h - 1 - my) * w + (w - 1 - mx)) * (h * w) + ny[None] * w + nx[None]
        _DIAG_INDEX[key] = (torch.where(ok, flat, 0).to(device), ok.to(device))
    return _DIAG_INDEX[key]


def _gemm_dtype(v: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a lambda-convolution GEMM runs in: the autocast dtype when autocast is on for the
    tensors' device (the lambda convolution is a convolution, which autocast runs in bf16; in float32
    the ``toeplitz`` GEMM was the largest matmul of a bf16 Moebius training step), else the promoted
    dtype of its inputs."""
    dev = v.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(v.dtype, weight.dtype)


class _ToeplitzConv(torch.autograd.Function):
    """λp as one dense matmul: the lambda convolution is multiplication by a block-Toeplitz matrix
    T[(u, m), (k, n)] = R[k, u, m - n + p] (zero outside the scope), so on a small map (N up to
    ~2 r^2) a single GEMM of N*u x N*k beats both the direct convolution (one input channel: poor
    vectorisation) and the FFT (thousands of tiny transforms). With the input pixels taken in reverse
    order, T is a strided view of the flipped, zero-padded kernel (no gather): T[(u, m'), (k, n)] =
    Rq[k, u, m' + n]. Backward: two more GEMMs, the kernel gradient read off T's diagonals."""

    @staticmethod
    def forward(ctx, v, weight, bias, h, w):
        b, u, dv, n = v.shape
        k, r = weight.shape[0], weight.shape[-1]
        dtype = _gemm_dtype(v, weight)  # the autocast dtype under autocast (as a conv2d would), else as given
        ph, pw = h - 1 - r // 2, w - 1 - r // 2  # negative: the map is smaller than the scope, crop
        rq = F.pad(weight.to(dtype).flip(-2, -1), (pw, pw, ph, ph))  # (k, u, 2h-1, 2w-1)
        s = rq.stride()
        t = rq.as_strided((u, h, w, k, h, w), (s[1], s[2], s[3], s[0], s[2], s[3])).reshape(u * n, k * n)
        vf = v.to(dtype).transpose(1, 2).flip(-1).reshape(b * dv, u * n)  # (B*v, u*M), pixels reversed
        with torch.autocast(v.device.type, enabled=False):
            out = vf @ t  # (B*v, k*N)
        if bias is not None:
            out.view(b * dv, k, n).add_(bias.to(dtype).view(1, k, 1))
        ctx.save_for_backward(vf, t)
        ctx.meta = (b, u, dv, k, n, r, h, w, bias is not None, v.dtype, weight.dtype)
        return out.view(b, dv, k, n).transpose(1, 2)  # (B, k, v, N), a view of the (B, v, k, N) product

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        vf, t = ctx.saved_tensors
        b, u, dv, k, n, r, h, w, has_bias, v_dtype, w_dtype = ctx.meta
        g = grad.to(t.dtype).transpose(1, 2).reshape(b * dv, k * n)
        grad_v = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_v = (g @ t.t()).view(b, dv, u, n).flip(-1).transpose(1, 2).to(v_dtype)
        if ctx.needs_input_grad[1]:
            gt = (vf.t() @ g).view(u, n, k, n).permute(2, 0, 1, 3).reshape(k, u, n * n)
            flat, ok = _toeplitz_diagonals(h, w, r, g.device)  # index_select: ~3x faster than fancy indexing
            taps = gt.view(k * u, n * n).index_select(1, flat.view(-1)).view(k * u, r * r, n)
            acc = torch.promote_types(taps.dtype, torch.float32)  # sums of n products: accumulate in float32
            grad_w = (taps.to(acc) * ok).sum(-1).view(k, u, r, r).to(w_dtype)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = g.view(b * dv, k, n).sum((0, 2), dtype=torch.promote_types(g.dtype, torch.float32)).to(w_dtype)
        return grad_v, grad_w, grad_b, None, None


def _band_weight(weight: torch.Tensor, t: int) -> torch.Tensor:
    """The (k, u, r, r) kernel as the weight of a convolution that makes ``t`` adjacent output pixels of a
    row at once: W[(k, s), u, dy, j] = R[k, u, dy, j - s] for 0 <= j - s < r, else 0, shape
    (k*t, u, r, t + r - 1). Built from views of the zero-padded kernel (differentiable)."""
    k, u, r, _ = weight.shape
    win = F.pad(weight, (t - 1, t - 1)).unfold(-1, t + r - 1, 1)  # (k, u, r, t, t+r-1): win[.., i, j] = R[.., j + i - t + 1]
    return win.flip(-2).permute(0, 3, 1, 2, 4).reshape(k * t, u, r, t + r - 1)  # i = t - 1 - s


def _band_conv(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: int, w: int,
               t: int = BAND_TILE) -> torch.Tensor:
    """λp by one convolution with ``t`` times the output channels and a row stride of ``t``: each output
    position is a tile of ``t`` pixels of a row, its kernel the banded matrix `_band_weight`. The direct
    convolution has one input channel (u = 1), which vectorises poorly; this one has k*t output channels
    for (t + r - 1) / r times the multiply-adds. Same numbers as ``conv2d`` up to summation order."""
    b, u, dv, n = v.shape
    k, r = weight.shape[0], weight.shape[-1]
    p, extra = r // 2, (-w) % t  # the row is padded to whole tiles
    img = F.pad(rearrange(v, "b u v (x y) -> (b v) u x y", x=h, y=w), (p, p + extra, p, p))
    out = F.conv2d(img, _band_weight(weight, t), None if bias is None else bias.repeat_interleave(t), stride=(1, t))
    out = rearrange(out, "(b v) (k s) x l -> b k v x (l s)", b=b, s=t)  # (B, k, v, h, w + extra)
    return out[..., :w].reshape(b, k, dv, n)


TOEPLITZ_MAX_VALUES = 1 << 26  # 256 MB of float32: the largest block-Toeplitz matrix ``toeplitz`` builds


def toeplitz_fits(n: int, k: int, u: int) -> bool:
    """Whether the (u*N, k*N) Toeplitz matrix of a lambda convolution is within TOEPLITZ_MAX_VALUES."""
    return u * k * n * n <= TOEPLITZ_MAX_VALUES


def _auto_lambda_conv(v: torch.Tensor, weight: torch.Tensor, h: int, w: int) -> str:
    """The measured-fastest formulation for this pass and size (benchmarks/bench_lambda_conv.py,
    ``results/lambda_conv-*.csv`` and, for ``band``, ``results/lambda_conv_band-*.csv``; one CPU thread,
    k = v = width / 4 for widths 32 and 64, r = 15, batch 1 and 16, maps 16-64 px).

    - r < 9: ``conv2d``, the direct convolution (the set-up of the others does not pay).
    - Small maps with at least 64 rows B*v (h*w <= 2 r^2, the Toeplitz matrix within bounds):
      ``toeplitz``, one GEMM (16 px, k = v = 16, batch 16, forward+backward: 79 ms, rfft 196, conv2d 222).
    - Other forward-only passes (evaluation, sampling) on maps up to 32x32: ``band``, a convolution
      with k*t output channels over row tiles of t pixels (the AVX2 EPYC, whole Local-λ layer: at
      32 px, width 64, 7.9 ms at batch 1 and 68 ms at batch 16 against rfft's 9.5 and 123 and
      conv2d's 10.8 and 134; at 16 px, batch 1, width 32, 1.3 ms against conv2d's 2.2). Its
      backward is slower than rfft's, so passes that need gradients do not take it.
    - Otherwise ``rfft`` (32 px, k = v = 8, batch 16: forward+backward 109 ms, conv2d 272; 64 px
      forward, batch 1: 18.8 ms against band's 20.9).
    Forward-only passes of one image used to take ``conv2d``; measured with the allocator tuned
    (`runtime.tune_allocator`) it is the slowest of the three there (1.0-2.4x band's time)."""
    r = int(weight.shape[-1])
    if r < 9:
        return "conv2d"
    rows = v.shape[0] * v.shape[2]
    needs_grad = torch.is_grad_enabled() and (v.requires_grad or weight.requires_grad)
    if h * w <= 2 * r * r and rows >= 64 and toeplitz_fits(h * w, weight.shape[0], weight.shape[1]):
        return "toeplitz"
    if not needs_grad and h * w <= 32 * 32:
        return "band"
    return "rfft"


def lambda_conv(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: int, w: int, impl: str) -> torch.Tensor:
    """Position lambdas by a lambda convolution.

    Args:
        v: values (B, u, v, N) with N = h*w.
        weight: kernel (k, u, r, r), shared over the v axis.
        bias: (k,) or None.
        impl: ``conv2d`` | ``conv3d`` | ``unfold`` | ``rfft`` | ``toeplitz`` | ``band`` | ``auto`` (same
            result, different kernels). ``auto`` picks per pass and size, by measurement
            (`_auto_lambda_conv`): ``conv2d`` for r <= 7, ``toeplitz`` for small maps (h*w <= 2 r^2)
            of at least 64 rows B*v, ``band`` for other forward-only passes on maps up to 32x32,
            ``rfft`` otherwise. They agree to ~1e-6 relative in float32, so a training forward
            and an evaluation forward of the same weights differ at that level.
            ``toeplitz`` is one GEMM with the block-Toeplitz matrix of the kernel (`_ToeplitzConv`;
            its memory is k*u*N^2 values, for small maps).
            ``rfft`` multiplies real 2-D FFTs of the zero-padded maps and kernels (exact linear
            correlation up to rounding, ~1e-6 relative in float32); it computes in float32 at least.
            ``band`` is one ``conv2d`` over row tiles of `BAND_TILE` pixels (`_band_conv`).
            Inside ``explicit_ops()`` the last three run as ``conv2d`` so MAC counters see the direct
            convolution's r*r*k*u*v MACs per pixel (the convention of every ``macs()``).

    Returns:
        λp of shape (B, k, v, N).
    """
    b, u, dv, n = v.shape
    k, r = int(weight.shape[0]), int(weight.shape[-1])  # python ints (also under jit tracing)
    pad = r // 2
    if impl == "auto":
        impl = _auto_lambda_conv(v, weight, h, w)
    if impl in ("rfft", "toeplitz", "band") and (explicit_ops_enabled() or exporting()):
        impl = "conv2d"  # the same numbers by the direct convolution: countable, traceable, ONNX-exportable
    if impl == "toeplitz":
        if not toeplitz_fits(h * w, k, u):
            raise ValueError(f"lambda_conv='toeplitz' needs a {u * h * w} x {k * h * w} matrix at {h}x{w} "
                             f"(over {TOEPLITZ_MAX_VALUES} values); it is for small maps, use 'rfft' or 'conv2d'")
        return _ToeplitzConv.apply(v, weight, bias, h, w)
    if impl == "band":
        return _band_conv(v, weight, bias, h, w)
    if impl == "rfft":
        img = rearrange(v, "b u v (x y) -> (b v) u x y", x=h, y=w)
        dtype = torch.promote_types(img.dtype, torch.float32)
        size = (_fft_size(h + r - 1), _fft_size(w + r - 1))  # no wrap-around: linear correlation
        spec = torch.fft.rfft2(img.to(dtype), s=size)  # (B*v, u, P, Q//2+1)
        kern = torch.fft.rfft2(weight.to(dtype).flip(-2, -1), s=size)  # correlation = convolution with the flipped kernel
        if u == 1:
            prod = spec * kern.squeeze(1)  # (B*v, k, P, Q//2+1) by broadcasting
        else:
            prod = torch.einsum("nuxy,kuxy->nkxy", spec, kern)
        out = torch.fft.irfft2(prod, s=size)[..., pad : pad + h, pad : pad + w]  # (B*v, k, h, w)
        if bias is not None:
            out = out + bias.to(dtype).view(1, k, 1, 1)
        return rearrange(out.to(v.dtype), "(b v) k x y -> b k v (x y)", b=b)
    if impl == "conv3d":
        vol = rearrange(v, "b u v (x y) -> b u v x y", x=h, y=w)
        out = F.conv3d(vol, weight.unsqueeze(2), bias, padding=(0, pad, pad))  # (B, k, v, h, w)
        return rearrange(out, "b k v x y -> b k v (x y)")
    if impl == "conv2d":
        img = rearrange(v, "b u v (x y) -> (b v) u x y", x=h, y=w)
        out = F.conv2d(img, weight, bias, padding=pad)  # (B*v, k, h, w)
        return rearrange(out, "(b v) k x y -> b k v (x y)", b=b)
    if impl == "unfold":
        img = rearrange(v, "b u v (x y) -> (b v) u x y", x=h, y=w)
        patches = F.unfold(img, r, padding=pad)  # (B*v, u*r*r, N)
        patches = rearrange(patches, "(b v) (u q) n -> b u q v n", b=b, u=u)
        out = torch.einsum("kuq,buqvn->bkvn", weight.flatten(2), patches)
        if bias is not None:
            out = out + bias.view(1, k, 1, 1)
        return out
    raise ValueError(f"unknown lambda_conv {impl!r}; choose one of {LAMBDA_CONVS}")


class _ApplyLambdas(torch.autograd.Function):
    """y[b,h,v,n] = Σ_k q[b,h,k,n] lam[b,k,v,n] as k fused multiply-adds over (h, v, n) slabs.

    torch lowers the equivalent einsum to one tiny (|h| x k) @ (k x v) bmm per pixel, ~25x slower on
    CPU; here every op streams whole contiguous rows of n. Backward: dq = Σ_v g lam (v passes),
    dlam = Σ_h q g (|h| passes). The operands are cut into their slabs by one ``unbind`` each (not a
    select and an unsqueeze per pass): at batch 1 a pass is a few microseconds of arithmetic, so
    the dispatcher calls around it were most of the layer's cost."""

    @staticmethod
    def forward(ctx, q, lam):
        ctx.save_for_backward(q, lam)
        return _fma_passes(q.unsqueeze(3).unbind(2), lam.unsqueeze(1).unbind(2))  # (B,h,1,N) x (B,1,v,N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, lam = ctx.saved_tensors
        grad_q = grad_lam = None
        if ctx.needs_input_grad[0]:  # (B,h,1,N) x (B,1,k,N) over v
            grad_q = _fma_passes(grad.unsqueeze(3).unbind(2), lam.unsqueeze(1).unbind(3))
        if ctx.needs_input_grad[1]:  # (B,k,1,N) x (B,1,v,N) over h
            grad_lam = _fma_passes(q.unsqueeze(3).unbind(1), grad.unsqueeze(2).unbind(1))
        return grad_q, grad_lam


def _fma_passes(a, b) -> torch.Tensor:
    """Σ_i a[i] * b[i] (broadcast), as one multiply and len(a) - 1 in-place multiply-adds."""
    out = torch.mul(a[0], b[0])
    for x, y in zip(a[1:], b[1:]):
        out.addcmul_(x, y)
    return out


def apply_lambdas(q: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Per-pixel lambdas applied to the |h| queries: y_n^(h) = lam_n^T q_n^(h) (Bello eq. 3).

    Args:
        q: queries (B, |h|, k, N).
        lam: one k x v lambda per pixel (B, k, v, N) (content + position lambdas).

    Returns (B, |h|, v, N). Same as ``einsum("bhkn,bkvn->bhvn")``, which it runs inside
    ``explicit_ops()`` (so MAC counters see it); otherwise a custom autograd
    Function with k / v / |h| fused multiply-add passes (the fast CPU form).
    """
    if explicit_ops_enabled() or exporting():
        return torch.einsum("bhkn,bkvn->bhvn", q, lam)
    # float32 at least: k products summed by k in-place passes round at every pass in bf16, and CPU
    # bf16 multiply-adds with broadcast operands are slower than float32 ones (a bf16-autocast Moebius
    # training step spent 4x longer in them); the float32 result goes on to the next autocast op.
    dtype = torch.promote_types(torch.promote_types(q.dtype, lam.dtype), torch.float32)
    # The passes stream rows of N pixels, so N must be the contiguous axis: queries normalised by
    # `LayerNorm2d` arrive channels-last (N at stride k), where every pass gathers (the layer's
    # batch-16 forward spent ~7x longer applying the lambdas than with a contiguous copy).
    return _ApplyLambdas.apply(q.to(dtype).contiguous(), lam.to(dtype))


def check_layer_scale(value, name: str = "layer_scale") -> None:
    """A lambda layer's output gain is None (none) or a finite positive number (ValueError naming ``name``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")


class _LayerScale(nn.Module):
    """A learned per-channel gain on a lambda layer's output (LayerScale, Touvron et al. 2021).

    A lambda layer has no output projection: y_n = (λc + λp_n)^T q_n sums k products of unit-variance
    queries and lambdas, so at initialisation its residual branch is about sqrt(k) times its input
    (std 2.4 for Local-λ, 2.9 for Interactive-λ at the tiny U-Net's widths, against 0.10-0.15 for the
    softmax / linear attentions, whose output projection has PyTorch's default init). A gain that
    starts small restores the usual "residual branch starts near identity" at C parameters, where an
    output projection would cost C^2. It is an elementwise scale: no multiply-accumulates in
    ``macs()``. ``make(dim, None)`` returns the identity (the paper's layer).
    """

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init)))

    @staticmethod
    def make(dim: int, init: float | None) -> nn.Module:
        check_layer_scale(init)
        return nn.Identity() if init is None else _LayerScale(dim, init)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.weight.view(1, -1, 1, 1).to(y.dtype)


@register_attention("local_lambda", roles=("self",), label="Local-λ", color="#55A868")
class LocalLambda(TokenMixer):
    """Local-λ: multi-query lambda layer with content lambda + lambda-convolution position lambda.

    Args:
        dim: channels C (= |h| * v).
        heads: number of queries |h| per position (v = C // heads).
        dim_k: key / query depth k (default C // heads; must divide C).
        dim_u: intra-depth u.
        r: scope of the lambda convolution (odd).
        norm: normalisation of queries and values: ``layer`` (default), ``group``, ``batch`` (paper), ``none``.
        lambda_conv: ``auto`` (default: per pass and size, see `lambda_conv`), ``conv2d``, ``conv3d``,
            ``unfold``, ``rfft``, ``toeplitz`` or ``band``.
        pos_bias: learn a bias per k in the position convolution (as Moebius does).
        layer_scale: multiply the output by a learned per-channel gain that starts at this value
            (LayerScale, Touvron et al. 2021); ``None`` (the paper's layer): no gain. See `_LayerScale`.

    Shapes: x (B, C, H, W) -> (B, C, H, W), any H, W.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        dim_k: int | None = None,
        dim_u: int = 1,
        r: int = 15,
        norm: str = "layer",
        lambda_conv: str = "auto",
        pos_bias: bool = True,
        layer_scale: float | None = None,
    ):
        super().__init__()
        self.dim_k = _check_lambda_args(dim, heads, dim_k, dim_u, norm)
        check_positive(r=r)
        if r % 2 == 0:
            raise ValueError(f"r (lambda-convolution scope) must be odd, got {r}")
        if lambda_conv not in LAMBDA_CONVS:
            raise ValueError(f"unknown lambda_conv {lambda_conv!r}; choose one of {LAMBDA_CONVS}")
        self.dim, self.context_dim = dim, None
        self.heads, self.dim_u, self.r = heads, dim_u, r
        self.dim_v = dim // heads
        self.lambda_conv = lambda_conv
        k, u, v = self.dim_k, dim_u, self.dim_v
        self.to_q = nn.Conv2d(dim, heads * k, 1, bias=False)
        self.to_k = nn.Conv2d(dim, u * k, 1, bias=False)
        self.to_v = nn.Conv2d(dim, u * v, 1, bias=False)
        self.norm_q = make_norm2d(norm, heads * k, groups=heads)
        self.norm_v = make_norm2d(norm, u * v, groups=u)
        self.pos_weight = nn.Parameter(torch.randn(k, u, r, r) / math.sqrt(u * r * r))
        self.pos_bias = nn.Parameter(torch.zeros(k)) if pos_bias else None
        self.gain = _LayerScale.make(dim, layer_scale)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, context)
        _, _, hh, ww = x.shape
        q = rearrange(self.norm_q(self.to_q(x)), "b (h k) x y -> b h k (x y)", h=self.heads)
        keys = rearrange(self.to_k(x), "b (u k) x y -> b u k (x y)", u=self.dim_u).softmax(dim=-1)
        v = rearrange(self.norm_v(self.to_v(x)), "b (u v) x y -> b u v (x y)", u=self.dim_u)
        content = torch.einsum("bukn,buvn->bkv", keys, v)  # λc
        position = lambda_conv(v, self.pos_weight, self.pos_bias, hh, ww, self.lambda_conv)  # λp (B, k, v, N)
        y = apply_lambdas(q, position + content.unsqueeze(-1))  # (λc + λp_n)^T q_n, one pass
        return self.gain(rearrange(y, "b h v (x y) -> b (h v) x y", x=hh, y=ww))

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        n, k, u, v, nh = h * w, self.dim_k, self.dim_u, self.dim_v, self.heads
        proj = n * self.dim * (nh * k + u * k + u * v)
        content = n * k * v * u  # λc = Σ_n K V^T
        position = n * k * v * u * self.r**2  # λp by the r x r lambda convolution
        apply = n * nh * k * v  # (λc + λp_n)^T q_n (the sum is formed first: one application)
        return proj + content + position + apply


POSITIONS = ("fourier", "table", "none")


def fourier_features(h: int, w: int, n_freq: int, device, dtype) -> torch.Tensor:
    """(h*w, 4*n_freq) sin/cos features of pixel-centre coordinates normalised to [-1, 1]."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
    freqs = (2.0 ** torch.arange(n_freq, device=device, dtype=dtype)) * math.pi / 2
    ang = grid[:, :, None] * freqs  # (N, 2, F)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(h * w, 4 * n_freq)


@functools.lru_cache(maxsize=64)
def _fourier_features_once(h: int, w: int, n_freq: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor: a training forward may save it
        return fourier_features(h, w, n_freq, device, dtype)


def _cached_fourier_features(h: int, w: int, n_freq: int, device, dtype) -> torch.Tensor:
    """`fourier_features`, computed once per (size, frequencies, device, dtype): they depend on nothing
    else, and at batch 1 their ~20 small ops were a fifth of an Interactive-λ forward's dispatcher
    calls. Computed afresh while tracing or compiling, where a cached tensor would be a hidden constant."""
    if exporting() or torch.compiler.is_compiling():
        return fourier_features(h, w, n_freq, device, dtype)
    return _fourier_features_once(h, w, n_freq, torch.device(device), dtype)


@register_attention("interactive_lambda", roles=("cross",), label="Interactive-λ", color="#8172B3")
class InteractiveLambda(TokenMixer):
    """Interactive-λ: a multi-query lambda layer whose keys/values are L context tokens.

    Args:
        dim: channels C of x.
        heads, dim_k, dim_u, norm: as in `LocalLambda` (``norm`` applies to queries; values get
            ``batch`` -> BatchNorm1d over batch x tokens (paper), ``layer``/``group`` -> LayerNorm
            per token, ``none``).
        context_dim: channels of the context tokens (default C).
        position: ``fourier`` (default, any H, W and L), ``table`` (the paper's absolute
            N x L x k x u table, needs ``feat_size`` and ``num_tokens``), or ``none``.
        feat_size: (H, W) the table is built for (``table`` only).
        num_tokens: L the table is built for (``table`` only).
        n_freq: Fourier frequencies per axis (``fourier`` only).
        layer_scale: a learned per-channel output gain starting at this value (`_LayerScale`); ``None``:
            none (the paper's layer).

    Shapes: x (B, C, H, W), context (B, L, context_dim) -> (B, C, H, W).
    """

    supports_context = True
    requires_context = True

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        dim_k: int | None = None,
        dim_u: int = 1,
        context_dim: int | None = None,
        norm: str = "layer",
        position: str = "fourier",
        feat_size: tuple[int, int] | None = None,
        num_tokens: int | None = None,
        n_freq: int = 4,
        layer_scale: float | None = None,
    ):
        super().__init__()
        self.dim_k = _check_lambda_args(dim, heads, dim_k, dim_u, norm)
        check_positive(context_dim=context_dim, n_freq=n_freq, num_tokens=num_tokens)
        if position not in POSITIONS:
            raise ValueError(f"unknown position {position!r}; choose one of {POSITIONS}")
        self.dim, self.context_dim = dim, context_dim or dim
        self.heads, self.dim_u, self.dim_v = heads, dim_u, dim // heads
        self.position, self.n_freq = position, n_freq
        k, u, v = self.dim_k, dim_u, self.dim_v
        self.to_q = nn.Conv2d(dim, heads * k, 1, bias=False)
        self.norm_q = make_norm2d(norm, heads * k, groups=heads)
        self.to_k = nn.Linear(self.context_dim, u * k, bias=False)
        self.to_v = nn.Linear(self.context_dim, u * v, bias=False)
        if norm == "batch":
            self.norm_v = nn.BatchNorm1d(u * v)
        elif norm == "none":
            self.norm_v = nn.Identity()
        else:
            self.norm_v = nn.LayerNorm(u * v)
        self._norm_v_is_batch = norm == "batch"
        self.feat_size = None
        if position == "table":
            if feat_size is None or num_tokens is None:
                raise ValueError("position='table' needs feat_size=(H, W) and num_tokens=L (it is fixed to them)")
            if len(feat_size) != 2:
                raise ValueError(f"feat_size must be (H, W), got {feat_size!r}")
            check_positive(feat_h=feat_size[0], feat_w=feat_size[1])
            self.feat_size, self.num_tokens = tuple(feat_size), num_tokens
            n = feat_size[0] * feat_size[1]
            # The paper initialises its table N(0, 1); we scale so λp starts at the size of λc.
            self.pos_table = nn.Parameter(torch.randn(n, num_tokens, k, u) / math.sqrt(num_tokens * u))
        elif position == "fourier":
            self.to_pos_k = nn.Linear(self.context_dim, u * k, bias=False)
            self.pos_gate = nn.Linear(4 * n_freq, k * u)
        self.gain = _LayerScale.make(dim, layer_scale)

    def _values(self, context: torch.Tensor) -> torch.Tensor:
        return self._norm_values(self.to_v(context))

    def _norm_values(self, v: torch.Tensor) -> torch.Tensor:
        """Normalised values (B, L, u*v) from projected ones."""
        if self._norm_v_is_batch:
            return self.norm_v(v.transpose(1, 2)).transpose(1, 2)
        return self.norm_v(v)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, context)
        b, _, hh, ww = x.shape
        k, u, dv, n = self.dim_k, self.dim_u, self.dim_v, hh * ww
        q = rearrange(self.norm_q(self.to_q(x)), "b (h k) x y -> b h k (x y)", h=self.heads)
        fourier = self.position == "fourier"
        # the token projections as one matmul (each module keeps its own weight): at the tiny U-Net's
        # sizes the layer's cost is its number of ops, not their arithmetic
        weights = [self.to_k.weight, self.to_v.weight] + ([self.to_pos_k.weight] if fourier else [])
        proj = F.linear(context, torch.cat(weights))  # (B, L, u*k + u*v [+ u*k])
        keys, v = proj[..., : u * k], self._norm_values(proj[..., u * k : u * (k + dv)])
        keys = keys.reshape(b, -1, u, k).softmax(dim=1)  # over the L tokens
        v = v.reshape(b, -1, u, dv)
        if fourier:  # the position keys P beside the keys: Σ_l K V^T and Σ_l P V^T in one matmul over the tokens
            keys = torch.cat([keys, proj[..., u * (k + dv):].reshape(b, -1, u, k)], dim=-1)  # (B, L, u, 2k)
        per_u = torch.einsum("bluj,bluv->bujv", keys, v)  # (B, u, k [+ k], v)
        lam = per_u[:, :, :k].sum(1)  # λc (B, k, v): summed over u too
        if fourier:
            lams = torch.cat([lam, per_u[:, :, k:].reshape(b, u * k, dv)], dim=1)  # rows: λc, then (P V)_u
        if self.position == "none":
            out = torch.einsum("bkv,bhkn->bhvn", lam, q)  # one lambda for all pixels: a plain matmul
        elif fourier:
            gate = self.pos_gate(_cached_fourier_features(hh, ww, self.n_freq, x.device, x.dtype))  # G(p_n) (N, k*u)
            gate = gate.t().reshape(k, u, n).transpose(0, 1)  # (u, k, N)
            # (λc + λp_n)^T q_n with λp_n = Σ_u G(p_n)[:, u] ⊙ (PV)_u never formed: the gate moves onto
            # the queries, y_n = λc^T q_n + Σ_u (PV)_u^T (G(p_n)_u ⊙ q_n), one batched matmul over
            # depth (1 + u) k instead of a (B, k, v, N) tensor and a per-pixel application.
            qg = torch.cat([q, (q.unsqueeze(2) * gate).reshape(b, self.heads, u * k, n)], dim=2)  # (B, h, (1+u)k, N)
            out = torch.einsum("bjv,bhjn->bhvn", lams, qg)  # (B, h, v, N)
        elif self.position == "table":
            if (hh, ww) != self.feat_size or context.shape[1] != self.num_tokens:
                raise ValueError(
                    f"interactive_lambda(position='table') is fixed to feat_size={self.feat_size} and "
                    f"num_tokens={self.num_tokens}; got {(hh, ww)} and {context.shape[1]} tokens. "
                    "Use position='fourier' for any size."
                )
            pos = torch.einsum("nlku,bluv->bkvn", self.pos_table, v)  # λp (B, k, v, N)
            out = apply_lambdas(q, pos + lam.unsqueeze(-1))  # (λc + λp_n)^T q_n
        return self.gain(out.reshape(b, self.heads * dv, hh, ww))

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        n, L, k, u, v, nh = h * w, context_len, self.dim_k, self.dim_u, self.dim_v, self.heads
        total = n * self.dim * nh * k + L * self.context_dim * u * (k + v)  # projections
        total += L * k * v * u  # content lambda λc
        total += n * nh * k * v  # applying λc to the queries (with λp_n summed first for the table)
        if self.position == "fourier":
            total += L * self.context_dim * u * k + L * u * k * v  # position keys, Σ_l P V
            total += n * 4 * self.n_freq * k * u  # G(p_n)
            total += n * nh * k * v * u  # Σ_u (PV)_u^T (G_u ⊙ q_n): λp is applied without being formed
        elif self.position == "table":
            total += n * L * k * v * u  # λp_n = Σ_l Σ_u E V
        return total
