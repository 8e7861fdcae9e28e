"""Profiling: analytic MACs against two counters, unsupported ops surfaced, scaling, the CSV CLI,
the lambda-convolution formulations, and the timing / memory dispatch (no timed assertions)."""
import csv
import math

import pytest
import torch

from lambda_blocks import build_unet, profiling as P
from lambda_blocks.layers import LAMBDA_CONVS, explicit_ops, lambda_conv, list_attention
from lambda_blocks.layers.lambda_layers import apply_lambdas
from lambda_blocks.profiling import timing as PT
from lambda_blocks.profiling.cli import main

DIM, L, B = 32, 16, 2


@pytest.fixture(autouse=True)
def one_thread():
    """Counts and dispatch do not depend on threads; one thread keeps this file fast on a loaded
    2-core machine (two OpenMP threads stall whenever a core is taken by another process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name, **kw):
    return P.build_block(name, DIM, seed=0, **kw).eval()


def inputs(m, h, w, b=B):
    return P.block_inputs(m, h, w, b, context_len=L)


def analytic(m, h, w, b=B):
    return P.analytic_macs(m, h, w, L if m.requires_context else 0, b)


CASES = [(name, {}) for name in list_attention()] + [
    ("local_lambda", dict(lambda_conv=impl)) for impl in ("conv3d", "unfold", "rfft", "toeplitz")
] + [
    ("local_lambda", dict(dim_u=2, r=5, norm="group")),
    ("interactive_lambda", dict(position="none")),
    ("interactive_lambda", dict(position="table", feat_size=(6, 5), num_tokens=L)),
    ("interactive_lambda", dict(dim_u=2)),
    ("lmi", dict(r=7, ffn_ratio=2.0)),
]


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_analytic_macs_match_fvcore_and_torch_exactly(name, kw):
    """Tolerance: exact (0 MACs) for fvcore and for torch's FlopCounterMode."""
    m = build(name, **kw)
    h, w = (6, 5) if kw.get("position") == "table" else (7, 5)
    x = inputs(m, h, w)
    fv = P.fvcore_macs(m, x)
    expected = analytic(m, h, w)
    assert fv["macs"] == expected, fv["by_operator"]
    assert fv["unsupported_matmul"] == {}, fv["unsupported"]
    assert P.torch_macs(m, x) == expected
    # the meta-device count equals the count on real tensors
    assert P.torch_macs(m, x, meta=False) == P.torch_macs(m, x)


def test_norms_are_reported_apart_from_macs():
    m = build("lmi")
    fv = P.fvcore_macs(m, inputs(m, 8, 8))
    assert fv["other"] > 0 and {"group_norm", "layer_norm"} <= set(fv["by_operator"])
    assert fv["macs"] == sum(v for k, v in fv["by_operator"].items() if k in P.MATMUL_OPS)


def test_fused_sdpa_is_reported_not_dropped_without_explicit_ops():
    m = build("vanilla")
    x = inputs(m, 8, 8)
    fused = P.fvcore_macs(m, x, explicit=False)
    assert "aten::scaled_dot_product_attention" in fused["unsupported"]
    assert "aten::scaled_dot_product_attention" in fused["unsupported_matmul"]
    assert fused["macs"] < analytic(m, 8, 8)
    explicit = P.fvcore_macs(m, x)
    assert "aten::scaled_dot_product_attention" not in explicit["unsupported"]
    assert explicit["macs"] == analytic(m, 8, 8)
    # the fast rfft lambda convolution is invisible to counters unless explicit_ops swaps it for conv2d
    ll = build("local_lambda", lambda_conv="rfft").train()
    xl = P.block_inputs(ll, 8, 8, 1, requires_grad=True)
    with torch.enable_grad():
        assert P.fvcore_macs(ll, xl)["macs"] == analytic(ll, 8, 8, 1)


@pytest.mark.parametrize("name", list_attention())
def test_mac_scaling_16_to_64(name):
    m = build(name)
    ratio_analytic = analytic(m, 64, 64, 1) / analytic(m, 16, 16, 1)
    ratio_torch = P.torch_macs(m, inputs(m, 64, 64, 1)) / P.torch_macs(m, inputs(m, 16, 16, 1))
    for ratio in (ratio_analytic, ratio_torch):
        if name == "vanilla":
            assert ratio >= 100
        else:
            assert ratio <= 24


@pytest.mark.parametrize("arm", ["lmi", "vanilla"])
def test_unet_fvcore_counts_and_reports_unsupported_ops(arm):
    net = build_unet(arm, "tiny").eval()
    x = P.unet_inputs(net, 16, 16, 1)
    fv = P.fvcore_macs(net, x)
    assert fv["macs"] > 0
    assert fv["unsupported"], "elementwise ops (silu, add, softmax...) must be listed, not hidden"
    assert fv["unsupported_matmul"] == {}
    assert P.format_ops(fv["unsupported"]).count(";") == len(fv["unsupported"]) - 1
    assert P.torch_macs(net, x) == fv["macs"]  # the two counters agree exactly


def test_einsum_macs_brute_force():
    cases = [
        ("bhnd,bhne->bhde", [(2, 3, 5, 4), (2, 3, 5, 6)]),
        ("nku,bukv->bkvn", [(7, 3, 1), (2, 1, 3, 4)]),
        ("kuq,buqvn->bkvn", [(3, 2, 5), (2, 2, 5, 4, 6)]),
        ("bhkn,bkv->bhvn", [(2, 3, 4, 5), (2, 4, 6)]),
        ("...ij,...jk->...ik", [(3, 2, 4), (4, 5)]),
    ]
    for eq, shapes in cases:
        lhs, rhs = eq.split("->")
        if "..." in eq:
            expected = 3 * 2 * 4 * 5
        else:
            sizes = {}
            for term, shape in zip(lhs.split(","), shapes):
                sizes.update(zip(term, shape))
            expected = math.prod(sizes.values())
        assert P.einsum_macs(eq, shapes) == expected, eq
    assert P.einsum_macs("ij,jk,kl->il", [(10, 20), (20, 30), (30, 5)]) == 20 * 30 * 5 + 10 * 20 * 5
    assert P.einsum_macs("ij->ji", [(3, 4)]) == 0


# ------------------------------------------------------------------------------------------------
# lambda convolution formulations


@pytest.mark.parametrize("u, r, hw", [(1, 15, (9, 11)), (2, 5, (6, 6)), (1, 9, (4, 13))])
def test_lambda_conv_formulations_agree_float64_with_gradients(u, r, hw):
    h, w = hw
    torch.manual_seed(0)
    v0 = torch.randn(2, u, 3, h * w, dtype=torch.float64)
    w0 = torch.randn(4, u, r, r, dtype=torch.float64)
    b0 = torch.randn(4, dtype=torch.float64)
    results = {}
    for impl in LAMBDA_CONVS:
        v, wt, b = (t.clone().requires_grad_() for t in (v0, w0, b0))
        out = lambda_conv(v, wt, b, h, w, impl)
        out.pow(2).sum().backward()
        results[impl] = (out.detach(), v.grad, wt.grad, b.grad)
    for impl in LAMBDA_CONVS[1:]:
        for a, b in zip(results["conv2d"], results[impl]):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_lambda_conv_float32_and_auto_dispatch(monkeypatch):
    torch.manual_seed(0)
    v = torch.randn(1, 1, 16, 20 * 20)
    wt = torch.randn(16, 1, 15, 15) / 15
    ref = lambda_conv(v, wt, None, 20, 20, "conv2d")
    torch.testing.assert_close(lambda_conv(v, wt, None, 20, 20, "rfft"), ref, rtol=1e-4, atol=1e-5)
    calls = []
    real = torch.fft.rfft2
    monkeypatch.setattr(torch.fft, "rfft2", lambda *a, **k: calls.append(1) or real(*a, **k))
    from lambda_blocks.layers import lambda_layers as LL

    band, real_band = [], LL._band_conv
    monkeypatch.setattr(LL, "_band_conv", lambda *a, **k: band.append(1) or real_band(*a, **k))
    with torch.no_grad():
        out = lambda_conv(v, wt, None, 20, 20, "auto")
    assert band and not calls, "forward-only passes of few rows (B*v < 64: one image) on maps up to 32^2 use band"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    v40 = torch.randn(4, 1, 16, 40 * 40)
    with torch.no_grad():
        out = lambda_conv(v40, wt, None, 40, 40, "auto")
    assert calls, "forward-only passes on maps over 32^2 pixels use rfft"
    torch.testing.assert_close(out, lambda_conv(v40, wt, None, 40, 40, "conv2d"), rtol=1e-4, atol=1e-5)
    calls.clear()
    lambda_conv(v, wt.clone().requires_grad_(True), None, 20, 20, "auto")
    assert calls, "r >= 9 with gradients uses rfft"
    calls.clear()
    lambda_conv(v, torch.randn(16, 1, 7, 7, requires_grad=True), None, 20, 20, "auto")
    assert not calls, "small kernels use conv2d"
    with explicit_ops():
        lambda_conv(v, wt, None, 20, 20, "auto")
    assert not calls, "counters see the direct convolution"


def test_apply_lambdas_matches_einsum_and_gradcheck():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(apply_lambdas(q, lam), torch.einsum("bhkn,bkvn->bhvn", q, lam))
    assert torch.autograd.gradcheck(apply_lambdas, (q, lam))


def test_apply_lambdas_streams_contiguous_pixel_rows(monkeypatch):
    """Queries normalised by LayerNorm2d are channels-last views (pixels at stride k); the fused
    passes get them with the pixel axis contiguous, and the result is unchanged."""
    from lambda_blocks.layers import lambda_layers as LL

    torch.manual_seed(0)
    m = LL.LocalLambda(16, heads=4, r=5)
    x = torch.randn(2, 16, 6, 7)
    q = m.norm_q(m.to_q(x)).flatten(2).unflatten(1, (4, 4))  # (B, h, k, N), as LocalLambda.forward makes it
    assert q.stride(-1) != 1, "the case this guards: LayerNorm2d's output is channels-last"
    lam = torch.randn(2, 4, 4, 42)
    seen = []
    real = LL._ApplyLambdas.apply
    monkeypatch.setattr(LL._ApplyLambdas, "apply", lambda qq, ll: seen.append(qq.stride(-1)) or real(qq, ll))
    y = apply_lambdas(q, lam)
    assert seen == [1]
    torch.testing.assert_close(y, torch.einsum("bhkn,bkvn->bhvn", q, lam))
    seen.clear()
    m(x).sum().backward()  # the layer itself goes through the same path
    assert seen == [1] and m.to_q.weight.grad is not None


# ------------------------------------------------------------------------------------------------
# latency / memory dispatch (no timing assertions)


def test_timing_and_memory_dispatch(monkeypatch):
    assert P.timing_method("cpu") == "torch_timer"
    assert P.timing_method("cuda") == "cuda_events"
    assert P.timing_method(torch.device("cuda", 1)) == "cuda_events"
    assert P.memory_method("cpu") == "cpu_profiler_alloc_peak"
    assert P.memory_method("cuda:0") == "cuda_max_allocated"
    seen = []
    monkeypatch.setattr(PT, "_latency_cuda_events", lambda fn, *a, **k: seen.append("cuda") or P.Timing(1, 0, 1, "cuda_events", 1))
    monkeypatch.setattr(PT, "_peak_memory_cuda", lambda fn, dev: seen.append(str(dev)) or 7)
    assert P.latency(lambda: None, "cuda").method == "cuda_events"
    assert P.peak_memory(lambda: None, "cuda") == dict(bytes=7, method="cuda_max_allocated")
    assert seen == ["cuda", "cuda"]
    t = P.latency(lambda: torch.ones(10).sum(), "cpu", min_run_time=0.01, min_reps=3)
    assert t.method == "torch_timer" and t.reps >= 3 and t.median_ms > 0 and t.threads == torch.get_num_threads()


def test_cpu_peak_memory_grows_with_size():
    def alloc(n):
        def fn():
            a = torch.ones(n)
            b = a * 2  # two live buffers at the peak
            return b.sum()
        return fn

    small, large = (P.peak_memory(alloc(n))["bytes"] for n in (1 << 16, 1 << 20))
    assert small >= 2 * 4 * (1 << 16)
    assert large >= 2 * 4 * (1 << 20) > small


def test_make_step_passes():
    m = build("local_lambda")
    x = P.block_inputs(m, 6, 6, 1, requires_grad=True)
    P.make_step(m, x, "fwd")()
    assert all(p.grad is None for p in m.parameters()) and not m.training
    P.make_step(m, x, "fwd_bwd")()
    assert all(p.grad is not None for p in m.parameters()) and m.training and x[0].grad is not None
    with pytest.raises(ValueError, match="unknown pass"):
        P.make_step(m, x, "bwd")


# ------------------------------------------------------------------------------------------------
# analysis helpers


def test_loglog_slope_and_crossover():
    px = [1024, 4096, 16384]
    assert P.loglog_slope(px, [3 * p**2 for p in px]) == pytest.approx(2)
    assert P.loglog_slope(px, [5 * p for p in px]) == pytest.approx(1)
    slow = [p**2 for p in px]  # quadratic
    fast = [4096 * p for p in px]  # linear, equal at 4096
    assert P.crossover(px, slow, fast) == pytest.approx(4096)
    fast2 = [2048 * p for p in px]  # equal at 2048: between the first two points
    assert P.crossover(px, slow, fast2) == pytest.approx(2048)
    assert P.crossover(px, slow, [p**3 for p in px]) is None
    assert P.crossover(px, [10, 10, 10], [1, 1, 1]) == 1024
    assert P.gmacs_per_s(2e9, 1000) == pytest.approx(2)


# ------------------------------------------------------------------------------------------------
# the CLI and its CSV


def read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


FAST = ["--min-run-time", "0.01", "--min-reps", "2", "--device", "cpu", "--threads", "1"]


def test_cli_block_csv_schema_resume_and_force(tmp_path):
    out = tmp_path / "profile.csv"
    argv = ["--attn", "vanilla", "lmi", "--sizes", "8", "6x10", "--width", "16", "--out", str(out)] + FAST
    assert main(argv) == 0
    cols, rows = read(out)
    assert cols == list(P.CSV_COLUMNS)
    assert len(rows) == 2 * 2 * 2  # variants x sizes x passes
    assert len({P.row_key(r) for r in rows}) == len(rows)
    for r in rows:
        assert r["kind"] == "block" and r["error"] == "" and r["channels"] == "16"
        assert int(r["macs"]) == int(r["macs_fvcore"]) > 0 and int(r["macs_torch"]) > 0
        assert float(r["latency_ms_median"]) > 0 and float(r["peak_mem_mb"]) >= 0
        assert int(r["pixels"]) == int(r["height"]) * int(r["width"])
        assert r["mem_method"] == "cpu_profiler_alloc_peak" and r["hardware"] and r["torch_version"] == torch.__version__
    before = {P.row_key(r): r["measured_at"] + r["latency_ms_median"] for r in rows}
    # rerun: nothing re-measured, nothing duplicated; a new batch size adds rows
    assert main(argv) == 0
    _, rows2 = read(out)
    assert {P.row_key(r): r["measured_at"] + r["latency_ms_median"] for r in rows2} == before
    threads = torch.get_num_threads()
    assert main(argv + ["--batch", "2", "--passes", "fwd"]) == 0
    assert torch.get_num_threads() == threads, "main() restores the thread count"
    _, rows3 = read(out)
    assert len(rows3) == len(rows) + 4 and len({P.row_key(r) for r in rows3}) == len(rows3)
    # --force re-measures in place
    assert main(argv + ["--force", "--passes", "fwd"]) == 0
    _, rows4 = read(out)
    assert len(rows4) == len(rows3)


def test_cli_records_invalid_sizes_as_error_rows(tmp_path, capsys):
    out = tmp_path / "p.csv"
    table = '{"position": "table", "feat_size": [8, 8], "num_tokens": 16}'
    rc = main(["--attn", "interactive_lambda", "--sizes", "8", "16", "--width", "16", "--kwargs", table,
               "--passes", "fwd", "--out", str(out)] + FAST)
    assert rc == 1
    err = capsys.readouterr().err
    assert "interactive_lambda" in err and "16x16" in err and "feat_size" in err
    _, rows = read(out)
    by_size = {r["height"]: r for r in rows}
    assert by_size["8"]["error"] == "" and by_size["8"]["config"]
    assert by_size["16"]["error"].startswith("ValueError") and by_size["16"]["latency_ms_median"] == ""


def test_cli_unet_mode(tmp_path, capsys):
    out = tmp_path / "u.csv"
    rc = main(["--unet", "tiny", "--attn", "lmi", "--sizes", "8", "9", "--passes", "fwd", "--out", str(out)] + FAST)
    assert rc == 1  # 9 is not divisible by 2**(levels-1) = 2
    assert "'lmi' at 9x9" in capsys.readouterr().err
    _, rows = read(out)
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == 1 and ok[0]["kind"] == "unet" and ok[0]["preset"] == "tiny" and ok[0]["macs"] == ""
    assert int(ok[0]["macs_fvcore"]) > 0 and "aten::" in ok[0]["unsupported_ops"]
    assert any("divisible" in r["error"] for r in rows)


def test_cli_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        main(["--attn", "flash", "--out", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit):
        main(["--unet", "tiny", "--attn", "local_lambda_x", "--out", str(tmp_path / "x.csv")])


def test_merge_rows_is_atomic_and_keeps_other_rows(tmp_path):
    path = tmp_path / "m.csv"
    base = dict(kind="block", variant="v", preset="", channels=8, config="", height=4, width=4, batch=1,
                dtype="float32", device="cpu", hardware="hw")
    P.merge_rows(path, [dict(base, **{"pass": p, "latency_ms_median": 1.0}) for p in ("fwd", "fwd_bwd")])
    P.merge_rows(path, [dict(base, **{"pass": "fwd", "latency_ms_median": 2.0})])
    _, rows = read(path)
    assert sorted((r["pass"], r["latency_ms_median"]) for r in rows) == [("fwd", "2.0"), ("fwd_bwd", "1.0")]
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no temporary files left


def test_one_loglog_slope_skips_failed_points():
    from lambda_blocks import plotting

    assert plotting.loglog_slope is P.loglog_slope
    assert P.loglog_slope([16, 32, 0, 64], [1, 4, 5, float("nan")]) == pytest.approx(2)
    assert math.isnan(P.loglog_slope([16], [1])) and math.isnan(P.loglog_slope([16, 32], [1, float("inf")]))


def test_a_cost_line_joins_one_consistent_set_of_rows():
    """Rows of several thread counts or batches for one size never make one line zigzag."""
    import pandas as pd

    from lambda_blocks.plotting import consistent_block_rows

    rows = []
    for threads in (1, 1, 2):
        for px in (256, 1024):
            for batch in (1, 4):
                rows.append(dict(kind="block", variant="lmi", pixels=px, batch=batch, threads=threads, dtype="float32",
                                 hardware="X", latency_ms_median=px * threads * batch, measured_at=f"2026-0{threads}"))
    rows.append(dict(kind="block", variant="lmi", pixels=256, batch=1, threads=1, dtype="float32", hardware="X",
                     latency_ms_median=1.0, measured_at="2026-09", **{"pass": "fwd_bwd"}))
    # a memory-only row of another construction, measured later, must not replace the timed row
    rows.append(dict(kind="block", variant="lmi", pixels=1024, batch=1, threads=1, dtype="float32", hardware="X",
                     config='{"explicit_ops":true}', peak_mem_mb=5.0, measured_at="2026-12"))
    df = pd.DataFrame(rows).fillna({"pass": "fwd"})
    got = consistent_block_rows(df)
    assert got["pixels"].tolist() == [256, 1024]
    assert (got["threads"] == 1).all() and (got["batch"] == 1).all() and got["latency_ms_median"].tolist() == [256, 1024]


def test_auto_lambda_conv_picks_by_pass_and_size():
    from lambda_blocks.layers.lambda_layers import _auto_lambda_conv

    w15 = torch.zeros(16, 1, 15, 15, requires_grad=True)
    small, large = torch.zeros(4, 1, 16, 16 * 16), torch.zeros(4, 1, 16, 32 * 32)
    assert _auto_lambda_conv(small, w15, 16, 16) == "toeplitz"  # 256 <= 2 * 225 pixels, 64 rows
    assert _auto_lambda_conv(small[:1], w15, 16, 16) == "rfft"  # 16 rows: the Toeplitz build does not pay
    assert _auto_lambda_conv(large, w15, 32, 32) == "rfft"  # 1024 pixels: k*N^2 too large
    assert _auto_lambda_conv(small, torch.zeros(16, 1, 7, 7, requires_grad=True), 16, 16) == "conv2d"
    huge = torch.zeros(1, 1, 16, 33 * 33)
    with torch.no_grad():  # forward-only: the banded convolution up to 32^2, the GEMM for a batch of small maps
        assert _auto_lambda_conv(small[:1], w15, 16, 16) == "band"
        assert _auto_lambda_conv(small, w15, 16, 16) == "toeplitz"
        assert _auto_lambda_conv(large, w15, 32, 32) == "band"
        assert _auto_lambda_conv(huge, w15, 33, 33) == "rfft"
        assert _auto_lambda_conv(large, torch.zeros(16, 1, 7, 7), 32, 32) == "conv2d"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_toeplitz_lambda_conv_under_autocast(dtype):
    """Under autocast the Toeplitz GEMM runs in autocast's dtype, as the direct convolution would (in
    float32 it was the largest matmul of a bf16 Moebius training step); outside autocast it computes
    in its inputs' dtype. Gradients come back in the inputs' dtypes; both agree with conv2d."""
    torch.manual_seed(0)
    v = torch.randn(2, 1, 8, 12 * 12).to(dtype).requires_grad_()
    wt = (torch.randn(8, 1, 15, 15) / 15).requires_grad_()
    ref = lambda_conv(v.detach().float(), wt.detach(), None, 12, 12, "conv2d")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lambda_conv(v, wt, None, 12, 12, "toeplitz")
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert v.grad.dtype == dtype and wt.grad.dtype == torch.float32
    rel = (out.detach().float() - ref).norm() / ref.norm()
    assert 0 < rel < 2e-2  # bf16 operands, float32 accumulation
    g_ref = torch.autograd.grad(lambda_conv(v.detach().float(), wt, None, 12, 12, "conv2d").sum(), wt)[0]
    assert ((wt.grad - g_ref).norm() / g_ref.norm()) < 2e-2
    plain = lambda_conv(v.detach(), wt.detach(), None, 12, 12, "toeplitz")
    assert plain.dtype == torch.promote_types(dtype, torch.float32)
    if dtype == torch.float32:
        torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-5)


def test_applying_the_lambdas_accumulates_in_float32_under_autocast():
    """bf16 queries and lambdas (what autocast's projections hand over) are summed over k in float32:
    the result is float32 and closer to the float64 einsum than a bf16 accumulation, whose k in-place
    passes round at every pass."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 16, 64, dtype=torch.float64)
    lam = torch.randn(2, 16, 8, 64, dtype=torch.float64)
    exact = torch.einsum("bhkn,bkvn->bhvn", q, lam)
    qb, lb = q.bfloat16(), lam.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = apply_lambdas(qb, lb)
    assert y.dtype == torch.float32
    bf16_acc = qb[:, :, 0, None, :] * lb[:, None, 0]
    for i in range(1, 16):
        bf16_acc = bf16_acc + qb[:, :, i, None, :] * lb[:, None, i]
    err32 = (y.double() - exact).abs().max()
    err16 = (bf16_acc.double() - exact).abs().max()
    assert err32 < err16 / 2


def test_arm_blocks_compare_like_with_like(tmp_path):
    """--arm-blocks profiles each arm's mixing block (norm, projections, self / cross mixers, FFN),
    so the lmi block meets the softmax block of vanilla rather than a bare mixer."""
    from lambda_blocks.layers.blocks import MixBlock2d
    from lambda_blocks.unet import ARMS

    with pytest.raises(ValueError, match="table_size"):
        P.build_arm_block("moebius_paper", 16)
    for arm in ("vanilla", "lmi", "moebius_paper"):
        blk = P.build_arm_block(arm, 16, context_dim=16, table_size=(8, 8), num_tokens=4).eval()
        assert isinstance(blk, MixBlock2d) and blk.requires_context
        assert blk.self_mixer.name == ARMS[arm]["self_mixer"] and blk.cross_mixer.name == ARMS[arm]["cross_mixer"]
        x = P.block_inputs(blk, 8, 8, 1, context_len=4)
        assert P.analytic_macs(blk, 8, 8, 4) == P.fvcore_macs(blk, x)["macs"] > blk.self_mixer.macs(8, 8)
    # the vanilla block is more than bare softmax attention: self + cross + MLP + projections
    assert P.build_arm_block("vanilla", 16).macs(8, 8, 4) > P.build_block("vanilla", 16).macs(8, 8)
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        P.build_arm_block("nope", 16)
    out = tmp_path / "p.csv"
    assert main(["--arm-blocks", "--attn", "vanilla", "lmi", "--sizes", "8", "--width", "16", "--passes", "fwd",
                 "--out", str(out)] + FAST) == 0
    _, rows = read(out)
    assert {r["kind"] for r in rows} == {"arm_block"} and {r["variant"] for r in rows} == {"vanilla", "lmi"}
    with pytest.raises(SystemExit):
        main(["--arm-blocks", "--unet", "tiny", "--attn", "lmi", "--out", str(out)])


def test_layernorm2d_normalises_in_float32_under_autocast():
    """CPU autocast runs layer_norm in bf16 (CUDA's does not); LayerNorm2d normalises a bf16 map in
    float32 under autocast, and leaves every dtype alone outside it."""
    from lambda_blocks.layers.common import LayerNorm2d

    torch.manual_seed(0)
    ln = LayerNorm2d(8)
    x = torch.randn(2, 8, 5, 6)
    ref = ln(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ln(x.bfloat16())
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y - ref).abs().max() < 0.05  # only the input's bf16 rounding
    assert ln.double()(x.double()).dtype == torch.float64


def test_module_breakdown_attributes_self_time_to_the_module_that_spends_it():
    """A module that sleeps 20 ms inside a container: its kind gets the time, the container's self
    time excludes it, the self times add up to the hooked total, and Conv2d is split by shape."""
    import time

    from lambda_blocks.profiling.breakdown import module_breakdown, module_kind

    class Sleeper(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.02)
            return x

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList([torch.nn.Sequential(Sleeper(), torch.nn.Conv2d(4, 4, 3, padding=1))])
            self.dw = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)

        def forward(self, x):
            for s in self.stages:  # a ModuleList is never called: its children's parent is Net
                x = s(x)
            return self.dw(x)

    net = Net()
    rows = {r["name"]: r for r in module_breakdown(net, lambda: net(torch.randn(1, 4, 8, 8)), reps=2)}
    assert rows["Sleeper"]["self_ms"] == pytest.approx(20, abs=8)
    assert rows["Net"]["self_ms"] < 5 and rows["Sequential"]["self_ms"] < 5
    assert {"Conv2d (3x3)", "Conv2d (depthwise)"} <= set(rows)
    parts = sum(r["self_ms"] for n, r in rows.items() if not n.startswith("("))
    assert parts == pytest.approx(rows["(total)"]["self_ms"], rel=0.05)
    assert module_kind(torch.nn.Conv2d(4, 8, 1)) == "Conv2d (1x1)"
    with pytest.raises(ValueError, match="reps"):
        module_breakdown(net, lambda: None, reps=0)


def test_op_families_and_the_op_breakdown():
    from lambda_blocks.profiling.breakdown import op_breakdown, op_family

    assert op_family("aten::bmm") == op_family("aten::mm") == op_family("aten::addmm") == "matmul"
    assert op_family("aten::convolution_backward") == op_family("aten::mkldnn_convolution") == "conv"
    assert op_family("aten::native_layer_norm_backward") == "norm"
    assert op_family("aten::copy_") == op_family("aten::t") == "layout/copy"
    assert op_family("aten::_fft_r2c") == "fft" and op_family("aten::_foreach_add_") == "optimizer"
    assert op_family("aten::addcmul_") == op_family("aten::silu") == "elementwise"
    assert op_family("aten::mean") == "reduction" and op_family("aten::frobnicate") == "other"  # not a "cat"
    assert op_family("Optimizer.step#AdamW.step") == "optimizer" and op_family("aten::elu_backward") == "elementwise"
    assert op_family("autograd::engine::evaluate_function: ConvolutionBackward0") == "conv"
    assert op_family("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    rows = op_breakdown(lambda: (a @ b).add_(1.0), reps=2)
    fams = {r["name"]: r for r in rows}
    assert "matmul" in fams and fams["matmul"]["self_ms"] > 0
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="by"):
        op_breakdown(lambda: None, by="module")
