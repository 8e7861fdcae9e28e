"""Fast paths against slow, obviously correct references (lambda_blocks/layers/_reference.py)."""
import pytest
import torch

from lambda_blocks.layers import LAMBDA_CONVS, create_attention, lambda_conv
from lambda_blocks.layers import _reference as ref

D = 16


def build(name, **kw):
    torch.manual_seed(1)
    return create_attention(name, D, **kw).double().eval()


@pytest.mark.parametrize("impl", LAMBDA_CONVS)
@pytest.mark.parametrize("hw", [(5, 7), (3, 3)])
def test_lambda_conv_matches_explicit_position_sum(impl, hw):
    torch.manual_seed(0)
    h, w = hw
    v = torch.randn(2, 2, 3, h * w, dtype=torch.float64)
    weight = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    expected = ref.reference_position_lambda(v, weight, bias, h, w)
    torch.testing.assert_close(lambda_conv(v, weight, bias, h, w, impl), expected)


def test_lambda_conv_formulations_agree_with_gradients():
    torch.manual_seed(0)
    grads = {}
    for impl in LAMBDA_CONVS:
        torch.manual_seed(0)
        v = torch.randn(2, 1, 4, 6 * 5, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(3, 1, 7, 7, dtype=torch.float64, requires_grad=True)
        out = lambda_conv(v, weight, None, 6, 5, impl)
        out.pow(2).sum().backward()
        grads[impl] = (out.detach(), v.grad, weight.grad)
    base = grads[LAMBDA_CONVS[0]]
    for impl in LAMBDA_CONVS[1:]:
        for a, b in zip(base, grads[impl]):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kw", [dict(), dict(dim_u=2, r=3), dict(heads=2, dim_k=8, norm="group"), dict(r=9, norm="none")])
def test_local_lambda_matches_per_pixel_loop(kw):
    m = build("local_lambda", **kw)
    x = torch.randn(2, D, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref.reference_local_lambda(m, x))


@pytest.mark.parametrize(
    "kw", [dict(), dict(dim_u=2), dict(position="table", feat_size=(4, 5), num_tokens=3), dict(position="none")]
)
def test_interactive_lambda_matches_per_pixel_loop(kw):
    m = build("interactive_lambda", **kw)
    x = torch.randn(2, D, 4, 5, dtype=torch.float64)
    ctx = torch.randn(2, 3, D, dtype=torch.float64)
    torch.testing.assert_close(m(x, ctx), ref.reference_interactive_lambda(m, x, ctx))


@pytest.mark.parametrize("fmap", ["elu", "relu"])
def test_linear_attention_matches_quadratic_kernel_form(fmap):
    m = build("linear", feature_map=fmap)
    x = torch.randn(2, D, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref.reference_linear_attention(m, x))


def test_vanilla_matches_explicit_softmax_self_and_cross():
    m = build("vanilla")
    x = torch.randn(2, D, 5, 3, dtype=torch.float64)
    ctx = torch.randn(2, 7, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref.reference_vanilla(m, x))
    torch.testing.assert_close(m(x, ctx), ref.reference_vanilla(m, x, ctx))


def test_linear_and_softmax_attention_differ_but_coincide_on_uniform_weights():
    # With zero queries, softmax weights are uniform; with zero queries and keys, elu+1 features are
    # all ones, so linear weights are uniform too: both return the plain mean of the values.
    van, lin = build("vanilla", heads=2), build("linear", heads=2)
    x = torch.randn(1, D, 4, 4, dtype=torch.float64)
    assert not torch.allclose(van(x), lin(x), atol=1e-3)
    with torch.no_grad():
        v_weight = van.to_kv_self.weight[D:]
        lin.to_qkv.weight.copy_(torch.cat([torch.zeros_like(v_weight), torch.zeros_like(v_weight), v_weight]))
        van.to_q.weight.zero_()
        lin.to_out.load_state_dict(van.to_out.state_dict())
    torch.testing.assert_close(van(x), lin(x))


def test_local_lambda_gradcheck_tiny():
    m = build("local_lambda", heads=2, dim_k=4, r=3)
    x = torch.randn(1, D, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))
