"""Train and evaluate one inpainting U-Net arm: ``run(cfg, out_dir) -> run_dir`` and its CLI.

    python -m lambda_blocks.train --preset smoke --attn lmi --size tiny --seed 0 --out runs/smoke \
        [--set train.lr=1e-3 --set data.image_size=64 ...] [--no-progress] [--dry-run]
    torchrun --standalone --nproc_per_node 2 -m lambda_blocks.train ...      # data parallel

One loop: AdamW (no weight decay on biases and norms), linear warm-up, constant LR, an optional
linear cool-down over the last ``train.decay_steps``, EMA of the
weights (evaluation uses the EMA), gradient clipping, gradient accumulation, bf16 autocast (``train.amp_bf16``, on CUDA and
native-bf16 CPUs: ``amp_active``), periodic evaluation, atomic checkpoints, exact resume, NaN / inf detection.

Randomness is keyed per sample (``lambda_blocks.seeding``): the training sample at global batch
position j of step s draws its timestep and noise from the key ("train", seed, s, j), its mask from
("mask", seed, s, j), and the data order is a permutation per epoch keyed ("order", seed, epoch).
Nothing depends on a running RNG state, so

* a run interrupted after a checkpoint continues exactly as if it had not stopped;
* ``torchrun`` with W ranks (each taking its contiguous 1/W of every global batch, gradients
  averaged with one all-reduce) computes the same update as one process, up to float summation
  order. Only rank 0 writes files and evaluates.

The run folder (``records`` module docstring) is ``{out}/{arm}-{preset}-{size}-s{seed}-{hash}``.
A folder whose ``summary.json`` says ``"status": "done"`` is skipped.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import records, runtime
from .config import PRESETS, ExpCfg, config_hash, parse_overrides, parse_sets, resolve
from .latent.distiller import Distiller
from .loading import MissingStage, latent_space, load_run_model
from .diffusion import Diffusion
from .seeding import key_seed, numpy_rng, randn_per_sample, sample_generators

__all__ = ["run", "run_stage", "run_stages", "run_pipeline", "stages", "Stage", "MissingStage", "planned_run_dir",
           "planned_config", "unet_macs", "load_run_model", "TrainingDiverged", "main"]


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm became NaN / inf."""


# ---------------------------------------------------------------------------------------------
# run folders


def planned_config(preset: str = "smoke", arm: str = "lmi", size: str | None = None, seed: int = 0,
                   overrides: Mapping[str, Any] | str | None = None, **kw: Any) -> ExpCfg:
    """The config of a grid point (``overrides``: a dict, a JSON object string, or
    ``"key=value; key=value"``; extra keyword arguments are overrides too)."""
    return resolve(preset, arm=arm, size=size, seed=seed, overrides={**parse_overrides(overrides), **kw})


def planned_run_dir(preset: str = "smoke", out: str | Path = "runs", arm: str = "lmi", size: str | None = None,
                    seed: int = 0, overrides: Mapping[str, Any] | str | None = None, **kw: Any) -> Path:
    """The run folder ``run`` would use (validates the config; does no work)."""
    return Path(out) / planned_config(preset, arm, size, seed, overrides, **kw).run_name


# ---------------------------------------------------------------------------------------------
# pipeline stages: what a run needs trained before it starts


@dataclass(frozen=True, eq=False)
class Stage:
    """A run that another run needs, trained before it as a run of its own: ``autoencoder`` (the
    latent space of a latent-space run, an ``autoencoder.AECfg``) or ``teacher`` (the teacher of a
    distilled run, an ``ExpCfg``)."""

    kind: str
    cfg: Any

    @property
    def name(self) -> str:
        if self.kind == "autoencoder":
            from .latent.autoencoder import ae_run_dir

            return ae_run_dir(self.cfg, ".").name
        return self.cfg.run_name

    def __eq__(self, other) -> bool:
        return isinstance(other, Stage) and (self.kind, self.name) == (other.kind, other.name)

    def __hash__(self) -> int:
        return hash((self.kind, self.name))


def stages(cfg: ExpCfg) -> list[Stage]:
    """The stages of ``cfg`` in training order: the autoencoder of a latent-space run first, then
    (KD) the teacher, whose own stages come before it; each once."""
    out: list[Stage] = []
    if cfg.latent.space == "latent" and not cfg.latent.ae_path:  # an ae_path autoencoder is on disk already
        out.append(Stage("autoencoder", cfg.ae_config()))
    if cfg.kd.enabled:
        tcfg = cfg.teacher_config()
        out += stages(tcfg) + [Stage("teacher", tcfg)]
    return list(dict.fromkeys(out))


def run_stages(cfg: ExpCfg, out_dir: str | Path, *, progress: bool | None = None, echo=None) -> list[Path]:
    """Train every stage of ``cfg`` that is not done, in order, each as its own resumable run folder
    in ``out_dir`` (once: a stage another process is training is waited for under its lock)."""
    dirs = []
    for st in stages(cfg):
        if echo is not None:
            echo(f"stage {st.kind}: {st.name}")
        dirs.append(run_stage(st, out_dir, progress=progress))
    return dirs


def run_stage(stage: Stage, out_dir: str | Path, *, progress: bool | None = None) -> Path:
    """Train one stage into ``out_dir`` unless it is done (resuming if interrupted); its folder."""
    from .latent.autoencoder import ae_run_dir, train_autoencoder

    if stage.kind == "autoencoder":
        with records.run_lock(ae_run_dir(stage.cfg, out_dir)):
            d = train_autoencoder(stage.cfg, out_dir, progress=False)
    else:
        d = run(stage.cfg, out_dir, progress=progress)  # under DDP every rank trains it together
    if not records.is_done(d):
        raise RuntimeError(f"stage {d} did not finish; see its error.json")
    return Path(d)


def run_pipeline(cfg: ExpCfg, out_dir: str | Path, *, progress: bool | None = None, **kw: Any) -> Path:
    """``run_stages`` then ``run``: what the CLIs and the notebooks call."""
    run_stages(cfg, out_dir, progress=progress, echo=lambda m: print(m, file=sys.stderr))
    return run(cfg, out_dir, progress=progress, **kw)


# ---------------------------------------------------------------------------------------------
# cost


def unet_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass per sample (analytic).

    Convs and linear layers are counted from their output sizes; each mixing block contributes its
    own ``macs(h, w, L)`` (attention / lambda products included; the convention of
    ``lambda_blocks.layers``), and its internals are not hooked twice. Norms, activations and
    additions are not counted (as fvcore).
    """
    from .layers.blocks import MixBlock2d

    total = [0]
    inside: set[int] = set()
    for m in model.modules():
        if isinstance(m, MixBlock2d):
            inside.update(id(s) for s in m.modules() if s is not m)
    hooks = []

    def conv_hook(mod, inp, out):
        if id(mod) in inside:
            return
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total[0] += out[0].numel() * k

    def lin_hook(mod, inp, out):
        if id(mod) in inside:
            return
        total[0] += out[0].numel() * mod.in_features

    def mix_hook(mod, inp, out):
        x, ctx = inp[0], inp[1] if len(inp) > 1 else None
        total[0] += int(mod.macs(x.shape[-2], x.shape[-1], 0 if ctx is None else ctx.shape[1]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
        elif isinstance(m, MixBlock2d):
            hooks.append(m.register_forward_hook(mix_hook))
    try:
        c = model.cfg.image_channels
        dev = next(model.parameters()).device
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 2 * c + 1, image_size, image_size, device=dev), torch.zeros(1, device=dev))
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return int(total[0])


def _macs(model: nn.Module, image_size: int) -> tuple[int, str]:
    """Per-sample forward MACs: ``profiling.torch_macs`` (torch's FlopCounterMode on a meta copy,
    explicit attention ops) when available, else ``unet_macs`` (the two agree to 0.1% on the tiny arms)."""
    c = model.cfg.image_channels
    try:
        from .profiling import torch_macs

        x = (torch.zeros(1, 2 * c + 1, image_size, image_size), torch.zeros(1))
        cpu_model = copy.deepcopy(model).cpu().eval()
        return int(torch_macs(cpu_model, x)), "profiling.torch_macs (FlopCounterMode, explicit ops, batch 1)"
    except Exception:  # noqa: BLE001 - profiling is optional here
        return unet_macs(model, image_size), "train.unet_macs (analytic: convs + linears + mixer.macs, batch 1)"


def _inrun_cost(model: nn.Module, side: int, device: torch.device) -> dict:
    """Latency (median ms) and peak memory of one batch-1 forward of the trained U-Net at the size it
    works at, measured at the end of the run (on a shared machine this is noisier than the
    ``profile`` sweep, which measures every arm side by side)."""
    from .profiling import latency, peak_memory, unet_inputs

    x = unet_inputs(model, side, side, 1, device=device)

    def fwd():
        with torch.no_grad():
            return model(*x)

    try:
        t = latency(fwd, device, min_run_time=0.5, min_reps=5, max_time=10.0)
        mem = peak_memory(fwd, device)
    except Exception as exc:  # noqa: BLE001 - a measurement failure must not lose the run
        return {"latency_ms_inrun": None, "peak_mem_mb_inrun": None, "cost_error": f"{type(exc).__name__}: {exc}"}
    return {"latency_ms_inrun": t.median_ms, "peak_mem_mb_inrun": mem["bytes"] / 2**20,
            "latency_method": f"{t.method}, {t.threads} thread(s), batch 1, {side}x{side}"}


# ---------------------------------------------------------------------------------------------
# distributed


class _Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            # once per process, kept for every later run of it (the stages, then the student): a
            # group destroyed and re-created between runs re-binds the rendezvous store's port, and
            # a rank that reconnects before rank 0 has re-bound it hangs or is reset (seen under load)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            atexit.register(_destroy_process_group)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_params(self, model: nn.Module) -> None:
        if self.enabled:
            import torch.distributed as dist

            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)

    def close(self) -> None:
        """Nothing to do: the process group lives until the process exits (see ``init``)."""


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# data


def _dataset(cfg: ExpCfg, split: str):
    from .data import make_dataset

    d = cfg.data
    n = d.n_train if split == "train" else d.n_test
    return make_dataset(d.dataset, split, size=d.image_size, n=n, seed=d.seed, root=d.root, mask_root=d.mask_root)


def _preload(ds, cache_dir: Path | None, cfg: ExpCfg) -> torch.Tensor:
    """All training images as one (N, C, H, W) tensor, cached on disk by data config + data.py source."""
    from . import data as data_mod

    d = cfg.data
    src = hashlib.sha1(Path(data_mod.__file__).read_bytes()).hexdigest()[:12]
    key = hashlib.sha1(json.dumps([d.dataset, d.root, d.image_size, d.n_train, d.seed, len(ds), src,
                                   _files_fingerprint(ds)]).encode())
    path = cache_dir / f"train-{key.hexdigest()[:16]}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            return records.load_checkpoint(path)["images"]
        except Exception:  # a corrupt cache is rebuilt
            pass
    images = torch.stack([ds[i]["image"].float() for i in range(len(ds))])
    if path is not None:
        records.save_checkpoint(path, {"images": images})
    return images


def _files_fingerprint(ds) -> str | None:
    """What a folder data set reads: every image (and mask) file's name, size and mtime, so that a
    cache built from other files with the same names and count is never reused. None for the
    embedded sets (they are fixed by the installed packages and data.py, already in the key)."""
    files = list(getattr(ds, "images", {}).values()) + list((getattr(ds, "masks", None) or {}).values())
    if not files:
        return None
    h = hashlib.sha1()
    for f in sorted(map(str, files)):
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class _Batches:
    """Global data order: a permutation of the training set per epoch, keyed by (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, np.ndarray] = {}

    def index(self, pos: int) -> int:
        epoch, off = divmod(pos, self.n)
        if epoch not in self._perms:
            self._perms = {epoch: numpy_rng("order", self.seed, epoch).permutation(self.n)}
        return int(self._perms[epoch][off])


# ---------------------------------------------------------------------------------------------
# latent space and distillation


# ---------------------------------------------------------------------------------------------
# optimisation helpers


def _lr_factor(step: int, warmup: int, steps: int = 0, decay_steps: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, constant, then (``decay_steps`` > 0) a linear cool-down
    to 0 over the last ``decay_steps`` of ``steps`` (warm-up / stable / decay). Until the cool-down
    starts nothing depends on ``steps``: that is what lets a run start from a shorter one
    (``_prefix_run``)."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay_steps > 0:
        f = min(f, max(0.0, (steps - step) / decay_steps))
    return f


def _prefix_run(cfg: ExpCfg, out_dir: Path) -> records.RunPaths | None:
    """The longest finished run in ``out_dir`` that this run continues: the same config with fewer
    ``train.steps`` and no cool-down, ending before this run's cool-down starts.

    Nothing in a training step before the cool-down depends on the total: the learning rate is
    constant after warm-up, and each step's batch, masks, timesteps and noise are keyed by (seed,
    step, slot). So the first N steps of a longer run are exactly the N steps of the shorter one,
    and the longer run starts from its final checkpoint (recorded as ``extended_from``) instead of
    repeating them; the tests check the weights come out bit-identical to training from scratch.
    One constant-LR run thus serves every longer budget and every cool-down that starts after it.
    """
    best: tuple[int, records.RunPaths] | None = None
    last = cfg.train.steps - cfg.train.decay_steps  # the prefix must end before the cool-down starts
    for d in sorted(Path(out_dir).glob(f"{cfg.tag}-{cfg.preset}-{cfg.size}-s{cfg.seed}-*")):
        rp = records.RunPaths(d)
        s = records.read_json(rp.summary) or {}
        n = s.get("steps")
        if s.get("status") != "done" or not isinstance(n, int) or not 0 < n <= last or n == cfg.train.steps \
                or not rp.ckpt.exists():
            continue
        short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=n, decay_steps=0))
        if s.get("config_hash") == config_hash(short) and (best is None or n > best[0]):
            best = (n, rp)
    return best[1] if best else None


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def _finite_mean(rows: list[float]) -> float:
    return float(np.mean(rows)) if rows else float("nan")


# ---------------------------------------------------------------------------------------------
# the train state, one batch, one step


@dataclass
class TrainState:
    """What a checkpoint holds: the weights, their EMA, the optimiser, its schedule, the position."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    projector: nn.Module | None = None  # the KD feature projector, trained with the model
    step: int = 0
    train_time: float = 0.0  # seconds inside train_step, summed over resumes
    extended_from: str | None = None  # the shorter run this one started from (``_prefix_run``)
    compiled: nn.Module | None = None  # torch.compile(model) when ``train.compile``: the training forward

    @property
    def forward_model(self) -> nn.Module:
        """What the training step calls: the compiled U-Net (``train.compile``) or the U-Net itself.
        Both share the parameters; checkpoints, the EMA and evaluation use ``model``."""
        return self.compiled if self.compiled is not None else self.model

    @property
    def trainable(self) -> nn.Module:
        if self.projector is None:
            return self.model
        return nn.ModuleDict({"model": self.model, "projector": self.projector})

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.trainable.parameters() if p.requires_grad]


def init_model(cfg: ExpCfg, device: torch.device | str = "cpu") -> nn.Module:
    """The U-Net with the run's initial weights, keyed by the seed (the caller's RNG is untouched), in
    channels_last when ``train.channels_last`` (the convolutions then keep their activations in it)."""
    from .unet import InpaintUNet

    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key_seed("init", cfg.seed))
        return InpaintUNet(cfg.unet_config()).to(device, memory_format=fmt)


def new_state(cfg: ExpCfg, model: nn.Module, ema: nn.Module | None = None,
              projector: nn.Module | None = None) -> TrainState:
    """Step 0: AdamW (no weight decay on biases and norms), linear warm-up then constant LR.
    ``ema``: a copy made before anything hooked into ``model`` (default: a copy now)."""
    tr = cfg.train
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ema is None else ema
    st = TrainState(model, ema, None, None, projector)  # type: ignore[arg-type]
    st.opt = torch.optim.AdamW(_param_groups(st.trainable, tr.weight_decay), lr=tr.lr, betas=(0.9, 0.999), eps=1e-8)
    st.sched = torch.optim.lr_scheduler.LambdaLR(st.opt, lambda s: _lr_factor(s, tr.warmup, tr.steps, tr.decay_steps))
    if tr.compile:
        st.compiled = torch.compile(model, dynamic=False)
    return st


def save(state: TrainState, path: Path, cfg: ExpCfg) -> None:
    """The checkpoint: every tensor of the state, the config and its hash (atomic)."""
    records.save_checkpoint(path, {
        "model": state.model.state_dict(), "ema": state.ema.state_dict(), "optimizer": state.opt.state_dict(),
        **({"projector": state.projector.state_dict()} if state.projector is not None else {}),
        "scheduler": state.sched.state_dict(), "step": state.step, "train_time_s": state.train_time,
        "rng": {"torch": torch.get_rng_state()}, "config": cfg.to_dict(), "config_hash": config_hash(cfg),
        "extended_from": state.extended_from,
        "versions": {"torch": str(torch.__version__), "lambda_blocks": _pkg_version()},
    })


def resume(state: TrainState, paths: records.RunPaths, cfg: ExpCfg, device: torch.device,
           is_main: bool = True) -> str | None:
    """Continue from the run folder's checkpoint ("resume"), or from the final checkpoint of a
    finished shorter run of the same config ("extend", ``_prefix_run``); None: a fresh start.
    The metrics file is cut back to the checkpoint's step (or becomes the shorter run's rows)."""
    chash = config_hash(cfg)
    prefix = _prefix_run(cfg, paths.dir.parent) if not paths.ckpt.exists() else None
    if not paths.ckpt.exists() and prefix is None:
        if is_main and paths.metrics.exists():
            paths.metrics.unlink()
        return None
    src = paths if prefix is None else prefix
    ck = records.load_checkpoint(src.ckpt, map_location=device)
    want = chash if prefix is None else records.read_json(prefix.summary)["config_hash"]
    if ck.get("config_hash") != want:
        raise RuntimeError(f"{src.ckpt} belongs to config {ck.get('config_hash')}, not {want}")
    state.model.load_state_dict(ck["model"])
    state.ema.load_state_dict(ck["ema"])
    if state.projector is not None:
        state.projector.load_state_dict(ck["projector"])
    state.opt.load_state_dict(ck["optimizer"])
    state.sched.load_state_dict(ck["scheduler"])
    state.step, state.train_time = int(ck["step"]), float(ck.get("train_time_s", 0.0))
    state.extended_from = ck.get("extended_from") if prefix is None else prefix.dir.name
    if not is_main:
        return "resume" if prefix is None else "extend"
    if prefix is None:
        records.truncate_jsonl(paths.metrics, state.step)
        print(f"[resume] {paths.dir.name} from step {state.step}", file=sys.stderr)
        return "resume"
    rows = [r for r in records.read_jsonl(prefix.metrics) if r.get("kind") != "final"]  # its curve is our first part
    records.atomic_write_text(paths.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    print(f"[extend] {paths.dir.name} from step {state.step} of {prefix.dir.name}", file=sys.stderr)
    return "extend"


@dataclass
class TrainData:
    """The training split: the data set, its images preloaded (or None), the per-epoch order and,
    in latent space, the cached latents of the images."""

    ds: Any
    images: torch.Tensor | None
    order: "_Batches"
    latents: torch.Tensor | None = None


def load_train_data(cfg: ExpCfg, cache_dir: Path, space=None, ae_info: Mapping[str, Any] | None = None) -> TrainData:
    ds = _dataset(cfg, "train")
    images = _preload(ds, cache_dir, cfg) if cfg.data.preload else None
    if len(ds) == 0:
        raise ValueError("the training split is empty")
    latents = None
    if space is not None and images is not None:
        from .latent.autoencoder import cached_latents

        latents = cached_latents(space.ae, images, cache_dir / f"latents-{ae_info['ae_hash']}-n{len(images)}.pt")
    return TrainData(ds, images, _Batches(len(ds), cfg.seed), latents)


def make_batch(cfg: ExpCfg, diffusion: Diffusion, data: TrainData, step: int, lo: int, hi: int,
               device: torch.device | str = "cpu", space=None):
    """Slots ``[lo, hi)`` of step ``step``'s global batch as (x0, masked, mask, t, noise): each
    slot's image, mask, timestep and noise keyed by (seed, step, slot), never by a running RNG."""
    from .masks import generate_mask

    tr, da = cfg.train, cfg.data
    idx = [data.order.index(step * tr.batch_size + j) for j in range(lo, hi)]
    x0 = data.images[idx] if data.images is not None else torch.stack([data.ds[i]["image"].float() for i in idx])
    masks = torch.from_numpy(np.stack([
        generate_mask(da.train_mask, da.image_size, numpy_rng("mask", cfg.seed, step, j)) for j in range(lo, hi)
    ])).unsqueeze(1)
    gens = sample_generators([("train", cfg.seed, step, j) for j in range(lo, hi)])
    t = diffusion.sample_t(gens)
    x0, masks = x0.to(device), masks.to(device)
    if space is None:
        masked = x0 * (1 - masks)
    else:  # the diffusion sample is the latent; the condition is the latent of the masked image
        z0, masks, masked = space.encode_problem(x0, masks)
        x0 = data.latents[idx].to(device) if data.latents is not None else z0
    noise = randn_per_sample(gens, x0.shape[1:])
    return x0, masked, masks, t.to(device), noise.to(device)


@dataclass
class StepOut:
    loss: float  # the task loss, mean over the global batch
    grad_norm: float  # before clipping
    kd_logs: list[dict]  # one per micro-batch (KD runs only)


def amp_active(requested: bool, device: torch.device, isa: str | None = None) -> bool:
    """Whether ``train.amp_bf16`` takes effect: on CUDA, and on a CPU with native bf16 dot products
    (AVX512-BF16 or AMX, ``profiling.cpu_isa`` ends in ``-bf16``), where benchmarks/bench_unet.py
    measures the bf16-autocast training step 1.00-1.68x the fp32 speed. Elsewhere bf16 is emulated
    and slower, so the request is ignored (and recorded as ``amp_bf16_active`` in the run's env)."""
    if not requested:
        return False
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        if isa is None:
            from .profiling import cpu_isa
            isa = cpu_isa()
        return isa.endswith("-bf16")
    return False


def train_step(state: TrainState, cfg: ExpCfg, diffusion: Diffusion, batch, *, kd=None, dist=None,
               amp: bool = False, loss_hook=None) -> StepOut:
    """One optimiser step; ``state.step`` advances by one.

    ``batch(step, lo, hi)`` gives the slots ``[lo, hi)`` of the global batch (``make_batch``). This
    rank's share is split into ``train.grad_accum`` micro-batches; gradients are averaged over ranks
    with one all-reduce (``dist``: None for one process), clipped at ``train.grad_clip``, checked
    (``TrainingDiverged`` names the step), then AdamW, the LR schedule and the EMA. ``amp``: bf16
    autocast on the parameters' device (a run asks for it where ``amp_active`` says: ``train.amp_bf16``).
    """
    tr = cfg.train
    world, rank = (dist.world, dist.rank) if dist is not None and dist.enabled else (1, 0)
    per_rank = tr.batch_size // world
    micro = per_rank // tr.grad_accum
    params = state.params
    state.opt.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), dtype=torch.float64, device=params[0].device)
    kd_logs: list[dict] = []
    for a in range(tr.grad_accum):
        lo = rank * per_rank + a * micro
        x0, masked, mask, t, noise = batch(state.step, lo, lo + micro)
        with torch.autocast(params[0].device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            if kd is None:
                loss = diffusion.training_loss(state.forward_model, x0, mask, t, noise, masked=masked)
            else:
                loss, log = kd.loss(diffusion, x0, masked, mask, t, noise)
                kd_logs.append(log)
        if loss_hook is not None:
            loss = loss_hook(state.step, loss)
        (loss * (micro / per_rank)).backward()
        # the logged loss is the task loss with and without KD, so curves compare; a non-finite KD
        # total shows as a non-finite gradient norm, which stops the run below
        task = loss.detach().double() if kd is None else torch.tensor(kd_logs[-1]["loss_task"], dtype=torch.float64)
        loss_sum += task * micro
    grads = [p.grad for p in params if p.grad is not None]
    if world > 1:
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss_sum.reshape(1).to(grads[0].dtype)])
        dist.all_reduce_(flat)
        flat /= world
        off = 0
        for g in grads:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()
        loss_val = float(flat[-1]) * world / tr.batch_size
    else:
        loss_val = float(loss_sum) / tr.batch_size
    gnorm = float(torch.nn.utils.clip_grad_norm_(params, tr.grad_clip if tr.grad_clip > 0 else float("inf")))
    if not math.isfinite(loss_val) or not math.isfinite(gnorm):
        what = "loss" if not math.isfinite(loss_val) else "gradient norm"
        exc = TrainingDiverged(
            f"non-finite {what} at step {state.step + 1} (loss={loss_val}, grad_norm={gnorm}, "
            f"lr={state.opt.param_groups[0]['lr']:.3g}); lower train.lr or keep train.grad_clip > 0")
        exc.step = state.step + 1
        raise exc
    state.opt.step()
    state.sched.step()
    state.step += 1
    _ema_update(state.ema, state.model, min(tr.ema_decay, (1 + state.step) / (10 + state.step)))
    return StepOut(loss_val, gnorm, kd_logs)


# ---------------------------------------------------------------------------------------------
# evaluation inside a run


def periodic_eval(ema: nn.Module, cfg: ExpCfg, diffusion: Diffusion, es, device: torch.device, step: int,
                  space=None, cache_dir: Path | None = None) -> dict:
    """The curve's row at ``step``: validation loss and the fills' PSNR / SSIM on the periodic set
    (``train.sample_steps`` DDIM steps); with ``eval.periodic_full`` also LPIPS, FID and KID."""
    from .evaluate import sample_fills, score_fills
    from .metrics import psnr, ssim

    tr, ev = cfg.train, cfg.eval
    ema.eval()
    x0, m = es.images.to(device), es.masks.to(device)
    masked = None
    if space is not None:
        x0, m, masked = space.encode_problem(x0, m)
    vl = diffusion.validation_loss(ema, x0, m, sample_generators([("val", i, ev.seed) for i in es.ids]), masked=masked)
    fills = sample_fills(ema, diffusion, es, device, tr.sample_steps, ev.spacing, batch_size=ev.batch_size, space=space)
    fc = fills.clamp(-1, 1)
    row = {"kind": "eval", "step": step, "val_loss": float(vl.mean()), "n": len(es), "ddim_steps": tr.sample_steps,
           "psnr": float(psnr(fc, es.images).mean()), "psnr_hole": float(psnr(fc, es.images, es.masks).nanmean())}
    if min(es.images.shape[-2:]) >= 11:
        row["ssim"] = float(ssim(fc, es.images).mean())
        row["ssim_hole"] = float(ssim(fc, es.images, es.masks).nanmean())
    if ev.periodic_full:  # the convergence curve: the final evaluation's metrics on the periodic set
        full, _ = score_fills(fills, es, lpips=ev.lpips, fid=ev.fid, cache_dir=cache_dir)
        row.update({k: full[k] for k in ("lpips", "lpips_hole", "fid", "kid", "kid_std", "n_fid_images")})
    return row


def final_summary(state: TrainState, cfg: ExpCfg, diffusion: Diffusion, es, paths: records.RunPaths,
                  device: torch.device, *, space=None, cache_dir: Path | None = None, kd=None,
                  ae_info: Mapping[str, Any] | None = None, world: int = 1, last_loss: float = float("nan")) -> dict:
    """Evaluate the EMA weights on the final set, write per_image.csv and the sample grid, and
    return the run's summary (status "done"; metrics, cost, provenance)."""
    from .evaluate import evaluate_model, write_per_image

    tr, ev, da = cfg.train, cfg.eval, cfg.data
    res, fills, per_image = evaluate_model(
        state.ema, diffusion, es, device, steps=ev.ddim_steps, spacing=ev.spacing, init=ev.init,
        strength=ev.strength, batch_size=ev.batch_size, lpips=ev.lpips, fid=ev.fid, cache_dir=cache_dir,
        space=space, return_per_image=True)
    write_per_image(paths.per_image, per_image)
    g = list(range(min(ev.n_grid, len(es))))
    if g:
        records.write_samples(paths, es.masked[g], fills[g], es.images[g], es.masks[g], [es.ids[i] for i in g])
    macs, macs_source = _macs(state.ema, cfg.work_size)
    cost = _inrun_cost(state.ema, cfg.work_size, device)
    train_rows = [r for r in records.read_jsonl(paths.metrics) if r.get("kind") == "train"]
    return {
        "status": "done", "config_hash": config_hash(cfg), "arm": cfg.arm, "size": cfg.size, "preset": cfg.preset,
        "seed": cfg.seed, "image_size": da.image_size, "steps": state.step,
        "params": sum(p.numel() for p in state.model.parameters()),
        "macs": macs, "macs_source": macs_source,
        "train_time_s": state.train_time,
        "images_per_s": (tr.steps * tr.batch_size / state.train_time) if state.train_time > 0 else None,
        "final_loss": train_rows[-1]["loss"] if train_rows else last_loss,
        "eval_init": ev.init, "eval_ddim_steps": ev.ddim_steps, "eval_spacing": ev.spacing,
        "prediction": cfg.diffusion.prediction, "loss_weighting": cfg.diffusion.loss_weighting,
        "eval_mask_kind": ev.mask_kind, "world_size": world, "device": device.type,
        "extended_from": state.extended_from,
        "space": cfg.latent.space, "work_size": cfg.work_size, "kd": cfg.kd.enabled,
        "kd_weighting": cfg.kd.weighting if cfg.kd.enabled else None,
        **(ae_info or {}), **(kd.info() if kd is not None else {}), **cost,
        **res,
    }


# ---------------------------------------------------------------------------------------------
# the run


def run(cfg: ExpCfg, out_dir: str | Path, *, progress: bool | None = None, stop_after: int | None = None,
        loss_hook=None) -> Path:
    """Train, checkpoint and evaluate one config; returns the run folder.

    Args:
        cfg: from ``config.resolve``.
        out_dir: parent folder; the run folder is ``out_dir / cfg.run_name``.
        progress: tqdm bar (None: only when stderr is a terminal).
        stop_after: stop after this many steps with a checkpoint and no final evaluation, as if the
            process had been killed (tests; resume by calling ``run`` again).
        loss_hook: optional ``f(step, loss) -> loss`` applied to each micro-batch loss (tests).

    A finished run (summary.json with status "done") returns immediately; an interrupted one resumes
    from ``ckpt.pt``. The run's stages (``stages``: its autoencoder, its teacher) must be trained
    already (``run_stages``; ``run_pipeline`` does both): a missing one is ``MissingStage``. NaN / inf loss or gradient norm raises ``TrainingDiverged`` naming the step.
    """
    if not isinstance(cfg, ExpCfg):
        raise TypeError(f"run() needs an ExpCfg from config.resolve(), got {type(cfg).__name__}")
    dist = _Dist()
    paths = records.RunPaths(Path(out_dir) / cfg.run_name)
    chash = config_hash(cfg)
    if records.is_done(paths.dir, chash):  # ForeignRun if the folder holds another config's finished run
        if dist.is_main:
            print(f"[skip] {paths.dir} is done (summary.json status=done)", file=sys.stderr)
        return paths.dir
    _check_writable(Path(out_dir))
    if dist.is_main and not dist.enabled:  # one process per run folder: a second one waits, then skips or resumes
        with records.run_lock(paths.dir, echo=lambda m: print(m, file=sys.stderr)):
            if records.is_done(paths.dir, chash):
                print(f"[skip] {paths.dir} was finished by the process we waited for", file=sys.stderr)
                return paths.dir
            return _run_outer(cfg, paths, dist, out_dir, progress, stop_after, loss_hook)
    return _run_outer(cfg, paths, dist, out_dir, progress, stop_after, loss_hook)


class OutputNotWritable(OSError):
    """The output folder cannot be created or written."""


def _check_writable(out: Path) -> None:
    """Fail once, clearly, before any work when ``out`` is not a writable folder."""
    if out.exists() and not out.is_dir():
        raise OutputNotWritable(f"output folder {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(f"output folder {out} cannot be written ({exc.strerror or exc})") from None


def _run_outer(cfg: ExpCfg, paths: records.RunPaths, dist: "_Dist", out_dir, progress, stop_after, loss_hook) -> Path:
    tr = cfg.train
    device = runtime.select_device(tr.device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    dist.init(device)
    step = 0
    try:
        with runtime.configured(deterministic=tr.deterministic, tf32=tr.tf32, threads=tr.threads) as flags:
            return _run(cfg, paths, dist, device, flags, progress, stop_after, loss_hook)
    except BaseException as exc:
        if dist.is_main and not isinstance(exc, KeyboardInterrupt):
            step = getattr(exc, "step", None)
            with contextlib.suppress(OSError):  # a folder that cannot be written must not hide the error
                records.write_json(paths.error, {
                    "error": f"{type(exc).__name__}: {exc}", "step": step,
                    "traceback": traceback.format_exc()[-4000:],
                })
        raise
    finally:
        dist.close()


def _run(cfg: ExpCfg, paths: records.RunPaths, dist: _Dist, device: torch.device, flags: dict,
         progress: bool | None, stop_after: int | None, loss_hook) -> Path:
    from .evaluate import load_eval_set

    tr, ev, da = cfg.train, cfg.eval, cfg.data
    cache_dir = paths.dir.parent / ".cache"
    if dist.is_main:
        records.claim_config(paths, cfg.to_dict(), config_hash(cfg))
        if paths.error.exists():
            paths.error.unlink()
    dist.barrier()
    per_rank = tr.batch_size // dist.world
    if per_rank * dist.world != tr.batch_size or per_rank % tr.grad_accum:
        raise ValueError(f"train.batch_size={tr.batch_size} must split into {dist.world} ranks x "
                         f"train.grad_accum={tr.grad_accum} equal micro-batches")
    amp = amp_active(tr.amp_bf16, device)

    # model, its EMA, the latent space and the distiller, the optimiser; resume or extend
    model = init_model(cfg, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # before the distiller hooks into the model
    diffusion = Diffusion.from_cfg(cfg.diffusion)
    space, ae_info = latent_space(cfg, paths.dir.parent, device)  # (None, {}) in pixel space
    kd = Distiller(cfg, model, paths.dir.parent, device, space) if cfg.kd.enabled else None
    state = new_state(cfg, model, ema, kd.projector if kd is not None else None)
    resume(state, paths, cfg, device, dist.is_main)
    dist.broadcast_params(state.trainable)
    if dist.is_main:
        env = runtime.environment_info(device)
        env.update(runtime_flags=flags, world_size=dist.world, amp_bf16_active=amp, threads=flags["threads"],
                   backend=("nccl" if device.type == "cuda" else "gloo") if dist.enabled else None)
        records.write_json(paths.env, env)

    # data; bad test data is found now, not after training (every test item is decoded and checked)
    data = load_train_data(cfg, cache_dir, space, ae_info)
    final_set = periodic = None
    if dist.is_main:
        test_ds = _dataset(cfg, "test")
        final_set = load_eval_set(test_ds, ev.n_eval, da.image_size, ev.mask_kind, ev.seed, check_all=True)
        if ev.periodic_n > 0 and tr.eval_every > 0:
            periodic = load_eval_set(test_ds, min(ev.periodic_n, len(test_ds)), da.image_size, ev.mask_kind, ev.seed)

    def batch(s: int, lo: int, hi: int):
        return make_batch(cfg, diffusion, data, s, lo, hi, device, space)

    # the loop
    model.train()
    bar = None
    if (sys.stderr.isatty() if progress is None else progress) and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=tr.steps, initial=state.step, desc=paths.dir.name, dynamic_ncols=True)
    win_losses: list[float] = []
    win_t0, win_imgs = time.perf_counter(), 0
    end = tr.steps if stop_after is None else min(tr.steps, stop_after)
    last_loss = float("nan")
    while state.step < end:
        t0 = time.perf_counter()
        out = train_step(state, cfg, diffusion, batch, kd=kd, dist=dist, amp=amp, loss_hook=loss_hook)
        dt = time.perf_counter() - t0
        state.train_time += dt
        step, last_loss = state.step, out.loss
        win_losses.append(out.loss)
        win_imgs += tr.batch_size
        if out.kd_logs and dist.is_main:  # every step: each term, weight and gradient norm (rank 0's)
            records.append_jsonl(paths.metrics, {"kind": "kd", "step": step, **{
                k: float(np.mean([lg[k] for lg in out.kd_logs])) for k in out.kd_logs[0]}})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{out.loss:.4f}", img_s=f"{tr.batch_size / dt:.1f}")
        if dist.is_main and (step % tr.log_every == 0 or step == end):
            now = time.perf_counter()
            records.append_jsonl(paths.metrics, {
                "kind": "train", "step": step, "loss": _finite_mean(win_losses), "loss_last": out.loss,
                "lr": state.opt.param_groups[0]["lr"], "grad_norm": out.grad_norm,
                "images_per_s": win_imgs / max(now - win_t0, 1e-9), "elapsed": state.train_time,
            })
            win_losses, win_imgs, win_t0 = [], 0, now
        need_eval = tr.eval_every > 0 and step % tr.eval_every == 0
        need_ckpt = (tr.ckpt_every > 0 and step % tr.ckpt_every == 0) or step == end
        if dist.is_main and need_eval and periodic is not None:
            records.append_jsonl(paths.metrics, periodic_eval(ema, cfg, diffusion, periodic, device, step,
                                                              space, cache_dir))
            model.train()
        if need_ckpt:
            if dist.is_main:
                save(state, paths.ckpt, cfg)
            dist.barrier()
        if need_eval or need_ckpt:
            win_t0 = time.perf_counter()
    if bar is not None:
        bar.close()
    if state.step < tr.steps:  # stop_after: behave like a killed process
        return paths.dir

    if dist.is_main:  # the final evaluation (rank 0)
        summary = final_summary(state, cfg, diffusion, final_set, paths, device, space=space, cache_dir=cache_dir,
                                kd=kd, ae_info=ae_info, world=dist.world, last_loss=last_loss)
        records.append_jsonl(paths.metrics, {"kind": "final", "step": state.step,
                                             **{k: v for k, v in summary.items() if isinstance(v, (int, float))}})
        records.write_json(paths.summary, summary)
    dist.barrier()
    return paths.dir


def _pkg_version() -> str:
    from ._version import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    from .unet import ARMS, SIZES

    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke", choices=list(PRESETS))
    ap.add_argument("--attn", "--arm", dest="arm", default="lmi", choices=list(ARMS), help="U-Net arm (unet.ARMS)")
    ap.add_argument("--size", default=None, choices=list(SIZES), help="size preset (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set train.lr=1e-3 --set unet.heads=2 (repeatable)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    ap.add_argument("--progress", action="store_true", help="force the tqdm bar even when not a terminal")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and run folder, do nothing")
    args = ap.parse_args(argv)
    try:
        overrides = parse_sets(args.sets)
        cfg = resolve(args.preset, arm=args.arm, size=args.size, seed=args.seed, overrides=overrides)
    except (KeyError, TypeError, ValueError) as exc:
        ap.error(str(exc.args[0]) if exc.args else str(exc))
    run_dir = Path(args.out) / cfg.run_name
    if args.dry_run:
        print(json.dumps({**cfg.to_dict(), "config_hash": config_hash(cfg)}, indent=2, sort_keys=True))
        print(f"run folder: {run_dir}")
        return 0
    progress = False if args.no_progress else (True if args.progress else None)
    t0 = time.time()
    from .evaluate import BadTestData

    try:
        run_dir = run_pipeline(cfg, args.out, progress=progress)
    except (OutputNotWritable, records.ForeignRun, BadTestData) as exc:  # one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        summary = records.read_json(records.RunPaths(run_dir).summary) or {}
        keys = ("psnr", "psnr_hole", "ssim", "ssim_hole", "lpips", "fid", "kid", "smoothness_gap", "params",
                "macs", "train_time_s", "images_per_s")
        print(json.dumps({k: summary.get(k) for k in keys}, sort_keys=False))
        print(f"{run_dir}  ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
