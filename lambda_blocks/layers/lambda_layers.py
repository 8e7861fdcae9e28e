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
nothing depends on the resolution. Three equivalent formulations of that convolution are
selectable (``lambda_conv``): ``conv3d`` (Bello's / lucidrains' form), ``conv2d`` (the v axis
folded into the batch; the default, fastest on CPU in our measurements), and ``unfold``.

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

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .common import NORMS, TokenMixer, check_divides, check_positive, make_norm2d, register_attention

LAMBDA_CONVS = ("conv2d", "conv3d", "unfold")


def _check_lambda_args(dim: int, heads: int, dim_k: int | None, dim_u: int, norm: str) -> int:
    check_positive(dim=dim, heads=heads, dim_k=dim_k, dim_u=dim_u)
    check_divides(dim, heads=heads)
    if dim_k is None:
        dim_k = dim // heads
    check_divides(dim, dim_k=dim_k)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    return dim_k


def lambda_conv(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: int, w: int, impl: str) -> torch.Tensor:
    """Position lambdas by a lambda convolution.

    Args:
        v: values (B, u, v, N) with N = h*w.
        weight: kernel (k, u, r, r), shared over the v axis.
        bias: (k,) or None.
        impl: ``conv2d`` | ``conv3d`` | ``unfold`` (same result, different kernels).

    Returns:
        λp of shape (B, k, v, N).
    """
    b, u, dv, n = v.shape
    k, r = weight.shape[0], weight.shape[-1]
    pad = r // 2
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


@register_attention("local_lambda")
class LocalLambda(TokenMixer):
    """Local-λ: multi-query lambda layer with content lambda + lambda-convolution position lambda.

    Args:
        dim: channels C (= |h| * v).
        heads: number of queries |h| per position (v = C // heads).
        dim_k: key / query depth k (default C // heads; must divide C).
        dim_u: intra-depth u.
        r: scope of the lambda convolution (odd).
        norm: normalisation of queries and values: ``layer`` (default), ``group``, ``batch`` (paper), ``none``.
        lambda_conv: ``conv2d`` (default), ``conv3d`` or ``unfold``.
        pos_bias: learn a bias per k in the position convolution (as Moebius does).

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
        lambda_conv: str = "conv2d",
        pos_bias: bool = True,
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

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, context)
        _, _, hh, ww = x.shape
        q = rearrange(self.norm_q(self.to_q(x)), "b (h k) x y -> b h k (x y)", h=self.heads)
        keys = rearrange(self.to_k(x), "b (u k) x y -> b u k (x y)", u=self.dim_u).softmax(dim=-1)
        v = rearrange(self.norm_v(self.to_v(x)), "b (u v) x y -> b u v (x y)", u=self.dim_u)
        content = torch.einsum("bukn,buvn->bkv", keys, v)  # λc
        y_c = torch.einsum("bhkn,bkv->bhvn", q, content)
        position = lambda_conv(v, self.pos_weight, self.pos_bias, hh, ww, self.lambda_conv)  # λp (B, k, v, N)
        y_p = torch.einsum("bhkn,bkvn->bhvn", q, position)
        return rearrange(y_c + y_p, "b h v (x y) -> b (h v) x y", x=hh, y=ww)

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        n, k, u, v, nh = h * w, self.dim_k, self.dim_u, self.dim_v, self.heads
        proj = n * self.dim * (nh * k + u * k + u * v)
        content = n * k * v * u + n * nh * k * v
        position = n * k * v * u * self.r**2 + n * nh * k * v
        return proj + content + position


POSITIONS = ("fourier", "table", "none")


def fourier_features(h: int, w: int, n_freq: int, device, dtype) -> torch.Tensor:
    """(h*w, 4*n_freq) sin/cos features of pixel-centre coordinates normalised to [-1, 1]."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
    freqs = (2.0 ** torch.arange(n_freq, device=device, dtype=dtype)) * math.pi / 2
    ang = grid[:, :, None] * freqs  # (N, 2, F)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(h * w, 4 * n_freq)


@register_attention("interactive_lambda")
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

    def _values(self, context: torch.Tensor) -> torch.Tensor:
        v = self.to_v(context)  # (B, L, u*v)
        if self._norm_v_is_batch:
            return self.norm_v(v.transpose(1, 2)).transpose(1, 2)
        return self.norm_v(v)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, context)
        _, _, hh, ww = x.shape
        q = rearrange(self.norm_q(self.to_q(x)), "b (h k) x y -> b h k (x y)", h=self.heads)
        keys = rearrange(self.to_k(context), "b l (u k) -> b u k l", u=self.dim_u).softmax(dim=-1)
        v = rearrange(self._values(context), "b l (u v) -> b u v l", u=self.dim_u)
        lam = torch.einsum("bukl,buvl->bkv", keys, v)  # λc (B, k, v)
        out = torch.einsum("bhkn,bkv->bhvn", q, lam)
        if self.position == "fourier":
            pk = rearrange(self.to_pos_k(context), "b l (u k) -> b u k l", u=self.dim_u)
            per_u = torch.einsum("bukl,buvl->bukv", pk, v)  # Σ_l P V  (B, u, k, v)
            feats = fourier_features(hh, ww, self.n_freq, x.device, x.dtype)
            gate = rearrange(self.pos_gate(feats), "n (k u) -> n k u", u=self.dim_u)  # G(p_n)
            pos = torch.einsum("nku,bukv->bkvn", gate, per_u)  # λp (B, k, v, N)
            out = out + torch.einsum("bhkn,bkvn->bhvn", q, pos)
        elif self.position == "table":
            if (hh, ww) != self.feat_size or context.shape[1] != self.num_tokens:
                raise ValueError(
                    f"interactive_lambda(position='table') is fixed to feat_size={self.feat_size} and "
                    f"num_tokens={self.num_tokens}; got {(hh, ww)} and {context.shape[1]} tokens. "
                    "Use position='fourier' for any size."
                )
            pos = torch.einsum("nlku,buvl->bkvn", self.pos_table, v)  # λp (B, k, v, N)
            out = out + torch.einsum("bhkn,bkvn->bhvn", q, pos)
        return rearrange(out, "b h v (x y) -> b (h v) x y", x=hh, y=ww)

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        n, L, k, u, v, nh = h * w, context_len, self.dim_k, self.dim_u, self.dim_v, self.heads
        total = n * self.dim * nh * k + L * self.context_dim * u * (k + v)  # projections
        total += L * k * v * u + n * nh * k * v  # content lambda and its application
        if self.position == "fourier":
            total += L * self.context_dim * u * k + L * u * k * v  # position keys, Σ_l P V
            total += n * 4 * self.n_freq * k * u  # G(p_n)
            total += n * k * v * u + n * nh * k * v  # Σ_u G ⊙ (PV), then applied to q
        elif self.position == "table":
            total += n * L * k * v * u + n * nh * k * v
        return total
