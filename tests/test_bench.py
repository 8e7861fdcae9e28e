"""The U-Net benchmark and the GPU check: dispatch and bookkeeping, checked on CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_unet as B  # noqa: E402

from lambda_blocks import profiling as P  # noqa: E402


def test_autocast_and_timer_dispatch_by_device():
    cpu = torch.device("cpu")
    with B.autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with B.autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    assert P.timing_method("cuda") == "cuda_events" and P.timing_method("cpu") == "torch_timer"
    assert P.memory_method("cuda") == "cuda_max_allocated"


def test_rows_and_ratios_are_consistent():
    df = B.run(["baseline", "moebius"], "tiny", [16], 2, torch.device("cpu"), rounds=1, dtypes=["fp32"],
               passes=["fwd", "train_step"], min_run_time=0.01)
    assert set(df["arm"]) == {"baseline", "moebius"} and set(df["pass"]) == {"fwd", "train_step"}
    step = df[df["pass"] == "train_step"].iloc[0]
    assert step["batch"] == 2
    assert step["gmac_per_s"] == pytest.approx(step["macs_per_sample"] * 2 * 3 / (step["latency_ms"] / 1e3) / 1e9)
    r = B.ratios(df)
    fwd = df[df["pass"] == "fwd"].set_index("arm")["latency_ms"]
    got = r[r["pass"] == "fwd"]["baseline_over_moebius"].item()
    assert got == pytest.approx(fwd["baseline"] / fwd["moebius"])
    assert (df["macs_per_sample"] > 0).all() and (df["method"].str.contains("torch_timer")).all()


def test_memory_formats_are_a_dimension_with_speedups_and_a_table():
    df = B.run(["baseline", "moebius"], "tiny", [16], 2, torch.device("cpu"), rounds=1, dtypes=["fp32"],
               passes=["fwd"], min_run_time=0.01, formats=B.FORMATS)
    assert len(df) == 4 and set(df["memory_format"]) == set(B.FORMATS)
    r = B.ratios(df)
    lat = df.set_index(["arm", "memory_format"])["latency_ms"]
    cl = r[r["memory_format"] == "channels_last"].iloc[0]
    assert cl["moebius_speedup_vs_fp32_contiguous"] == pytest.approx(lat["moebius", "contiguous"] / lat["moebius", "channels_last"])
    assert cl["baseline_over_moebius"] == pytest.approx(lat["baseline", "channels_last"] / lat["moebius", "channels_last"])
    md = B.markdown(r, meta="note").splitlines()
    assert len([ln for ln in md if ln.startswith("| 16 |")]) == 2 and md[-1] == "note"
    _, _, net = B.make_calls("moebius", "tiny", 16, 2, torch.device("cpu"), "fp32", fmt="channels_last")
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_error_is_small_but_nonzero():
    err = B.bf16_error("baseline", "tiny", 16, torch.device("cpu"))
    assert 0 < err < 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_gpu_check_says_clearly_there_is_no_gpu():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env={"PY": sys.executable, "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr


def test_the_benchmarks_time_the_runs_own_training_step(monkeypatch):
    """bench_unet and bench_train_throughput call train.train_step (no drifting copy of the loop):
    the step they time changes the weights exactly as the run's step does from the same start."""
    import bench_train_throughput as BT

    from lambda_blocks import train as T

    calls = []
    real = T.train_step
    monkeypatch.setattr(T, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, step, net = B.make_calls("moebius", "tiny", 16, 2, torch.device("cpu"), "fp32")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    step()
    assert calls == [1] and any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    st = BT.Stepper(BT.resolve("smoke", arm="linear"), batch=2, image_size=16)
    st.step()
    assert calls == [1, 1] and st.state.step == 1 and st.cfg.data.image_size == 16
    # the same step by hand from the same start gives the same weights
    ref = T.new_state(st.cfg, T.init_model(st.cfg))
    real(ref, st.cfg, st.diff, lambda s, lo, hi: T.make_batch(st.cfg, st.diff, st.data, s, lo, hi))
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, st.model.state_dict()[k]), k


def test_the_distillation_benchmark_times_train_step_with_the_runs_distiller(monkeypatch):
    """bench_distill_step runs train.train_step with the run's own Distiller (no copy of the KD step),
    and its breakdown hooks every section it names (a section missing or never entered would be 0)."""
    import bench_distill_step as BD

    from lambda_blocks import train as T
    from lambda_blocks.latent.distiller import Distiller

    seen = []
    real = T.train_step
    monkeypatch.setattr(T, "train_step", lambda *a, **k: seen.append(k.get("kd")) or real(*a, **k))
    st = BD.Stepper("smoke", "moebius", None, batch=2)
    assert st.cfg_kd.kd.enabled and not st.cfg_plain.kd.enabled and st.cfg_kd.latent.space == "latent"
    st.plain()
    clock = st.timed_kd_step()
    assert seen[0] is None and isinstance(seen[1], Distiller) and seen[1] is st.kd
    assert st.states["plain"].step == 1 and st.states["kd"].step == 1
    assert set(clock) == set(BD.SECTIONS)
    assert all(clock[k] > 0 for k in BD.SECTIONS if not k.startswith("rest"))
    # the wrappers are removed afterwards: the model and torch are as before
    assert "forward" not in vars(st.states["kd"].model) and torch.autograd.grad.__module__ == "torch.autograd"


def test_scaling_benchmark_writes_the_one_profile_table(tmp_path, capsys):
    """bench_scaling merges its rows into a profile table (the schema of python -m
    lambda_blocks.profiling): bare mixers, arm blocks and the matmul references of the same rounds."""
    import bench_scaling as BS

    out = tmp_path / "profile.csv"
    P.merge_rows(out, [dict(kind="unet", variant="lmi", height=32, width=32, **{"pass": "fwd"}, latency_ms_median=1.0)])
    BS.main(["--sizes", "8", "--slope-sizes", "8", "--rounds", "1", "--min-run-time", "0.01", "--passes", "fwd",
             "--variants", "vanilla", "local_lambda", "--arm-blocks", "vanilla", "lmi", "--explicit-max", "8",
             "--threads", "1", "--out", str(out)])
    rows = P.read_rows(out)
    assert list(P.CSV_COLUMNS) == list(rows[0])[:len(P.CSV_COLUMNS)]
    kinds = {(r["kind"], r["variant"], r["config"]) for r in rows}
    assert ("unet", "lmi", "") in kinds  # the rows already there are kept
    assert {("block", "vanilla", ""), ("block", "local_lambda", ""), ("arm_block", "vanilla", ""),
            ("arm_block", "lmi", ""), ("block", "vanilla", '{"explicit_ops":true}')} <= kinds
    timed = [r for r in rows if r["kind"] in ("block", "arm_block") and r["latency_ms_median"]]
    for r in timed:
        assert float(r["efficiency"]) == pytest.approx(float(r["gmacs_per_s"]) / float(r["ref_gmacs_per_s"]), rel=1e-6)
        assert float(r["gmacs_per_s"]) == pytest.approx(int(r["macs"]) / float(r["latency_ms_median"]) / 1e6, rel=1e-6)
        assert r["latency_method"] == "interleaved_torch_timer(rounds=1)" and r["threads"] == "1"
    assert "lmi block vs vanilla block" in capsys.readouterr().out


def test_the_hardware_tag_carries_the_vector_isa(monkeypatch):
    """Two machines of this project are both "AMD EPYC", one AVX2 and one AVX512-BF16: their benchmark
    files must not overwrite each other, and a bf16 row must say whether the CPU has bf16 dot products."""
    assert P.cpu_isa(["avx2", "fma"], "AVX2") == "avx2"
    assert P.cpu_isa(["avx512f"], "AVX512") == "avx512"
    assert P.cpu_isa(["avx512f", "avx512_bf16"], "AVX512") == "avx512-bf16"
    assert P.cpu_isa(["amx_bf16"], "AVX512") == "avx512-bf16"
    assert P.cpu_isa(["avx512_bf16"], "AVX2") == "avx2"  # torch's dispatch decides, not the flag alone
    import _common
    monkeypatch.setattr(_common, "hardware_name", lambda device="cpu": "AMD EPYC")
    monkeypatch.setattr(_common, "cpu_isa", lambda: "avx2")
    assert _common.tag("cpu").startswith("cpu-amd-epyc-avx2-pt")
    monkeypatch.setattr(_common, "cpu_isa", lambda: "avx512-bf16")
    assert _common.tag("cpu").startswith("cpu-amd-epyc-avx512-bf16-pt")


def test_the_dtype_table_states_every_arms_bf16_speedup_and_error():
    df = B.run(["baseline", "moebius"], "tiny", [16], 2, torch.device("cpu"), rounds=1, dtypes=["fp32", "bf16"],
               passes=["fwd"], min_run_time=0.01)
    rows = [ln for ln in B.dtype_table(df).splitlines() if ln.startswith("| 16 |")]
    assert len(rows) == 2
    lat = df.set_index(["arm", "dtype"])["latency_ms"]
    cells = {ln.split("|")[3].strip(): ln.split("|") for ln in rows}
    assert float(cells["moebius"][6]) == pytest.approx(lat["moebius", "fp32"] / lat["moebius", "bf16"], abs=0.006)
    assert 0 < float(cells["baseline"][7]) < 0.1
    assert B.dtype_table(df[df["dtype"] == "fp32"]) == ""


def test_the_breakdown_benchmark_rows_and_summary():
    import bench_breakdown as BD

    df = BD.measure(["moebius"], "tiny", [16], 2, 1, torch.device("cpu"), ["fp32", "bf16"], reps=1)
    assert set(df["view"]) == {"module", "op_family"} and set(df["pass"]) == {"fwd", "train_step"}
    mod = df[(df["view"] == "module") & (df["dtype"] == "fp32")].set_index("name")
    assert {"LocalLambda", "InteractiveLambda", "MixFFN", "(total)", "(hook overhead)"} <= set(mod.index)
    parts = mod[~mod.index.str.startswith("(")]["self_ms"].sum()
    assert parts == pytest.approx(mod.loc["(total)", "self_ms"], rel=0.05)
    step = df[(df["pass"] == "train_step") & (df["dtype"] == "fp32")]
    assert {"conv", "optimizer"} <= set(step["name"]) and step["share"].sum() == pytest.approx(1.0)
    table = BD.summary(df)
    row = next(ln for ln in table.splitlines() if "| module | LocalLambda |" in ln).split("|")
    lat = df[(df["view"] == "module") & (df["name"] == "LocalLambda")].set_index("dtype")["self_ms"]
    assert float(row[9]) == pytest.approx(lat["bf16"] / lat["fp32"], abs=0.006)


def test_the_compile_benchmark_times_train_compile_against_eager(monkeypatch, tmp_path, capsys):
    """bench_compile --pass train_step builds one stepper with train.compile off and one with it on,
    from the same init and batches, and tabulates both; with torch.compile replaced by the identity
    (no inductor here) the two first updates are identical."""
    import pandas as pd

    import bench_compile as BC

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(kw) or m)
    out = tmp_path / "ct.csv"
    assert BC.main(["--pass", "train_step", "--preset", "smoke", "--arms", "linear", "--rounds", "1",
                    "--steps", "1", "--out", str(out)]) == 0
    assert compiled == [{"dynamic": False}]  # only the train.compile=true stepper, static shapes
    df = pd.read_csv(out)
    assert list(df["arm"]) == ["linear"] and df["update_rel_diff"].iloc[0] == 0.0
    assert (df[["eager_img_s", "compiled_img_s"]] > 0).all(axis=None)
    md = out.with_suffix(".md").read_text()
    ratio = df["compiled_img_s"].iloc[0] / df["eager_img_s"].iloc[0]
    assert f"| {ratio:.2f} |" in md and "| linear | smoke | 4 | 32 |" in md


def test_the_micro_batch_part_times_the_same_update_split(monkeypatch):
    """bench_train_throughput's --grad-accum part compares steps that make the same update: a step
    split into 2 micro-batches moves the weights as the whole-batch step does (to float rounding),
    and the rows carry the split they timed."""
    import bench_train_throughput as BT

    def stepper(accum):
        return BT.Stepper(BT.resolve("smoke", arm="linear", overrides={
            "train.grad_accum": accum, "train.batch_size": 4, "data.image_size": 16}))

    kept = BT.Stepper(BT.resolve("smoke", arm="lmi", overrides={"train.grad_accum": 2, "unet.heads": 2}),
                      batch=4, image_size=16).cfg  # re-sized, its own overrides kept
    assert (kept.train.grad_accum, kept.model.unet, kept.train.batch_size, kept.data.image_size) == (2, {"heads": 2}, 4, 16)
    start, whole, split = stepper(1), stepper(1), stepper(2)
    assert split.cfg.train.grad_accum == 2 and whole.cfg.train.grad_accum == 1
    whole.step()
    split.step()
    moved = 0.0
    for k, v in whole.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, split.model.state_dict()[k], rtol=1e-4, atol=1e-6), k
            moved = max(moved, float((v - start.model.state_dict()[k]).abs().max()))
    assert moved > 1e-4  # the step changed the weights, so the agreement above is not trivial
    monkeypatch.setattr(BT, "measure", lambda st, steps, rounds: {k: 10.0 * (1 + k[1]) for k in st})
    monkeypatch.setattr(BT, "Stepper", lambda c: type("S", (), {"batch": c.train.batch_size, "size": 16,
                                                                 "model": whole.model})())
    rows = BT.micro_batch_part(["linear"], [1, 4], steps=1, rounds=1, preset="smoke")
    assert [r["grad_accum"] for r in rows] == [1, 4]
    assert rows[1]["vs_first_accum"] == pytest.approx(50.0 / 20.0)


def test_the_apply_layout_benchmark_compares_the_same_numbers_and_restores_the_package(monkeypatch):
    """bench_apply_layout times the queries as they arrive against N-contiguous: both variants give
    the same U-Net output, each row's speed-up is the ratio of its two medians, and the package's
    apply_lambdas is back in place after the run (also when a measurement raises)."""
    import bench_apply_layout as BA
    from lambda_blocks.layers import lambda_layers as LL

    torch.manual_seed(0)
    q = torch.randn(2, 4, 8, 30).transpose(-1, -2).contiguous().transpose(-1, -2)  # pixels at stride k
    lam = torch.randn(2, 8, 5, 30)
    assert q.stride(-1) != 1
    torch.testing.assert_close(BA.as_arrived(q, lam), LL.apply_lambdas(q, lam), rtol=0, atol=0)
    fwd = BA.calls("local_lambda", 16, 2, 2)["fwd_b1"]
    outs = {}
    for name, impl in BA.VARIANTS.items():
        monkeypatch.setattr(LL, "apply_lambdas", impl)
        outs[name] = fwd()
    monkeypatch.undo()
    torch.testing.assert_close(outs["as_arrived"], outs["contiguous"])
    df = BA.measure(["local_lambda"], [16], batch=2, fwd_batch=2, rounds=1)
    assert list(df["pass"]) == ["fwd_b1", "fwd_b2", "train_step_b2"]
    assert (df["speedup"] - df["as_arrived_ms"] / df["contiguous_ms"]).abs().max() < 1e-9
    assert LL.apply_lambdas is BA.NEW
    monkeypatch.setattr(BA, "calls", lambda *a: {"boom": lambda: 1 / 0})
    with pytest.raises(ZeroDivisionError):
        BA.measure(["local_lambda"], [16], batch=2, fwd_batch=2, rounds=1)
    assert LL.apply_lambdas is BA.NEW
    assert "| local_lambda | 16 | fwd_b1 |" in BA.table(df)


def test_ab_unet_alternates_two_checkouts_into_one_tidy_csv(tmp_path):
    """benchmarks/ab_unet.sh runs bench_unet.py in the old checkout and in this one, alternating,
    and merges the runs into one CSV labelled by code (old / new), commit and run."""
    out = tmp_path / "ab.csv"
    args = ["--arms", "baseline", "--sizes", "16", "--passes", "fwd", "--rounds", "1", "--min-run-time", "0",
            "--dtypes", "fp32", "--formats", "contiguous"]
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "ab_unet.sh"), str(ROOT), str(out), "2", *args],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_csv(out)
    assert sorted(zip(df["code"], df["run"])) == [("new", 1), ("new", 2), ("old", 1), ("old", 2)]
    assert set(df["arm"]) == {"baseline"} and (df["side"] == 16).all() and (df["latency_ms"] > 0).all()
    assert df.loc[df["code"] == "new", "commit"].str.endswith("+worktree").all()
    assert "run 2 new: done" in res.stdout
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0] == "| side | pass | baseline before / after |" and table[2].startswith("| 16 | fwd | ")


def test_ab_ratio_table_gives_the_range_over_runs_of_each_ratio():
    import ab_merge

    rows = []
    for run, (old_b, old_m, new_b, new_m) in enumerate([(10.0, 20.0, 10.0, 10.0), (12.0, 20.0, 10.0, 8.0)], 1):
        for code, b, m in (("old", old_b, old_m), ("new", new_b, new_m)):
            rows += [dict(side=32, **{"pass": "fwd"}, run=run, code=code, arm="baseline", latency_ms=b),
                     dict(side=32, **{"pass": "fwd"}, run=run, code=code, arm="moebius", latency_ms=m)]
    lines = ab_merge.ratio_table(pd.DataFrame(rows)).splitlines()
    assert lines[0] == ("| side | pass | baseline / moebius, before | baseline / moebius, after "
                        "| baseline before / after | moebius before / after |")
    # baseline/moebius old 0.50 and 0.60, new 1.00 and 1.25; baseline old/new 1.00, 1.20; moebius 2.00, 2.50
    assert lines[2] == "| 32 | fwd | 0.50–0.60 | 1.00–1.25 | 1.00–1.20 | 2.00–2.50 |"


def test_parallel_bench_reads_the_loops_own_rate_and_sums_processes(tmp_path):
    import json as _json

    import bench_parallel as BP

    m = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": s, "images_per_s": r} for s, r in ((10, 1.0), (20, 1.0), (40, 30.0), (50, 20.0), (60, 40.0))]
    m.write_text("\n".join(_json.dumps(r) for r in rows + [{"kind": "eval", "step": 60, "images_per_s": 999.0}]) + "\n")
    assert BP.window_rate(m, warmup=30) == 30.0  # the median of the windows past step 30, evals left out
    with pytest.raises(ValueError, match="no training window"):
        BP.window_rate(m, warmup=60)
    df = pd.DataFrame([dict(arm="lmi", mode=mode, round=rnd, process=i, workers=2, images_per_s=v)
                       for mode, per in (("jobs", (10.0, 10.0)), ("ddp", (50.0,)), ("accum", (12.0, 12.0)))
                       for rnd in (0, 1) for i, v in enumerate(per)])
    md = BP.summary_table(df)
    assert "| lmi | jobs | 2 x 1 | 20.0 | 10.0 | 1.00 |" in md
    assert "| lmi | ddp | 1 x 2 | 50.0 | 25.0 | 2.50 |" in md  # one ddp run's rate is the machine's total
    assert "| lmi | accum | 2 x 1 (accum 2) | 24.0 | 12.0 | 1.20 |" in md
