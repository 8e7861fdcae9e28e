"""Inpaint one image with a shipped model: ``python -m lambda_blocks.inpaint``.

    python -m lambda_blocks.inpaint photo.png mask.png -o filled.png       # mask: white (> 127) = hole
    python -m lambda_blocks.inpaint photo.png --box 8,8,12,10 -o filled.png   # x,y,w,h of a rectangular hole
    python -m lambda_blocks.inpaint photo.png --box 8,8,12,10 -o out.png --model lmi-dev-tiny --steps 20 --seed 0

Known pixels are kept exactly (the output's bytes outside the hole are the input's); the hole is
filled by DDIM sampling from pure noise with the model's own recipe (its ``eval`` settings), noise
keyed by ``--seed``. Any image size works: the image is reflect-padded to a multiple of the U-Net's
divisor and cropped back. The shipped models were trained on 32x32 crops, so they fill small holes
in small images best; ``python -m lambda_blocks.pretrained list`` shows how each compares with the
classical fills. Bad input (a missing or unreadable file, a mask of another size, an empty hole, a
box outside the image) is one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BadInput", "inpaint", "main"]


class BadInput(ValueError):
    """An input the CLI refuses, with the reason."""


def _read_image(path: str, what: str, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{what} {path} does not exist")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadInput(f"{what} {path} is not an image PIL can read ({exc.__class__.__name__})") from None


def _box_mask(spec: str, h: int, w: int) -> np.ndarray:
    try:
        x, y, bw, bh = (int(v) for v in spec.split(","))
    except ValueError:
        raise BadInput(f"--box expects x,y,w,h as four integers, got {spec!r}") from None
    if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w or y + bh > h:
        raise BadInput(f"--box {spec} does not lie inside the {w}x{h} image")
    m = np.zeros((h, w), dtype=bool)
    m[y:y + bh, x:x + bw] = True
    return m


def inpaint(image: np.ndarray, hole: np.ndarray, model, diffusion, steps: int, spacing: str, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) bool hole -> (H, W, 3) uint8, known pixels unchanged."""
    from .seeding import sample_generators

    h, w = hole.shape
    d = model.divisor
    ph, pw = (-h) % d, (-w) % d
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    m = torch.from_numpy(hole)[None, None].float()
    if ph or pw:  # reflect needs pad < side; replicate beyond that
        mode = "reflect" if ph < h and pw < w else "replicate"
        x, m = F.pad(x, (0, pw, 0, ph), mode=mode), F.pad(m, (0, pw, 0, ph), mode="constant", value=0)
    with torch.no_grad():
        out = diffusion.ddim_sample(model, x * (1 - m), m, generators=sample_generators([("inpaint", seed)]),
                                    steps=steps, spacing=spacing)
    fill = ((out[0, :, :h, :w].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.where(hole[..., None], fill, image)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.inpaint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("mask", nargs="?", help="mask image of the same size: white (> 127) is the hole")
    ap.add_argument("--box", help="x,y,w,h of a rectangular hole instead of a mask file")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--model", default="lmi-dev-tiny", help="a shipped model (python -m lambda_blocks.pretrained list)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's evaluation setting)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from .runtime import tune_allocator

    tune_allocator()  # reuse freed tensor memory instead of page-faulting it in again (runtime.tune_allocator)
    from .pretrained import CorruptCheckpoint, load_pretrained
    from .records import atomic_write_bytes

    try:
        if (args.mask is None) == (args.box is None):
            raise BadInput("give a mask file or --box x,y,w,h (one of them)")
        image = _read_image(args.image, "image", "RGB")
        h, w = image.shape[:2]
        if args.box is not None:
            hole = _box_mask(args.box, h, w)
        else:
            mask = _read_image(args.mask, "mask", "L")
            if mask.shape != (h, w):
                raise BadInput(f"mask {args.mask} is {mask.shape[1]}x{mask.shape[0]}, the image is {w}x{h}: they must match")
            hole = mask > 127
        if not hole.any():
            raise BadInput("the mask has no hole (no pixel > 127): nothing to inpaint")
        if args.steps is not None and args.steps <= 0:
            raise BadInput(f"--steps must be > 0, got {args.steps}")
        model, diffusion, cfg, _ = load_pretrained(args.model)
        filled = inpaint(image, hole, model, diffusion, args.steps or cfg.eval.ddim_steps, cfg.eval.spacing, args.seed)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(filled).save(buf, format="PNG")
        atomic_write_bytes(args.out, buf.getvalue())
    except (BadInput, KeyError, CorruptCheckpoint, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
