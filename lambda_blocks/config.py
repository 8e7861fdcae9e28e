"""Experiment configuration: frozen dataclasses, named presets, strict overrides, a content hash.

An experiment is ``ExpCfg(preset, arm, size, seed, model, diffusion, data, train, eval)``:

* ``arm`` names an entry of ``unet.ARMS`` (the attention variant / Table-2 arm), ``size`` one of
  ``unet.SIZES``; ``model.unet`` holds extra ``UNetConfig`` overrides (e.g. ``{"heads": 2}``).
* ``PRESETS`` = ``smoke`` (CPU, about a minute including evaluation), ``dev`` (CPU, a few minutes
  per run, enough steps for the variants' curves to separate) and ``paper`` (one GPU).
* ``resolve(preset, arm=..., size=..., seed=..., **overrides)`` applies flat dotted overrides
  (``{"train.lr": 1e-3, "data.image_size": 64}``; a bare field name works when exactly one section
  has it; ``unet.<field>`` / ``model.unet.<field>`` sets a UNetConfig field). Unknown keys and
  wrong types are rejected *before* any work starts, and the U-Net config is built once so that an
  invalid architecture fails here too.
* ``config_hash(cfg)``: sha1 of the canonical JSON (sorted keys, floats via ``repr``) -> 10 hex
  characters; identical across processes and machines. Run folders are named by it.

Seeds: ``seed`` (top level) drives model initialisation, data order, training masks, noise and
timesteps. ``data.seed`` (which crops form the data set) and ``eval.seed`` (evaluation masks and
sampler noise) are held fixed across a sweep so every variant sees the same test problems.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from .cfgcore import check_choice as _check_choice
from .cfgcore import coerce as _coerce
from .cfgcore import content_hash, parse_overrides, parse_sets, parse_value
from .cfgcore import type_name as _type_name
from .cfgcore import type_ok as _type_ok
from .data import DATASET_NAMES as DATASETS
from .diffusion import INITS, LOSS_WEIGHTINGS, PREDICTIONS, SCHEDULES, SPACINGS, T_SAMPLING
from .latent import SPACES
from .latent.kd import PERCEPTUAL as KD_PERCEPTUAL
from .latent.kd import WEIGHTINGS as KD_WEIGHTINGS
from .masks import MASK_KINDS
from .runtime import DEVICES
from .unet import ARMS, SIZES, UNetConfig, canonical_arm, unet_config

__all__ = [
    "ModelCfg", "DiffusionCfg", "DataCfg", "TrainCfg", "EvalCfg", "LatentCfg", "KDCfg", "ExpCfg",
    "PRESETS", "SECTIONS", "resolve", "config_hash", "valid_keys", "parse_value", "parse_overrides", "parse_sets", "run_tag",
    "canonical_key",
]





@dataclass(frozen=True)
class ModelCfg:
    """The U-Net beyond ``arm`` and ``size``: extra ``UNetConfig`` overrides (JSON values only), and
    ``lambda_gain``, the starting value of a learned output gain on every lambda mixer
    (``UNetConfig.lambda_gain``; None: the paper's lambda layers). The presets set it; it is dropped
    (set to None) for a network it does not reach, so an arm without lambda layers keeps one run."""

    unet: dict = field(default_factory=dict)
    lambda_gain: float | None = None


@dataclass(frozen=True)
class DiffusionCfg:
    """DDPM with epsilon prediction (see ``lambda_blocks.diffusion`` for the schedules).

    ``cosine`` (Nichol & Dhariwal 2021) is the default: designed for low-resolution pixel-space
    models, it keeps more signal in the middle timesteps than the linear schedule. ``linear``
    (1e-4 -> 0.02, Ho et al.) and ``scaled_linear`` (0.00085 -> 0.012, the paper's latent-space
    schedule, MOEBIUS_SPEC section 7) are options; ``beta_start`` / ``beta_end`` apply to those.
    """

    schedule: str = "cosine"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    t_sampling: str = "uniform"  # training timesteps: uniform | logit_normal (paper)
    prediction: str = "eps"  # network output: eps (paper) | v | x0
    loss_weighting: str = "none"  # none | min_snr (Min-SNR-gamma, Hang et al. 2023)
    min_snr_gamma: float = 5.0


@dataclass(frozen=True)
class DataCfg:
    """Training / test images and training masks."""

    dataset: str = "embedded"  # embedded | portrait | folder
    root: str | None = None  # folder only
    mask_root: str | None = None  # folder only (masks are used by evaluation when present)
    image_size: int = 32
    n_train: int = 2000
    n_test: int = 200
    train_mask: str = "medium"  # LaMa-style generator for training masks
    seed: int = 0  # which crops form the data set (fixed across a sweep)
    preload: bool = True  # decode the whole train split once into memory


@dataclass(frozen=True)
class TrainCfg:
    """Optimisation. ``batch_size`` is the global batch per optimiser step (all ranks, all
    accumulation micro-batches)."""

    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 50
    decay_steps: int = 0  # the last ``decay_steps`` steps take the LR linearly to 0 (a cool-down); 0: constant
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0  # <= 0 disables clipping
    eval_every: int = 250  # periodic cheap evaluation (val loss + PSNR/SSIM); 0 disables
    ckpt_every: int = 250  # 0: only at the end
    sample_steps: int = 10  # DDIM steps of the periodic evaluation
    log_every: int = 10
    amp_bf16: bool = False  # bf16 autocast on CUDA and on CPUs with native bf16 (train.amp_active); ignored, and recorded, elsewhere
    channels_last: bool = True  # the U-Net's weights, so its activations, in channels_last (benchmarks/bench_unet.py)
    compile: bool = False  # torch.compile the U-Net's training forward (not the KD student's); a new hash when on
    device: str = "auto"
    deterministic: bool = True  # runtime.configure(deterministic=...)
    tf32: bool = False
    threads: int = 0  # 0: leave torch's default


@dataclass(frozen=True)
class EvalCfg:
    """Final evaluation on the test split with fixed masks keyed by (image id, eval seed)."""

    n_eval: int = 64
    ddim_steps: int = 20
    spacing: str = "leading"  # DDIM timestep spacing: leading | trailing (see the diffusion module docstring)
    init: str = "noise"  # or "noised_input_LEAKS_GT" (the paper's start; leaks hidden content)
    strength: float = 0.99  # only for init="noised_input_LEAKS_GT"
    mask_kind: str = "medium"
    seed: int = 0
    lpips: bool = True
    fid: bool = True  # FID and KID with the packaged Inception
    batch_size: int = 32
    n_grid: int = 8  # images in samples.png / samples.npz
    periodic_n: int = 16  # images of the periodic evaluation during training
    periodic_full: bool = False  # periodic evaluation adds LPIPS (whole / hole), FID and KID: a convergence curve


@dataclass(frozen=True)
class LatentCfg:
    """Where diffusion runs. ``pixel`` (default): on the images. ``latent``: on the latents of the
    repo's own autoencoder (``lambda_blocks.latent.autoencoder``; trained on the same training split when
    missing, into ``{out}/ae-...``): input cat(z_t, mask downsampled, z of the masked image), the
    paper's 9-channel layout. ``ae_preset`` picks ``autoencoder.AE_PRESETS`` (None: the run's preset);
    ``ae_overrides`` are strict ``AECfg`` overrides. ``ae_path``: a local folder holding a diffusers
    ``AutoencoderKL`` (``save_pretrained``) to use instead, frozen (real weights a user has on disk;
    never downloaded, never trained here; ``ae_preset`` / ``ae_overrides`` are then unused).
    Metrics are always computed on decoded images."""

    space: str = "pixel"
    ae_preset: str | None = None
    ae_overrides: dict = field(default_factory=dict)
    ae_path: str | None = None


@dataclass(frozen=True)
class KDCfg:
    """Latent-space distillation from a larger teacher (MOEBIUS_SPEC section 8; ``lambda_blocks.latent.kd``).

    The teacher is an ordinary run of this pipeline (``teacher_arm`` at ``teacher_size``, seed
    ``teacher_seed``, the student's data / diffusion / latent / eval settings plus
    ``teacher_overrides``), trained into the same output folder when missing, frozen, EMA weights.
    Losses: task (eps MSE), output KD (``output``), feature KD between ``feat_student`` (None: the
    student's encoder bottleneck) and ``feat_teacher`` (None: the teacher's first decoder stage)
    through a trained 1x1 projector when shapes differ (``feature``), and a perceptual term
    (``perceptual``: ``latent_ms`` weight-free multi-scale latent loss, ``decoded_lpips`` real-AlexNet
    LPIPS on decoded images, ``none``). ``weighting``: ``adaptive`` (the gradient-norm ratios of the
    paper) or ``fixed`` (``fixed_w_*``). ``lambda_*`` are the paper's static weights.
    """

    enabled: bool = False
    teacher_arm: str = "vanilla"
    teacher_size: str = "base"
    teacher_seed: int = 0
    teacher_overrides: dict = field(default_factory=dict)
    weighting: str = "adaptive"
    perceptual: str = "latent_ms"
    feature: bool = True
    output: bool = True
    feat_student: str | None = None
    feat_teacher: str | None = None
    lambda_kd: float = 0.01
    lambda_task: float = 0.5
    lambda_lp: float = 0.5
    fixed_w_fkd: float = 1.0
    fixed_w_lp: float = 1.0
    fixed_w_c: float = 1.0


SECTIONS: dict[str, type] = {
    "model": ModelCfg, "diffusion": DiffusionCfg, "data": DataCfg, "train": TrainCfg, "eval": EvalCfg,
    "latent": LatentCfg, "kd": KDCfg,
}
# Sections added after the first runs were recorded: left out of the hash while at their defaults,
# so every earlier run folder keeps its name. Likewise single fields added later.
_HASH_OPTIONAL = ("latent", "kd")
_HASH_OPTIONAL_FIELDS = {
    "diffusion": {"prediction": "eps", "loss_weighting": "none", "min_snr_gamma": 5.0},
    "eval": {"periodic_full": False},
    "train": {"decay_steps": 0, "channels_last": True, "compile": False},
    "model": {"lambda_gain": None},
    "latent": {"ae_path": None},
}


def run_tag(arm: str, space: str = "pixel", kd: bool = False, weighting: str = "adaptive") -> str:
    """``arm`` plus ``-latent`` in latent space and ``-kd`` / ``-kdfixed`` when distilled: the
    prefix of run folder names and the key of the collected sample files."""
    t = arm + ("-latent" if space == "latent" else "")
    if kd:
        t += "-kd" if weighting == "adaptive" else f"-kd{weighting}"
    return t


@dataclass(frozen=True)
class ExpCfg:
    preset: str
    arm: str
    size: str
    seed: int
    model: ModelCfg = field(default_factory=ModelCfg)
    diffusion: DiffusionCfg = field(default_factory=DiffusionCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    latent: LatentCfg = field(default_factory=LatentCfg)
    kd: KDCfg = field(default_factory=KDCfg)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExpCfg":
        """Inverse of ``to_dict`` (also accepts a ``config.json`` carrying ``config_hash``), validated."""
        d = dict(d)
        d.pop("config_hash", None)
        top = {k: d.pop(k) for k in ("preset", "arm", "size", "seed") if k in d}
        missing = {"preset", "arm", "size", "seed"} - set(top)
        if missing:
            raise KeyError(f"config dict lacks {sorted(missing)}")
        flat = {}
        for sec, sub in d.items():
            if sec not in SECTIONS:
                raise KeyError(f"unknown config section {sec!r}; valid sections: {sorted(SECTIONS)}")
            for k, v in sub.items():
                if sec == "model" and k == "unet":
                    flat.update({f"unet.{uk}": uv for uk, uv in v.items()})
                else:
                    flat[f"{sec}.{k}"] = v
        return _build(top["preset"], top["arm"], top["size"], top["seed"], flat, base=_DEFAULT_BASE)

    def unet_config(self) -> UNetConfig:
        kw = _unet_kwargs(self.model.unet)
        kw.setdefault("lambda_gain", self.model.lambda_gain)
        kw.setdefault("max_timestep", self.diffusion.timesteps)
        kw.setdefault("table_size", self.work_size)  # what a position='table' arm is fixed to
        if self.latent.space == "latent":
            kw.setdefault("image_channels", self.ae_shape()[1])
        return unet_config(self.arm, self.size, **kw)

    def ae_shape(self) -> tuple[int, int]:
        """(factor, latent channels) of the run's autoencoder: the repo's (``ae_config``) or the
        diffusers one at ``latent.ae_path`` (read from its config.json)."""
        if self.latent.ae_path:
            from .latent.autoencoder import external_ae_info

            info = external_ae_info(self.latent.ae_path)
            return info["factor"], info["latent_channels"]
        acfg = self.ae_config()
        return acfg.factor, acfg.latent_channels

    def ae_config(self):
        """The autoencoder of a latent-space run (``autoencoder.AECfg``): ``latent.ae_preset`` (None:
        this run's preset) trained on this run's training split, plus ``latent.ae_overrides``."""
        from .latent.autoencoder import ae_config

        d = self.data
        base = dict(dataset=d.dataset, image_size=d.image_size, n_train=d.n_train, data_seed=d.seed)
        return ae_config(self.latent.ae_preset or self.preset, **{**base, **self.latent.ae_overrides})

    @property
    def work_size(self) -> int:
        """Side of what the U-Net sees: the image, or its latent."""
        if self.latent.space == "latent":
            return self.data.image_size // self.ae_shape()[0]
        return self.data.image_size

    @property
    def tag(self) -> str:
        return run_tag(self.arm, self.latent.space, self.kd.enabled, self.kd.weighting)

    @property
    def run_name(self) -> str:
        return f"{self.tag}-{self.preset}-{self.size}-s{self.seed}-{config_hash(self)}"

    def teacher_config(self) -> "ExpCfg":
        """The teacher run of a distilled config: same data / diffusion / latent / eval / train
        settings, ``kd.teacher_arm`` at ``kd.teacher_size``, KD off, plus ``kd.teacher_overrides``."""
        if not self.kd.enabled:
            raise ValueError("teacher_config() needs kd.enabled=True")
        flat: dict[str, Any] = {}
        for sec in ("diffusion", "data", "train", "eval", "latent"):
            for k, v in dataclasses.asdict(getattr(self, sec)).items():
                flat[f"{sec}.{k}"] = v
        flat.update(self.kd.teacher_overrides)
        return _build(self.preset, self.kd.teacher_arm, self.kd.teacher_size, self.kd.teacher_seed, flat,
                      base=_DEFAULT_BASE)


# ---------------------------------------------------------------------------------------------
# Presets (measured on the 2-core CPU machine; see the table in the lead's report / README)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU, about a minute per run including evaluation: exercises every code path, not a quality
    # measurement. Measured (2-core VM shared with other jobs, 1 thread): 33-40 s of CPU for the
    # linear / lambda arms, 61 s for vanilla; 81-106 s wall at a load average of ~5.
    "smoke": {
        "size": "tiny",
        "data.image_size": 32, "data.n_train": 256, "data.n_test": 16,
        "diffusion.prediction": "v", "diffusion.loss_weighting": "min_snr", "eval.spacing": "trailing",
        "model.lambda_gain": 0.05,
        "train.steps": 40, "train.batch_size": 4, "train.lr": 2e-3, "train.warmup": 5,
        "train.ema_decay": 0.99, "train.eval_every": 20, "train.ckpt_every": 20, "train.log_every": 5,
        "train.sample_steps": 4, "train.threads": 1,
        "eval.n_eval": 8, "eval.ddim_steps": 10, "eval.periodic_n": 4, "eval.n_grid": 4, "eval.batch_size": 8,
    },
    # CPU, one thread per run (two runs side by side on 2 cores). The recipe that converges on CPU
    # (the "Models that inpaint" study, figures/dev/convergence_*.png): v-prediction with Min-SNR-5
    # weighting, trailing DDIM from pure noise at t = T - 1, batch 16, lr 1e-3, EMA 0.999. Epsilon
    # prediction at this budget does not inpaint (its fills lose to a mean-colour fill). Every
    # periodic evaluation scores the whole evaluation set with the final metrics (the convergence
    # curve). Measured on the 2-core Xeon (1 thread): 1.4 s / step for linear, 2.1 s for lmi. The
    # budget, 6000 steps, was chosen by measurement (paper_assets/dev/convergence.md): the linear arm
    # still improves at 5000 steps and passes the LPIPS of biharmonic and Telea near 4750; a 1000-step
    # LR cool-down from 3000 bought nothing over constant LR. A longer budget extends a finished
    # shorter run of the same config instead of repeating it (train._prefix_run).
    # ``model.lambda_gain`` 0.05: a learned output gain on the lambda layers, whose residual branch
    # otherwise starts ~20x larger than an attention's (`lambda_layers._LayerScale`). Measured on
    # lmi (paper_assets/dev/convergence.md): LPIPS at 250 / 500 / 6000 steps 0.068 / 0.061 / 0.026
    # without (2 seeds), 0.052 / 0.047 / 0.019 with 0.05 (2 seeds), 0.055 / 0.051 with 0.2 (seed 0,
    # 500 steps); linear 0.053 / 0.050 / 0.016.
    "dev": {
        "size": "tiny",
        "data.image_size": 32, "data.n_train": 2000, "data.n_test": 64,
        "diffusion.prediction": "v", "diffusion.loss_weighting": "min_snr", "diffusion.min_snr_gamma": 5.0,
        "model.lambda_gain": 0.05,
        "train.steps": 6000, "train.batch_size": 16, "train.lr": 1e-3, "train.warmup": 100,
        "train.ema_decay": 0.999, "train.eval_every": 250, "train.ckpt_every": 250, "train.log_every": 10,
        "train.sample_steps": 20, "train.threads": 1,
        "eval.n_eval": 32, "eval.ddim_steps": 20, "eval.spacing": "trailing", "eval.periodic_n": 32,
        "eval.periodic_full": True, "eval.n_grid": 8, "eval.batch_size": 16,
    },
    # One GPU: 64 px, base U-Net, 100k steps, bf16 autocast.
    "paper": {
        "size": "base", "model.lambda_gain": 0.05,
        "data.image_size": 64, "data.n_train": 50000, "data.n_test": 1000, "data.preload": False,
        "train.steps": 100_000, "train.batch_size": 64, "train.lr": 2e-4, "train.warmup": 1000,
        "train.ema_decay": 0.9999, "train.eval_every": 5000, "train.ckpt_every": 5000, "train.log_every": 100,
        "train.sample_steps": 20, "train.amp_bf16": True, "train.tf32": False,
        "eval.n_eval": 1000, "eval.ddim_steps": 50, "eval.periodic_n": 64, "eval.n_grid": 8, "eval.batch_size": 64,
    },
}

_DEFAULT_BASE = "<defaults>"  # from_dict: the dict is complete, start from dataclass defaults


# ---------------------------------------------------------------------------------------------
# Strict overrides


def valid_keys() -> list[str]:
    """Every dotted key ``resolve`` accepts (``unet.<field>`` covers UNetConfig fields)."""
    keys = [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c) if (s, f.name) != ("model", "unet")]
    keys += [f"unet.{f.name}" for f in dataclasses.fields(UNetConfig) if f.name not in _MODEL_FIELDS]
    return sorted(keys)


# UNetConfig fields that live in ModelCfg (one place in config.json): ``unet.<name>`` means ``model.<name>``
_MODEL_FIELDS = ("lambda_gain",)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unet_kwargs(d: Mapping[str, Any]) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def _canonical_key(key: str) -> str:
    """Map a user key to 'section.field' or 'unet.field'; raise KeyError naming valid keys."""
    if key.startswith("model.unet."):
        key = key[len("model."):]
    if key.startswith("unet."):
        name = key[len("unet."):]
        if name in _MODEL_FIELDS:
            return f"model.{name}"
        if name in {f.name for f in dataclasses.fields(UNetConfig)}:
            return key
        raise KeyError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
    if "." in key:
        sec, name = key.split(".", 1)
        if sec in SECTIONS and (sec, name) != ("model", "unet") and name in {f.name for f in dataclasses.fields(SECTIONS[sec])}:
            return key
        raise KeyError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
    hits = [k for k in valid_keys() if k.split(".", 1)[1] == key and not k.startswith("unet.")]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise KeyError(f"config key {key!r} is ambiguous: use one of {hits}")
    unet_hits = [k for k in valid_keys() if k == f"unet.{key}"]
    if unet_hits:
        return unet_hits[0]
    raise KeyError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")


canonical_key = _canonical_key  # public: other modules resolve user keys the same way


def _validate(cfg: ExpCfg) -> None:
    """Value checks beyond types (raise ValueError naming the key)."""
    _check_choice("arm", cfg.arm, list(ARMS))
    _check_choice("size", cfg.size, list(SIZES))
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {list(PRESETS)}")
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0, got {cfg.seed}")
    d, da, tr, ev = cfg.diffusion, cfg.data, cfg.train, cfg.eval
    _check_choice("diffusion.schedule", d.schedule, SCHEDULES)
    _check_choice("diffusion.t_sampling", d.t_sampling, T_SAMPLING)
    _check_choice("diffusion.prediction", d.prediction, PREDICTIONS)
    _check_choice("diffusion.loss_weighting", d.loss_weighting, LOSS_WEIGHTINGS)
    if not (math.isfinite(d.min_snr_gamma) and d.min_snr_gamma > 0):
        raise ValueError(f"diffusion.min_snr_gamma must be a finite number > 0, got {d.min_snr_gamma}")
    _check_choice("data.dataset", da.dataset, DATASETS)
    _check_choice("data.train_mask", da.train_mask, MASK_KINDS)
    _check_choice("eval.mask_kind", ev.mask_kind, MASK_KINDS)
    _check_choice("eval.spacing", ev.spacing, SPACINGS)
    _check_choice("eval.init", ev.init, INITS)
    _check_choice("train.device", tr.device, DEVICES)
    _check_choice("latent.space", cfg.latent.space, SPACES)
    if cfg.latent.ae_path is not None:
        if not isinstance(cfg.latent.ae_path, str) or not cfg.latent.ae_path:
            raise ValueError(f"latent.ae_path must be a folder path (a string) or null, got {cfg.latent.ae_path!r}")
        if cfg.latent.space != "latent":
            raise ValueError("latent.ae_path is an autoencoder for latent space: set latent.space=latent with it")
    if cfg.latent.ae_preset is not None:
        from .latent.autoencoder import AE_PRESETS

        if cfg.latent.ae_preset not in AE_PRESETS:
            raise ValueError(f"latent.ae_preset={cfg.latent.ae_preset!r}; choose one of {list(AE_PRESETS)} or null")
    kd = cfg.kd
    _check_choice("kd.weighting", kd.weighting, KD_WEIGHTINGS)
    _check_choice("kd.perceptual", kd.perceptual, KD_PERCEPTUAL)
    _check_choice("kd.teacher_arm", kd.teacher_arm, list(ARMS))
    _check_choice("kd.teacher_size", kd.teacher_size, list(SIZES))
    for k in ("lambda_kd", "lambda_task", "lambda_lp", "fixed_w_fkd", "fixed_w_lp", "fixed_w_c"):
        v = getattr(kd, k)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"kd.{k} must be a finite number >= 0, got {v}")
    if kd.teacher_seed < 0:
        raise ValueError(f"kd.teacher_seed must be >= 0, got {kd.teacher_seed}")
    if kd.enabled:
        for k in kd.teacher_overrides:
            ck = _canonical_key(k)
            if ck.startswith("kd."):
                raise ValueError(f"kd.teacher_overrides may not set {k!r}: a teacher is never distilled")
        if kd.perceptual == "decoded_lpips" and cfg.latent.space != "latent":
            raise ValueError("kd.perceptual='decoded_lpips' decodes latents: it needs latent.space='latent'")
        cfg.teacher_config()  # the teacher's config must be valid too
    if da.dataset == "folder" and not da.root:
        raise ValueError("data.dataset='folder' needs data.root=<image folder>")
    positive = {
        "diffusion.timesteps": d.timesteps, "data.image_size": da.image_size, "data.n_train": da.n_train,
        "data.n_test": da.n_test, "train.steps": tr.steps, "train.batch_size": tr.batch_size,
        "train.grad_accum": tr.grad_accum, "train.sample_steps": tr.sample_steps, "train.log_every": tr.log_every,
        "eval.n_eval": ev.n_eval, "eval.ddim_steps": ev.ddim_steps, "eval.batch_size": ev.batch_size,
    }
    for k, v in positive.items():
        if v <= 0:
            raise ValueError(f"{k} must be > 0, got {v}")
    if not 0 <= tr.decay_steps <= tr.steps:
        raise ValueError(f"train.decay_steps={tr.decay_steps} must be between 0 and train.steps={tr.steps}")
    nonneg = {"train.warmup": tr.warmup, "train.eval_every": tr.eval_every, "train.ckpt_every": tr.ckpt_every,
              "train.threads": tr.threads, "train.weight_decay": tr.weight_decay, "data.seed": da.seed,
              "eval.seed": ev.seed, "eval.n_grid": ev.n_grid, "eval.periodic_n": ev.periodic_n}
    for k, v in nonneg.items():
        if v < 0:
            raise ValueError(f"{k} must be >= 0, got {v}")
    if not (0.0 < d.beta_start < d.beta_end < 1.0):
        raise ValueError(f"need 0 < diffusion.beta_start < diffusion.beta_end < 1, got {d.beta_start}, {d.beta_end}")
    if not math.isfinite(tr.grad_clip):
        raise ValueError(f"train.grad_clip must be a finite number (<= 0 disables clipping), got {tr.grad_clip}")
    if not (math.isfinite(tr.weight_decay) and math.isfinite(tr.ema_decay)):
        raise ValueError("train.weight_decay and train.ema_decay must be finite numbers")
    if not (math.isfinite(tr.lr) and tr.lr > 0):
        raise ValueError(f"train.lr must be a finite number > 0, got {tr.lr}")
    if not 0.0 <= tr.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {tr.ema_decay}")
    if tr.batch_size % tr.grad_accum:
        raise ValueError(f"train.batch_size={tr.batch_size} must be divisible by train.grad_accum={tr.grad_accum}")
    if not 0.0 < ev.strength <= 1.0:
        raise ValueError(f"eval.strength must be in (0, 1], got {ev.strength}")
    if ev.n_eval > da.n_test:
        raise ValueError(f"eval.n_eval={ev.n_eval} exceeds data.n_test={da.n_test}")
    if ev.periodic_n > da.n_test:
        raise ValueError(f"eval.periodic_n={ev.periodic_n} exceeds data.n_test={da.n_test}")
    if ev.n_grid > ev.n_eval:
        raise ValueError(f"eval.n_grid={ev.n_grid} exceeds eval.n_eval={ev.n_eval}")
    ucfg = cfg.unet_config()  # validates the architecture (unknown keys, bad values)
    _build_on_meta(ucfg)  # ... and the layers it builds (heads that do not divide a width, an even r)
    div = 2 ** (ucfg.levels - 1)
    if cfg.latent.space == "latent":
        f = cfg.ae_shape()[0]
        if da.image_size % (div * f):
            raise ValueError(f"data.image_size={da.image_size} must be divisible by {div * f} (autoencoder factor "
                             f"{f} x {div} for a {ucfg.levels}-level U-Net) in latent space")
    elif da.image_size % div:
        raise ValueError(f"data.image_size={da.image_size} must be divisible by {div} for a {ucfg.levels}-level U-Net")


_META_OK: set = set()


def _build_on_meta(ucfg: UNetConfig) -> None:
    """Construct the U-Net on the meta device (no memory, milliseconds) so that every layer's own
    checks run at config time, not after the run folder exists; cached per config."""
    key = json.dumps(ucfg.to_dict(), sort_keys=True, default=str)
    if key in _META_OK:
        return
    import torch

    from .unet import InpaintUNet

    try:
        with torch.device("meta"):
            InpaintUNet(ucfg)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid architecture: {exc.args[0] if exc.args else exc}") from exc
    _META_OK.add(key)


def _build(preset: str, arm: str, size: str | None, seed: int, overrides: Mapping[str, Any], base: str) -> ExpCfg:
    for name, val, tp in (("preset", preset, str), ("arm", arm, str), ("seed", seed, int)):
        if not _type_ok(val, tp):
            raise TypeError(f"{name} must be {tp.__name__}, got {type(val).__name__} {val!r}")
    if base != _DEFAULT_BASE and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {list(ARMS)}")
    arm = canonical_arm(arm)  # one network, one name, one run (moebius -> lmi, baseline -> linear, ...)
    preset_values = dict(PRESETS.get(preset, {})) if base != _DEFAULT_BASE else {}
    size = size if size is not None else preset_values.pop("size", "tiny")
    preset_values.pop("size", None)
    if not isinstance(size, str):
        raise TypeError(f"size must be str, got {type(size).__name__} {size!r}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(SIZES)}")

    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    unet: dict[str, Any] = {}
    merged = {**preset_values}
    for raw_key, value in overrides.items():
        if not isinstance(raw_key, str):
            raise TypeError(f"override keys must be strings, got {raw_key!r}")
        merged[_canonical_key(raw_key)] = value
    ufield_types = _field_types(UNetConfig)
    for key, value in merged.items():
        key = _canonical_key(key)
        sec, name = key.split(".", 1)
        if sec == "unet":
            tp = ufield_types[name]
            if not _type_ok(value, tp):
                raise TypeError(f"{key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
            unet[name] = list(value) if isinstance(value, tuple) else value
            continue
        tp = _field_types(SECTIONS[sec])[name]
        if value is None and tp is str:  # `--set diffusion.loss_weighting=none`: the word, not null
            value = "none"
        if not _type_ok(value, tp):
            raise TypeError(f"{key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
        sections[sec][name] = _coerce(value, tp)
    if unet:
        sections["model"]["unet"] = dict(sorted(unet.items()))
    cfg = ExpCfg(
        preset=preset, arm=arm, size=size, seed=seed,
        **{s: SECTIONS[s](**vals) for s, vals in sections.items()},
    )
    if cfg.model.lambda_gain is not None:
        try:
            ucfg = cfg.unet_config()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid architecture: {exc.args[0] if exc.args else exc}") from exc
        if not ucfg.uses_lambda_gain:  # no lambda mixer to scale: the same network (and run) as without
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lambda_gain=None))
    _validate(cfg)
    return cfg


# The autoencoder a latent-space run of a preset gets when ``latent.ae_preset`` is null (default:
# the autoencoder preset of the same name). dev: the f=2 autoencoder with the LPIPS term, because
# the `dev` one (f=4, 700 steps, 20.7 dB / LPIPS 0.36) bounded every latent number below a
# mean-colour fill.
DEFAULT_AE_PRESET: dict[str, str] = {"dev": "dev-f2"}


def resolve(preset: str = "smoke", arm: str = "lmi", size: str | None = None, seed: int = 0,
            overrides: Mapping[str, Any] | None = None, **kw_overrides: Any) -> ExpCfg:
    """The validated config of one run.

    Args:
        preset: ``smoke`` | ``dev`` | ``paper``.
        arm: a key of ``unet.ARMS`` (``vanilla``, ``linear``, ``local_lambda``, ``interactive_lambda``,
            ``lmi``, and the Table-2 arms).
        size: a key of ``unet.SIZES``; ``None`` takes the preset's size.
        seed: training seed (initialisation, data order, masks, noise).
        overrides: flat ``{"train.lr": 1e-3, "unet.heads": 2, "lr": 1e-3}`` (dotted keys may not be
            Python identifiers, hence the dict); ``**kw_overrides`` accepts bare unambiguous names.

    Raises:
        KeyError: unknown or ambiguous key (the message lists the valid keys).
        TypeError: a value of the wrong type (int is accepted for float, nothing else is converted).
        ValueError: a value out of range, an unknown arm / size / preset, an invalid architecture.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    merged = dict(overrides or {})
    merged.update(kw_overrides)
    cfg = _build(preset, arm, size, seed, merged, base=preset)
    la = cfg.latent
    if la.space == "latent" and la.ae_preset is None and la.ae_path is None and preset in DEFAULT_AE_PRESET:
        # written into the config, so into the hash: a run made with another default autoencoder
        # (null then meant the preset's own) keeps its name and is never resumed onto this one
        cfg = dataclasses.replace(cfg, latent=dataclasses.replace(la, ae_preset=DEFAULT_AE_PRESET[preset]))
    return cfg


def config_hash(cfg: ExpCfg | Mapping[str, Any]) -> str:
    """sha1 of the canonical JSON of the config (sorted keys, floats by repr), first 10 hex digits."""
    d = cfg.to_dict() if isinstance(cfg, ExpCfg) else {k: v for k, v in cfg.items() if k != "config_hash"}
    for sec in _HASH_OPTIONAL:
        if sec in d and d[sec] == json.loads(json.dumps(dataclasses.asdict(SECTIONS[sec]()))):
            d = {k: v for k, v in d.items() if k != sec}
    for sec, fields in _HASH_OPTIONAL_FIELDS.items():
        if isinstance(d.get(sec), dict):
            d[sec] = {k: v for k, v in d[sec].items() if not (k in fields and v == fields[k])}
    return content_hash(d)
