"""Shared pieces of the token mixers: the registry, the base class, norms and validation.

Every mixer follows one contract (see `TokenMixer`):

    forward(x: (B, C, H, W), context: (B, L, C_ctx) | None) -> (B, C, H, W)

A mixer only mixes tokens: it owns no residual and no pre-norm (the U-Net block does), so
swapping one variant for another in an ablation changes exactly one thing.

MAC convention (used by every ``macs()`` method and by ``lambda_blocks.profiling``):
one multiply-accumulate = one MAC. We count the multiply-accumulates of convolutions,
linear layers, matmuls and einsums, *including* the attention / lambda products that the
Moebius paper leaves out. Element-wise work (norms, softmax, activations, bias adds, the
residual sums) is not counted. FLOPs ~= 2 x MACs.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

__all__ = [
    "TokenMixer",
    "register_attention",
    "list_attention",
    "create_attention",
    "create_mixer",
    "mixers",
    "unregister_attention",
    "ROLES",
    "RegistryView",
    "explicit_ops",
    "explicit_ops_enabled",
    "exporting",
    "make_norm2d",
    "LayerNorm2d",
    "check_positive",
]

_REGISTRY: dict[str, type["TokenMixer"]] = {}

# While counting MACs, fused kernels that counters cannot see (SDPA) are replaced by their
# explicit matmul form. A context variable, never a global torch switch.
_EXPLICIT = contextvars.ContextVar("lambda_blocks_explicit_ops", default=False)


def exporting() -> bool:
    """Inside ``torch.jit.trace``, ``torch.export`` or an ONNX export: plain, data-independent ops only
    (no custom autograd Function, no FFT, no value checks that read tensor data)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


@contextlib.contextmanager
def explicit_ops(enabled: bool = True) -> Iterator[None]:
    """Within this context every mixer uses explicit matmul/einsum ops (no fused SDPA)."""
    token = _EXPLICIT.set(enabled)
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


def explicit_ops_enabled() -> bool:
    return _EXPLICIT.get()


ROLES = ("self", "cross", "block")


def register_attention(name: str, *, roles: tuple[str, ...] = ("self",), label: str | None = None,
                       color: str | None = None) -> Callable[[type], type]:
    """Class decorator adding a mixer to the registry; a duplicate name is an error.

    The registry is the single source of truth up to the study: ``roles`` says where the mixer
    may sit (``self``: the block's self-mixer over pixels; ``cross``: its cross-mixer over the
    context tokens; ``block``: a whole block, which then declares the ``arm`` it stands for),
    ``label`` and ``color`` are how figures and tables name and draw its arm. The U-Net's allowed
    choices, the variant arms (``unet.variant_arms``), the labels and the palette derive from it.
    A mixer with several roles takes its role through the argument named by its ``role_argument``.
    """
    roles = tuple(roles)
    if not roles or any(r not in ROLES for r in roles):
        raise ValueError(f"{name}: roles must be a non-empty subset of {ROLES}, got {roles}")

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"attention variant {name!r} is already registered ({_REGISTRY[name]})")
        if "block" in roles and not isinstance(getattr(cls, "arm", None), dict):
            raise TypeError(f"{name}: a block mixer declares the U-Net arm it stands for as a class attribute `arm`")
        cls.name, cls.roles, cls.label, cls.color = name, roles, label or name, color
        _REGISTRY[name] = cls
        return cls

    return deco


class RegistryView(Mapping):
    """A read-only mapping recomputed from the registry on every use, so a mixer registered after
    import (a plug-in, a test's throw-away mixer) appears in what derives from it (arms, labels)."""

    def __init__(self, fn: Callable[[], dict]):
        self._fn = fn

    def __getitem__(self, key):
        return self._fn()[key]

    def __iter__(self):
        return iter(self._fn())

    def __len__(self) -> int:
        return len(self._fn())

    def __repr__(self) -> str:
        return repr(self._fn())


def unregister_attention(name: str) -> None:
    """Remove a mixer (tests that register a throw-away one clean up with this)."""
    _REGISTRY.pop(name, None)


def mixers(role: str | None = None) -> tuple[str, ...]:
    """Registered mixer names in registration order, optionally only those that can play ``role``."""
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {ROLES}")
    return tuple(n for n, c in _REGISTRY.items() if role is None or role in c.roles)


def create_mixer(name: str, dim: int, role: str, **kwargs) -> "TokenMixer":
    """``create_attention`` for a mixer in a role of the block (ValueError when it cannot play it)."""
    cls = get_attention_class(name)
    if role not in cls.roles:
        raise ValueError(f"{name} cannot be a {role} mixer; {role} mixers: {', '.join(mixers(role))}")
    if len(cls.roles) > 1 and cls.role_argument:
        kwargs = {cls.role_argument: role, **kwargs}
    return create_attention(name, dim, **kwargs)


def list_attention() -> list[str]:
    """Names of the registered token mixers, sorted."""
    return sorted(_REGISTRY)


def get_attention_class(name: str) -> type["TokenMixer"]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown attention variant {name!r}; known variants: {', '.join(list_attention())}")
    return _REGISTRY[name]


def create_attention(name: str, dim: int, **kwargs) -> "TokenMixer":
    """Build the mixer registered as ``name`` for ``dim`` channels.

    Raises:
        KeyError: unknown ``name`` (the message lists the known ones).
        TypeError: a keyword argument the variant does not take (the message lists the valid ones).
        ValueError: an invalid setting (even ``r``, heads not dividing ``dim`` ...).
    """
    cls = get_attention_class(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{name}: unknown argument(s) {unknown}; valid arguments: {allowed}")
    return cls(dim, **kwargs)


def check_positive(**values: int | None) -> None:
    for key, val in values.items():
        if val is None:
            continue
        if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
            raise ValueError(f"{key} must be a positive integer, got {val!r}")


def check_divides(dim: int, **divisors: int) -> None:
    for key, val in divisors.items():
        if dim % val != 0:
            raise ValueError(f"{key}={val} does not divide dim={dim}")


def f32_under_autocast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is bf16 / fp16 under autocast on its device, else ``x`` itself.

    For the ops CPU autocast leaves in bf16 that run slower there than in float32 (measured at the
    tiny U-Net, 32 px, batch 1, one thread: GroupNorm 2.9-3.5x, ELU 4.9x, LayerNorm's backward 3x):
    they compute in float32, and the next matmul or convolution casts back to bf16 as autocast does.
    A float32 run never reaches the cast."""
    if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    return x


class GroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` that normalises in float32 under autocast (``f32_under_autocast``); the same
    parameters and state-dict keys, identical in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(f32_under_autocast(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map, per pixel (no batch or spatial coupling)."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # explicit perms: ONNX refuses negative ones
        # under autocast, normalise in float32 (CUDA autocast does so for layer_norm, CPU's does not:
        # its bf16 LayerNorm backward took 3x the float32 one). LayerNorm copies the permuted map to
        # a contiguous one anyway, so the cast is that copy.
        return self.norm(f32_under_autocast(x)).permute(0, 3, 1, 2)


NORMS = ("batch", "group", "layer", "none")


def make_norm2d(kind: str, channels: int, groups: int = 1) -> nn.Module:
    """Normalisation of a (B, C, H, W) projection.

    ``batch`` is the paper's BatchNorm2d (couples the samples of a batch in train mode);
    ``group`` is GroupNorm with ``groups`` groups (per sample, over channels and space);
    ``layer`` is a per-pixel LayerNorm over channels; ``none`` is the identity.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return GroupNorm32(groups, channels)
    if kind == "layer":
        return LayerNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class TokenMixer(nn.Module):
    """Base class of every registered mixer.

    Class attributes read by tests and profiling:
        name: registry key.
        supports_context: accepts ``context`` tokens.
        requires_context: must be given ``context``.
        couples_batch_in_train: uses batch statistics in train mode (BatchNorm).
    """

    name: str = "?"
    roles: tuple[str, ...] = ("self",)
    label: str = "?"
    color: str | None = None
    role_argument: str | None = None  # the __init__ argument that tells a many-role mixer its role
    supports_context: bool = False
    requires_context: bool = False

    @property
    def couples_batch_in_train(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())

    def _check_input(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: expected x of shape (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(f"{self.name}: expected {self.dim} channels, got {x.shape[1]}")
        if context is not None and not self.supports_context:
            raise ValueError(f"{self.name} is a self-mixer and takes no context (got context {tuple(context.shape)})")
        if context is None and self.requires_context:
            raise ValueError(f"{self.name} needs context tokens of shape (B, L, C_ctx)")
        if context is not None:
            if context.ndim != 3 or context.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{self.name}: context must be (B, L, C_ctx) with B={x.shape[0]}, got {tuple(context.shape)}"
                )
            if context.shape[1] == 0:
                raise ValueError(f"{self.name}: context has L = 0 tokens; pass at least one token")
            if context.shape[-1] != self.context_dim:
                raise ValueError(f"{self.name}: context has {context.shape[-1]} channels, expected {self.context_dim}")

    def macs(self, h: int, w: int, context_len: int = 0) -> int:
        """Analytic multiply-accumulates for one sample of size (h, w) with ``context_len`` tokens."""
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
