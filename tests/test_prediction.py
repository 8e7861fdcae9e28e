"""Prediction targets (eps / v / x0) and Min-SNR-gamma loss weighting, against hand computations."""
import math

import pytest
import torch

from lambda_blocks.config import resolve
from lambda_blocks.diffusion import LOSS_WEIGHTINGS, PREDICTIONS, Diffusion
from lambda_blocks.seeding import sample_generators


def problem(b=4, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(b, 3, s, s, generator=g, dtype=torch.float64) * 2 - 1) * 0.9
    noise = torch.randn(b, 3, s, s, generator=g, dtype=torch.float64)
    mask = torch.zeros(b, 1, s, s, dtype=torch.float64)
    mask[:, :, 2:6, 1:5] = 1
    return x0, noise, mask


def test_v_by_hand_at_known_abar():
    """v = sqrt(a) eps - sqrt(1 - a) x0, and x0 / eps recovered from (x_t, v), at t where abar is read off."""
    d = Diffusion(prediction="v")
    t = torch.tensor([0, 250, 500, 999])
    a = d.alphas_cumprod[t]
    x0, noise, _ = problem()
    xt = d.q_sample(x0, t, noise)
    v = d.target(x0, t, noise)
    for i in range(4):
        ai = float(a[i])
        torch.testing.assert_close(v[i], math.sqrt(ai) * noise[i] - math.sqrt(1 - ai) * x0[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(xt[i], math.sqrt(ai) * x0[i] + math.sqrt(1 - ai) * noise[i], rtol=0, atol=1e-12)
    x0_hat, eps_hat = d.split_output(xt, t, v)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-10)


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_every_target_round_trips(pred):
    d = Diffusion(prediction=pred)
    t = torch.tensor([1, 100, 600, 900])  # away from abar = 1 / 0, where eps and x0 are ill-posed
    x0, noise, _ = problem(seed=1)
    xt = d.q_sample(x0, t, noise)
    out = d.target(x0, t, noise)
    expect = {"eps": noise, "x0": x0, "v": d.predict_v(x0, t, noise)}[pred]
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    x0_hat, eps_hat = d.split_output(xt, t, out)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-8)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-8)
    torch.testing.assert_close(d.x0_from_output(xt, t, out), x0_hat, rtol=0, atol=0)


def test_v_prediction_is_x0_at_the_pure_noise_end():
    """At t = T - 1 of the cosine schedule abar ~ 2.4e-9: x0_hat = -v up to sqrt(abar) x_t, no amplification."""
    d = Diffusion(prediction="v")
    t = torch.tensor([999])
    xt = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    v = torch.randn_like(xt)
    x0_hat, _ = d.split_output(xt, t, v)
    assert float((x0_hat + v).abs().max()) <= 5e-5 * float(xt.abs().max()) + 1e-8
    de = Diffusion(prediction="eps")  # the same error in eps is multiplied by 1 / sqrt(abar) ~ 2e4
    x0_e, _ = de.split_output(xt, t, v)
    assert float(x0_e.abs().max()) > 1e3


@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddim_with_an_oracle_is_exact_for_every_target(pred, spacing):
    d = Diffusion(prediction=pred)
    x0, _, mask = problem(seed=2)
    x0 = x0.float()
    mask = mask.float()

    def oracle(inp, t):
        xt = inp[:, :3].double()
        a = d.abar(t, xt)
        eps = (xt - a.sqrt() * x0.double()) / (1 - a).sqrt()
        return d.target(x0.double(), t, eps).float()

    out = d.ddim_sample(oracle, x0 * (1 - mask), mask, generators=sample_generators(range(4)), steps=8,
                        spacing=spacing, clip_x0=False)
    assert float((out - x0).abs().max()) < 1e-4


def test_min_snr_weights_by_hand():
    t = torch.tensor([10, 300, 700, 990])
    base = Diffusion()
    a = base.alphas_cumprod[t]
    snr = a / (1 - a)
    gamma = 5.0
    want = {
        "eps": torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / snr,
        "v": torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / (snr + 1),
        "x0": torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)),
    }
    for pred in PREDICTIONS:
        w = Diffusion(prediction=pred, loss_weighting="min_snr", min_snr_gamma=gamma).loss_weights(t)
        torch.testing.assert_close(w, want[pred], rtol=1e-12, atol=0)
        assert torch.all(Diffusion(prediction=pred).loss_weights(t) == 1)
    # at t = 10 the SNR is far above gamma: eps weight gamma / SNR < 1; at t = 990 it is below: weight 1
    w_eps = Diffusion(loss_weighting="min_snr").loss_weights(t)
    assert float(snr[0]) > gamma and float(w_eps[0]) < 0.1 and float(w_eps[-1]) == 1.0


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_min_snr_loss_is_snr_clipped_x0_error(pred):
    """Whatever the target, the Min-SNR loss of an output equals min(SNR, gamma) * MSE(x0_hat, x0)."""
    d = Diffusion(prediction=pred, loss_weighting="min_snr")
    x0, noise, mask = problem(seed=3)
    t = torch.tensor([20, 200, 500, 800])
    g = torch.Generator().manual_seed(9)
    perturb = 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)

    def model(inp, tt):
        xt = inp[:, :3]
        return d.target(x0, tt, noise) + perturb

    loss = d.training_loss(model, x0, mask, t, noise, reduction="none")
    xt = d.q_sample(x0, t, noise)
    x0_hat = d.x0_from_output(xt, t, d.target(x0, t, noise) + perturb)
    snr = d.snr(t)
    want = snr.clamp(max=5.0) * (x0_hat - x0).square().flatten(1).mean(1)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)


def test_training_loss_zero_for_the_perfect_output():
    for pred in PREDICTIONS:
        for lw in LOSS_WEIGHTINGS:
            d = Diffusion(prediction=pred, loss_weighting=lw)
            x0, noise, mask = problem(seed=4)
            t = torch.tensor([5, 50, 500, 995])
            loss = d.training_loss(lambda inp, tt: d.target(x0, tt, noise), x0, mask, t, noise)
            assert float(loss) < 1e-20


def test_bad_prediction_settings_are_refused():
    with pytest.raises(ValueError, match="prediction"):
        Diffusion(prediction="score")
    with pytest.raises(ValueError, match="loss_weighting"):
        Diffusion(loss_weighting="p2")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        Diffusion(min_snr_gamma=0.0)
    with pytest.raises(ValueError, match="diffusion.prediction"):
        resolve("smoke", overrides={"diffusion.prediction": "score"})
    with pytest.raises(ValueError, match="min_snr_gamma"):
        resolve("smoke", overrides={"diffusion.min_snr_gamma": float("nan")})


def test_config_wires_the_target_into_the_diffusion():
    cfg = resolve("dev", arm="lmi")
    d = Diffusion.from_cfg(cfg.diffusion)
    assert (d.prediction, d.loss_weighting, d.min_snr_gamma) == ("v", "min_snr", 5.0)
    assert cfg.eval.spacing == "trailing"


def test_new_fields_at_their_defaults_keep_old_run_names():
    """The committed pre-v dev runs (eps, 200 x 8) keep their folder name under the new fields."""
    old = resolve("dev", arm="lmi", overrides={
        "diffusion.prediction": "eps", "diffusion.loss_weighting": "none", "train.steps": 200, "train.batch_size": 8,
        "train.lr": 2e-3, "train.warmup": 20, "train.ema_decay": 0.99, "train.eval_every": 50,
        "train.ckpt_every": 50, "train.log_every": 5, "train.sample_steps": 5, "eval.ddim_steps": 10,
        "eval.spacing": "leading", "eval.periodic_n": 8, "eval.periodic_full": False,
        "model.lambda_gain": None})  # before the lambda gain
    assert old.run_name == "lmi-dev-tiny-s0-010affe967"
    assert resolve("dev", arm="lmi").run_name != old.run_name


def test_cli_none_is_the_word_for_string_choices():
    """`--set diffusion.loss_weighting=none` (parsed as null) means the choice 'none', as typed."""
    from lambda_blocks.config import parse_sets

    cfg = resolve("dev", overrides=parse_sets(["diffusion.loss_weighting=none", "diffusion.prediction=eps"]))
    assert (cfg.diffusion.loss_weighting, cfg.diffusion.prediction) == ("none", "eps")
    assert resolve("dev", overrides=parse_sets(["latent.ae_preset=none"])).latent.ae_preset is None  # Optional: null
