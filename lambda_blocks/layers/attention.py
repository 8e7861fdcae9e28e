"""Softmax attention (``vanilla``) and kernelised linear attention (``linear``).

* ``vanilla``: multi-head scaled dot-product attention (Vaswani et al. 2017) through
  ``torch.nn.functional.scaled_dot_product_attention``; self-attention over the H*W tokens, or
  cross-attention over ``context`` tokens when given. Cost O(N * M * d) for N queries, M keys.
* ``linear``: linear attention of Katharopoulos et al. 2020 (the GLA / SANA family without gates):
  ``y_n = phi(q_n)^T (sum_m phi(k_m) v_m^T) / (phi(q_n)^T sum_m phi(k_m))`` with a positive feature
  map phi (``elu+1`` or ``relu``). Cost O(N * d^2): linear in the number of pixels.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .common import TokenMixer, check_divides, check_positive, explicit_ops_enabled, f32_under_autocast, register_attention


def _heads_and_depth(dim: int, heads: int, dim_head: int | None) -> tuple[int, int]:
    check_positive(dim=dim, heads=heads, dim_head=dim_head)
    if dim_head is None:
        check_divides(dim, heads=heads)
        dim_head = dim // heads
    return heads, dim_head


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, heads, N, d) tensors; fused unless counting MACs."""
    if explicit_ops_enabled():
        scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        return torch.matmul(scores.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v)


@register_attention("vanilla", roles=("self", "cross"), label="Softmax attn", color="#4C72B0")
class VanillaAttention(TokenMixer):
    """Multi-head softmax attention over pixels (self) or context tokens (cross).

    Args:
        dim: channels C of x.
        heads: number of heads.
        dim_head: per-head depth (default C // heads; then heads must divide C).
        context_dim: channels of the context tokens (default C).
        mode: ``both`` (self-attention, or cross-attention when context is given), ``self`` (no
            context projection) or ``cross`` (context required). The U-Net uses ``self``/``cross`` so
            no parameter sits unused.

    Shapes: x (B, C, H, W), context (B, L, context_dim) or None -> (B, C, H, W).
    """

    supports_context = True
    role_argument = "mode"  # the block passes mode="self" / "cross"

    def __init__(
        self, dim: int, heads: int = 4, dim_head: int | None = None, context_dim: int | None = None, mode: str = "both"
    ):
        super().__init__()
        if mode not in ("both", "self", "cross"):
            raise ValueError(f"unknown mode {mode!r}; choose one of ('both', 'self', 'cross')")
        self.mode = mode
        self.supports_context = mode != "self"
        self.requires_context = mode == "cross"
        self.heads, self.dim_head = _heads_and_depth(dim, heads, dim_head)
        check_positive(context_dim=context_dim)
        self.dim = dim
        self.context_dim = context_dim or dim
        inner = self.heads * self.dim_head
        self.to_q = nn.Conv2d(dim, inner, 1, bias=False)
        if mode != "cross":
            self.to_kv_self = nn.Conv2d(dim, 2 * inner, 1, bias=False)
        if mode != "self":
            self.to_kv_ctx = nn.Linear(self.context_dim, 2 * inner, bias=False)
        self.to_out = nn.Conv2d(inner, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, context)
        b, _, hh, ww = x.shape
        q = rearrange(self.to_q(x), "b (h d) x y -> b h (x y) d", h=self.heads)
        if context is None:
            k, v = rearrange(self.to_kv_self(x), "b (two h d) x y -> two b h (x y) d", two=2, h=self.heads)
        else:
            k, v = rearrange(self.to_kv_ctx(context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        # (B, h, N, d) with d contiguous: from an NCHW map the rearranged views have stride N along d,
        # and CPU SDPA then takes its materialising path (7.7x slower at 48x48, one thread)
        out = softmax_attention(q.contiguous(), k.contiguous(), v.contiguous())
        out = rearrange(out, "b h (x y) d -> b (h d) x y", x=hh, y=ww)
        return self.to_out(out)

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        n, inner = h * w, self.heads * self.dim_head
        if context_len:
            m, kv = context_len, context_len * self.context_dim * 2 * inner
        else:
            m, kv = n, n * self.dim * 2 * inner
        return n * self.dim * inner + kv + 2 * n * m * inner + n * inner * self.dim


# elu in float32 under autocast: CPU's bf16 ELU took 4.9x the float32 one (common.f32_under_autocast)
FEATURE_MAPS = {"elu": lambda t: F.elu(f32_under_autocast(t)) + 1.0, "relu": F.relu}


@register_attention("linear", roles=("self",), label="Linear attn", color="#DD8452")
class LinearAttention(TokenMixer):
    """Kernelised linear self-attention (Katharopoulos et al. 2020), linear in H*W.

    Args:
        dim: channels C.
        heads: number of heads.
        dim_head: per-head depth (default C // heads).
        feature_map: ``elu`` (elu(x)+1) or ``relu`` (as in SANA).
        eps: added to the normaliser.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int | None = None, feature_map: str = "elu", eps: float = 1e-6):
        super().__init__()
        self.heads, self.dim_head = _heads_and_depth(dim, heads, dim_head)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {sorted(FEATURE_MAPS)}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.dim, self.context_dim = dim, None
        self.feature_map, self.eps = feature_map, eps
        inner = self.heads * self.dim_head
        self.to_qkv = nn.Conv2d(dim, 3 * inner, 1, bias=False)
        self.to_out = nn.Conv2d(inner, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, context)
        _, _, hh, ww = x.shape
        phi = FEATURE_MAPS[self.feature_map]
        q, k, v = rearrange(self.to_qkv(x), "b (three h d) x y -> three b h (x y) d", three=3, h=self.heads)
        q, k = phi(q), phi(k)
        kv = torch.einsum("bhnd,bhne->bhde", k, v)  # (B, heads, d, d): the summary of all keys/values
        num = torch.einsum("bhnd,bhde->bhne", q, kv)
        den = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2)).unsqueeze(-1) + self.eps
        out = rearrange(num / den, "b h (x y) d -> b (h d) x y", x=hh, y=ww)
        return self.to_out(out)

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        n, d, inner = h * w, self.dim_head, self.heads * self.dim_head
        return n * self.dim * 3 * inner + 2 * n * inner * d + n * inner + n * inner * self.dim
