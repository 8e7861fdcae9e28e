"""Contract tests, parametrised over the registry: a new variant gets every test for free."""
import pytest
import torch

import lambda_blocks
from lambda_blocks.layers import create_attention, get_attention_class, list_attention

DIM, CTX_LEN = 32, 6
REQUIRED = {"vanilla", "linear", "local_lambda", "interactive_lambda", "lmi"}


def build(name, dim=DIM, **kw):
    torch.manual_seed(0)
    return create_attention(name, dim, **kw)


def context_for(m, b, dtype=torch.float32, length=CTX_LEN):
    return torch.randn(b, length, m.context_dim, dtype=dtype) if m.requires_context else None


def test_registry_has_the_five_variants():
    assert REQUIRED <= set(lambda_blocks.list_attention())


def test_unknown_variant_lists_known_names():
    with pytest.raises(KeyError) as err:
        create_attention("flash_lambda", DIM)
    for name in REQUIRED:
        assert name in str(err.value)


@pytest.mark.parametrize("name", list_attention())
def test_unknown_keyword_raises(name):
    with pytest.raises(TypeError, match="bogus"):
        create_attention(name, DIM, bogus=3)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("vanilla", dict(heads=5), "heads=5 does not divide dim=32"),
        ("linear", dict(heads=3), "heads=3 does not divide"),
        ("local_lambda", dict(r=4), "odd"),
        ("local_lambda", dict(r=0), "positive"),
        ("local_lambda", dict(heads=6), "heads=6 does not divide"),
        ("local_lambda", dict(dim_k=5), "dim_k=5 does not divide"),
        ("local_lambda", dict(norm="instance"), "unknown norm"),
        ("local_lambda", dict(lambda_conv="fft"), "unknown lambda_conv"),
        ("interactive_lambda", dict(position="rope"), "unknown position"),
        ("interactive_lambda", dict(position="table"), "feat_size"),
        ("interactive_lambda", dict(dim_u=0), "positive"),
        ("lmi", dict(r=2), "odd"),
        ("vanilla", dict(heads=-1), "positive"),
    ],
)
def test_invalid_settings_raise_clear_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_attention(name, DIM, **kwargs)


def test_non_positive_dim_raises():
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        create_attention("local_lambda", 0)


@pytest.mark.parametrize("name", list_attention())
@pytest.mark.parametrize("hw", [(7, 5), (1, 1), (4, 9), (8, 8)])
def test_shape_on_odd_non_square_inputs(name, hw):
    m = build(name).eval()
    for b in (1, 3):
        x = torch.randn(b, DIM, *hw)
        y = m(x, context_for(m, b))
        assert y.shape == x.shape
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_attention())
def test_float64_and_any_context_length(name):
    m = build(name).double().eval()
    x = torch.randn(2, DIM, 5, 6, dtype=torch.float64)
    for length in (1, 3, 17):
        y = m(x, context_for(m, 2, torch.float64, length))
        assert y.dtype == torch.float64 and y.shape == x.shape


@pytest.mark.parametrize("name", list_attention())
def test_bf16_autocast(name):
    m = build(name).eval()
    x = torch.randn(2, DIM, 6, 5)
    ctx = context_for(m, 2)
    ref = m(x, ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, ctx)
    assert y.shape == x.shape and torch.isfinite(y).all()
    rel = (y.float() - ref).norm() / ref.norm()
    assert rel < 0.1, f"bf16 result deviates by {rel:.3f}"


@pytest.mark.parametrize("name", list_attention())
def test_every_parameter_gets_a_finite_gradient(name):
    m = build(name).train()
    x = torch.randn(2, DIM, 6, 5, requires_grad=True)
    loss = m(x, context_for(m, 2)).square().mean()
    if m.supports_context and not m.requires_context:  # vanilla: self and cross paths own parameters
        loss = loss + m(x, torch.randn(2, CTX_LEN, m.context_dim)).square().mean()
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_attention())
def test_eval_mode_batch_independence(name):
    m = build(name, norm="batch") if "norm" in _args(name) else build(name)
    m.train()
    m(torch.randn(8, DIM, 5, 7), context_for(m, 8))  # update any running statistics
    m.eval()
    assert_batch_independent(m)


@pytest.mark.parametrize("name", list_attention())
def test_train_mode_batch_independence_without_batchnorm(name):
    m = build(name).train()
    assert not m.couples_batch_in_train, "the default norms must not couple samples"
    assert_batch_independent(m)


def test_paper_batchnorm_couples_samples_in_train_mode():
    m = build("local_lambda", norm="batch").train()
    assert m.couples_batch_in_train
    x = torch.randn(4, DIM, 5, 7)
    assert not torch.allclose(m(x)[:1], m(x[:1]), atol=1e-4)


@pytest.mark.parametrize("name", list_attention())
def test_context_errors(name):
    m = build(name)
    x = torch.randn(2, DIM, 4, 4)
    cls = get_attention_class(name)
    if not cls.supports_context:
        with pytest.raises(ValueError, match="takes no context"):
            m(x, torch.randn(2, 3, DIM))
        return
    with pytest.raises(ValueError, match="context"):
        m(x, torch.randn(3, 3, m.context_dim))  # batch mismatch
    with pytest.raises(ValueError, match="channels"):
        m(x, torch.randn(2, 3, m.context_dim + 1))
    if cls.requires_context:
        with pytest.raises(ValueError, match="needs context"):
            m(x)


def test_wrong_channel_count_raises():
    m = build("local_lambda")
    with pytest.raises(ValueError, match="expected 32 channels"):
        m(torch.randn(1, 16, 4, 4))


def test_interactive_table_is_fixed_to_its_size_and_fourier_is_not():
    table = build("interactive_lambda", position="table", feat_size=(4, 6), num_tokens=5)
    table(torch.randn(1, DIM, 4, 6), torch.randn(1, 5, DIM))
    with pytest.raises(ValueError, match="fixed to feat_size"):
        table(torch.randn(1, DIM, 6, 4), torch.randn(1, 5, DIM))
    with pytest.raises(ValueError, match="fixed to feat_size"):
        table(torch.randn(1, DIM, 4, 6), torch.randn(1, 7, DIM))
    fourier = build("interactive_lambda")
    for hw, length in (((4, 6), 5), ((9, 3), 12)):
        assert fourier(torch.randn(1, DIM, *hw), torch.randn(1, length, DIM)).shape == (1, DIM, *hw)


def test_position_term_makes_the_output_depend_on_position():
    # With a constant input image, only the position lambda can make pixels differ.
    for name in ("local_lambda", "interactive_lambda"):
        m = build(name, norm="none").eval()
        x = torch.randn(1, DIM, 1, 1).expand(1, DIM, 9, 9).contiguous()
        y = m(x, context_for(m, 1))
        assert y.std(dim=(2, 3)).mean() > 1e-3, name
        off = build(name, norm="none", **({"position": "none"} if name == "interactive_lambda" else {})).eval()
        if name == "interactive_lambda":
            assert off(x, context_for(off, 1)).std(dim=(2, 3)).max() < 1e-5


def test_lmi_is_the_composition_of_its_parts():
    m = build("lmi")
    blk = m.block
    assert blk.self_mixer.name == "local_lambda"
    assert blk.cross_mixer.name == "interactive_lambda"
    assert type(blk.ffn).__name__ == "MixFFN" and blk.ffn.hidden == int(2.5 * DIM)


def assert_batch_independent(m, b=4):
    """f(x)[i] == f(x[i:i+1]) for every sample i."""
    x = torch.randn(b, DIM, 5, 7)
    ctx = context_for(m, b)
    full = m(x, ctx)
    for i in range(b):
        one = m(x[i : i + 1], None if ctx is None else ctx[i : i + 1])
        torch.testing.assert_close(full[i : i + 1], one, rtol=1e-4, atol=1e-5)


def _args(name):
    import inspect

    return inspect.signature(get_attention_class(name).__init__).parameters


@pytest.mark.parametrize("dim_u", [1, 2])
def test_interactive_fourier_equals_the_formed_position_lambda(dim_u):
    """The factorised application (gate moved onto the queries) is Bello's (λc + λp_n)^T q_n with
    λp_n[k, v] = Σ_u G(p_n)[k, u] Σ_l P[u, k, l] V[u, v, l] formed explicitly, in float64."""
    from einops import rearrange

    from lambda_blocks.layers.lambda_layers import fourier_features

    m = build("interactive_lambda", dim_u=dim_u).double().eval()
    x, ctx = torch.randn(2, DIM, 5, 7, dtype=torch.float64), torch.randn(2, 9, DIM, dtype=torch.float64)
    u = dim_u
    q = rearrange(m.norm_q(m.to_q(x)), "b (h k) x y -> b h k (x y)", h=m.heads)
    keys = rearrange(m.to_k(ctx), "b l (u k) -> b u k l", u=u).softmax(-1)
    v = rearrange(m._values(ctx), "b l (u v) -> b u v l", u=u)
    pk = rearrange(m.to_pos_k(ctx), "b l (u k) -> b u k l", u=u)
    gate = rearrange(m.pos_gate(fourier_features(5, 7, m.n_freq, x.device, x.dtype)), "n (k u) -> n k u", u=u)
    lam_c = torch.einsum("bukl,buvl->bkv", keys, v)
    lam_p = torch.einsum("nku,bukl,buvl->bkvn", gate, pk, v)
    y = torch.einsum("bhkn,bkvn->bhvn", q, lam_p + lam_c[..., None])
    want = rearrange(y, "b h v (x y) -> b (h v) x y", x=5)
    torch.testing.assert_close(m(x, ctx), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["local_lambda", "interactive_lambda", "lmi"])
def test_layer_scale_is_a_learned_per_channel_gain_and_nothing_else(name):
    """``layer_scale=s``: the same layer (same draws of every other weight) times a per-channel gain
    that starts at s and learns; None adds no parameter (the paper's layer, old checkpoints load)."""
    plain, scaled = build(name), build(name, layer_scale=0.05)
    added = set(scaled.state_dict()) - set(plain.state_dict())
    assert added and all(k.endswith("gain.weight") for k in added)  # the gain, and only the gain, is new
    assert set(plain.state_dict()) <= set(scaled.state_dict())
    scaled.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, DIM, 8, 6)
    ctx = context_for(plain, 2)
    if name == "lmi":  # the gain sits inside the block's residual sums: compare each lambda layer
        blk_p, blk_s = plain.block, scaled.block
        h = torch.randn(2, DIM, 8, 6)
        torch.testing.assert_close(blk_s.self_mixer(h), 0.05 * blk_p.self_mixer(h))
        torch.testing.assert_close(blk_s.cross_mixer(h, ctx), 0.05 * blk_p.cross_mixer(h, ctx))
    else:
        torch.testing.assert_close(scaled(x, ctx), 0.05 * plain(x, ctx))
    gain = next(p for n, p in scaled.named_parameters() if n.endswith("gain.weight"))
    assert gain.shape == (DIM,)
    scaled(x, ctx).square().sum().backward()
    assert gain.grad is not None and gain.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), True, "0.1"])
def test_layer_scale_rejects_what_is_not_a_positive_number(bad):
    for name in ("local_lambda", "interactive_lambda"):
        with pytest.raises(ValueError, match="layer_scale"):
            build(name, layer_scale=bad)


def test_without_a_gain_a_lambda_branch_starts_far_larger_than_an_attention_branch():
    """Why the gain exists: a lambda layer sums k products of unit-variance queries and lambdas and
    has no output projection, so on LayerNormed tokens its output starts ~20x an attention's; with
    ``layer_scale=0.05`` it starts within the attentions' range."""
    torch.manual_seed(1)
    x = torch.nn.functional.layer_norm(torch.randn(4, DIM, 16, 16).transpose(1, 3), (DIM,)).transpose(1, 3)
    ctx = torch.randn(4, 16, DIM)
    with torch.no_grad():
        attn = [float(build(n)(x, ctx if build(n).requires_context else None).std()) for n in ("vanilla", "linear")]
        lam = {n: [float(build(n, layer_scale=s)(x, ctx if n == "interactive_lambda" else None).std())
                   for s in (None, 0.05)] for n in ("local_lambda", "interactive_lambda")}
    for n, (raw, gained) in lam.items():
        assert raw > 10 * max(attn), (n, raw, attn)
        assert min(attn) / 3 < gained < 3 * max(attn), (n, gained, attn)


def test_slow_bf16_cpu_ops_compute_in_float32_under_autocast_only():
    """GroupNorm32 (the U-Net's GroupNorm) and linear attention's elu+1 feature map upcast a bf16
    input under autocast (CPU's bf16 kernels for them were 3-5x slower than float32) and are the
    plain ops otherwise: same state-dict keys as nn.GroupNorm, bit-identical in float32."""
    from lambda_blocks.layers.attention import FEATURE_MAPS
    from lambda_blocks.layers.blocks import group_norm
    from lambda_blocks.layers.common import GroupNorm32, f32_under_autocast

    gn = group_norm(32)
    ref = torch.nn.GroupNorm(gn.num_groups, 32, eps=gn.eps)
    ref.load_state_dict(gn.state_dict())
    assert isinstance(gn, GroupNorm32) and set(gn.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 32, 5, 7)
    assert torch.equal(gn(x), ref(x))
    xb = x.bfloat16()
    assert f32_under_autocast(xb) is xb  # no autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gn(xb)
        phi = FEATURE_MAPS["elu"](xb)
        assert f32_under_autocast(x) is x  # float32 stays as it is
    assert out.dtype == torch.float32 and torch.equal(out, ref(xb.float()))
    assert phi.dtype == torch.float32 and torch.equal(phi, torch.nn.functional.elu(xb.float()) + 1)


def test_interactive_lambda_feature_cache_survives_inference_mode_then_training():
    """The Fourier features are cached per size; an entry first made under inference_mode must still
    serve a training forward (an inference tensor cannot be saved for backward)."""
    from lambda_blocks.layers.lambda_layers import _cached_fourier_features, fourier_features

    torch.manual_seed(0)
    m = create_attention("interactive_lambda", 16, heads=2)
    x, ctx = torch.randn(2, 16, 7, 9), torch.randn(2, 3, 16)
    with torch.inference_mode():
        y0 = m(x, ctx)
    y = m(x, ctx)
    y.square().sum().backward()
    assert m.pos_gate.weight.grad is not None and m.pos_gate.weight.grad.abs().sum() > 0
    torch.testing.assert_close(y.detach(), y0)
    feats = _cached_fourier_features(7, 9, m.n_freq, x.device, x.dtype)
    assert not feats.is_inference() and feats is _cached_fourier_features(7, 9, m.n_freq, "cpu", x.dtype)
    torch.testing.assert_close(feats, fourier_features(7, 9, m.n_freq, x.device, x.dtype), rtol=0, atol=0)
