"""Diffusion: schedules, q_sample / predict_x0 round trip, DDIM with an oracle, batch independence,
pure-noise start (no ground-truth leak unless asked), exact paste-back; per-sample seeding."""
import pytest
import torch

from lambda_blocks.diffusion import LEAK_INIT, Diffusion, GroundTruthLeakWarning, ddim_timesteps
from lambda_blocks.seeding import key_seed, randn_like_per_sample, randn_per_sample, sample_generators
from lambda_blocks.unet import build_unet

SCHEDULES = ("cosine", "linear", "scaled_linear")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_problem(b=4, c=3, s=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(b, c, s, s, generator=g, dtype=dtype) * 2 - 1) * 0.9
    mask = torch.zeros(b, 1, s, s, dtype=dtype)
    mask[:, :, 4:12, 3:10] = 1.0
    return x0, mask


def oracle(diff: Diffusion, x0: torch.Tensor, c: int = 3):
    """The perfect epsilon predictor for a known clean image."""

    def model(inp, t):
        return diff.predict_eps(inp[:, :c], t, x0)

    return model


def small_model(seed=0):
    torch.manual_seed(seed)
    m = build_unet("lmi", "tiny", widths=(16, 32), context_dim=32, num_tokens=4).eval()
    with torch.no_grad():  # the U-Net's output conv starts at zero; make the model non-trivial
        torch.nn.init.normal_(m.conv_out.weight, std=0.05)
    return m


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_and_roundtrip(schedule):
    kw = dict(beta_start=0.00085, beta_end=0.012) if schedule == "scaled_linear" else {}
    d = Diffusion(schedule, **kw)
    a = d.alphas_cumprod
    assert a.shape == (1000,) and torch.all(a[1:] < a[:-1]) and 0 < a[-1] < a[0] < 1
    x0, _ = make_problem(dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.predict_x0(xt, t, noise), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(d.predict_eps(xt, t, x0), noise, rtol=0, atol=1e-6)


def test_schedule_values():
    assert Diffusion("cosine").alphas_cumprod[-1] < 1e-6  # pure noise at t = T - 1
    paper = Diffusion("scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    assert abs(float(paper[900]) - 0.01415) < 2e-4  # MOEBIUS_SPEC section 7: alpha_bar_900 = 0.01415


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 20, "leading") == list(range(950, -1, -50))
    # the paper's strength 0.99: 19 steps from t = 900
    assert ddim_timesteps(1000, 20, "leading", 0.99) == list(range(900, -1, -50))
    tr = ddim_timesteps(1000, 20, "trailing")
    assert tr[0] == 999 and tr[-1] == 49 and len(tr) == 20
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 20, "linspace")


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ddim_with_oracle_recovers_x0(spacing, schedule):
    d = Diffusion(schedule)
    x0, mask = make_problem(dtype=torch.float64)
    gens = sample_generators([("t", i) for i in range(4)])
    out = d.ddim_sample(oracle(d, x0), x0 * (1 - mask), mask, generators=gens, steps=10, spacing=spacing)
    hole = mask.bool().expand_as(x0)
    torch.testing.assert_close(out[hole], x0[hole], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[~hole], x0[~hole], rtol=0, atol=0)


def test_training_loss_zero_for_oracle():
    d = Diffusion()
    x0, mask = make_problem(dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 100, 600, 990])

    def model(inp, tt):
        assert inp.shape[1] == 7
        torch.testing.assert_close(inp[:, 3:6], x0 * (1 - mask))  # masked image: holes are zero
        torch.testing.assert_close(inp[:, 6:7], mask)
        return d.predict_eps(inp[:, :3], tt, x0)

    assert float(d.training_loss(model, x0, mask, t, noise)) < 1e-12
    assert d.training_loss(model, x0, mask, t, noise, reduction="none").shape == (4,)


def test_sampler_batch_independent():
    d = Diffusion()
    m = small_model()
    x0, mask = make_problem()
    masked = x0 * (1 - mask)
    gens = lambda idx: sample_generators([("img", i, 0) for i in idx])  # noqa: E731
    full = d.ddim_sample(m, masked, mask, generators=gens(range(4)), steps=4)
    alone = torch.cat([d.ddim_sample(m, masked[i:i + 1], mask[i:i + 1], generators=gens([i]), steps=4)
                       for i in range(4)])
    torch.testing.assert_close(full, alone, rtol=0, atol=2e-5)
    # a different subset / order gives the same images
    sub = d.ddim_sample(m, masked[[2, 0]], mask[[2, 0]], generators=gens([2, 0]), steps=4)
    torch.testing.assert_close(sub, full[[2, 0]], rtol=0, atol=2e-5)


def test_paste_back_exact_on_known_pixels():
    d = Diffusion()
    m = small_model()
    x0, mask = make_problem()
    masked = x0 * (1 - mask)
    out = d.ddim_sample(m, masked, mask, generators=sample_generators(range(4)), steps=3)
    known = ~mask.bool().expand_as(x0)
    assert torch.equal(out[known], x0[known])
    assert not torch.equal(out[~known], x0[~known])


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_default_start_is_pure_noise_and_leak_is_explicit():
    d = Diffusion()
    m = small_model()
    x0, mask = make_problem(b=4)
    other = x0.clone()
    hole = mask.bool().expand_as(x0)
    other[hole] = -x0[hole]  # same known pixels, different hidden content
    masked = x0 * (1 - mask)
    gens = lambda: sample_generators([("n", i) for i in range(4)])  # noqa: E731
    a = d.ddim_sample(m, masked, mask, generators=gens(), steps=4)
    b = d.ddim_sample(m, other * (1 - mask), mask, generators=gens(), steps=4)
    assert torch.equal(a, b)  # the sampler never sees the hidden content
    assert abs(_corr(a[hole], x0[hole])) < 0.15
    with pytest.raises(ValueError, match="leak_image"):
        d.ddim_sample(m, masked, mask, generators=gens(), steps=4, leak_image=x0)
    with pytest.raises(ValueError, match="leak_image"):
        d.ddim_sample(m, masked, mask, generators=gens(), steps=4, init=LEAK_INIT)
    with pytest.warns(GroundTruthLeakWarning):
        la = d.ddim_sample(m, masked, mask, generators=gens(), steps=4, init=LEAK_INIT, strength=0.5, leak_image=x0)
    with pytest.warns(GroundTruthLeakWarning):
        lb = d.ddim_sample(m, masked, mask, generators=gens(), steps=4, init=LEAK_INIT, strength=0.5,
                           leak_image=other)
    assert not torch.equal(la[hole], lb[hole])
    # the leak puts the hidden content into the sample (at strength 0.5 the start keeps half of it)
    assert _corr(la[hole], x0[hole]) > max(0.25, abs(_corr(a[hole], x0[hole])) + 0.2)


def test_eta_positive_is_per_sample():
    d = Diffusion()
    m = small_model()
    x0, mask = make_problem()
    masked = x0 * (1 - mask)
    gens = lambda idx: sample_generators([("e", i) for i in idx])  # noqa: E731
    full = d.ddim_sample(m, masked, mask, generators=gens(range(4)), steps=3, eta=1.0)
    one = d.ddim_sample(m, masked[1:2], mask[1:2], generators=gens([1]), steps=3, eta=1.0)
    torch.testing.assert_close(full[1:2], one, rtol=0, atol=2e-5)


def test_seeding_per_sample():
    assert key_seed("a", 1) == key_seed("a", 1) != key_seed("a", 2)
    n4 = randn_per_sample(sample_generators(["x", "y", "z", "w"]), (3, 2, 2))
    n1 = randn_per_sample(sample_generators(["z"]), (3, 2, 2))
    assert torch.equal(n4[2:3], n1)
    x = torch.zeros(2, 3, 4, 4)
    assert randn_like_per_sample(x, sample_generators(["a", "b"])).shape == x.shape
    with pytest.raises(ValueError):
        randn_like_per_sample(x, sample_generators(["a"]))
    t = Diffusion().sample_t(sample_generators(["a", "b", "c"]))
    assert t.shape == (3,) and t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < 1000
