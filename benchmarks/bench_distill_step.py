"""Cost of one distillation step relative to a plain training step of the same student, and where the
extra time goes: both are ``lambda_blocks.train.train_step`` itself, on the run's own batches.

    python benchmarks/bench_distill_step.py [--preset dev] [--student moebius] [--batch 8] [--rounds 7]
        [--threads 1] [--out results/]

The configs are the latent-space runs of ``python -m lambda_blocks.latent.distill --preset PRESET``
(``latent.distill.resolve_distill``, with and without KD): the same student, AdamW groups, warm-up,
clipping and EMA, batches from ``train.make_batch`` (keyed masks, timesteps and noise; the masked
image encoded by the autoencoder each step, as in a run), and for KD the run's own ``Distiller``
(teacher forward, feature taps, projector, ``latent.kd.kd_objective`` with its gradient-norm
weights). Only the weights are not trained ones: the autoencoder, the teacher and the student are
randomly initialised (the output convolutions are given small random weights so that no gradient
is identically zero), which does not change the work a step does.

The ratio comes from interleaved rounds in one process (the machine is shared; compare ratios).
The breakdown times the sections of extra KD rounds by wrapping, never re-implementing, the
pieces ``train_step`` calls: the batch function, the teacher's and the student's forward, every
``torch.autograd.grad`` of the gradient norms, ``Tensor.backward`` and the optimiser step; what is
left (loss terms and weights, clipping, LR, EMA) is the rest. Writes a tidy CSV.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import header, tag  # noqa: E402
from lambda_blocks import train as T  # noqa: E402
from lambda_blocks.diffusion import Diffusion  # noqa: E402
from lambda_blocks.latent.autoencoder import LatentAutoencoder, LatentSpace  # noqa: E402
from lambda_blocks.latent.distill import resolve_distill  # noqa: E402
from lambda_blocks.latent.distiller import Distiller  # noqa: E402
from lambda_blocks.profiling import interleaved_latency  # noqa: E402
from lambda_blocks.records import atomic_write_text  # noqa: E402

SECTIONS = ("batch (masks, noise, encode)", "teacher forward", "student forward", "gradient norms (autograd.grad)",
            "backward", "optimizer step", "rest (losses, weights, clip, LR, EMA)")


def _random_out(model: torch.nn.Module) -> torch.nn.Module:
    from lambda_blocks.latent.kd import output_anchor

    torch.nn.init.normal_(output_anchor(model)[1], std=0.02)  # a trained network's output is not zero
    return model


class Stepper:
    """Plain and KD ``train_step``s of one student config (its latent-space run with and without KD)."""

    def __init__(self, preset: str, student: str, size: str | None, batch: int | None, n_images: int = 32):
        over = {"train.batch_size": batch} if batch else {}
        self.cfg_kd = resolve_distill(preset, student, size, kd=True, overrides=over)
        self.cfg_plain = resolve_distill(preset, student, size, kd=False, overrides=over)
        acfg = self.cfg_kd.ae_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ae = LatentAutoencoder(acfg.latent_channels, acfg.factor, acfg.widths, variational=acfg.kl_weight > 0)
            self.space = LatentSpace(ae.eval().requires_grad_(False))
            teacher = _random_out(T.init_model(self.cfg_kd.teacher_config()))
        self.diff = Diffusion.from_cfg(self.cfg_kd.diffusion)
        side = self.cfg_kd.data.image_size
        g = torch.Generator().manual_seed(1)
        images = torch.rand(n_images, 3, side, side, generator=g) * 2 - 1
        self.states, self.kd = {}, None
        for name, cfg in (("plain", self.cfg_plain), ("kd", self.cfg_kd)):
            model = _random_out(T.init_model(cfg))
            ema = T.copy.deepcopy(model).eval().requires_grad_(False)
            if name == "kd":
                self.kd = Distiller(cfg, model, None, torch.device("cpu"), self.space, teacher=teacher)
            self.states[name] = T.new_state(cfg, model, ema, self.kd.projector if name == "kd" else None)
        self.data = T.TrainData(None, images, T._Batches(n_images, self.cfg_kd.seed))
        self.clock: dict[str, float] | None = None

    def _batch(self, cfg):
        def batch(s, lo, hi):
            t0 = time.perf_counter()
            out = T.make_batch(cfg, self.diff, self.data, s, lo, hi, "cpu", self.space)
            self._add("batch (masks, noise, encode)", time.perf_counter() - t0)
            return out
        return batch

    def _add(self, name: str, dt: float) -> None:
        if self.clock is not None:
            self.clock[name] = self.clock.get(name, 0.0) + dt

    def plain(self) -> None:
        T.train_step(self.states["plain"], self.cfg_plain, self.diff, self._batch(self.cfg_plain))

    def kd_step(self) -> None:
        T.train_step(self.states["kd"], self.cfg_kd, self.diff, self._batch(self.cfg_kd), kd=self.kd)

    @contextlib.contextmanager
    def _timed(self, obj, attr: str, section: str):
        real, own = getattr(obj, attr), attr in vars(obj)

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                self._add(section, time.perf_counter() - t0)

        setattr(obj, attr, wrapper)
        try:
            yield
        finally:
            if own:
                setattr(obj, attr, real)
            else:
                delattr(obj, attr)  # an instance wrapper over a class method: remove it

    def timed_kd_step(self) -> dict[str, float]:
        """One KD step with its sections timed (seconds); the nested forwards inside autograd.grad
        and backward are not double counted (each wrapper times its own call only)."""
        self.clock = {}
        st = self.states["kd"]
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._timed(self.kd.teacher, "forward", "teacher forward"))
            stack.enter_context(self._timed(st.model, "forward", "student forward"))
            stack.enter_context(self._timed(torch.autograd, "grad", "gradient norms (autograd.grad)"))
            stack.enter_context(self._timed(torch.Tensor, "backward", "backward"))
            stack.enter_context(self._timed(st.opt, "step", "optimizer step"))
            t0 = time.perf_counter()
            self.kd_step()
            total = time.perf_counter() - t0
        clock, self.clock = self.clock, None
        clock["rest (losses, weights, clip, LR, EMA)"] = total - sum(clock.values())
        return clock


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="dev", choices=["smoke", "dev", "paper"])
    ap.add_argument("--student", default="moebius")
    ap.add_argument("--size", default=None, help="student size (default: the preset's)")
    ap.add_argument("--batch", type=int, default=None, help="default: the preset's train.batch_size")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    header("distillation step vs plain training step (both train.train_step)")
    st = Stepper(args.preset, args.student, args.size, args.batch)
    times = interleaved_latency({"plain": st.plain, "kd": st.kd_step}, rounds=args.rounds, min_run_time=0.5)
    sections: dict[str, list[float]] = {k: [] for k in SECTIONS}
    for _ in range(args.rounds):
        for k, v in st.timed_kd_step().items():
            sections[k].append(v)
    plain, kd = times["plain"].median_ms, times["kd"].median_ms
    c = st.cfg_kd
    print(f"preset {args.preset}: student {c.arm}/{c.size} ({sum(p.numel() for p in st.states['kd'].model.parameters()):,} params), "
          f"teacher {c.kd.teacher_arm}/{c.kd.teacher_size} ({sum(p.numel() for p in st.kd.teacher.parameters()):,}), "
          f"latent {c.work_size}x{c.work_size}, batch {c.train.batch_size}")
    print(f"plain step {plain:.1f} ms (IQR {times['plain'].iqr_ms:.1f}); KD step {kd:.1f} ms "
          f"(IQR {times['kd'].iqr_ms:.1f}); ratio KD / plain = {kd / plain:.2f}x")
    rows = [{"kind": "step", "part": "plain", "ms": plain}, {"kind": "step", "part": "kd", "ms": kd},
            {"kind": "ratio", "part": "kd/plain", "ms": kd / plain}]
    med = {k: statistics.median(v) * 1e3 for k, v in sections.items() if v}
    tot = sum(med.values())
    print(f"\n{'KD step section (median over rounds)':<42} {'ms':>8} {'share':>7} {'x plain step':>13}")
    for name, ms in med.items():
        rows.append({"kind": "section", "part": name, "ms": ms})
        print(f"{name:<42} {ms:8.1f} {ms / tot:7.1%} {ms / plain:13.2f}")
    df = pd.DataFrame(rows).assign(preset=args.preset, student=f"{c.arm}/{c.size}",
                                   teacher=f"{c.kd.teacher_arm}/{c.kd.teacher_size}", latent=c.work_size,
                                   batch=c.train.batch_size, threads=args.threads)
    path = os.path.join(args.out, f"distill_step-{tag()}.csv")
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4g"))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
