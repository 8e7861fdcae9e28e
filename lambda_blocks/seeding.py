"""Per-sample random streams (the idea of EDM's ``StackedRandomGenerator``, written anew).

Every random draw that belongs to one sample (its diffusion noise, its timestep, its training mask)
comes from a generator seeded by a *key* naming that sample, e.g. ``("eval", image_id, seed)`` or
``("train", seed, step, global_index)``. A sample's randomness therefore depends only on its key,
never on the batch it is computed in, the batch size, the number of data-parallel ranks, or how
many draws other code made before: sampling 4 images in one batch equals sampling each alone, a
resumed run continues exactly, and 2-rank DDP sees the same noise as one process.

Keys are hashed with SHA-256 (not Python's salted ``hash``), so seeds are stable across processes.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["key_seed", "sample_generators", "randn_per_sample", "randn_like_per_sample", "rand_per_sample",
           "numpy_rng"]


def key_seed(*key) -> int:
    """A stable 63-bit seed for a key made of str / int parts."""
    text = "|".join(str(k) for k in key).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def sample_generators(keys: Iterable, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per key (a key is a tuple of parts or a single str / int)."""
    gens = []
    for key in keys:
        parts = key if isinstance(key, (tuple, list)) else (key,)
        g = torch.Generator(device=device)
        g.manual_seed(key_seed(*parts))
        gens.append(g)
    return gens


def randn_per_sample(gens: Sequence[torch.Generator], shape: Sequence[int], dtype=torch.float32,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Stack of ``randn(shape)`` draws, one per generator -> (len(gens), *shape).

    Draws happen on the generators' device (CPU by default) and are then moved, so the numbers do
    not depend on the compute device.
    """
    out = torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype, device=g.device) for g in gens])
    return out.to(device)


def randn_like_per_sample(x: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Gaussian noise shaped like ``x`` (B, ...) whose row i comes from ``gens[i]`` only."""
    if x.shape[0] != len(gens):
        raise ValueError(f"need one generator per sample: batch {x.shape[0]}, got {len(gens)} generators")
    return randn_per_sample(gens, x.shape[1:], dtype=x.dtype, device=x.device)


def rand_per_sample(gens: Sequence[torch.Generator], shape: Sequence[int] = (), dtype=torch.float32,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Uniform [0, 1) draws, one ``shape`` block per generator."""
    out = torch.stack([torch.rand(tuple(shape), generator=g, dtype=dtype, device=g.device) for g in gens])
    return out.to(device)


def numpy_rng(*key) -> np.random.Generator:
    """A numpy generator for a key (masks are drawn with numpy by ``lambda_blocks.masks``)."""
    return np.random.default_rng(key_seed(*key))
