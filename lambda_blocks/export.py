"""ONNX export of an inpainting U-Net, and the assets of the browser page: ``python -m lambda_blocks.export``.

    python -m lambda_blocks.export -o lmi.onnx                          # the shipped LλMI model (32x32)
    python -m lambda_blocks.export --run runs/dev/<run> -o model.onnx   # a finished run's EMA weights
    python -m lambda_blocks.export --arm moebius --size tiny --image-size 32 -o m.onnx   # random init
    python -m lambda_blocks.export --web web/ [--vendor web/node_modules/onnxruntime-web/dist]   # the page's assets (make web)

The graph is ``out = unet(x, t)`` with ``x`` = cat(x_t, masked image, mask) of shape (B, 2C+1, H, W)
(float32) and ``t`` (B,) int64, read as the model's ``diffusion.prediction``; B, H and W are fixed at
export (the image-context pooling of ``ImageContext`` is exported for one size). Every export is
checked against PyTorch with onnxruntime on the same inputs and the maximum absolute difference is
printed and stored (``check``); a run above ``--tol`` is an error and no file is left behind.

Inside an export the layers use their plain formulations (``layers.common.exporting``): Local-λ's
lambda convolution is a ``Conv2d`` (no FFT, no Toeplitz autograd Function) and the lambdas are
applied by one einsum, so every registered arm exports with standard ONNX operators (opset 18).

``--web DIR`` writes what the static page needs next to its committed HTML / JS: ``model.onnx``,
``recipe.json`` (image size, prediction target, the DDIM timesteps with their ᾱ, the noise seed
rule) and ``images/*.png`` (the first test crops of the model's data). ``ddim_onnx`` is the Python
twin of the page's sampling loop (numpy + onnxruntime), and ``web_noise`` reproduces the page's
seeded Gaussian noise bit for bit in its uniforms (mulberry32 + Box-Muller), so a fill computed in
the browser can be compared with the PyTorch sampler's for the same noise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["WEB_VENDOR_FILES", "export_onnx", "check_onnx", "onnx_session", "recipe", "ddim_onnx", "web_noise", "write_web_assets", "main"]

OPSET = 18
# What web/index.html loads from onnxruntime-web's dist/ (copied into web/vendor/ by `make web`).
WEB_VENDOR_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")


def _example_inputs(model, image_size: int, batch: int = 1, t: int = 999) -> tuple[torch.Tensor, torch.Tensor]:
    c = model.cfg.image_channels
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 2 * c + 1, image_size, image_size, generator=g)
    x[:, 2 * c:] = (x[:, 2 * c:] > 0).float()  # a binary mask channel
    return x, torch.full((batch,), t, dtype=torch.long)


def onnx_session(path: str | Path):
    """An onnxruntime CPU session (one thread: the numbers of the project machines)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(model, path: str | Path, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Max |onnxruntime - PyTorch| of the exported graph over the given (x, t) inputs."""
    sess = onnx_session(path)
    err = 0.0
    for x, t in inputs:
        with torch.no_grad():
            ref = model(x, t).float().numpy()
        out = sess.run(["out"], {"x": x.numpy().astype(np.float32), "t": t.numpy().astype(np.int64)})[0]
        if out.shape != ref.shape:
            raise AssertionError(f"ONNX output {out.shape} differs from PyTorch's {ref.shape}")
        err = max(err, float(np.abs(out - ref).max()))
    return err


def export_onnx(model, path: str | Path, image_size: int, *, batch: int = 1, dynamo: bool = False,
                tol: float = 1e-4) -> dict:
    """Write ``model`` (an ``InpaintUNet``) as ONNX at ``path`` atomically, checked with onnxruntime.

    Args:
        image_size: H = W of the exported graph (a multiple of ``model.divisor``).
        dynamo: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) instead of the
            TorchScript exporter; both give the same graph up to float rounding, the TorchScript one
            about 4x faster to export (the tests use it for every arm, and dynamo for one).
        tol: the largest max-abs difference from PyTorch accepted (checked at t = 999, 500 and 0).

    Returns ``{"path", "max_abs_err", "image_size", "batch", "opset", "exporter", "bytes"}``.
    Raises ``ValueError`` for a size the U-Net cannot take and ``AssertionError`` when the graph
    disagrees with PyTorch by more than ``tol`` (nothing is written then).
    """
    import warnings

    if image_size < model.divisor or image_size % model.divisor:
        raise ValueError(f"image_size must be a positive multiple of the U-Net's divisor {model.divisor}, got {image_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = _example_inputs(model, image_size, batch)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation / tracer chatter
            kwargs = dict(input_names=["x", "t"], output_names=["out"], opset_version=OPSET, dynamo=dynamo)
            if dynamo:
                kwargs.update(external_data=False, verbose=False)
            torch.onnx.export(model, example, str(tmp_path), **kwargs)
        checks = [example] + [_example_inputs(model, image_size, batch, t) for t in (500, 0)]
        err = check_onnx(model, tmp_path, checks)
        if not err <= tol:
            raise AssertionError(f"the exported graph differs from PyTorch by {err:.3g} (> tol {tol:g}); nothing written")
        tmp_path.replace(path)
    return {"path": str(path), "max_abs_err": err, "image_size": image_size, "batch": batch, "opset": OPSET,
            "exporter": "dynamo" if dynamo else "torchscript", "bytes": path.stat().st_size}


# ---------------------------------------------------------------------------------------------
# The page's sampling loop, in Python


def recipe(diffusion, cfg, image_size: int, steps: int | None = None, spacing: str | None = None) -> dict:
    """What the page needs to sample like ``Diffusion.ddim_sample`` (eta 0, pure-noise start, x̂₀ clamped)."""
    from .diffusion import ddim_timesteps

    steps = int(steps or cfg.eval.ddim_steps)
    spacing = spacing or cfg.eval.spacing
    ts = ddim_timesteps(diffusion.timesteps, steps, spacing)
    abar = [float(diffusion.alphas_cumprod[t]) for t in ts]
    return {"image_size": int(image_size), "channels": int(cfg.unet_config().image_channels),
            "prediction": diffusion.prediction, "steps": steps, "spacing": spacing, "timesteps": ts,
            "abar": abar, "abar_prev": abar[1:] + [1.0], "clip_x0": True,
            "noise": "mulberry32(seed) uniforms, Box-Muller pairs (lambda_blocks.export.web_noise)"}


def ddim_onnx(sess, rec: dict, masked: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """DDIM (eta 0) with an onnxruntime session: the loop of ``web/app.js`` step by step.

    masked (B, C, H, W), mask (B, 1, H, W) with 1 = hole, noise (B, C, H, W), all float32 in [-1, 1];
    returns the samples with the known pixels pasted back (float64)."""
    x = noise.astype(np.float64)
    b = masked.shape[0]
    for t, a, ap in zip(rec["timesteps"], rec["abar"], rec["abar_prev"]):
        inp = np.concatenate([x, masked, mask], axis=1).astype(np.float32)
        out = sess.run(["out"], {"x": inp, "t": np.full((b,), t, dtype=np.int64)})[0].astype(np.float64)
        if rec["prediction"] == "v":
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out
        elif rec["prediction"] == "eps":
            x0 = (x - math.sqrt(1 - a) * out) / math.sqrt(a)
        else:
            x0 = out
        x0 = np.clip(x0, -1.0, 1.0)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = math.sqrt(ap) * x0 + math.sqrt(max(1 - ap, 0.0)) * eps
    return mask * x + (1 - mask) * masked


def _mulberry32(seed: int):
    a = seed & 0xFFFFFFFF

    def imul(x: int, y: int) -> int:
        return (x * y) & 0xFFFFFFFF

    def nxt() -> float:
        nonlocal a
        a = (a + 0x6D2B79F5) & 0xFFFFFFFF
        t = imul(a ^ (a >> 15), 1 | a)
        t = ((t + imul(t ^ (t >> 7), 61 | t)) & 0xFFFFFFFF) ^ t
        return (((t ^ (t >> 14)) & 0xFFFFFFFF) + 0.5) / 4294967296.0  # in (0, 1): log() is finite

    return nxt


def web_noise(seed: int, n: int) -> np.ndarray:
    """The page's start noise: n standard normals (float64) from mulberry32(seed) by Box-Muller.

    ``web/app.js`` computes the same sequence (its uniforms are the same integers; the logs and
    cosines may differ in the last ulp between JavaScript and numpy)."""
    nxt = _mulberry32(seed)
    out = np.empty(n + (n & 1))
    for i in range(0, len(out), 2):
        u1, u2 = nxt(), nxt()
        rad = math.sqrt(-2.0 * math.log(u1))
        out[i], out[i + 1] = rad * math.cos(2 * math.pi * u2), rad * math.sin(2 * math.pi * u2)
    return out[:n]


# ---------------------------------------------------------------------------------------------
# Assets of the browser page


def write_web_assets(out_dir: str | Path, name: str = "lmi-dev-tiny", n_images: int = 8, steps: int | None = None,
                     vendor_dist: str | Path | None = None) -> dict:
    """``model.onnx``, ``recipe.json`` and ``images/NN.png`` for ``web/index.html`` (a shipped model);
    with ``vendor_dist`` (onnxruntime-web's ``dist/`` folder) also ``vendor/`` (``WEB_VENDOR_FILES``)."""
    import shutil

    from PIL import Image

    from .data import make_dataset
    from .pretrained import load_pretrained
    from .records import atomic_write_bytes, write_json

    out_dir = Path(out_dir)
    if vendor_dist is not None:
        missing = [f for f in WEB_VENDOR_FILES if not (Path(vendor_dist) / f).is_file()]
        if missing:
            raise ValueError(f"{vendor_dist} lacks {', '.join(missing)}: run `npm ci --prefix web` (make web does it)")
        (out_dir / "vendor").mkdir(parents=True, exist_ok=True)
        for f in WEB_VENDOR_FILES:
            shutil.copyfile(Path(vendor_dist) / f, out_dir / "vendor" / f)
    model, diffusion, cfg, card = load_pretrained(name)
    size = cfg.data.image_size
    info = export_onnx(model, out_dir / "model.onnx", size)
    rec = recipe(diffusion, cfg, size, steps)
    ds = make_dataset(cfg.data.dataset, "test", size=size, n=n_images, seed=cfg.data.seed)
    names = []
    for i in range(min(n_images, len(ds))):
        img = ((ds[i]["image"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buf = _png_bytes(Image.fromarray(img))
        fname = f"images/{i:02d}.png"
        atomic_write_bytes(out_dir / fname, buf)
        names.append(fname)
    rec.update(model=name, images=names, onnx=info, metrics=card.get("metrics"), classical_floor=card.get("classical_floor"))
    write_json(out_dir / "recipe.json", rec)
    return rec


def _png_bytes(im) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _load_model(args):
    from .unet import build_unet

    if args.run:
        from .loading import load_run_model

        from . import records
        from .config import ExpCfg

        model, _ = load_run_model(args.run)
        cfg = ExpCfg.from_dict(records.read_json(records.RunPaths(args.run).config))
        return model, args.image_size or cfg.data.image_size
    if args.arm:
        return build_unet(args.arm, args.size, table_size=args.image_size or 32), args.image_size or 32
    from .pretrained import load_pretrained

    model, _, cfg, _ = load_pretrained(args.model)
    return model, args.image_size or cfg.data.image_size


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default="lmi-dev-tiny", help="a shipped model (python -m lambda_blocks.pretrained list)")
    src.add_argument("--run", help="a finished run folder (its EMA weights)")
    src.add_argument("--arm", help="a randomly initialised arm (unet.ARMS), for checking the export")
    ap.add_argument("--size", default="tiny", help="U-Net size of --arm")
    ap.add_argument("--image-size", type=int, default=None, help="H = W of the graph (default: the model's)")
    ap.add_argument("-o", "--out", help="output .onnx")
    ap.add_argument("--web", help="write the browser page's assets into this folder (a shipped --model)")
    ap.add_argument("--vendor", help="onnxruntime-web's dist/ folder to copy into DIR/vendor (make web)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps of the page (default: the model's eval steps)")
    ap.add_argument("--dynamo", action="store_true", help="use torch.export + onnxscript (slower to export)")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    from .runtime import tune_allocator

    tune_allocator()  # reuse freed tensor memory instead of page-faulting it in again (runtime.tune_allocator)
    if not args.out and not args.web:
        ap.error("give -o OUT.onnx and/or --web DIR")
    try:
        if args.web:
            rec = write_web_assets(args.web, args.model, steps=args.steps, vendor_dist=args.vendor)
            print(f"wrote {args.web}/model.onnx ({rec['onnx']['bytes'] / 1e6:.1f} MB, max |ONNX - PyTorch| "
                  f"{rec['onnx']['max_abs_err']:.2e}), recipe.json, {len(rec['images'])} test images")
        if args.out:
            model, size = _load_model(args)
            info = export_onnx(model, args.out, size, dynamo=args.dynamo, tol=args.tol)
            print(json.dumps(info))
    except (KeyError, ValueError, AssertionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
