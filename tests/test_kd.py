"""Tests of lambda_blocks.latent.kd: distillation losses, adaptive weights (MOEBIUS_SPEC section 8)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lambda_blocks.latent import kd
from lambda_blocks.diffusion import Diffusion
from lambda_blocks.unet import build_unet

W = kd.KDWeights()


# ---------------------------------------------------------------------------------------------
# A tiny two-layer "network": theta_f = conv1.weight (feature = conv1 output), theta_o = conv2.weight
# ---------------------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self, zero_out: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv_out = nn.Conv2d(4, 3, 3, padding=1)
        if zero_out:
            nn.init.zeros_(self.conv_out.weight)

    def forward(self, x):
        feat = self.conv1(x)
        return self.conv_out(torch.tanh(feat)), feat


def _setup(zero_out=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Tiny(zero_out).double()
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    eps_t = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    feat_t = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([50, 400])
    return model, x, noise, eps_t, feat_t, t


def _hand_terms(model, x, noise, eps_t, feat_t, t, diffusion):
    """Fresh forward; every loss written out by hand (plain means, the x0 formula inline)."""
    eps, feat = model(x)
    abar = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1).to(x.dtype)
    x0_s = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    x0_gt = (x - (1 - abar).sqrt() * noise) / abar.sqrt()
    return {
        "task": ((eps - noise) ** 2).mean(),
        "fkd": ((eps - eps_t) ** 2).mean(),
        "ckd": ((feat - feat_t) ** 2).mean(),
        "lp": kd.latent_perceptual(x0_s, x0_gt, "latent_ms"),
    }


def _hand_norm(loss_name, anchor, setup, diffusion):
    """||d L / d anchor|| on its own fresh graph (one separate autograd.grad per loss and anchor)."""
    model, x, noise, eps_t, feat_t, t = setup
    loss = _hand_terms(model, x, noise, eps_t, feat_t, t, diffusion)[loss_name]
    param = model.conv_out.weight if anchor == "o" else model.conv1.weight
    (g,) = torch.autograd.grad(loss, param, allow_unused=True)
    return 0.0 if g is None else float(g.norm())


def _run(setup, diffusion, **kw):
    model, x, noise, eps_t, feat_t, t = setup
    eps, feat = model(x)
    return kd.kd_objective(eps_s=eps, eps_t=eps_t, noise=noise, feat_s=feat, feat_t=feat_t, x_t=x, t=t,
                           diffusion=diffusion, theta_o=model.conv_out.weight, theta_f=model.conv1.weight, **kw)


def _close(a, b, rel=1e-6, abs_=1e-9):
    return math.isclose(float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach()), rel_tol=rel, abs_tol=abs_)


# (1) adaptive weights against a hand computation ------------------------------------------------

def test_adaptive_weights_match_hand_computation():
    d = Diffusion()
    setup = _setup()
    total, log = _run(setup, d)
    n = {f"{k}@{a}": _hand_norm(k, a, setup, d) for k, a in
         [("task", "o"), ("fkd", "o"), ("lp", "o"), ("ckd", "f"), ("task", "f"), ("fkd", "f"), ("lp", "f")]}
    assert n["ckd@f"] > 0 and n["task@f"] > 0 and n["fkd@o"] > 0
    for k, v in n.items():
        assert _close(log[f"gnorm_{k}"], v), (k, log[f"gnorm_{k}"], v)
    w_fkd = min(max(n["task@o"] / (n["fkd@o"] + 1e-6), 0.0), 1e6)
    w_lp = min(max(n["task@o"] / (n["lp@o"] + 1e-6), 0.0), 1e6)
    w_c = min(max(n["ckd@f"] / (n["task@f"] + 1e-4), 0.0), 1e4)
    assert _close(log["w_fkd"], w_fkd) and _close(log["w_lp"], w_lp) and _close(log["w_c"], w_c)
    # ckd does not reach theta_o: its gradient there is "unused" -> 0
    assert _hand_norm("ckd", "o", setup, d) == 0.0

    terms = _hand_terms(*setup, d)
    expected = 0.01 * terms["ckd"] + w_c * (0.5 * terms["task"] + 0.01 * w_fkd * terms["fkd"]
                                            + 0.5 * w_lp * terms["lp"])
    assert _close(total, expected) and _close(log["loss_total"], expected)
    for k in kd.TERM_KEYS:
        assert _close(log[f"loss_{k}"], terms[k])
    # the stand-alone pieces agree too
    ws = kd.adaptive_weights(n, W)
    assert _close(ws["w_fkd"], w_fkd) and _close(ws["w_lp"], w_lp) and _close(ws["w_c"], w_c)
    assert _close(kd.total_loss(terms, ws, W), expected)


def test_adaptive_weights_clamps():
    ws = kd.adaptive_weights({"task@o": 5.0, "fkd@o": 0.0, "lp@o": 0.0, "ckd@f": 3.0, "task@f": 0.0}, W)
    assert float(ws["w_fkd"]) == 1e6 and float(ws["w_lp"]) == 1e6 and float(ws["w_c"]) == 1e4
    # below the clamps: plain ratios with the epsilons
    ws = kd.adaptive_weights({"task@o": 0.5, "fkd@o": 0.0, "lp@o": 2.0, "ckd@f": 0.5, "task@f": 0.0}, W)
    assert _close(ws["w_fkd"], 0.5 / 1e-6) and _close(ws["w_lp"], 0.5 / (2.0 + 1e-6))
    assert _close(ws["w_c"], 0.5 / 1e-4)
    # a zero-initialised output conv makes G_f(task) exactly 0 -> w_C sits at its clamp
    d = Diffusion()
    setup = _setup(zero_out=True)
    with torch.no_grad():
        setup[4].mul_(100.0)  # feat_t far away: G_f(ckd) > 1, so ckd/1e-4 exceeds the clamp
    _, log = _run(setup, d)
    assert log["gnorm_task@f"] == 0.0 and log["gnorm_ckd@f"] > 1.0
    assert log["w_c"] == 1e4


# (2) student == teacher: the KD terms and their gradients vanish ----------------------------------

def test_kd_zero_when_student_is_teacher():
    torch.manual_seed(1)
    # one lambda-conv kernel for both passes ("auto" takes conv2d for the no-grad teacher forward and
    # rfft for the student's: equal to ~1e-12 in float64, and this test asks for exactly zero)
    net = build_unet("lmi", "tiny", self_kwargs={"lambda_conv": "conv2d"})
    nn.init.normal_(net.conv_out.weight, std=0.05)  # non-trivial output
    d = Diffusion()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    noise, t = torch.randn_like(x0), torch.tensor([30, 600])
    x_t = d.q_sample(x0, t, noise)
    inp = d.model_input(x_t, x0 * (1 - mask), mask)
    name = kd.bottleneck_name(net)
    theta_o, theta_f = kd.output_anchor(net), kd.anchor_param(net, name)

    def step(use_kd):
        with kd.FeatureTap(net, name, detach=True) as tap_t:
            with torch.no_grad():
                eps_t = net(inp, t)
            feat_t = tap_t.value
        with kd.FeatureTap(net, name) as tap_s:
            eps_s = net(inp, t)
        proj = kd.Projector(tap_s.value.shape, feat_t.shape)
        assert proj.is_identity and len(list(proj.parameters())) == 0
        total, log = kd.kd_objective(eps_s=eps_s, eps_t=eps_t, noise=noise, feat_s=proj(tap_s.value),
                                     feat_t=feat_t, x_t=x_t, t=t, diffusion=d, theta_o=theta_o,
                                     theta_f=theta_f, weighting="fixed", use_feature=use_kd, use_output=use_kd)
        grads = torch.autograd.grad(total, [p for p in net.parameters()], allow_unused=True)
        return total, log, grads

    total, log, grads = step(True)
    assert log["loss_fkd"] == 0.0 and log["loss_ckd"] == 0.0
    assert log["gnorm_fkd@o"] == 0.0 and log["gnorm_fkd@f"] == 0.0 and log["gnorm_ckd@f"] == 0.0
    assert log["gnorm_task@o"] > 0 and log["gnorm_task@f"] > 0
    total0, log0, grads0 = step(False)
    assert float(total.detach()) == float(total0.detach())
    for g, g0 in zip(grads, grads0):
        if g is None:
            assert g0 is None
        else:
            assert torch.equal(g, g0)  # the KD terms add exactly nothing to any gradient


# (3) the weights are constants in the backward pass -----------------------------------------------

def test_weights_are_detached():
    d = Diffusion()
    setup = _setup(seed=3)
    model = setup[0]
    params = list(model.parameters())
    total, log = _run(setup, d)
    g_total = torch.autograd.grad(total, params)
    terms = _hand_terms(*setup, d)
    consts = {k: log[k] for k in kd.WEIGHT_KEYS}
    g_const = torch.autograd.grad(kd.total_loss(terms, consts, W), params)
    for a, b in zip(g_total, g_const):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # even norms that carry a graph give detached weights
    eps, feat = model(setup[1])
    (g,) = torch.autograd.grad(((eps - setup[2]) ** 2).mean(), model.conv_out.weight, create_graph=True)
    ws = kd.adaptive_weights({"task@o": g.norm(), "fkd@o": g.norm() * 2, "lp@o": g.norm(),
                              "ckd@f": g.norm(), "task@f": g.norm()}, W)
    assert g.norm().requires_grad and not any(v.requires_grad for v in ws.values())


# (4) Projector --------------------------------------------------------------------------------------

def test_projector_shapes_and_identity():
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    p = kd.Projector((2, 8, 4, 4), (2, 16, 8, 8))
    y = p(x)
    assert y.shape == (2, 16, 8, 8) and not p.is_identity
    assert sum(q.numel() for q in p.parameters()) == 16 * 8 + 16
    assert p.proj.weight.abs().sum() > 0  # trainable, not zero-initialised
    y.square().mean().backward()
    assert p.proj.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0

    down = kd.Projector((8, 8, 8), (8, 4, 4))  # (C, H, W) shapes accepted; shrink = area average
    z = torch.randn(3, 8, 8, 8)
    assert len(list(down.parameters())) == 0
    torch.testing.assert_close(down(z), F.avg_pool2d(z, 2))

    ch = kd.Projector((2, 64, 8, 8), (2, 128, 8, 8))  # channels only; orthogonal init keeps the norm
    f = torch.randn(2, 64, 8, 8)
    assert ch(f).shape == (2, 128, 8, 8)
    torch.testing.assert_close(ch(f).norm(), f.norm(), rtol=1e-4, atol=1e-4)

    ident = kd.Projector((2, 8, 4, 4), (2, 8, 4, 4))
    assert ident.is_identity and len(list(ident.parameters())) == 0 and torch.equal(ident(x), x)
    with pytest.raises(ValueError):
        p(torch.randn(2, 7, 4, 4))
    with pytest.raises(ValueError):
        kd.Projector((8, 4), (8, 4, 4))


# (5) feature taps and module names on InpaintUNet -----------------------------------------------

@pytest.mark.parametrize("arm,size,bneck,width,theta_f", [
    ("lmi", "tiny", "down.1.0", 64, "down.1.0.mix.proj_out.weight"),
    ("vanilla", "base", "down.1.1", 128, "down.1.1.mix.proj_out.weight"),
])
def test_feature_tap_and_names(arm, size, bneck, width, theta_f):
    torch.manual_seed(0)
    net = build_unet(arm, size)
    x, t = torch.randn(1, 7, 16, 16), torch.tensor([10])
    assert kd.bottleneck_name(net) == bneck and kd.first_decoder_name(net) == "up.0.0"
    with kd.FeatureTap(net, bneck) as tb, kd.FeatureTap(net, "up.0.0") as tu:
        assert tb.value is None
        net(x, t)
    assert tb.value.shape == (1, width, 8, 8) and tu.value.shape == (1, width, 8, 8)
    assert tb.value.requires_grad
    # the tap holds exactly that module's output
    seen = {}
    h = net.get_submodule(bneck).register_forward_hook(lambda m, a, o: seen.setdefault("o", o))
    net(x, t)
    h.remove()
    torch.testing.assert_close(tb.value, seen["o"])
    old = tb.value
    net(x, t)  # removed: no longer updated
    assert tb.value is old
    assert kd.probe_shape(net, bneck, x, t) == (1, width, 8, 8)
    name, p = kd.anchor_param(net, bneck)
    assert name == theta_f and p is net.get_submodule(bneck).mix.proj_out.weight
    assert kd.output_anchor(net) == ("conv_out.weight", net.conv_out.weight)
    with pytest.raises(KeyError, match="down.1.0"):
        kd.FeatureTap(net, "down.1.9")
    with pytest.raises(KeyError):
        kd.anchor_param(net, "mid.1")  # no mid block


def test_names_with_mid_block_and_without_mix():
    net = build_unet("lmi", "tiny", mid_block=True, mix_levels=(0,))
    assert kd.bottleneck_name(net) == "down.1.0"  # the encoder output, not the mid block
    # no mixing block at level 1: the last >= 2-D parameter is the res block's 1x1 shortcut
    assert kd.anchor_param(net, "down.1.0")[0] == "down.1.0.res.skip.weight"
    with pytest.raises(ValueError):
        kd.anchor_param(net, "down.1.0.res.norm1")  # only 1-D parameters


# (6) the perceptual term -----------------------------------------------------------------------------

def test_latent_ms():
    torch.manual_seed(0)
    a = torch.randn(2, 4, 8, 8)
    assert float(kd.latent_perceptual(a, a.clone())) == 0.0
    p = (a + 0.1 * torch.randn_like(a)).requires_grad_(True)
    loss = kd.latent_perceptual(p, a)
    assert loss > 0
    (g,) = torch.autograd.grad(loss, p)
    assert g.abs().sum() > 0
    # the target side is detached
    tgt = a.clone().requires_grad_(True)
    kd.latent_perceptual(p, tgt).backward()
    assert tgt.grad is None
    # by hand at full scale only (a 2x2 sample stops after the first pooling -> 1x1)
    s = torch.randn(1, 1, 2, 2)
    r = torch.zeros(1, 1, 2, 2)
    d = s - r
    hand = d.abs().mean() + (d[..., :, 1:] - d[..., :, :-1]).abs().mean() + (d[..., 1:, :] - d[..., :-1, :]).abs().mean()
    torch.testing.assert_close(kd.latent_perceptual(s, r), hand)
    with pytest.raises(ValueError):
        kd.latent_perceptual(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))
    with pytest.raises(ValueError):
        kd.latent_perceptual(a, a, kind="bogus")


def test_none_and_decoded_lpips_guard():
    p = torch.randn(2, 3, 8, 8, requires_grad=True)
    z = kd.latent_perceptual(p, torch.randn(2, 3, 8, 8), kind="none")
    assert float(z.detach()) == 0.0
    (g,) = torch.autograd.grad(z, p, retain_graph=True)
    assert torch.equal(g, torch.zeros_like(p))
    assert float(kd.grad_norm(z, p)) == 0.0
    with pytest.raises(RuntimeError, match="LPIPS"):
        kd.latent_perceptual(p, p.detach(), kind="decoded_lpips", decoder=torch.tanh, lpips_model=None)


def test_decoded_lpips_real_weights():
    from lambda_blocks.metrics import load_lpips, lpips_distance

    model = load_lpips()
    if model is None:
        pytest.skip("no real LPIPS AlexNet weights on this machine")
    torch.manual_seed(0)
    a = torch.randn(2, 3, 32, 32)
    b = torch.randn(2, 3, 32, 32)
    dec = torch.tanh  # a simple "decoder" to [-1, 1]
    p = a.clone().requires_grad_(True)
    loss = kd.latent_perceptual(p, b, kind="decoded_lpips", decoder=dec, lpips_model=model)
    assert loss > 0 and torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, p)
    assert g.abs().sum() > 0 and torch.isfinite(g).all()
    # the same number as the repository's (no-grad) LPIPS metric
    ref = lpips_distance(dec(a), dec(b), model).mean()
    assert math.isclose(float(loss.detach()), float(ref), rel_tol=1e-4)
    same = kd.latent_perceptual(a, a, kind="decoded_lpips", decoder=dec, lpips_model=model)
    assert abs(float(same)) < 1e-6
    with pytest.raises(ValueError):  # too small for AlexNet
        kd.latent_perceptual(a[..., :16, :16], b[..., :16, :16], kind="decoded_lpips", lpips_model=model)


# (7) fixed weighting, switches, the backward count ----------------------------------------------------

def test_fixed_weighting_matches_formula():
    d = Diffusion()
    setup = _setup(seed=5)
    total, log = _run(setup, d, weighting="fixed", fixed={"w_fkd": 1, "w_lp": 1, "w_c": 1})
    hand = 0.01 * log["loss_ckd"] + 1.0 * (0.5 * log["loss_task"] + 0.01 * 1.0 * log["loss_fkd"]
                                           + 0.5 * 1.0 * log["loss_lp"])
    assert _close(total, hand) and _close(log["loss_total"], hand)
    assert log["w_fkd"] == log["w_lp"] == log["w_c"] == 1.0
    assert all(log[f"gnorm_{k}"] > 0 for k in ("task@o", "fkd@o", "lp@o", "ckd@f", "task@f"))  # still logged
    # default fixed weights are 1 as well; custom ones are applied
    total_d, _ = _run(setup, d, weighting="fixed")
    assert _close(total_d, hand)
    total2, log2 = _run(setup, d, weighting="fixed", fixed={"w_c": 2.0, "w_lp": 0.0})
    hand2 = 0.01 * log["loss_ckd"] + 2.0 * (0.5 * log["loss_task"] + 0.01 * log["loss_fkd"])
    assert _close(total2, hand2)
    with pytest.raises(KeyError):
        _run(setup, d, weighting="fixed", fixed={"w_task": 1.0})
    with pytest.raises(ValueError):
        _run(setup, d, weighting="bogus")


def test_switches_and_backward_count(monkeypatch):
    d = Diffusion()
    setup = _setup(seed=7)
    calls = []
    real = torch.autograd.grad

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    _, log = _run(setup, d)
    assert len(calls) == kd.count_extra_backwards() == 4
    assert sum(1 for k in log if k.startswith("gnorm_")) == 7

    calls.clear()
    total, log = _run(setup, d, use_feature=False, use_output=False)
    assert len(calls) == kd.count_extra_backwards(False, False) == 2
    monkeypatch.setattr(torch.autograd, "grad", real)
    assert log["w_fkd"] == 0.0 and log["w_c"] == 1.0 and log["gnorm_ckd@f"] == 0.0
    assert log["loss_fkd"] > 0 and log["loss_ckd"] > 0  # measured for the log, outside the total
    assert _close(total, 0.5 * log["loss_task"] + 0.5 * log["w_lp"] * log["loss_lp"])

    total, log = _run(setup, d, perceptual="none", use_feature=False)
    assert log["w_lp"] == 0.0 and log["loss_lp"] == 0.0
    assert _close(total, 0.5 * log["loss_task"] + 0.01 * log["w_fkd"] * log["loss_fkd"])
    assert kd.count_extra_backwards(True, True, "none") == 3
    with pytest.raises(ValueError):
        _run(setup, d, perceptual="bogus")


def _problem(d: Diffusion):
    """Two 16x16 inpainting problems at t = 100, 700: (x0, noise, t, x_t, the U-Net input)."""
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    noise, t = torch.randn_like(x0), torch.tensor([100, 700])
    x_t = d.q_sample(x0, t, noise)
    return x0, noise, t, x_t, d.model_input(x_t, x0 * (1 - mask), mask)


def test_unet_student_teacher_with_projector():
    """End to end: LλMI-tiny student, vanilla-base teacher, channels mapped by the Projector."""
    torch.manual_seed(2)
    student, teacher = build_unet("lmi", "tiny"), build_unet("vanilla", "base")
    nn.init.normal_(student.conv_out.weight, std=0.02)
    nn.init.normal_(teacher.conv_out.weight, std=0.02)
    teacher.requires_grad_(False)
    d = Diffusion()
    x0, noise, t, x_t, inp = _problem(d)
    bs, bt = kd.bottleneck_name(student), kd.first_decoder_name(teacher)
    proj = kd.Projector(kd.probe_shape(student, bs, inp, t), kd.probe_shape(teacher, bt, inp, t))
    assert proj.proj is not None and proj.size is None  # 64 -> 128 channels, same 8x8
    with kd.FeatureTap(student, bs) as ts, kd.FeatureTap(teacher, bt, detach=True) as tt:
        with torch.no_grad():
            eps_t = teacher(inp, t)
        eps_s = student(inp, t)
        total, log = kd.kd_objective(eps_s=eps_s, eps_t=eps_t, noise=noise, feat_s=proj(ts.value),
                                     feat_t=tt.value, x_t=x_t, t=t, diffusion=d,
                                     theta_o=kd.output_anchor(student), theta_f=kd.anchor_param(student, bs))
    total.backward()
    assert all(math.isfinite(v) for v in log.values())
    assert 0 < log["w_c"] <= 1e4 and 0 < log["w_fkd"] <= 1e6 and 0 < log["w_lp"] <= 1e6
    assert proj.proj.weight.grad is not None and proj.proj.weight.grad.abs().sum() > 0
    assert student.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_authors_output_anchor_on_moebius_paper():
    """moebius_paper has the authors' conv_out (depthwise 3x3 then pointwise 1x1, default init): the
    output anchor is the pointwise weight (their conv_out.conv_pw), the task gradient there is not 0
    at step 0, so w_C starts off its clamp, unlike with our zero-initialised dense conv_out."""
    torch.manual_seed(3)
    d = Diffusion()
    student = build_unet("moebius_paper", "tiny", table_size=16)
    teacher = build_unet("vanilla", "tiny").eval().requires_grad_(False)
    nn.init.normal_(teacher.conv_out.weight, std=0.05)
    x0, noise, t, x_t, inp = _problem(d)
    s_name, t_name = kd.bottleneck_name(student), kd.first_decoder_name(teacher)
    theta_o, theta_f = kd.output_anchor(student), kd.anchor_param(student, s_name)
    assert theta_o[0] == "conv_out.1.weight" and theta_o[1].shape[-2:] == (1, 1)
    with kd.FeatureTap(teacher, t_name, detach=True) as tap_t, torch.no_grad():
        eps_t = teacher(inp, t)
    with kd.FeatureTap(student, s_name) as tap_s:
        eps_s = student(inp, t)
    proj = kd.Projector(tap_s.value.shape, tap_t.value.shape)
    _, log = kd.kd_objective(eps_s=eps_s, eps_t=eps_t, noise=noise, feat_s=proj(tap_s.value), feat_t=tap_t.value,
                             x_t=x_t, t=t, diffusion=d, theta_o=theta_o[1], theta_f=theta_f[1])
    assert log["gnorm_task@o"] > 0 and log["gnorm_task@f"] > 0
    assert 0 < log["w_c"] < 1e4 and all(0 < log[k] < 1e6 for k in ("w_fkd", "w_lp"))
