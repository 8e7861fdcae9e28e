"""A small inpainting diffusion U-Net whose mixing blocks are chosen by name (Moebius section 6).

Input: the noisy sample, the masked image and the mask concatenated (2*C + 1 channels, as the
paper's 9-channel latent input), a timestep per sample, and optional context tokens. Output: the
noise prediction (C channels). Works at any H, W divisible by 2**(levels - 1).

Each level holds ``res_blocks`` residual blocks (dense or depthwise-separable convs, the paper's
DW.Res), each followed by a MixBlock2d when the level is in ``mix_levels``; the decoder mirrors it
with one more block per level consuming the skips (diffusers layout). The paper prunes the middle
block; ``mid_block=True`` adds one (res + mix + res) at the lowest resolution.

Context tokens come either from learned category embeddings (``context="category"``: the paper's
LCG tokens; every inpainting sample here is of the "background" category) or from the image itself
(``context="image"``: masked-average-pooled features of the known region on a g x g grid, L = g*g).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from typing import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers.blocks import FFNS, MixBlock2d, cross_mixers, group_norm, self_mixers
from .layers.common import RegistryView, exporting, get_attention_class, mixers
from .layers.lambda_layers import check_layer_scale

CONVS = ("dense", "depthwise")
CONTEXTS = ("category", "image", "none")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of `InpaintUNet` (plain values only, so it serialises to JSON and hashes).

    Args:
        image_channels: C of the data (3 for pixels, 4 for a latent); the input has 2*C + 1.
        widths: channels per level; the number of levels is len(widths).
        res_blocks: residual blocks per encoder level (decoder has one more).
        mix_levels: levels (0 = full resolution) that carry a mixing block after each res block.
        self_mixer, cross_mixer, ffn: the mixing block's parts (see `MixBlock2d`); ``self_mixer`` and
            ``cross_mixer`` may be a tuple with one name per level, e.g. softmax attention at the
            lowest resolution and Local-λ at full resolution: ``("local_lambda", "vanilla")``.
        conv: ``dense`` or ``depthwise`` (depthwise-separable) convs in the residual blocks.
        heads: heads / queries per position of every mixer.
        context: ``category``, ``image`` or ``none`` (then cross_mixer must be ``none``).
        num_tokens: L context tokens (``image``: must be a square number g*g).
        context_dim: channels of the context tokens.
        self_kwargs, cross_kwargs: extra mixer arguments (e.g. {"r": 7, "norm": "batch"}).
        ffn_ratio: FFN hidden ratio (None: 2.5 for mixffn, 4 for mlp).
        mid_block: add a res + mix + res block at the lowest resolution.
        time_mult: time-embedding width = time_mult * widths[0].
        table_size: side of the full-resolution map that ``position="table"`` tables are built for
            (level l gets a (table_size / 2**l)^2 x L table); 0: unset (``ExpCfg.unet_config`` sets it
            to the run's working size). Only a cross mixer with ``position="table"`` reads it.
        gn_min_channels: channels per GroupNorm group at least: 2 (ours: 16 groups at C = 32) or 1
            (the authors': 32 groups wherever C allows).
        conv_out: the output conv: ``dense`` 3x3 (ours) or ``depthwise`` (depthwise 3x3 then pointwise
            1x1, the authors' ``conv_out``, whose pointwise weight is their KD output anchor θ_o).
        lambda_gain: a learned per-channel output gain on every lambda mixer (Local-λ, Interactive-λ),
            starting at this value (`lambda_layers._LayerScale`); ``None``: the paper's lambda layers,
            whose residual branch starts ~25x larger than an attention's. A mixer's own
            ``layer_scale`` in ``self_kwargs`` / ``cross_kwargs`` wins. See `uses_lambda_gain`.
        zero_init_out: zero-initialise ``conv_out`` (its last conv; ours: the prediction starts at 0). The authors
            keep PyTorch's default init, so their task-loss gradient at the output anchor is not 0 at
            step 0 (see `latent.kd`).
    """

    image_channels: int = 3
    widths: tuple[int, ...] = (32, 64)
    res_blocks: int = 1
    mix_levels: tuple[int, ...] = (0, 1)
    self_mixer: str | tuple[str, ...] = "local_lambda"  # a tuple: one per level (index 0 = full resolution)
    cross_mixer: str | tuple[str, ...] = "interactive_lambda"
    ffn: str = "mixffn"
    conv: str = "depthwise"
    heads: int = 4
    context: str = "image"
    num_tokens: int = 16
    context_dim: int = 64
    self_kwargs: dict = field(default_factory=dict)
    cross_kwargs: dict = field(default_factory=dict)
    ffn_ratio: float | None = None
    mid_block: bool = False
    time_mult: int = 4
    max_timestep: int = 1000  # timesteps are integers in [0, max_timestep) (the diffusion's T)
    table_size: int = 0
    gn_min_channels: int = 2
    zero_init_out: bool = True
    conv_out: str = "dense"
    lambda_gain: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "mix_levels", tuple(self.mix_levels))
        for key in ("image_channels", "res_blocks", "heads", "num_tokens", "context_dim", "time_mult", "max_timestep"):
            val = getattr(self, key)
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"UNetConfig.{key} must be a positive int, got {val!r}")
        if not self.widths or any((not isinstance(w, int)) or w <= 0 for w in self.widths):
            raise ValueError(f"UNetConfig.widths must be positive ints, got {self.widths}")
        bad = [lv for lv in self.mix_levels if not 0 <= lv < len(self.widths)]
        if bad:
            raise ValueError(f"UNetConfig.mix_levels {bad} out of range for {len(self.widths)} levels")
        for key in ("self_mixer", "cross_mixer"):
            val = getattr(self, key)
            if isinstance(val, (list, tuple)):
                object.__setattr__(self, key, tuple(val))
                if len(val) != len(self.widths):
                    raise ValueError(f"UNetConfig.{key} per level needs one name per level ({len(self.widths)}), "
                                     f"got {list(val)}")
        for key, allowed in (("self_mixer", self_mixers()), ("cross_mixer", cross_mixers()), ("ffn", FFNS),
                             ("conv", CONVS), ("conv_out", CONVS), ("context", CONTEXTS)):
            val = getattr(self, key)
            for v in (val if isinstance(val, tuple) else (val,)):
                if v not in allowed:
                    raise ValueError(f"UNetConfig.{key}={val!r}; choose one of {allowed}"
                                     + (" (per level: a tuple of those)" if key.endswith("mixer") else ""))
        if self.context == "none" and any(self.mixer_at(lv)[1] != "none" for lv in range(len(self.widths))):
            raise ValueError("cross_mixer needs context tokens: set context to 'category' or 'image'")
        if self.context == "image" and math.isqrt(self.num_tokens) ** 2 != self.num_tokens:
            raise ValueError(f"context='image' pools a g x g grid: num_tokens must be a square, got {self.num_tokens}")
        if not isinstance(self.table_size, int) or self.table_size < 0:
            raise ValueError(f"UNetConfig.table_size must be an int >= 0, got {self.table_size!r}")
        check_layer_scale(self.lambda_gain, "UNetConfig.lambda_gain")
        if self.gn_min_channels not in (1, 2):
            raise ValueError(f"UNetConfig.gn_min_channels must be 1 (the authors') or 2 (ours), got {self.gn_min_channels!r}")
        if self.level_tables:
            if self.table_size <= 0:
                raise ValueError("cross_kwargs position='table' builds one table per level for one map size: set "
                                 "UNetConfig.table_size (a run sets it to its image / latent side)")
            if self.table_size % (2 ** (len(self.widths) - 1)):
                raise ValueError(f"table_size={self.table_size} must be divisible by 2**(levels-1)")

    @property
    def levels(self) -> int:
        return len(self.widths)

    def mixer_kwargs(self, level: int) -> tuple[dict, dict]:
        """(self_kwargs, cross_kwargs) of the mixers at ``level``, with ``lambda_gain`` given as
        ``layer_scale`` to each mixer that takes one and has none of its own."""
        out = []
        for name, kw in zip(self.mixer_at(level), (self.self_kwargs, self.cross_kwargs)):
            kw = dict(kw)
            if self.lambda_gain is not None and takes_layer_scale(name):
                kw.setdefault("layer_scale", self.lambda_gain)
            out.append(kw)
        return out[0], out[1]

    def lambda_layer_scales(self) -> list:
        """The ``layer_scale`` every lambda mixer of the network is built with (None: no gain)."""
        return [kw.get("layer_scale") for lv in self.mix_levels
                for name, kw in zip(self.mixer_at(lv), self.mixer_kwargs(lv)) if takes_layer_scale(name)]

    @property
    def uses_lambda_gain(self) -> bool:
        """Whether ``lambda_gain`` changes the network (some lambda mixer has no ``layer_scale`` of its own)."""
        return self.lambda_gain is not None and any(
            takes_layer_scale(name) and "layer_scale" not in own
            for lv in self.mix_levels for name, own in zip(self.mixer_at(lv), (self.self_kwargs, self.cross_kwargs)))

    @property
    def level_tables(self) -> bool:
        """Whether the cross mixers use ``position="table"`` sized per level from ``table_size`` (an
        explicit ``feat_size`` in ``cross_kwargs`` is used as given instead)."""
        return self.cross_kwargs.get("position") == "table" and "feat_size" not in self.cross_kwargs

    @property
    def fixed_size(self) -> int | None:
        """The one (square) input side a ``position="table"`` network accepts, else None (any size)."""
        return self.table_size if self.level_tables else None

    def mixer_at(self, level: int) -> tuple[str, str]:
        """(self mixer, cross mixer) of the mixing blocks at ``level``."""
        pick = lambda v: v[level] if isinstance(v, tuple) else v  # noqa: E731
        return pick(self.self_mixer), pick(self.cross_mixer)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"], d["mix_levels"] = list(self.widths), list(self.mix_levels)
        for key in ("self_mixer", "cross_mixer"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d


# Arms. One per registered mixer (the quality-versus-size study), derived from the registry, and
# the paper's Table 2 arms (MOEBIUS_SPEC section 10). Each fixes (self_mixer, cross_mixer, ffn,
# conv); the GLA baseline is our `linear` attention.
_SELF_ARM = dict(cross_mixer="vanilla", ffn="mlp", conv="dense")  # a self mixer in the baseline's block
_CROSS_ARM = dict(self_mixer="linear", ffn="mlp", conv="dense")  # a cross mixer in the baseline's block


def takes_layer_scale(mixer: str) -> bool:
    """Whether the registered mixer ``mixer`` takes an output gain (``layer_scale``: the lambda layers)."""
    return mixer != "none" and "layer_scale" in inspect.signature(get_attention_class(mixer)).parameters


def variant_arms() -> dict[str, dict]:
    """One arm per registered mixer, in registration order: a self mixer replaces the baseline's
    linear attention, a cross mixer its softmax cross-attention, a mixer of both roles takes both
    places, and a block mixer declares its own ``arm``."""
    out = {}
    for name in mixers():
        cls = get_attention_class(name)
        if "block" in cls.roles:
            out[name] = dict(cls.arm)
        elif "self" in cls.roles and "cross" in cls.roles:
            out[name] = dict(self_mixer=name, cross_mixer=name, ffn="mlp", conv="dense")
        elif "self" in cls.roles:
            out[name] = dict(self_mixer=name, **_SELF_ARM)
        else:
            out[name] = dict(cross_mixer=name, **_CROSS_ARM)
    return out


def variant_arm_names() -> list[str]:
    """The variant arms (``variant_arms``) by name: the arms of the quality-versus-size study."""
    return list(variant_arms())


TABLE2_ARMS: dict[str, dict] = {
    "baseline": dict(self_mixer="linear", cross_mixer="vanilla", ffn="mlp", conv="dense"),
    "swap_self": dict(self_mixer="local_lambda", cross_mixer="vanilla", ffn="mlp", conv="dense"),
    "swap_cross": dict(self_mixer="linear", cross_mixer="interactive_lambda", ffn="mlp", conv="dense"),
    "swap_ffn": dict(self_mixer="linear", cross_mixer="vanilla", ffn="mixffn", conv="dense"),
    "swap_conv": dict(self_mixer="linear", cross_mixer="vanilla", ffn="mlp", conv="depthwise"),
    "both_lambda": dict(self_mixer="local_lambda", cross_mixer="interactive_lambda", ffn="mlp", conv="dense"),
    "both_lambda_dw": dict(self_mixer="local_lambda", cross_mixer="interactive_lambda", ffn="mlp", conv="depthwise"),
    "moebius": dict(self_mixer="local_lambda", cross_mixer="interactive_lambda", ffn="mixffn", conv="depthwise"),
    # the authors' exact Moebius: BatchNorm on queries / values, the absolute position table (one
    # resolution), 32 GroupNorm groups where the width allows, a depthwise-separable conv_out with
    # PyTorch's default init (its pointwise weight is their KD output anchor), no output gain on the
    # lambda layers (``layer_scale: None`` wins over a preset's ``lambda_gain``)
    "moebius_paper": dict(self_mixer="local_lambda", cross_mixer="interactive_lambda", ffn="mixffn", conv="depthwise",
                          self_kwargs={"norm": "batch", "layer_scale": None},
                          cross_kwargs={"norm": "batch", "position": "table", "layer_scale": None},
                          gn_min_channels=1, zero_init_out=False, conv_out="depthwise"),
}


def _all_arms() -> dict[str, dict]:
    return {**variant_arms(), **TABLE2_ARMS}


ARMS: Mapping[str, dict] = RegistryView(_all_arms)


def _aliases() -> dict[str, str]:
    """Arm -> canonical arm: arms that build the same network share the first-declared name
    (``baseline`` -> ``linear``, ``swap_self`` -> ``local_lambda``, ``swap_cross`` ->
    ``interactive_lambda``, ``moebius`` -> ``lmi``), so one architecture is trained once."""
    first: dict[str, str] = {}
    out = {}
    for name, spec in _all_arms().items():
        key = json.dumps(spec, sort_keys=True)
        out[name] = first.setdefault(key, name)
    return out


ARM_ALIASES: Mapping[str, str] = RegistryView(_aliases)


def canonical_arm(arm: str) -> str:
    """The canonical name of an arm (itself unless it builds the same network as an earlier arm)."""
    if arm not in ARMS:
        raise KeyError(f"unknown arm {arm!r}; known arms: {', '.join(ARMS)}")
    return ARM_ALIASES[arm]


def arm_names(arm: str) -> list[str]:
    """Every name of the network of ``arm`` (canonical first)."""
    c = canonical_arm(arm)
    return [c] + [a for a, ca in ARM_ALIASES.items() if ca == c and a != c]


# Size presets: several points per variant on the quality-versus-size curves.
SIZES: dict[str, dict] = {
    "tiny": dict(widths=(32, 64), res_blocks=1, context_dim=64),
    "small": dict(widths=(48, 96), res_blocks=1, context_dim=96),
    "base": dict(widths=(64, 128), res_blocks=2, context_dim=128),
    "large": dict(widths=(64, 128, 256), res_blocks=2, context_dim=128, mix_levels=(0, 1, 2)),
}


def build_unet(arm: str = "lmi", size: str = "tiny", **overrides) -> "InpaintUNet":
    """InpaintUNet for a named arm (``ARMS``) and size (``SIZES``), with config overrides."""
    return InpaintUNet(unet_config(arm, size, **overrides))


def unet_config(arm: str = "lmi", size: str = "tiny", **overrides) -> UNetConfig:
    if arm not in ARMS:
        raise KeyError(f"unknown arm {arm!r}; known arms: {', '.join(ARMS)}")
    if size not in SIZES:
        raise KeyError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown UNetConfig key(s) {unknown}; valid keys: {sorted(fields)}")
    return UNetConfig(**{**SIZES[size], **ARMS[arm], **overrides})


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of (possibly fractional) timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None]
    emb = torch.cat([ang.cos(), ang.sin()], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def conv3x3(cin: int, cout: int, kind: str) -> nn.Module:
    """A 3x3 conv: dense, or depthwise-separable (depthwise 3x3 then pointwise 1x1)."""
    if kind == "dense":
        return nn.Conv2d(cin, cout, 3, padding=1)
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1))


class ResBlock(nn.Module):
    """GN -> SiLU -> conv -> + time -> GN -> SiLU -> conv, plus a (1x1 when needed) shortcut."""

    def __init__(self, cin: int, cout: int, time_dim: int, conv: str, gn_min_channels: int = 2):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, min_channels=gn_min_channels), conv3x3(cin, cout, conv)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = group_norm(cout, min_channels=gn_min_channels), conv3x3(cout, cout, conv)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Stage(nn.Module):
    """A res block optionally followed by a residual mixing block (the mixers of ``level``)."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig, time_dim: int, mix: bool, level: int = 0):
        super().__init__()
        self.res = ResBlock(cin, cout, time_dim, cfg.conv, cfg.gn_min_channels)
        self.mix = None
        sm, cm = cfg.mixer_at(level)
        if mix and (sm, cm, cfg.ffn) != ("none", "none", "none"):
            self_kwargs, cross_kwargs = cfg.mixer_kwargs(level)
            if cfg.level_tables and cm != "none":
                side = cfg.table_size >> level  # this level's map, and the run's token count
                cross_kwargs.update(feat_size=(side, side), num_tokens=cfg.num_tokens)
            self.mix = MixBlock2d(
                cout, sm, cm, cfg.ffn, context_dim=cfg.context_dim, heads=cfg.heads,
                self_kwargs=self_kwargs, cross_kwargs=cross_kwargs, ffn_ratio=cfg.ffn_ratio,
                gn_min_channels=cfg.gn_min_channels,
            )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self.res(x, temb)
        if self.mix is not None:
            x = x + self.mix(x, context)
        return x


class ImageContext(nn.Module):
    """Context tokens from the known region: conv features, masked average pool on a g x g grid."""

    def __init__(self, image_channels: int, context_dim: int, num_tokens: int):
        super().__init__()
        self.grid = math.isqrt(num_tokens)
        self.stem = nn.Sequential(
            nn.Conv2d(image_channels, context_dim, 3, padding=1), nn.SiLU(), nn.Conv2d(context_dim, context_dim, 3, padding=1)
        )
        self.pos = nn.Parameter(torch.zeros(num_tokens, context_dim))
        self.out = nn.Linear(context_dim, context_dim)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        known = 1.0 - mask
        feats = self.stem(masked) * known
        num = F.adaptive_avg_pool2d(feats, self.grid)
        den = F.adaptive_avg_pool2d(known, self.grid).clamp_min(1e-3)
        tokens = (num / den).flatten(2).transpose(1, 2)  # (B, g*g, D)
        return self.out(tokens + self.pos)


class InpaintUNet(nn.Module):
    """Noise predictor eps(x_t, t | masked image, mask[, context]). See the module docstring."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        c, w0 = cfg.image_channels, cfg.widths[0]
        time_dim = cfg.time_mult * w0
        self.time_mlp = nn.Sequential(nn.Linear(w0, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.context_tokens = None
        if cfg.context == "category":
            # Paper's LCG: 2 categories x L ids; inpainting uses the "background" ids 0..L-1.
            self.context_tokens = nn.Embedding(2 * cfg.num_tokens, cfg.context_dim)
        elif cfg.context == "image":
            self.context_tokens = ImageContext(c, cfg.context_dim, cfg.num_tokens)
        self.conv_in = nn.Conv2d(2 * c + 1, w0, 3, padding=1)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch = [w0], w0
        for lv, width in enumerate(cfg.widths):
            stages = nn.ModuleList()
            for _ in range(cfg.res_blocks):
                stages.append(Stage(ch, width, cfg, time_dim, lv in cfg.mix_levels, lv))
                ch = width
                skips.append(ch)
            self.down.append(stages)
            if lv < cfg.levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = None
        if cfg.mid_block:
            low = cfg.levels - 1
            self.mid = nn.ModuleList([Stage(ch, ch, cfg, time_dim, True, low), Stage(ch, ch, cfg, time_dim, False, low)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for lv in reversed(range(cfg.levels)):
            stages = nn.ModuleList()
            for _ in range(cfg.res_blocks + 1):
                stages.append(Stage(ch + skips.pop(), cfg.widths[lv], cfg, time_dim, lv in cfg.mix_levels, lv))
                ch = cfg.widths[lv]
            self.up.append(stages)
            if lv > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = group_norm(ch, min_channels=cfg.gn_min_channels)
        self.conv_out = conv3x3(ch, c, cfg.conv_out)
        if cfg.zero_init_out:
            last = self.conv_out if isinstance(self.conv_out, nn.Conv2d) else self.conv_out[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def divisor(self) -> int:
        return 2 ** (self.cfg.levels - 1)

    def make_context(self, x: torch.Tensor) -> torch.Tensor | None:
        """Context tokens (B, L, D) for an input x = cat(noisy, masked, mask)."""
        c, b = self.cfg.image_channels, x.shape[0]
        if self.cfg.context == "category":
            ids = torch.arange(self.cfg.num_tokens, device=x.device).expand(b, -1)
            return self.context_tokens(ids)
        if self.cfg.context == "image":
            return self.context_tokens(x[:, c : 2 * c], x[:, 2 * c : 2 * c + 1])
        return None

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 2C+1, H, W) = cat(noisy sample, masked image, mask); t: (B,) or scalar -> eps (B, C, H, W)."""
        c = self.cfg.image_channels
        if x.ndim != 4 or x.shape[1] != 2 * c + 1:
            raise ValueError(f"expected input (B, {2 * c + 1}, H, W) = cat(noisy, masked, mask), got {tuple(x.shape)}")
        hh, ww = x.shape[-2:]
        if hh % self.divisor or ww % self.divisor:
            raise ValueError(
                f"H and W must be divisible by 2**(levels-1) = {self.divisor} for this {self.cfg.levels}-level U-Net, "
                f"got {hh}x{ww}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"expected one timestep per sample ({x.shape[0]}), got shape {tuple(t.shape)}")
        # The value check reads tensor data: free for a CPU tensor, but on an accelerator it would make
        # every forward wait for the device (a host sync that stops the launch queue running ahead), and
        # under torch.compile it would be the graph's one break. Timesteps made on the device (the
        # trainer's and the sampler's) are integers in range by construction; those are not checked.
        if t.device.type == "cpu" and not (exporting() or torch.compiler.is_compiling()):
            tf = t.detach().double()
            if bool(((tf < 0) | (tf >= self.cfg.max_timestep) | (tf != tf.round())).any()):
                raise ValueError(f"timesteps must be integers in [0, {self.cfg.max_timestep}), got "
                                 f"{t.detach().cpu().tolist()[:8]}")
        if context is not None and context.ndim == 3 and context.shape[1] == 0:
            raise ValueError("context has L = 0 tokens: pass at least one token, or context=None")
        if context is None:
            context = self.make_context(x)
        temb = self.time_mlp(timestep_embedding(t, self.cfg.widths[0]).to(x.dtype))

        h = self.conv_in(x)
        skips = [h]
        for lv, stages in enumerate(self.down):
            for stage in stages:
                h = stage(h, temb, context)
                skips.append(h)
            if lv < self.cfg.levels - 1:
                h = self.downsample[lv](h)
                skips.append(h)
        if self.mid is not None:
            for stage in self.mid:
                h = stage(h, temb, context)
        for i, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), temb, context)
            if i < self.cfg.levels - 1:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
