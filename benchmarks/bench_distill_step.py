"""Cost of one distillation step relative to a plain training step of the same student, and where the
extra time goes.

    python benchmarks/bench_distill_step.py [--student moebius --size tiny] [--teacher vanilla --teacher-size base]
        [--latent 16] [--batch 8] [--rounds 7] [--threads 1] [--perceptual latent_ms] [--out results/]

Both steps run on the same synthetic latent batch (4 channels, ``--latent`` side, the dev preset's
16x16), each as zero_grad -> forward -> loss -> backward -> AdamW step:

* plain: the student's task loss (eps MSE), one backward;
* KD: the teacher's forward (no grad), the student's forward and the projector, the four losses of
  ``lambda_blocks.latent.kd.kd_objective``, one ``autograd.grad`` per active loss for the gradient norms at
  the two anchors (task, fkd, lp, ckd: 4 partial backward passes, where the released code makes 7
  single-anchor calls), and the final backward of the weighted total.

The ratio comes from interleaved rounds in one process (the machine is shared; compare ratios).
The breakdown times the sections of the KD step with ``time.perf_counter`` (median over rounds);
every ``torch.autograd.grad`` call is timed by wrapping it. Writes a tidy CSV.
"""
from __future__ import annotations

import argparse
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
from lambda_blocks.latent import kd as K  # noqa: E402
from lambda_blocks.diffusion import Diffusion  # noqa: E402
from lambda_blocks.profiling import interleaved_latency  # noqa: E402
from lambda_blocks.records import atomic_write_text  # noqa: E402
from lambda_blocks.unet import build_unet  # noqa: E402

GRAD_NAMES = ("grad task@o,f", "grad fkd@o,f", "grad lp@o,f", "grad ckd@f")


class Steps:
    def __init__(self, args):
        torch.manual_seed(0)
        c = 4
        self.student = build_unet(args.student, args.size, image_channels=c)
        self.teacher = build_unet(args.teacher, args.teacher_size, image_channels=c).eval().requires_grad_(False)
        torch.nn.init.normal_(self.teacher.conv_out.weight, std=0.02)  # a trained teacher's output is not zero
        torch.nn.init.normal_(self.student.conv_out.weight, std=0.02)
        b, s = args.batch, args.latent
        g = torch.Generator().manual_seed(1)
        self.x0 = torch.randn(b, c, s, s, generator=g)
        self.mask = (torch.rand(b, 1, s, s, generator=g) > 0.5).float()
        self.masked = torch.randn(b, c, s, s, generator=g) * (1 - self.mask)
        self.noise = torch.randn(b, c, s, s, generator=g)
        self.t = torch.randint(0, 1000, (b,), generator=g)
        self.diffusion = Diffusion()
        self.tap_s = K.FeatureTap(self.student, K.bottleneck_name(self.student))
        self.tap_t = K.FeatureTap(self.teacher, K.first_decoder_name(self.teacher), detach=True)
        inp = self._input()
        with torch.no_grad():
            self.student(inp, self.t)
            self.teacher(inp, self.t)
        self.projector = K.Projector(tuple(self.tap_s.value.shape), tuple(self.tap_t.value.shape))
        self.theta_o = K.output_anchor(self.student)[1]
        self.theta_f = K.anchor_param(self.student, K.bottleneck_name(self.student))[1]
        params = list(self.student.parameters()) + list(self.projector.parameters())
        self.opt_kd = torch.optim.AdamW(params, lr=1e-4)
        self.opt_plain = torch.optim.AdamW(self.student.parameters(), lr=1e-4)
        self.perceptual = args.perceptual
        self.sections: dict[str, list[float]] = {}

    def _input(self):
        x_t = self.diffusion.q_sample(self.x0, self.t, self.noise)
        return self.diffusion.model_input(x_t, self.masked, self.mask)

    def plain(self):
        self.opt_plain.zero_grad(set_to_none=True)
        loss = self.diffusion.training_loss(self.student, self.x0, self.mask, self.t, self.noise, masked=self.masked)
        loss.backward()
        self.opt_plain.step()

    def kd(self, timed: bool = False):
        clock = {}

        def mark(name, t0):
            if timed:
                clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0
            return time.perf_counter()

        t0 = time.perf_counter()
        self.opt_kd.zero_grad(set_to_none=True)
        x_t = self.diffusion.q_sample(self.x0, self.t, self.noise)
        inp = self.diffusion.model_input(x_t, self.masked, self.mask)
        with torch.no_grad():
            eps_t = self.teacher(inp, self.t)
        t0 = mark("teacher forward", t0)
        eps_s = self.student(inp, self.t)
        feat_s = self.projector(self.tap_s.value)
        t0 = mark("student forward + projector", t0)
        calls = []
        real_grad = torch.autograd.grad

        def timed_grad(*a, **kw):
            s = time.perf_counter()
            out = real_grad(*a, **kw)
            calls.append(time.perf_counter() - s)
            return out

        torch.autograd.grad = timed_grad
        try:
            total, _ = K.kd_objective(eps_s=eps_s, eps_t=eps_t, noise=self.noise, feat_s=feat_s,
                                      feat_t=self.tap_t.value, x_t=x_t, t=self.t, diffusion=self.diffusion,
                                      theta_o=self.theta_o, theta_f=self.theta_f, perceptual=self.perceptual)
        finally:
            torch.autograd.grad = real_grad
        t_obj = time.perf_counter() - t0
        if timed:
            for name, dt in zip(GRAD_NAMES, calls):
                clock[name] = dt
            clock["losses + weights (rest of kd_objective)"] = t_obj - sum(calls)
        t0 = time.perf_counter()
        total.backward()
        t0 = mark("final backward", t0)
        self.opt_kd.step()
        mark("optimizer step", t0)
        if timed:
            for k, v in clock.items():
                self.sections.setdefault(k, []).append(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="moebius")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--teacher", default="vanilla")
    ap.add_argument("--teacher-size", default="base")
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--perceptual", default="latent_ms", choices=K.PERCEPTUAL[:1] + ("none",))
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    header("distillation step vs plain training step")
    st = Steps(args)
    times = interleaved_latency({"plain": st.plain, "kd": st.kd}, rounds=args.rounds, min_run_time=0.5)
    for _ in range(args.rounds):
        st.kd(timed=True)
    plain, kd = times["plain"].median_ms, times["kd"].median_ms
    print(f"student {args.student}/{args.size} ({sum(p.numel() for p in st.student.parameters()):,} params), "
          f"teacher {args.teacher}/{args.teacher_size} ({sum(p.numel() for p in st.teacher.parameters()):,}), "
          f"latent {args.latent}x{args.latent}x4, batch {args.batch}")
    print(f"plain step {plain:.1f} ms (IQR {times['plain'].iqr_ms:.1f}); KD step {kd:.1f} ms "
          f"(IQR {times['kd'].iqr_ms:.1f}); ratio KD / plain = {kd / plain:.2f}x")
    rows = [{"kind": "step", "part": "plain", "ms": plain}, {"kind": "step", "part": "kd", "ms": kd},
            {"kind": "ratio", "part": "kd/plain", "ms": kd / plain}]
    tot = sum(statistics.median(v) for v in st.sections.values())
    print(f"\n{'KD step section':<42} {'ms':>8} {'share':>7} {'x plain step':>13}")
    for name, vals in st.sections.items():
        ms = statistics.median(vals) * 1e3
        rows.append({"kind": "section", "part": name, "ms": ms})
        print(f"{name:<42} {ms:8.1f} {ms / (tot * 1e3):7.1%} {ms / plain:13.2f}")
    df = pd.DataFrame(rows).assign(student=f"{args.student}/{args.size}", teacher=f"{args.teacher}/{args.teacher_size}",
                                   latent=args.latent, batch=args.batch, threads=args.threads)
    path = os.path.join(args.out, f"distill_step-{tag()}.csv")
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4g"))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
