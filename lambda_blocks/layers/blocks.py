"""Feed-forward layers, the mixing block and the full LλMI block (``lmi``).

MixBlock2d is the transformer block of the U-Net with each part chosen by name (Moebius section 5):

    h0 = proj_in(GroupNorm(x))
    h1 = h0 + self_mixer(LN(h0))              # vanilla | linear | local_lambda | none
    h2 = h1 + cross_mixer(LN(h1), context)    # vanilla | interactive_lambda | none
    h3 = h2 + ffn(LN(h2))                     # mlp (GEGLU) | mixffn (Sana's GLUMBConv)
    return proj_out(h3)                        # the caller adds x (the outer residual)

``lmi`` registers the Moebius configuration (Local-λ, Interactive-λ, Mix-FFN) as a token mixer,
so it obeys the same contract as the other variants: x + lmi(x, context) is the paper's block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import GroupNorm32, LayerNorm2d, TokenMixer, check_positive, create_mixer, mixers, register_attention

FFNS = ("mlp", "mixffn", "none")


def self_mixers() -> tuple[str, ...]:
    """The block's self-mixer choices: every registered mixer with the ``self`` role, and ``none``."""
    return mixers("self") + ("none",)


def cross_mixers() -> tuple[str, ...]:
    """The block's cross-mixer choices: every registered mixer with the ``cross`` role, and ``none``."""
    return mixers("cross") + ("none",)


def group_norm(channels: int, max_groups: int = 32, min_channels: int = 2) -> nn.GroupNorm:
    """GroupNorm with the most groups (<= 32) that divide C and keep >= ``min_channels`` channels per
    group. Ours is 2 (so a 1x1 map still has more than one value per group: 16 groups at C = 32);
    ``min_channels=1`` is the authors' choice (always 32 groups where C allows)."""
    check_positive(min_channels=min_channels)
    groups = max([g for g in range(1, max_groups + 1) if channels % g == 0 and channels // g >= min_channels] or [1])
    return GroupNorm32(groups, channels, eps=1e-6)  # float32 under autocast (common.f32_under_autocast)


class MixFFN(nn.Module):
    """Mix-FFN (GLUMBConv): 1x1 expand + SiLU, depthwise 3x3, gate, 1x1 project. MACs per pixel:
    C*2H + 9*2H + H*C."""

    def __init__(self, dim: int, ratio: float = 2.5):
        super().__init__()
        if not ratio > 0:
            raise ValueError(f"ffn ratio must be > 0, got {ratio}")
        self.dim, self.hidden = dim, max(1, int(ratio * dim))
        self.expand = nn.Conv2d(dim, 2 * self.hidden, 1)
        self.dw = nn.Conv2d(2 * self.hidden, 2 * self.hidden, 3, padding=1, groups=2 * self.hidden)
        self.project = nn.Conv2d(self.hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.dw(F.silu(self.expand(x))).chunk(2, dim=1)
        return self.project(h * F.silu(gate))

    def macs(self, h: int, w: int) -> int:
        n, c, hid = h * w, self.dim, self.hidden
        return n * (c * 2 * hid + 9 * 2 * hid + hid * c)


class GegluMLP(nn.Module):
    """The transformer MLP of SD-style blocks: GEGLU with hidden width ratio * C (per-pixel 1x1 convs)."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        if not ratio > 0:
            raise ValueError(f"ffn ratio must be > 0, got {ratio}")
        self.dim, self.hidden = dim, max(1, int(ratio * dim))
        self.expand = nn.Conv2d(dim, 2 * self.hidden, 1)
        self.project = nn.Conv2d(self.hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.expand(x).chunk(2, dim=1)
        return self.project(h * F.gelu(gate))

    def macs(self, h: int, w: int) -> int:
        return h * w * (self.dim * 2 * self.hidden + self.hidden * self.dim)


def make_ffn(kind: str, dim: int, ratio: float | None = None) -> nn.Module | None:
    if kind == "mixffn":
        return MixFFN(dim, 2.5 if ratio is None else ratio)
    if kind == "mlp":
        return GegluMLP(dim, 4.0 if ratio is None else ratio)
    if kind == "none":
        return None
    raise ValueError(f"unknown ffn {kind!r}; choose one of {FFNS}")


class MixBlock2d(nn.Module):
    """A transformer block whose self-mixer, cross-mixer and FFN are chosen by name.

    Args:
        dim: channels C.
        self_mixer: a registered mixer with the ``self`` role, or ``none`` (``self_mixers()``).
        cross_mixer: a registered mixer with the ``cross`` role, or ``none`` (``cross_mixers()``).
        ffn: one of ``FFNS``.
        context_dim: channels of the context tokens.
        heads: heads / queries of every mixer.
        self_kwargs, cross_kwargs: extra arguments of the mixers (e.g. ``r``, ``norm``).
        ffn_ratio: hidden ratio of the FFN (default 2.5 for mixffn, 4 for mlp).
        gn_min_channels: channels per group of the input GroupNorm at least (`group_norm`).

    Returns proj_out(h3) (B, C, H, W); the caller adds the outer residual.
    """

    def __init__(
        self,
        dim: int,
        self_mixer: str = "local_lambda",
        cross_mixer: str = "interactive_lambda",
        ffn: str = "mixffn",
        context_dim: int | None = None,
        heads: int = 4,
        self_kwargs: dict | None = None,
        cross_kwargs: dict | None = None,
        ffn_ratio: float | None = None,
        gn_min_channels: int = 2,
    ):
        super().__init__()
        check_positive(dim=dim, heads=heads, context_dim=context_dim)
        if self_mixer not in self_mixers():
            raise ValueError(f"unknown self mixer {self_mixer!r}; choose one of {self_mixers()}")
        if cross_mixer not in cross_mixers():
            raise ValueError(f"unknown cross mixer {cross_mixer!r}; choose one of {cross_mixers()}")
        self.dim = dim
        self.context_dim = context_dim or dim
        self.norm_in = group_norm(dim, min_channels=gn_min_channels)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.self_mixer = self.cross_mixer = None
        if self_mixer != "none":
            self.norm1 = LayerNorm2d(dim)
            self.self_mixer = create_mixer(self_mixer, dim, "self", heads=heads, **(self_kwargs or {}))
        if cross_mixer != "none":
            self.norm2 = LayerNorm2d(dim)
            self.cross_mixer = create_mixer(
                cross_mixer, dim, "cross", heads=heads, context_dim=self.context_dim, **(cross_kwargs or {})
            )
        self.ffn = make_ffn(ffn, dim, ffn_ratio)
        if self.ffn is not None:
            self.norm3 = LayerNorm2d(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    @property
    def requires_context(self) -> bool:
        """Whether a forward needs context tokens (it has a cross mixer)."""
        return self.cross_mixer is not None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj_in(self.norm_in(x))
        if self.self_mixer is not None:
            h = h + self.self_mixer(self.norm1(h))
        if self.cross_mixer is not None:
            if context is None:
                raise ValueError(f"this block has a cross mixer ({self.cross_mixer.name}) and needs context tokens")
            h = h + self.cross_mixer(self.norm2(h), context)
        if self.ffn is not None:
            h = h + self.ffn(self.norm3(h))
        return self.proj_out(h)

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        n = h * w
        total = 2 * n * self.dim * self.dim  # proj_in, proj_out
        if self.self_mixer is not None:
            total += self.self_mixer.macs(h, w)
        if self.cross_mixer is not None:
            total += self.cross_mixer.macs(h, w, context_len)
        if self.ffn is not None:
            total += self.ffn.macs(h, w)
        return total


@register_attention("lmi", roles=("block",), label="LλMI", color="#C44E52")
class LMIBlock(TokenMixer):
    """LλMI (Moebius section 5): Local-λ, then Interactive-λ over the context, then Mix-FFN.

    Args:
        dim: channels C.
        heads: queries per position of both lambda layers.
        context_dim: channels of the context tokens (default C).
        r: Local-λ lambda-convolution scope (odd).
        norm: normalisation of queries / values in both lambda layers.
        position: Interactive-λ position term (``fourier`` | ``table`` | ``none``).
        feat_size, num_tokens: needed by ``position="table"`` only.
        ffn_ratio: Mix-FFN hidden ratio.
        lambda_conv: formulation of the lambda convolution.
        layer_scale: learned output gain of both lambda layers, starting at this value (None: the paper's).

    Returns the block's update (B, C, H, W); x + lmi(x, context) is the paper's block.
    """

    supports_context = True
    requires_context = True
    # the U-Net arm this block stands for (``unet.variant_arms``): its parts in every mixing block
    arm = dict(self_mixer="local_lambda", cross_mixer="interactive_lambda", ffn="mixffn", conv="depthwise")

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        context_dim: int | None = None,
        r: int = 15,
        norm: str = "layer",
        position: str = "fourier",
        feat_size: tuple[int, int] | None = None,
        num_tokens: int | None = None,
        ffn_ratio: float = 2.5,
        lambda_conv: str = "auto",
        layer_scale: float | None = None,
    ):
        super().__init__()
        self.dim = dim
        self.context_dim = context_dim or dim
        self.block = MixBlock2d(
            dim,
            "local_lambda",
            "interactive_lambda",
            "mixffn",
            context_dim=self.context_dim,
            heads=heads,
            self_kwargs=dict(r=r, norm=norm, lambda_conv=lambda_conv, layer_scale=layer_scale),
            cross_kwargs=dict(norm=norm, position=position, feat_size=feat_size, num_tokens=num_tokens,
                              layer_scale=layer_scale),
            ffn_ratio=ffn_ratio,
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x, context)
        return self.block(x, context)

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        return self.block.macs(h, w, context_len)
