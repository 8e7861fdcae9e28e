"""lambda-blocks: the LλMI block of Moebius (Local-λ, Interactive-λ, Mix-FFN) and its baselines,
interchangeable inside a small inpainting diffusion U-Net.

Importing the package changes no global torch setting (see `lambda_blocks.runtime`).
"""
from ._version import __version__  # noqa: E402

from .layers import create_attention, explicit_ops, list_attention  # noqa: E402
from .unet import ARMS, SIZES, InpaintUNet, UNetConfig, build_unet  # noqa: E402
from .pretrained import load_pretrained  # noqa: E402

__all__ = ["ARMS", "SIZES", "InpaintUNet", "UNetConfig", "build_unet", "create_attention", "explicit_ops", "list_attention",
           "load_pretrained", "__version__"]
