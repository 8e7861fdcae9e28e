"""LaMa-style random inpainting masks (MOEBIUS_SPEC section 9), cv2-free.

Masks are float32 arrays with ``1 = hole`` and ``0 = known pixel``.

Generators
----------
* **Irregular strokes** (LaMa ``make_random_irregular_mask``, effective ranges as
  written in the spec table because the released ramp coefficient is 1):
  ``S ~ U{min_times .. max_times + 1}`` strokes; each stroke starts at a uniform
  random pixel and chains ``1..5`` segments; each segment has an angle
  ``a in {0.01, 1.01, ..., (max_angle - 1) + 0.01}`` rad (mirrored to ``2*pi - a``
  for even stroke indices), a length in ``[min_len, max_len + min_len - 1]`` and
  a thickness in ``[min_width, max_width + min_width - 1]`` (``min_len = 10``,
  ``min_width = 5`` at 256 px). The segment end point is clipped to the image
  and becomes the next start point.
  Thick segments are rasterised here as *capsules* (every pixel whose centre is
  within ``thickness / 2`` of the segment), which matches ``cv2.line``'s round
  caps closely enough and needs no OpenCV.
* **Boxes** (LaMa ``make_random_rectangle_mask``): ``U{min_times .. max_times}``
  axis-aligned boxes with side lengths ``U[bbox_min_size, bbox_max_size]``
  (inclusive, clamped to fit inside ``margin``), placed uniformly inside
  ``margin``.

Kinds ``thin``, ``medium``, ``thick`` use the stock LaMa ``*_256`` settings; a
``box`` kind (boxes only, thick_256 box settings) is added for ablations. For
``medium`` and ``thick`` each mask is irregular with probability ``1/1.3`` and a
box mask with probability ``0.3/1.3``, as in the released configs.

Scaling to other image sizes
----------------------------
All *lengths* in a :class:`MaskConfig` (stroke widths and lengths, box sizes and
margins) are given in pixels at ``base_size = 256`` and are multiplied by
``min(H, W) / base_size`` at generation time, so the distribution of hole
*ratios* is (up to rounding) independent of the resolution. Scaled thickness
and lengths are at least 1 px; box sizes are at least 1 px. Counts are never
scaled.

Hole-ratio guarantee
--------------------
A generated mask is accepted only if its hole ratio lies in
``[min_hole_ratio, max_hole_ratio]`` (default ``[0.01, 0.9]``); otherwise it is
redrawn from the same generator, up to ``max_tries`` times (default 20). If
every draw fails, the draw closest to the interval is kept and then forced to be
non-empty (one random box of side ``max(1, min(H, W) // 8)`` is added) and
not full (a random box is cleared). The rejection slightly changes the LaMa
distribution (it removes near-empty and near-full masks, which LaMa keeps); this
is deliberate because such masks carry no inpainting signal.

Note: LaMa's training loop additionally dilates masks with probability 0.99
(spec section 11.15); that is a training-pipeline choice and is not applied here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import torch

__all__ = [
    "IrregularConfig",
    "BoxConfig",
    "MaskConfig",
    "MASK_KINDS",
    "get_mask_config",
    "mask_config_from_dict",
    "generate_mask",
    "random_masks",
    "eval_mask",
    "eval_seed",
    "hole_ratio",
    "mask_set_stats",
]

SizeLike = Union[int, Sequence[int]]
RngLike = Union[np.random.Generator, int, None]


def _check_number(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0,
                  strictly_positive: bool = False) -> None:
    """Validate a scalar setting, raising ``ValueError`` with a clear message."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"mask setting {name!r} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"mask setting {name!r} must be an integer, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"mask setting {name!r} must be finite, got {value!r}")
    if strictly_positive and value <= 0:
        raise ValueError(f"mask setting {name!r} must be > 0, got {value!r}")
    if value < minimum:
        raise ValueError(f"mask setting {name!r} must be >= {minimum}, got {value!r}")


def _check_order(lo_name: str, lo: float, hi_name: str, hi: float) -> None:
    if lo > hi:
        raise ValueError(f"mask setting {lo_name}={lo!r} is larger than {hi_name}={hi!r}")


@dataclass(frozen=True)
class IrregularConfig:
    """Settings of the irregular-stroke generator (LaMa names, pixels at base size).

    Attributes:
        min_times: Minimum number of strokes.
        max_times: LaMa ``max_times``; the effective maximum is ``max_times + 1``.
        max_width: LaMa ``max_width``; thickness is in ``[min_width, max_width + min_width - 1]``.
        max_len: LaMa ``max_len``; length is in ``[min_len, max_len + min_len - 1]``.
        max_angle: Number of discrete angles (``0.01 + k`` rad, ``k < max_angle``).
        min_width: Smallest thickness (5 in LaMa).
        min_len: Smallest segment length (10 in LaMa).
        max_segments: Segments per stroke are ``1..max_segments`` (5 in LaMa).
    """

    min_times: int
    max_times: int
    max_width: float
    max_len: float
    max_angle: int = 4
    min_width: float = 5.0
    min_len: float = 10.0
    max_segments: int = 5

    def __post_init__(self) -> None:
        _check_number("irregular.min_times", self.min_times, integer=True)
        _check_number("irregular.max_times", self.max_times, integer=True)
        _check_order("irregular.min_times", self.min_times, "irregular.max_times", self.max_times)
        _check_number("irregular.max_width", self.max_width, strictly_positive=True)
        _check_number("irregular.max_len", self.max_len, strictly_positive=True)
        _check_number("irregular.max_angle", self.max_angle, integer=True, strictly_positive=True)
        _check_number("irregular.min_width", self.min_width, strictly_positive=True)
        _check_number("irregular.min_len", self.min_len, strictly_positive=True)
        _check_number("irregular.max_segments", self.max_segments, integer=True,
                      strictly_positive=True)


@dataclass(frozen=True)
class BoxConfig:
    """Settings of the box generator (LaMa names, pixels at base size).

    Attributes:
        margin: Distance kept between boxes and the image border.
        bbox_min_size: Smallest box side.
        bbox_max_size: Largest box side (clamped to the image minus margins).
        min_times: Minimum number of boxes.
        max_times: Maximum number of boxes (inclusive).
    """

    margin: float
    bbox_min_size: float
    bbox_max_size: float
    min_times: int
    max_times: int

    def __post_init__(self) -> None:
        _check_number("box.margin", self.margin)
        _check_number("box.bbox_min_size", self.bbox_min_size, strictly_positive=True)
        _check_number("box.bbox_max_size", self.bbox_max_size, strictly_positive=True)
        _check_order("box.bbox_min_size", self.bbox_min_size, "box.bbox_max_size", self.bbox_max_size)
        _check_number("box.min_times", self.min_times, integer=True)
        _check_number("box.max_times", self.max_times, integer=True)
        _check_order("box.min_times", self.min_times, "box.max_times", self.max_times)


@dataclass(frozen=True)
class MaskConfig:
    """A mixed mask generator: irregular strokes and/or boxes.

    Attributes:
        kind: Name used in ids and reports.
        irregular: Stroke settings, or ``None`` if unused.
        box: Box settings, or ``None`` if unused.
        irregular_proba: Unnormalised probability of drawing a stroke mask.
        box_proba: Unnormalised probability of drawing a box mask.
        base_size: Image side (px) at which the lengths above are expressed.
        min_hole_ratio: Smallest accepted hole ratio (see module docstring).
        max_hole_ratio: Largest accepted hole ratio.
        max_tries: Draws before falling back to the forced fix-up.
    """

    kind: str
    irregular: IrregularConfig | None
    box: BoxConfig | None
    irregular_proba: float = 1.0
    box_proba: float = 0.0
    base_size: int = 256
    min_hole_ratio: float = 0.01
    max_hole_ratio: float = 0.9
    max_tries: int = 20

    def __post_init__(self) -> None:
        _check_number("irregular_proba", self.irregular_proba)
        _check_number("box_proba", self.box_proba)
        if self.irregular is None and self.irregular_proba > 0:
            raise ValueError("irregular_proba > 0 but no irregular settings were given")
        if self.box is None and self.box_proba > 0:
            raise ValueError("box_proba > 0 but no box settings were given")
        if self.irregular_proba + self.box_proba <= 0:
            raise ValueError(
                "irregular_proba + box_proba must be > 0 (got "
                f"{self.irregular_proba} + {self.box_proba})")
        _check_number("base_size", self.base_size, integer=True, strictly_positive=True)
        _check_number("min_hole_ratio", self.min_hole_ratio)
        _check_number("max_hole_ratio", self.max_hole_ratio, strictly_positive=True)
        if self.max_hole_ratio > 1:
            raise ValueError(f"max_hole_ratio must be <= 1, got {self.max_hole_ratio}")
        _check_order("min_hole_ratio", self.min_hole_ratio, "max_hole_ratio", self.max_hole_ratio)
        _check_number("max_tries", self.max_tries, integer=True, strictly_positive=True)

    @classmethod
    def from_dict(cls, kind: str, settings: Mapping[str, Any]) -> "MaskConfig":
        """Builds a config from a LaMa-style dict; see :func:`mask_config_from_dict`."""
        return mask_config_from_dict(settings, kind=kind)


# Stock LaMa *_256 settings (spec section 9 table).
_THIN_256 = MaskConfig(
    kind="thin",
    irregular=IrregularConfig(min_times=4, max_times=50, max_width=10, max_len=40, max_angle=4),
    box=None, irregular_proba=1.0, box_proba=0.0)
_MEDIUM_256 = MaskConfig(
    kind="medium",
    irregular=IrregularConfig(min_times=4, max_times=5, max_width=50, max_len=100, max_angle=4),
    box=BoxConfig(margin=0, bbox_min_size=10, bbox_max_size=50, min_times=1, max_times=5),
    irregular_proba=1.0, box_proba=0.3)
_THICK_256 = MaskConfig(
    kind="thick",
    irregular=IrregularConfig(min_times=1, max_times=5, max_width=100, max_len=200, max_angle=4),
    box=BoxConfig(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=1, max_times=3),
    irregular_proba=1.0, box_proba=0.3)
_BOX_256 = MaskConfig(
    kind="box", irregular=None,
    box=BoxConfig(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=1, max_times=3),
    irregular_proba=0.0, box_proba=1.0)

_PRESETS: dict[str, MaskConfig] = {c.kind: c for c in (_THIN_256, _MEDIUM_256, _THICK_256, _BOX_256)}
MASK_KINDS: tuple[str, ...] = tuple(_PRESETS)

_TOP_KEYS = ("irregular_proba", "irregular_kwargs", "box_proba", "box_kwargs", "base_size",
             "min_hole_ratio", "max_hole_ratio", "max_tries")
_IRREGULAR_KEYS = tuple(f.name for f in dataclasses.fields(IrregularConfig))
_BOX_KEYS = tuple(f.name for f in dataclasses.fields(BoxConfig))


def _reject_unknown(where: str, given: Iterable[str], allowed: Sequence[str]) -> None:
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown mask setting(s) {', '.join(repr(k) for k in unknown)} in {where}; "
            f"allowed keys: {', '.join(allowed)}")


def mask_config_from_dict(settings: Mapping[str, Any], kind: str = "custom") -> MaskConfig:
    """Builds a :class:`MaskConfig` from a LaMa-style settings dict.

    The accepted layout mirrors LaMa's ``MixedMaskGenerator`` arguments::

        {"irregular_proba": 1, "irregular_kwargs": {"min_times": 4, ...},
         "box_proba": 0.3, "box_kwargs": {"margin": 0, ...}}

    plus this module's ``base_size``, ``min_hole_ratio``, ``max_hole_ratio`` and
    ``max_tries``. Unlike the released code (whose thin YAMLs crash on
    ``variants_n``), every unknown key is rejected with a ``ValueError`` naming
    it and listing the allowed keys.

    Args:
        settings: The dict.
        kind: Name stored in the config.

    Returns:
        The validated config.

    Raises:
        ValueError: Unknown keys or invalid values.
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"mask settings must be a mapping, got {type(settings).__name__}")
    _reject_unknown("mask config", settings.keys(), _TOP_KEYS)
    irr_kwargs = settings.get("irregular_kwargs")
    box_kwargs = settings.get("box_kwargs")
    irregular = box = None
    if irr_kwargs is not None:
        _reject_unknown("irregular_kwargs", irr_kwargs.keys(), _IRREGULAR_KEYS)
        try:
            irregular = IrregularConfig(**irr_kwargs)
        except TypeError as exc:  # missing required keys
            raise ValueError(f"irregular_kwargs: {exc}") from exc
    if box_kwargs is not None:
        _reject_unknown("box_kwargs", box_kwargs.keys(), _BOX_KEYS)
        try:
            box = BoxConfig(**box_kwargs)
        except TypeError as exc:
            raise ValueError(f"box_kwargs: {exc}") from exc
    top = {k: settings[k] for k in ("base_size", "min_hole_ratio", "max_hole_ratio", "max_tries")
           if k in settings}
    return MaskConfig(
        kind=kind, irregular=irregular, box=box,
        irregular_proba=settings.get("irregular_proba", 1.0 if irregular is not None else 0.0),
        box_proba=settings.get("box_proba", 1.0 if box is not None and irregular is None else 0.0),
        **top)


def get_mask_config(kind: str | MaskConfig, **overrides: Any) -> MaskConfig:
    """Returns a preset config, optionally with overridden settings.

    Args:
        kind: One of :data:`MASK_KINDS` or an existing :class:`MaskConfig`.
        **overrides: Top-level :class:`MaskConfig` fields (``box_proba``,
            ``max_tries``, ...) or stroke/box fields prefixed with
            ``irregular_`` / ``box_`` (e.g. ``irregular_max_width=20``,
            ``box_margin=0``).

    Returns:
        The (validated) config.

    Raises:
        ValueError: Unknown kind, unknown override key or invalid values.
    """
    if isinstance(kind, MaskConfig):
        cfg = kind
    else:
        if kind not in _PRESETS:
            raise ValueError(f"unknown mask kind {kind!r}; known kinds: {', '.join(MASK_KINDS)}")
        cfg = _PRESETS[kind]
    if not overrides:
        return cfg
    top_fields = [f.name for f in dataclasses.fields(MaskConfig) if f.name not in ("irregular", "box")]
    allowed = top_fields + [f"irregular_{k}" for k in _IRREGULAR_KEYS] + [f"box_{k}" for k in _BOX_KEYS]
    _reject_unknown(f"overrides for kind {cfg.kind!r}", overrides.keys(), allowed)
    top = {k: v for k, v in overrides.items() if k in top_fields}
    irr = {k[len("irregular_"):]: v for k, v in overrides.items()
           if k.startswith("irregular_") and k not in top_fields}
    box = {k[len("box_"):]: v for k, v in overrides.items()
           if k.startswith("box_") and k not in top_fields}
    irregular_cfg, box_cfg = cfg.irregular, cfg.box
    if irr:
        if irregular_cfg is None:
            raise ValueError(f"mask kind {cfg.kind!r} has no irregular-stroke settings to override")
        irregular_cfg = dataclasses.replace(irregular_cfg, **irr)
    if box:
        if box_cfg is None:
            raise ValueError(f"mask kind {cfg.kind!r} has no box settings to override")
        box_cfg = dataclasses.replace(box_cfg, **box)
    return dataclasses.replace(cfg, irregular=irregular_cfg, box=box_cfg, **top)


def _as_hw(size: SizeLike) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"size must be an int or a (height, width) pair, got {size!r}") from exc
    if h < 2 or w < 2:
        raise ValueError(f"mask size must be at least 2x2, got {h}x{w}")
    return h, w


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _draw_capsule(mask: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
                  thickness: float) -> None:
    """Sets to 1 every pixel whose centre is within ``thickness/2`` of segment p0-p1.

    Points are ``(x, y)`` in pixel-centre coordinates.
    """
    h, w = mask.shape
    r = max(thickness / 2.0, 0.5)
    x0, y0 = p0
    x1, y1 = p1
    xa = max(int(math.floor(min(x0, x1) - r)), 0)
    xb = min(int(math.ceil(max(x0, x1) + r)), w - 1)
    ya = max(int(math.floor(min(y0, y1) - r)), 0)
    yb = min(int(math.ceil(max(y0, y1) + r)), h - 1)
    if xa > xb or ya > yb:
        return
    ys, xs = np.mgrid[ya:yb + 1, xa:xb + 1]
    dx, dy = x1 - x0, y1 - y0
    seg2 = dx * dx + dy * dy
    if seg2 == 0:
        t = np.zeros(xs.shape)
    else:
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / seg2, 0.0, 1.0)
    dist2 = (xs - (x0 + t * dx)) ** 2 + (ys - (y0 + t * dy)) ** 2
    region = mask[ya:yb + 1, xa:xb + 1]
    region[dist2 <= r * r] = 1.0


def _irregular_mask(cfg: IrregularConfig, h: int, w: int, scale: float,
                    rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    n_strokes = int(rng.integers(cfg.min_times, cfg.max_times + 2))  # effective max_times + 1
    for i in range(n_strokes):
        x, y = float(rng.integers(w)), float(rng.integers(h))
        for _ in range(1 + int(rng.integers(cfg.max_segments))):
            angle = 0.01 + int(rng.integers(cfg.max_angle))
            if i % 2 == 0:
                angle = 2.0 * math.pi - angle
            length = max(1.0, (cfg.min_len + int(rng.integers(int(math.ceil(cfg.max_len))))) * scale)
            width = max(1.0, round((cfg.min_width + int(rng.integers(int(math.ceil(cfg.max_width)))))
                                   * scale))
            ex = float(np.clip(round(x + length * math.sin(angle)), 0, w - 1))
            ey = float(np.clip(round(y + length * math.cos(angle)), 0, h - 1))
            _draw_capsule(mask, (x, y), (ex, ey), width)
            x, y = ex, ey
    return mask


def _box_mask(cfg: BoxConfig, h: int, w: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    margin = int(round(cfg.margin * scale))
    margin = min(margin, (min(h, w) - 1) // 2)
    room = min(h, w) - 2 * margin
    bmax = max(1, min(int(round(cfg.bbox_max_size * scale)), room))
    bmin = max(1, min(int(round(cfg.bbox_min_size * scale)), bmax))
    for _ in range(int(rng.integers(cfg.min_times, cfg.max_times + 1))):
        bw = int(rng.integers(bmin, bmax + 1))
        bh = int(rng.integers(bmin, bmax + 1))
        x0 = int(rng.integers(margin, w - margin - bw + 1))
        y0 = int(rng.integers(margin, h - margin - bh + 1))
        mask[y0:y0 + bh, x0:x0 + bw] = 1.0
    return mask


def _draw_once(cfg: MaskConfig, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    scale = min(h, w) / cfg.base_size
    total = cfg.irregular_proba + cfg.box_proba
    use_box = cfg.box is not None and rng.random() * total >= cfg.irregular_proba
    if use_box:
        assert cfg.box is not None
        return _box_mask(cfg.box, h, w, scale, rng)
    assert cfg.irregular is not None
    return _irregular_mask(cfg.irregular, h, w, scale, rng)


def generate_mask(kind: str | MaskConfig, size: SizeLike, rng: RngLike = None) -> np.ndarray:
    """Draws one random mask.

    Args:
        kind: ``"thin"``, ``"medium"``, ``"thick"``, ``"box"`` or a :class:`MaskConfig`.
        size: Image side, or ``(height, width)``.
        rng: A ``numpy.random.Generator`` (advanced in place), an int seed, or
            ``None`` for fresh entropy.

    Returns:
        ``float32`` array of shape ``(H, W)`` with values in ``{0, 1}`` (1 = hole),
        hole ratio within the config's accepted interval (see module docstring).
    """
    cfg = get_mask_config(kind)
    h, w = _as_hw(size)
    gen = _as_rng(rng)
    best: np.ndarray | None = None
    best_dist = math.inf
    for _ in range(cfg.max_tries):
        mask = _draw_once(cfg, h, w, gen)
        ratio = float(mask.mean())
        if cfg.min_hole_ratio <= ratio <= cfg.max_hole_ratio and 0.0 < ratio < 1.0:
            return mask
        dist = cfg.min_hole_ratio - ratio if ratio < cfg.min_hole_ratio else ratio - cfg.max_hole_ratio
        if dist < best_dist:
            best, best_dist = mask, dist
    assert best is not None
    side = max(1, min(h, w) // 8)
    if best.sum() == 0:
        y0, x0 = int(gen.integers(h - side + 1)), int(gen.integers(w - side + 1))
        best[y0:y0 + side, x0:x0 + side] = 1.0
    if best.min() == 1.0:
        y0, x0 = int(gen.integers(h - side + 1)), int(gen.integers(w - side + 1))
        best[y0:y0 + side, x0:x0 + side] = 0.0
    return best


def random_masks(kind: str | MaskConfig, batch: int, size: SizeLike, rng: RngLike = None) -> torch.Tensor:
    """Draws a batch of masks as a tensor for training.

    Args:
        kind: Mask kind or config (see :func:`generate_mask`).
        batch: Number of masks.
        size: Image side or ``(height, width)``.
        rng: Generator, seed or ``None``.

    Returns:
        ``float32`` tensor of shape ``(batch, 1, H, W)``, 1 = hole.
    """
    gen = _as_rng(rng)
    arr = np.stack([generate_mask(kind, size, gen) for _ in range(batch)])
    return torch.from_numpy(arr).unsqueeze(1)


def eval_seed(image_id: str, seed: int, kind: str, size: SizeLike) -> int:
    """Stable 64-bit seed for an evaluation mask.

    The key is ``"{image_id}|{seed}|{kind}|{H}x{W}"`` hashed with SHA-256 (not
    Python's salted ``hash``), so it is identical across processes, machines
    and model variants.

    Args:
        image_id: Dataset item id, e.g. ``"coffee/000123"``.
        seed: Evaluation seed.
        kind: Mask kind name.
        size: Image side or ``(height, width)``.

    Returns:
        A non-negative integer seed.
    """
    h, w = _as_hw(size)
    key = f"{image_id}|{int(seed)}|{kind}|{h}x{w}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def eval_mask(image_id: str, seed: int = 0, kind: str = "medium", size: SizeLike = 64) -> torch.Tensor:
    """Fixed evaluation mask for one image, identical for every model variant.

    Args:
        image_id: Dataset item id.
        seed: Evaluation seed.
        kind: Preset mask kind (a name, so the key is reproducible).
        size: Image side or ``(height, width)``.

    Returns:
        ``float32`` tensor of shape ``(1, H, W)``, 1 = hole.
    """
    if not isinstance(kind, str):
        raise TypeError("eval_mask needs a preset kind name so that the key is reproducible")
    gen = np.random.default_rng(eval_seed(image_id, seed, kind, size))
    return torch.from_numpy(generate_mask(kind, size, gen)).unsqueeze(0)


def _to_numpy(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        return mask.detach().cpu().numpy()
    return np.asarray(mask)


def hole_ratio(mask: np.ndarray | torch.Tensor) -> float | np.ndarray:
    """Fraction of hole pixels (values > 0.5).

    Args:
        mask: ``(H, W)`` or ``(1, H, W)`` for one mask; ``(B, 1, H, W)`` for a batch.

    Returns:
        A float for a single mask, a ``(B,)`` array for a batch.
    """
    arr = _to_numpy(mask)
    if arr.ndim in (2, 3):
        return float((arr > 0.5).mean())
    if arr.ndim == 4:
        return (arr > 0.5).reshape(arr.shape[0], -1).mean(axis=1)
    raise ValueError(f"mask must have 2, 3 or 4 dimensions, got shape {arr.shape}")


def mask_set_stats(masks: Iterable[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor) -> dict[str, float]:
    """Hole-ratio statistics of a set of masks.

    Args:
        masks: A ``(B, 1, H, W)`` array/tensor or an iterable of single masks.

    Returns:
        ``{"n", "mean", "std", "min", "max"}`` of the per-mask hole ratios
        (``std`` is the population standard deviation).
    """
    if isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 4:
        ratios = np.asarray(hole_ratio(masks), dtype=np.float64)
    else:
        ratios = np.asarray([hole_ratio(m) for m in masks], dtype=np.float64)
    if ratios.size == 0:
        raise ValueError("mask_set_stats needs at least one mask")
    return {"n": int(ratios.size), "mean": float(ratios.mean()), "std": float(ratios.std()),
            "min": float(ratios.min()), "max": float(ratios.max())}
