"""Steps, inputs and one profiling record per (module, size, batch, pass, dtype)."""
from __future__ import annotations

import contextlib
import platform
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .macs import _as_tuple, count_params, fvcore_macs, largest_tensor_bytes, torch_macs
from .timing import latency, peak_memory


PASSES = ("fwd", "fwd_bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")


def make_step(module: nn.Module, inputs, pass_: str = "fwd", *, device: str | torch.device = "cpu",
              dtype: str = "float32") -> Callable[[], None]:
    """A closure running one pass: ``fwd`` (eval, no_grad) or ``fwd_bwd`` (train, backward of
    ``out`` with a ones gradient; gradients are reset to None at the start of each call)."""
    dev = torch.device(device)
    args = _as_tuple(inputs)
    if pass_ == "fwd":
        module.eval()

        def step():
            with torch.no_grad(), _autocast(dev, dtype):
                module(*args)

        return step
    if pass_ == "fwd_bwd":
        module.train()
        grad_out: list[torch.Tensor] = []

        def step():
            module.zero_grad(set_to_none=True)
            for a in args:
                if isinstance(a, torch.Tensor):
                    a.grad = None
            with _autocast(dev, dtype):
                out = module(*args)
            if not grad_out or grad_out[0].shape != out.shape or grad_out[0].dtype != out.dtype:
                grad_out[:] = [torch.ones_like(out)]
            out.backward(grad_out[0])

        return step
    raise ValueError(f"unknown pass {pass_!r}; choose one of {PASSES}")


def build_block(variant: str, width: int = 64, *, seed: int = 0, **kwargs) -> nn.Module:
    """The registered mixer ``variant`` at ``width`` channels (context_dim = width for the ones that
    take context)."""
    from ..layers.common import create_attention, get_attention_class

    cls = get_attention_class(variant)
    torch.manual_seed(seed)
    if cls.supports_context and "context_dim" not in kwargs:
        kwargs["context_dim"] = width
    return create_attention(variant, width, **kwargs)


def build_arm_block(arm: str, width: int = 64, *, seed: int = 0, heads: int = 4, table_size: tuple[int, int] | None = None,
                    num_tokens: int | None = None, **kwargs) -> nn.Module:
    """The mixing block one level of U-Net arm ``arm`` (``unet.ARMS``) uses at ``width`` channels: a
    ``MixBlock2d`` with the arm's self-mixer, cross-mixer and FFN (and their arguments), its input
    norm and projections. Blocks of different arms compare like with like (the ``lmi`` block against
    the softmax block of ``vanilla``), where ``build_block`` gives bare mixers (and ``lmi``'s whole block).
    An arm with the paper's position table (``moebius_paper``) is fixed to one map and token count:
    pass ``table_size=(H, W)`` and ``num_tokens=L``."""
    from ..layers.blocks import MixBlock2d
    from ..unet import ARMS

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known arms: {', '.join(ARMS)}")
    a = ARMS[arm]
    cross_kwargs = dict(a.get("cross_kwargs") or {})
    if cross_kwargs.get("position") == "table":
        if table_size is None or num_tokens is None:
            raise ValueError(f"arm {arm!r} has the paper's position table: pass table_size=(H, W) and num_tokens=L")
        cross_kwargs.update(feat_size=tuple(table_size), num_tokens=num_tokens)
    torch.manual_seed(seed)
    return MixBlock2d(width, a["self_mixer"], a["cross_mixer"], a["ffn"], context_dim=kwargs.pop("context_dim", width),
                      heads=heads, self_kwargs=a.get("self_kwargs"), cross_kwargs=cross_kwargs,
                      gn_min_channels=a.get("gn_min_channels", 2), **kwargs)


def block_inputs(module: nn.Module, height: int, width: int, batch: int = 1, *, context_len: int = 16,
                 device: str | torch.device = "cpu", requires_grad: bool = False, seed: int = 0) -> tuple:
    """(x,) or (x, context) for a mixer; context (B, L, context_dim) only if the mixer requires it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, module.dim, height, width, generator=g).to(device)
    x.requires_grad_(requires_grad)
    if getattr(module, "requires_context", False):
        ctx = torch.randn(batch, context_len, module.context_dim, generator=g).to(device)
        return (x, ctx)
    return (x,)


def unet_inputs(unet: nn.Module, height: int, width: int, batch: int = 1, *,
                device: str | torch.device = "cpu", seed: int = 0) -> tuple:
    """(x, t) for an InpaintUNet: x = cat(noisy, masked, mask) (B, 2C+1, H, W), t (B,)."""
    g = torch.Generator().manual_seed(seed)
    c = unet.cfg.image_channels
    noisy = torch.randn(batch, c, height, width, generator=g)
    mask = (torch.rand(batch, 1, height, width, generator=g) > 0.5).float()
    masked = torch.randn(batch, c, height, width, generator=g) * (1 - mask)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    return (torch.cat([noisy, masked, mask], dim=1).to(device), t.to(device))


def hardware_name(device: str | torch.device = "cpu") -> str:
    """GPU name on CUDA, else the CPU model from /proc/cpuinfo (or platform)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_isa(flags: Iterable[str] | None = None, capability: str | None = None) -> str:
    """The vector ISA torch dispatches to on this CPU, with ``-bf16`` where the CPU has native bf16
    dot products (AVX512-BF16 or AMX-BF16): "avx512-bf16", "avx512", "avx2", "default".

    Two CPUs with the same model name can differ here (two "AMD EPYC" machines of this project: one
    AVX2, one AVX512-BF16), and a bf16 timing means nothing without it, so the benchmark file tags
    carry it. ``flags`` (the /proc/cpuinfo flags) and ``capability`` (torch's) are read when omitted."""
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    if flags is None:
        flags = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.lower().startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
    isa = str(capability).lower().replace(" ", "") or "default"
    flags = set(flags)
    if isa.startswith("avx512") and ({"avx512_bf16", "amx_bf16"} & flags):
        isa += "-bf16"
    return isa


def format_ops(ops: Mapping[str, int]) -> str:
    """{op: count} -> "op:count;op:count" (sorted by op name), "" when empty."""
    return ";".join(f"{k}:{v}" for k, v in sorted(ops.items()))


def profile_module(module: nn.Module, make_inputs: Callable[[bool], tuple], *, passes: Iterable[str] = PASSES,
                   analytic_macs: int | None = None, device: str | torch.device = "cpu", dtype: str = "float32",
                   count: bool = True, count_max_bytes: float = 12e9, min_run_time: float = 1.0,
                   min_reps: int = 5, max_time: float = 60.0) -> list[dict]:
    """Counts (once) and latency + peak memory (per pass) of ``module``.

    Args:
        make_inputs: ``make_inputs(requires_grad)`` -> the positional inputs on ``device``.
        analytic_macs: the analytic forward MACs of the whole batch, or None.
        count: run fvcore / FlopCounterMode; fvcore is skipped (with a note) when its real explicit
            forward would need about ``count_max_bytes`` or more (2.2 x the largest tensor).

    Returns one dict per pass with the measurement columns of ``CSV_COLUMNS`` (no key columns).
    Exceptions of the forward (e.g. ValueError for a size the module cannot take) propagate.
    """
    dev = torch.device(device)
    module = module.to(dev)
    inputs = make_inputs(False)
    module.eval()
    with torch.no_grad():
        module(*inputs)  # probe: raises for sizes the module cannot take, before any counting
    common = dict(params=count_params(module), macs=analytic_macs, macs_fvcore=None, macs_fvcore_other=None,
                  macs_torch=None, unsupported_ops="", notes="")
    if count:
        notes = []
        need = 2.2 * largest_tensor_bytes(module, inputs)
        # FlopCounterMode on real tensors when they fit (faster for small inputs), else on meta ones
        common["macs_torch"] = torch_macs(module, inputs, meta=need >= count_max_bytes)
        if need < count_max_bytes:
            fv = fvcore_macs(module, inputs)
            common.update(macs_fvcore=fv["macs"], macs_fvcore_other=fv["other"],
                          unsupported_ops=format_ops(fv["unsupported"]))
            if fv["unsupported_matmul"]:
                notes.append("fvcore missed matmul-class ops: " + format_ops(fv["unsupported_matmul"]))
        else:
            notes.append(f"fvcore skipped: its explicit forward needs ~{need / 1e9:.1f} GB > {count_max_bytes / 1e9:.1f} GB")
        common["notes"] = "; ".join(notes)
    rows = []
    for pass_ in passes:
        args = make_inputs(pass_ == "fwd_bwd")
        step = make_step(module, args, pass_, device=dev, dtype=dtype)
        timing = latency(step, dev, min_run_time=min_run_time, min_reps=min_reps, max_time=max_time)
        module.zero_grad(set_to_none=True)  # so the memory count starts without gradients
        mem = peak_memory(step, dev)
        rows.append(dict(common, **{
            "pass": pass_,
            "latency_ms_median": timing.median_ms,
            "latency_ms_iqr": timing.iqr_ms,
            "latency_reps": timing.reps,
            "latency_method": timing.method,
            "peak_mem_mb": mem["bytes"] / 2**20,
            "mem_method": mem["method"],
            "threads": timing.threads,
        }))
        module.zero_grad(set_to_none=True)
    return rows
