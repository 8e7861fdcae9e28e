"""Tests of lambda_blocks.explain, the package behind notebooks/00_lambda_walkthrough.ipynb."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lambda_blocks import create_attention, explain as E, explicit_ops

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "00_lambda_walkthrough.ipynb"
TOL = 1e-12


# --------------------------------------------------------------------------------------------
# validate_params


def test_validate_params_defaults_and_values():
    p = E.validate_params()
    assert p == E.WalkthroughParams()
    p = E.validate_params(dim=32, heads=8, r=7, seed=np.int64(3), out_dir="/tmp/x")
    assert (p.dim, p.heads, p.r, p.seed, p.out_dir) == (32, 8, 7, 3, "/tmp/x")
    assert isinstance(p.seed, int)


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(dim=16.0), TypeError),
        (dict(dim="16"), TypeError),
        (dict(r=True), TypeError),
        (dict(out_dir=""), TypeError),
        (dict(out_dir=3), TypeError),
        (dict(profile_csv=None), TypeError),
        (dict(dimm=16), TypeError),
        (dict(r=4), ValueError),
        (dict(cost_r=14), ValueError),
        (dict(r=0), ValueError),
        (dict(seed=-1), ValueError),
        (dict(heads=3), ValueError),  # does not divide dim=16
        (dict(cost_width=320, cost_heads=7), ValueError),
        (dict(height=100), ValueError),  # the per-pixel loops and N x N matrices must stay small
        (dict(rf_side=2), ValueError),
    ],
)
def test_validate_params_rejects(kw, err):
    with pytest.raises(err):
        E.validate_params(**kw)


# --------------------------------------------------------------------------------------------
# Walkthrough


@pytest.mark.parametrize(
    "kw, hw, with_ref",
    [
        (dict(heads=4, r=5), (6, 7), True),  # the notebook's case, also against the per-pixel loop
        (dict(heads=2, dim_u=2, r=3, lambda_conv="conv3d"), (5, 4), True),
        (dict(heads=4, dim_k=8, r=3, norm="none", lambda_conv="unfold", pos_bias=False), (4, 6), False),
    ],
)
def test_walkthrough_reproduces_module_and_reference(kw, hw, with_ref):
    m = E.build("local_lambda", 16, 0, **kw)
    x = E.make_input(16, *hw, seed=1, batch=2)
    steps = E.walkthrough(m, x)
    x1 = x[:1]
    with torch.no_grad():
        torch.testing.assert_close(steps["y"], m(x), atol=TOL, rtol=0)
    steps1 = E.walkthrough(m, x1)
    report = E.check_walkthrough(m, x1, {k: steps1[k].detach() for k in ("q", "keys", "content_lambda", "y")}, reference=with_ref)
    assert len(report) == 5 + with_ref and (report["max_abs_err"] <= 1e-10).all()
    if with_ref:
        assert "per-pixel reference" in report["comparison"].iloc[1]
    # shapes as documented in STEP_DOCS
    b, (h, w) = 2, hw
    k, u, v, nh, n = m.dim_k, m.dim_u, m.dim_v, m.heads, h * w
    assert steps["q"].shape == (b, nh, k, n)
    assert steps["keys"].shape == (b, u, k, n)
    assert steps["v"].shape == (b, u, v, n)
    assert steps["content_lambda"].shape == (b, k, v)
    assert steps["position_lambda"].shape == (b, k, v, n)
    torch.testing.assert_close(steps["keys"].sum(-1), torch.ones(b, u, k, dtype=torch.float64))
    assert list(E.shape_table(steps)["step"]) == list(E.STEP_DOCS)


def test_check_walkthrough_catches_wrong_steps():
    m = E.build("local_lambda", 16, 0, heads=4, r=5)
    x = E.make_input(16, 6, 7, 0)
    steps = E.walkthrough(m, x)
    with pytest.raises(AssertionError, match="content_lambda"):
        E.check_walkthrough(m, x, {"content_lambda": steps["content_lambda"] + 1e-6}, reference=False)
    with pytest.raises(AssertionError, match="shape"):
        E.check_walkthrough(m, x, {"keys": steps["keys"][..., :-1]}, reference=False)
    with pytest.raises(AssertionError, match="unknown step"):
        E.check_walkthrough(m, x, {"attention": steps["y"]}, reference=False)
    # keys normalised over channels instead of positions is a classic mistake: it must be caught
    wrong = steps["k_logits"].softmax(dim=-2)
    with pytest.raises(AssertionError):
        E.check_walkthrough(m, x, {"keys": wrong}, reference=False)
    assert len(E.check_walkthrough(m, x, reference=False)) == 1
    with pytest.raises(TypeError):
        E.walkthrough(E.build("vanilla", 16, 0), x)


def test_walkthrough_terms_add_up():
    m = E.build("local_lambda", 16, 0, heads=4, r=3)
    x = E.make_input(16, 5, 5, 2)
    both = E.walkthrough(m, x)["y"]
    content = E.walkthrough(m, x, position=False)["y"]
    position = E.walkthrough(m, x, content=False)["y"]
    torch.testing.assert_close(both, content + position, atol=TOL, rtol=0)
    assert content.abs().max() > 0 and position.abs().max() > 0
    assert E.walkthrough(m, x, content=False, position=False)["y"].abs().max() == 0


# --------------------------------------------------------------------------------------------
# Receptive fields


def test_receptive_field_of_plain_convs():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    one = torch.nn.Conv2d(3, 2, 1).double()
    three = torch.nn.Conv2d(3, 2, 3, padding=1).double()
    assert torch.equal(E.receptive_field(one, x, (4, 4)) > 0, E.window_mask(9, 9, (4, 4), 1))
    assert torch.equal(E.receptive_field(three, x, (0, 8)) > 0, E.window_mask(9, 9, (0, 8), 3))
    with pytest.raises(ValueError):
        E.receptive_field(lambda t: t.mean(dim=(2, 3)), x, (0, 0))


@pytest.mark.parametrize("r, pixel", [(5, None), (3, None), (5, (0, 1)), (7, (10, 3))])
def test_position_lambda_sees_exactly_the_window(r, pixel):
    side = 11
    rf = E.receptive_fields(8, 2, side, r, seed=0, pixel=pixel, kinds=("lambda_position",))
    window = E.window_mask(side, side, rf["pixel"], r)
    pos = rf["fields"]["lambda_position"]
    assert pos[~window].abs().max() == 0  # exactly zero outside the r x r window
    assert (pos[window] > 0).all()  # and sees every pixel inside it
    if pixel is None:
        assert int(window.sum()) == r * r


def test_content_lambda_and_attention_see_everything():
    side, r = 9, 3
    rf = E.receptive_fields(8, 2, side, r, seed=1)
    assert list(rf["fields"]) == list(E.RF_KINDS) and rf["pixel"] == (4, 4)
    window = E.window_mask(side, side, rf["pixel"], r)
    for kind in ("lambda_content", "local_lambda", "vanilla", "linear"):
        assert (rf["fields"][kind] > 0).all(), kind  # global: every input pixel matters
    # the full layer's field is the position window plus the (weaker) global content part
    full = rf["fields"]["local_lambda"]
    assert full[window].mean() > full[~window].mean()
    with pytest.raises(ValueError):
        E.receptive_fields(8, 2, side, r, kinds=("softmax",))


def test_window_mask_clips_at_the_border():
    mask = E.window_mask(6, 7, (0, 0), 5)
    assert mask.shape == (6, 7) and int(mask.sum()) == 9 and mask[2, 2] and not mask[3, 0]


# --------------------------------------------------------------------------------------------
# Implied attention matrices


@pytest.mark.parametrize(
    "name, kw",
    [
        ("vanilla", dict(heads=4)),
        ("linear", dict(heads=2)),
        ("linear", dict(heads=4, feature_map="relu")),
        ("local_lambda", dict(heads=4, r=5)),
        ("local_lambda", dict(heads=2, dim_u=2, r=3, pos_bias=False)),
        ("local_lambda", dict(heads=4, r=5, layer_scale=0.05)),  # a trained gain: one value per channel
    ],
)
def test_implied_attention_rebuilds_the_module(name, kw):
    m = E.build(name, 16, 0, **kw)
    if "layer_scale" in kw:
        with torch.no_grad():
            m.gain.weight.copy_(torch.linspace(0.01, 2.0, 16, dtype=m.gain.weight.dtype))
            torch.testing.assert_close(E.walkthrough(m, E.make_input(16, 5, 6, 3, batch=2))["y"],
                                       m(E.make_input(16, 5, 6, 3, batch=2)), atol=1e-10, rtol=0)
    x = E.make_input(16, 5, 6, 3, batch=2)
    out = E.implied_attention(m, x)
    with torch.no_grad():
        torch.testing.assert_close(out["y"], m(x), atol=1e-10, rtol=0)
    if name in ("vanilla", "linear"):
        w = out["weights"]
        assert w.shape == (2, m.heads, 30, 30)
        assert (w >= 0).all()
        if name == "vanilla" or kw.get("feature_map", "elu") == "elu":
            torch.testing.assert_close(w.sum(-1), torch.ones(2, m.heads, 30, dtype=torch.float64))


def test_implied_position_matrix_is_banded():
    r, h, w = 3, 6, 5
    m = E.build("local_lambda", 16, 0, heads=4, r=r)
    x = E.make_input(16, h, w, 0)
    pos = E.implied_attention(m, x)["position"][0, 0, 0]
    for n in range(h * w):
        band = E.window_mask(h, w, (n // w, n % w), r).reshape(-1)
        assert pos[n][~band].abs().max() == 0
        assert (pos[n][band] != 0).all()
    content = E.implied_attention(m, x)["content"][0, 0, 0]
    assert (content != 0).all()


def test_implied_attention_rejects_other_modules():
    with pytest.raises(TypeError):
        E.implied_attention(E.build("interactive_lambda", 16, 0), E.make_input(16, 3, 3))


def test_implied_attention_panels():
    panels = E.implied_attention_panels(16, 4, 7, 3, 0)
    assert list(panels) == ["Softmax attn", "Linear attn", "Local-λ content", "Local-λ position", "Local-λ content + position"]
    assert all(p.shape == (49, 49) for p in panels.values())
    torch.testing.assert_close(panels["Local-λ content + position"], panels["Local-λ content"] + panels["Local-λ position"])


# --------------------------------------------------------------------------------------------
# Coincidences and differences


def test_functional_forms_match_explicit_quadratic_forms():
    q, k, v = E._qkv(20, 4, 3, 0)
    phi = torch.nn.functional.elu
    A = (phi(q) + 1) @ (phi(k) + 1).T
    torch.testing.assert_close(E.f_linear_attention(q, k, v), (A / A.sum(1, keepdim=True)) @ v)
    kbar = k.softmax(dim=0)
    torch.testing.assert_close(E.f_lambda(q, k, v), (q @ kbar.T) @ v)
    torch.testing.assert_close(E.f_lambda(q, k, v), E.f_kernel_attention(q, k, v, None, E.softmax_over_positions, normalise=False))
    S = torch.exp(q @ k.T / 2.0)
    torch.testing.assert_close(E.f_softmax_attention(q, k, v), (S / S.sum(1, keepdim=True)) @ v)


def test_uniform_weights_give_the_mean_of_the_values():
    case = E.uniform_weights_case(n=30, d=4, e=3, seed=1)
    assert max(case["errors"].values()) < TOL
    mean = case["mean"]
    assert mean.abs().max() > 0.01  # the targets are not trivially zero
    assert case["outputs"]["lambda, q=k=0"].abs().max() == 0  # no normaliser: zero query -> zero output
    torch.testing.assert_close(case["outputs"]["softmax attn, q=k=0"], mean)


def test_lambda_reduces_to_linear_attention_with_softmax_keys():
    out = E.lambda_linear_reduction(dim=16, height=5, width=6, seed=2)
    for key, val in out.items():
        assert val < 1e-10, (key, val)
    assert set(out) >= {"content_vs_kernel_attention", "module_without_position_vs_kernel_attention", "r1_position_offdiagonal"}


def test_comparison_table_properties():
    t = E.comparison_table(n=30, d=4, e=3, seed=0, scale=4.0)
    sm, el, rl, lam = (t[c] for c in ("softmax attn", "linear attn (elu+1)", "linear attn (relu)", "lambda (content, 1 head)"))
    rows = list(t.index)
    zero, minw, rowsum, rel, lin, ent = rows
    assert sm[zero] < TOL and el[zero] < TOL and lam[zero] > 0.01  # the lambda returns 0, not the mean
    assert sm[minw] >= 0 and el[minw] >= 0 and rl[minw] >= 0 and lam[minw] < 0  # signed weights
    assert sm[rowsum] < 1e-12 and el[rowsum] < 1e-12 and lam[rowsum] > 0.1
    assert lam[lin] < TOL and sm[lin] > 0.1 and el[lin] > 0.1  # only the lambda is linear in q
    assert rl[rel] < 1e-10 and sm[rel] > 0.1  # relu linear attention is scale-invariant; softmax is not
    assert math.isclose(lam[rel], 3.0, rel_tol=1e-9)  # y(4q) = 4 y(q)
    assert sm[ent] < -0.1 and abs(lam[ent]) < 1e-12  # softmax sharpens, the lambda does not


# --------------------------------------------------------------------------------------------
# Costs


def flop_counter_macs(m, h, w, context=None):
    x = torch.randn(1, m.dim, h, w)
    with torch.no_grad(), explicit_ops(), FlopCounterMode(display=False) as fc:
        m(x, context)
    return fc.get_total_flops() // 2


@pytest.mark.parametrize("kw", [dict(heads=4, r=5), dict(heads=2, dim_u=2, r=3), dict(heads=4, dim_k=8, r=7)])
def test_local_lambda_mac_terms_sum_and_match_flop_counter(kw):
    torch.manual_seed(0)
    m = create_attention("local_lambda", 16, **kw).eval()
    terms = E.local_lambda_mac_terms(m, 6, 7)
    assert sum(terms.values()) == m.macs(6, 7) == flop_counter_macs(m, 6, 7)


@pytest.mark.parametrize("name", ["vanilla", "linear"])
def test_attention_macs_match_flop_counter(name):
    torch.manual_seed(0)
    m = create_attention(name, 16, heads=4).eval()
    assert m.macs(5, 6) == flop_counter_macs(m, 5, 6)


def test_mac_curves_scaling_and_crossover():
    sides = [16, 32, 64, 128, 256]
    t = E.mac_curves(64, 4, 7, 10, sides)
    assert set(t["variant"]) == {"vanilla", "linear", "local_lambda", "interactive_lambda", "lmi", "2N²d"}
    from lambda_blocks.plotting import loglog_slope

    def slope(var, lo=0):
        g = t[t["variant"] == var].sort_values("pixels").iloc[lo:]
        return loglog_slope(g["pixels"], g["macs"])

    for var in ("linear", "local_lambda"):
        assert abs(slope(var) - 1.0) < 1e-9, var  # exactly proportional to N
    for var in ("interactive_lambda", "lmi"):  # affine in N: a constant cost for the L context tokens
        g = t[t["variant"] == var]
        coef = np.polyfit(g["pixels"].astype(float), g["macs"].astype(float), 1)
        assert np.allclose(np.polyval(coef, g["pixels"].astype(float)), g["macs"], rtol=1e-12) and coef[1] > 0, var
    assert abs(slope("2N²d") - 2.0) < 1e-9
    assert 1.9 < slope("vanilla", lo=3) < 2.0  # tends to 2 once the N² products dominate
    row = t[(t["variant"] == "2N²d") & (t["side"] == 32)].iloc[0]
    assert row["macs"] == 2 * 1024**2 * 64
    # crossover on the dense grid: vanilla more expensive from there on, cheaper just before
    dense = E.mac_curves(64, 4, 7, 10, range(2, 65))
    n = E.crossover_pixels(dense)
    mods = {v: create_attention(v, 64, heads=4, **({"r": 7} if v == "local_lambda" else {})) for v in ("vanilla", "local_lambda")}
    side = int(round(n**0.5))
    assert mods["vanilla"].macs(side, side) > mods["local_lambda"].macs(side, side)
    assert mods["vanilla"].macs(side - 1, side - 1) <= mods["local_lambda"].macs(side - 1, side - 1)
    toy = pd.DataFrame(dict(variant=["a", "a", "b", "b"], pixels=[1, 4, 1, 4], macs=[1, 2, 5, 6]))
    assert E.crossover_pixels(toy, "a", "b") is None
    assert E.crossover_pixels(toy, "b", "a") == 1


def test_block_breakdown_adds_up_to_the_block():
    t = E.block_breakdown(32, 4, 5, 6, 7, 10)
    torch.manual_seed(0)
    blk = create_attention("lmi", 32, heads=4, r=5)
    total = t[t["part"] == "total"].iloc[0]
    assert total["params"] == blk.num_params()
    assert total["macs"] == blk.macs(6, 7, 10)
    assert (t["params"] > 0).all()


def test_interactive_position_params():
    t = E.interactive_position_params(16, 4, [3, 5], context_len=6)
    assert t["fourier_params"].nunique() == 1  # independent of resolution
    for side in (3, 5):
        m = create_attention("interactive_lambda", 16, heads=4, position="table", feat_size=(side, side), num_tokens=6)
        assert t[t["side"] == side]["table_params"].iloc[0] == m.pos_table.numel()
    four = create_attention("interactive_lambda", 16, heads=4)
    assert t["fourier_params"].iloc[0] == sum(p.numel() for p in (*four.to_pos_k.parameters(), *four.pos_gate.parameters()))


def test_load_profile(tmp_path, monkeypatch):
    assert E.load_profile(tmp_path / "missing.csv") is None
    monkeypatch.chdir(tmp_path)
    assert E.load_profile("definitely/not/there.csv") is None
    pd.DataFrame(dict(kind=["block"], variant=["vanilla"], pixels=[64], **{"pass": ["fwd"]}, macs=[1], latency_ms_median=[0.5])).to_csv("p.csv", index=False)
    prof = E.load_profile("p.csv")
    assert prof is not None and prof["latency_ms_median"].iloc[0] == 0.5


# --------------------------------------------------------------------------------------------
# Figures


def test_figures_are_written(tmp_path, monkeypatch):
    m = E.build("local_lambda", 8, 0, heads=2, r=3)
    steps = E.walkthrough(m, E.make_input(8, 4, 5, 0))
    written = E.fig_lambdas(steps, 7, tmp_path)  # real files through plotting.save_figure
    assert [p.name for p in written] == ["walkthrough_lambdas.png", "walkthrough_lambdas.pdf"]
    for p in written:
        assert p.exists() and p.stat().st_size > 1000 and p.parent == tmp_path
    E.show(written)  # outside IPython: a no-op

    # The other figures: drawn, not written (writing PNG + PDF costs ~1 s each on this CPU).
    drawn = []

    def fake_save(fig, out_dir, name):
        import matplotlib.pyplot as plt

        fig.canvas.draw()
        drawn.append((name, [ax.get_title() for ax in fig.axes]))
        plt.close(fig)
        return [Path(out_dir) / f"{name}.png"]

    monkeypatch.setattr(E.plotting, "save_figure", fake_save)
    rf = dict(pixel=(2, 2), r=3, side=5, fields={"lambda_position": E.window_mask(5, 5, (2, 2), 3).double(), "vanilla": torch.rand(5, 5)})
    panels = {"a": torch.rand(25, 25), "b": torch.randn(25, 25)}
    table = E.mac_curves(16, 2, 3, 4, [4, 8, 16])
    prof = pd.DataFrame(dict(kind="block", variant=["vanilla", "vanilla", "local_lambda", "local_lambda"], pixels=[16, 64, 16, 64],
                             macs=1, latency_ms_median=[0.1, 0.9, 0.2, 0.5], hardware="cpu", **{"pass": "fwd"}))
    E.fig_receptive_fields(rf, tmp_path)
    E.fig_key_softmax(steps, tmp_path, max_channels=3)
    E.fig_implied_attention(panels, 5, (2, 2), 3, tmp_path)
    E.fig_costs(table, prof, tmp_path, name="costs_measured")
    E.fig_costs(table, None, tmp_path, name="costs_analytic")
    names = [n for n, _ in drawn]
    assert names == ["walkthrough_receptive_fields", "walkthrough_key_softmax", "walkthrough_implied_attention",
                     "costs_measured", "costs_analytic"]
    titles = dict(drawn)
    assert sum("K̄[" in t for t in titles["walkthrough_key_softmax"]) == 3
    assert any("non-zero: 9/25" in t for t in titles["walkthrough_receptive_fields"])  # the 3x3 window
    assert any(t.startswith("measured") for t in titles["costs_measured"])
    assert not any(t.startswith("measured (") for t in titles["costs_analytic"])


# --------------------------------------------------------------------------------------------
# The notebook file


def test_notebook_is_clean_and_parameterised():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    nxt = nb["cells"][tagged[0] + 1]
    assert nxt["cell_type"] == "code" and "validate_params(" in "".join(nxt["source"])
    src = "".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in code)
    assert "def " not in src and "class " not in src  # thin: no functions defined in the notebook
    namespace = {}
    exec("".join(nb["cells"][tagged[0]]["source"]), namespace)
    names = {k for k in namespace if not k.startswith("__")}
    assert names == set(E.WalkthroughParams.__dataclass_fields__)  # every parameter is validated
    assert all(isinstance(namespace[k], (int, str)) for k in names)  # flat values only
    E.validate_params(**{k: namespace[k] for k in names})  # the defaults are valid
    # every parameter goes through the one validator (names, types), then the ranges
    assert 'validate_params(**validate_notebook("00_lambda_walkthrough", globals()))' in "".join(nxt["source"])


@pytest.mark.slow
@pytest.mark.notebook
def test_notebook_executes(tmp_path):
    import papermill

    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), parameters=dict(out_dir=str(tmp_path / "figs")),
                               cwd=str(NOTEBOOK.parents[1]), progress_bar=False)
    pngs = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert len(pngs) == 5
    assert set(papermill.inspect_notebook(str(NOTEBOOK))) == set(E.WalkthroughParams.__dataclass_fields__)
