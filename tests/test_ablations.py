"""The sweep runner (skip, resume, failure records), collect's CSV schema, figure regeneration."""
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from ablations.collect import CURVE_COLUMNS, RUN_COLUMNS, collect
from ablations.figures import regenerate
from ablations.runner import load_sweep, run_sweep


def make_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1\nout_dir = ''\npreset = 'smoke'\nout_root = ''")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, pathlib\n"
        "if x == 3:\n    raise RuntimeError('x=3 is broken on purpose')\n"
        "p = pathlib.Path(out_dir); p.mkdir(parents=True, exist_ok=True)\n"
        "with open(p / 'calls.txt', 'a') as fh: fh.write('run\\n')\n"
    )
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


ROOT_SWEEPS = Path(__file__).resolve().parents[1] / "ablations"


def make_sweep(tmp_path: Path, grid_x=(1, 2, 3)) -> Path:
    nb = make_notebook(tmp_path / "nb.ipynb")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: toy\nnotebook: {nb}\nkind: notebook\ngrid:\n  x: {list(grid_x)}\n"
                     "presets:\n  smoke:\n    grid: {x: [1, 3]}\n")
    return sweep


def test_sweep_validation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nnotebook: nowhere.ipynb\ngrid: {x: [1]}\n")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_sweep(bad)
    nb = make_notebook(tmp_path / "nb.ipynb")
    bad.write_text(f"name: t\nnotebook: {nb}\ngrid: {{x: [1]}}\ngird: 2\n")
    with pytest.raises(ValueError, match="gird"):
        load_sweep(bad)
    bad.write_text(f"name: t\nnotebook: {nb}\ngrid: {{x: 1}}\n")
    with pytest.raises(ValueError, match="non-empty list"):
        load_sweep(bad).points("dev")


def test_a_sweep_is_named_by_path_or_by_name_and_a_wrong_name_is_one_line(tmp_path, capsys, monkeypatch):
    from ablations.__main__ import main
    from ablations.runner import ROOT, find_sweep, sweep_names

    shipped = ROOT / "ablations" / "table2.yaml"
    assert {"floor", "table2", "distill", "quality_vs_size", "resolution"} <= set(sweep_names())
    monkeypatch.chdir(tmp_path)  # names resolve against the repository, not the working folder
    assert find_sweep("table2") == find_sweep("table2.yaml") == find_sweep("ablations/table2.yaml") == shipped
    assert find_sweep(shipped) == shipped
    own = make_sweep(tmp_path)
    assert find_sweep(own) == own and find_sweep("sweep.yaml") == Path("sweep.yaml")  # a file here wins
    with pytest.raises(FileNotFoundError, match="table3.*shipped sweeps.*table2"):
        find_sweep("table3")
    assert load_sweep("table2").name == "table2"
    assert main(["run", "tabel2", "--preset", "dev", "--runs", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tabel2" in err[0] and "table2" in err[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["run", str(bad), "--preset", "dev", "--runs", str(tmp_path), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", "floor", "--preset", "smoke", "--runs", str(tmp_path), "--dry-run"]) == 0  # by name
    assert "floor: 4 runs" in capsys.readouterr().out


def test_a_dry_run_says_which_pending_runs_are_already_recorded(tmp_path):
    """On a fresh clone the run folders are gone but results/<preset>/runs.csv records them: a dry
    run marks those points (running would train them again) and counts them apart."""
    sweep, lines = ROOT_SWEEPS / "floor.yaml", []
    plain = run_sweep(sweep, "smoke", tmp_path, dry_run=True, echo=lambda m: None)
    names = [Path(r["run_dir"]).name for r in plain]
    csv = tmp_path / "runs.csv"
    csv.write_text(f"run_id,status\n{names[0]},done\n{names[1]},failed\nsomething-else,done\n")
    marked = run_sweep(sweep, "smoke", tmp_path, dry_run=True, echo=lines.append, recorded=csv)
    assert [r["recorded"] for r in marked] == [True, False, False, False]  # a failed row is not a result
    assert all(r["status"] == "planned" for r in marked)
    assert [ln.split()[1] for ln in lines if "(recorded in" in ln] == [names[0]]
    assert lines[-1].endswith(f"4 runs, 0 finished, 1 more recorded in {csv}")
    assert [r["recorded"] for r in run_sweep(sweep, "smoke", tmp_path, dry_run=True, echo=lambda m: None,
                                             recorded=tmp_path / "absent.csv")] == [False] * 4


def test_grid_expansion_and_preset_overrides(tmp_path):
    sweep = load_sweep(make_sweep(tmp_path))
    assert [p["x"] for p in sweep.points("dev")] == [1, 2, 3]
    assert [p["x"] for p in sweep.points("smoke")] == [1, 3]
    for f in ("quality_vs_size", "table2", "resolution"):
        real = load_sweep(Path(__file__).parents[1] / "ablations" / f"{f}.yaml")
        assert len(real.points("dev")) >= len(real.points("smoke")) >= 2


@pytest.mark.notebook
def test_run_skip_resume_and_failure(tmp_path):
    sweep, root = make_sweep(tmp_path), tmp_path / "runs"
    lines = []
    first = run_sweep(sweep, "dev", root, echo=lines.append)
    status = {r["params"]["x"]: r["status"] for r in first}
    assert status == {1: "done", 2: "done", 3: "failed"}
    failed_dir = Path(next(r["run_dir"] for r in first if r["params"]["x"] == 3))
    err = json.loads((failed_dir / "error.json").read_text())
    assert "x=3 is broken on purpose" in err["error"] + err["traceback"]
    done_dirs = [Path(r["run_dir"]) for r in first if r["status"] == "done"]
    for d in done_dirs:
        assert (d / "notebook.ipynb").exists() and (d / "calls.txt").read_text() == "run\n"
    # rerun: finished runs are skipped, the failed one is retried (and fails again)
    second = run_sweep(sweep, "dev", root, echo=lines.append)
    assert sorted(r["status"] for r in second) == ["failed", "skipped", "skipped"]
    # an interrupted run (no summary) is redone, the others are not
    (done_dirs[0] / "summary.json").unlink()
    third = run_sweep(sweep, "dev", root, echo=lines.append)
    assert sorted(r["status"] for r in third) == ["done", "failed", "skipped"]
    assert (done_dirs[0] / "calls.txt").read_text() == "run\nrun\n"
    assert (done_dirs[1] / "calls.txt").read_text() == "run\n"
    dry = run_sweep(sweep, "dev", root, dry_run=True, echo=lines.append)
    assert [r["status"] for r in dry] == ["done", "done", "planned"]
    assert any("3 runs, 2 finished" in line for line in lines)
    # another preset is another config: nothing of it is finished
    assert [r["status"] for r in run_sweep(sweep, "smoke", root, dry_run=True, echo=lines.append)] == ["planned"] * 2


def fixture_results(tmp_path: Path) -> Path:
    """A small results folder written the way collect writes it: learned runs of the dev recipe, one
    eps-recipe run (convergence only), the classical floor, per-image rows, periodic evaluations."""
    rng = np.random.default_rng(0)
    rows, curves, per_image, evals = [], [], [], []
    ids = [f"img/{i:06d}" for i in range(16)]
    difficulty = rng.uniform(0.02, 0.2, 16)

    def add(r, lp_shift):
        rows.append(r)
        for i, img in enumerate(ids):
            per_image.append(dict(run_id=r["run_id"], tag=r["arm"], arm=r["arm"], size=r["size"], seed=r["seed"],
                                  kind=r["kind"], space="pixel", image_size=32, id=img,
                                  lpips=difficulty[i] + lp_shift + 0.002 * rng.normal(), psnr=25 - 20 * difficulty[i]))

    for arm in ("vanilla", "linear", "local_lambda", "lmi"):
        for size, params in (("tiny", 4e5), ("small", 9e5)):
            for seed in (0, 1):
                r = {c: None for c in RUN_COLUMNS}
                r.update(run_id=f"{arm}-{size}-{seed}", status="done", arm=arm, size=size, seed=seed, preset="dev",
                         image_size=32, params=params, macs=params * 100, psnr=20 + rng.normal(), ssim=0.6,
                         lpips=0.2 + 0.01 * rng.normal(), lpips_hole=0.25, kid=0.01, fid=50.0, n_eval_images=16,
                         smoothness_gap=0.3 + 0.1 * rng.normal(), hardware="cpu-test", kind="model", prediction="v",
                         loss_weighting="min_snr", space="pixel",
                         lambda_gain=0.05 if arm in ("local_lambda", "lmi") else None)  # the dev preset's gain
                add(r, -0.01 if arm == "lmi" else 0.0)
                curves += [dict(run_id=r["run_id"], arm=arm, size=size, seed=seed, step=s, loss=1 / (s + 1)) for s in range(0, 50, 5)]
                if size == "tiny":
                    evals += [dict(run_id=r["run_id"], tag=arm, arm=arm, size=size, seed=seed, prediction="v",
                                   loss_weighting="min_snr", step=s, n=16, lpips=0.3 / s, lpips_hole=0.4 / s, fid=300 / s,
                                   psnr_hole=10 + s / 100) for s in (250, 500, 750)]
    for seed in (0, 1):  # a Table 2-only arm: paired against the floor, the baseline and Moebius
        r = {c: None for c in RUN_COLUMNS}
        r.update(run_id=f"swap_conv-tiny-{seed}", status="done", arm="swap_conv", size="tiny", seed=seed, preset="dev",
                 image_size=32, params=3e5, macs=3e7, psnr=20.0, ssim=0.6, lpips=0.25, lpips_hole=0.3, kid=0.01,
                 fid=60.0, n_eval_images=16, hardware="cpu-test", kind="model", prediction="v",
                 loss_weighting="min_snr", space="pixel")
        add(r, 0.02)
    eps = {c: None for c in RUN_COLUMNS}
    eps.update(run_id="linear-eps", status="done", arm="linear", size="tiny", seed=0, preset="dev", image_size=32,
               params=4e5, macs=4e7, lpips=0.9, n_eval_images=16, kind="model", prediction="eps", loss_weighting="none")
    add(eps, 0.5)
    evals += [dict(run_id="linear-eps", tag="linear", arm="linear", size="tiny", seed=0, prediction="eps",
                   loss_weighting="none", step=s, n=16, lpips=0.9, lpips_hole=0.95, fid=400, psnr_hole=9) for s in (250, 500)]
    for k, (method, lp) in enumerate((("mean", 0.05), ("biharmonic", 0.018), ("telea", 0.017), ("ns", 0.0175))):
        r = {c: None for c in RUN_COLUMNS}
        r.update(run_id=f"floor-{method}-dev-x{k}", status="done", arm=method, size="classical", seed=0, preset="dev",
                 image_size=32, params=0, macs=0, lpips=lp, lpips_hole=lp * 1.2, psnr=28 - k, fid=100 + 10 * k,
                 n_eval_images=16, kind="floor", space="pixel")
        add(r, lp - float(difficulty.mean()))
    res = tmp_path / "results"
    res.mkdir()
    pd.DataFrame(rows, columns=RUN_COLUMNS).to_csv(res / "runs.csv", index=False)
    pd.DataFrame(curves, columns=CURVE_COLUMNS).to_csv(res / "curves.csv", index=False)
    pd.DataFrame(per_image).to_csv(res / "per_image.csv", index=False)
    pd.DataFrame(evals).to_csv(res / "evals.csv", index=False)
    prof = []
    for var in ("vanilla", "lmi"):
        for s in (16, 32, 64):
            n = s * s
            prof.append(dict(kind="block", variant=var, preset="", channels=64, height=s, width=s, pixels=n, batch=1, **{"pass": "fwd"},
                             macs=n * n if var == "vanilla" else 100 * n, latency_ms_median=n / 100, peak_mem_mb=n / 1000,
                             device="cpu", dtype="float32", hardware="cpu-test"))
        prof.append(dict(kind="unet", variant=var, preset="tiny", channels=32, height=32, width=32, pixels=1024, batch=1, **{"pass": "fwd"},
                         macs=1e8, latency_ms_median=5.0, peak_mem_mb=10.0, device="cpu", dtype="float32", hardware="cpu-test"))
    pd.DataFrame(prof).to_csv(res / "profile.csv", index=False)
    (res / "samples").mkdir()
    for run_id in ("vanilla-tiny-0", "lmi-tiny-0", "floor-biharmonic-dev-x1"):
        z = {k: rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8) for k in ("masked", "fill", "target")}
        np.savez(res / "samples" / f"{run_id}.npz", **z)
    return res


def test_figures_regenerate_from_fixture_results(tmp_path):
    res = fixture_results(tmp_path)
    figs, assets = tmp_path / "figures", tmp_path / "assets"
    written = regenerate(res, figs, assets, "dev")
    names = {p.name for p in written}
    for stem in ("quality_vs_size_lpips", "quality_vs_size_psnr", "cost_vs_resolution", "training_curves",
                 "qualitative", "convergence"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names, stem
    table = (assets / "table2_ablation.md").read_text()
    assert "Moebius" in table and "[run: lmi]" in table and "16 test images" in table and "cpu-test" in table
    assert "floor: biharmonic" in table and "floor: Telea" in table  # the floor is in every quality table
    assert "\\begin{tabular}" in (assets / "table2_ablation.tex").read_text()
    quality = (assets / "quality_vs_size.md").read_text()
    assert "floor: mean colour" in quality and "0.018" in quality
    lin = [ln for ln in quality.splitlines() if ln.startswith("| Linear attn (= baseline) | tiny |")]
    assert len(lin) == 1 and lin[0].endswith("| 2 |")  # the eps-recipe run is a convergence variant, not a row
    paired = pd.read_csv(assets / "paired_quality.csv")
    lmi_vs_lin = paired[(paired["arm"] == "lmi") & (paired["ref"] == "linear") & (paired["metric"] == "lpips")
                        & (paired["size"] == "tiny")].iloc[0]
    assert lmi_vs_lin["lo"] < -0.01 + 0.003 and lmi_vs_lin["hi"] > -0.01 - 0.003 and lmi_vs_lin["verdict"].startswith("lmi")
    assert (paired["ref"] == "biharmonic").any()
    assert "swap_conv" not in set(paired["arm"])  # the quality-vs-size pairs are the variant arms'
    t2p = pd.read_csv(assets / "paired_table2.csv")
    assert set(t2p["arm"]) == {"swap_conv"} and set(t2p["ref"]) == {"biharmonic", "telea", "linear", "lmi"}
    conv_vs_lin = t2p[(t2p["ref"] == "linear") & (t2p["metric"] == "lpips")].iloc[0]
    assert conv_vs_lin["lo"] < 0.02 < conv_vs_lin["hi"] and conv_vs_lin["lo"] > 0  # the fixture's +0.02, resolved
    assert "swap conv" in table.lower() or "DW" in table
    claims = pd.read_csv(assets / "paper_claims.csv").set_index(["arm_a", "metric"])
    assert claims.loc[("swap_conv", "lpips"), "holds"] == "yes"  # the fixture's +0.02 over the baseline
    assert claims.loc[("moebius", "lpips"), "holds"] == "no"  # lmi is the fixture's better arm (-0.01)
    assert "Pixel space, no KD." in (assets / "paper_claims.md").read_text()
    conv = (assets / "convergence.md").read_text()
    assert "| Linear attn | ε | 250 |" in conv and "floor: biharmonic" in conv
    slopes = (assets / "scaling_slopes.md").read_text()
    assert "2.00" in slopes and "1.00" in slopes  # vanilla quadratic, lmi linear in the fixture
    assert not (res / "seed_summary.csv").exists()  # figures never write into results/
    # deterministic: regenerating gives byte-identical PDFs
    before = (figs / "cost_vs_resolution.pdf").read_bytes()
    regenerate(res, figs, assets, "dev")
    assert (figs / "cost_vs_resolution.pdf").read_bytes() == before


def test_collect_schema(tmp_path):
    root = tmp_path / "runs"
    ok, bad = root / "a", root / "b"
    ok.mkdir(parents=True)
    bad.mkdir()
    (ok / "config.json").write_text(json.dumps({"arm": "lmi", "size": "tiny", "seed": 0, "preset": "smoke"}))
    (ok / "summary.json").write_text(json.dumps({"status": "done", "psnr": 21.5, "lpips": 0.3, "config_hash": "abc",
                                                 "world_size": 2}))
    (ok / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    (bad / "error.json").write_text(json.dumps({"status": "failed", "error": "boom", "notebook_params": {"arm": "vanilla", "size": "tiny", "seed": 1}}))
    out = collect(root, tmp_path / "res")
    runs = pd.read_csv(tmp_path / "res" / "runs.csv")
    assert list(runs.columns) == RUN_COLUMNS
    assert dict(zip(runs["arm"], runs["status"])) == {"lmi": "done", "vanilla": "failed"}
    assert runs.loc[runs["arm"] == "vanilla", "error"].item() == "boom"
    assert runs.loc[runs["arm"] == "lmi", "world_size"].item() == 2  # a torchrun run says so (threads are per rank)
    curves = pd.read_csv(tmp_path / "res" / "curves.csv")
    assert list(curves.columns) == CURVE_COLUMNS and curves["loss"].tolist() == [0.5, 0.4]


def test_readme_tables_are_the_generated_ones():
    """The README quotes the committed dev tables; they must be the files `make figures` writes."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    quoted = 0
    for path in sorted((root / "paper_assets" / "dev").glob("*.md")):  # every table `make figures` writes
        name = path.name
        rows = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
        assert rows, name
        missing = [ln for ln in rows if ln not in readme.splitlines()]
        assert not missing, f"README is out of date with paper_assets/dev/{name}: {missing[:2]}"
        quoted += 1
    assert quoted >= 1
    for bench in sorted((root / "results").glob("*.md")):  # the benchmarks' tables (benchmarks/_common.write_results)
        rows = [ln for ln in bench.read_text().splitlines() if ln.startswith("|")]
        missing = [ln for ln in rows if ln not in readme.splitlines()]
        assert rows and not missing, f"README is out of date with results/{bench.name}: {missing[:2]}"


def test_readme_sync_replaces_each_quoted_table_by_its_generated_rows(tmp_path):
    from ablations.readme import sync

    gen = tmp_path / "t.md"
    gen.write_text("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nCaption.\n\n| x |\n|---|\n| 9 |\n")
    readme = "intro\n\n| a | b |\n|---|---|\n| 1 | 0 |\n\nprose\n"
    new, replaced, missing = sync(readme, [gen])
    assert new == "intro\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nprose\n"
    assert replaced == ["t.md"] and len(missing) == 1 and "| x |" in missing[0]  # not inserted: reported
    assert sync(new, [gen])[0] == new  # idempotent
    a, b = tmp_path / "intel.md", tmp_path / "amd.md"
    a.write_text("| m | ms |\n|---|---|\n| fwd | 40 |\n| step | 900 |\n")
    b.write_text("| m | ms |\n|---|---|\n| fwd | 20 |\n| step | 500 |\n")
    two = "| m | ms |\n|---|---|\n| fwd | 41 |\n| step | 900 |\n\ntext\n\n| m | ms |\n|---|---|\n| fwd | 20 |\n| step | 501 |\n"
    out = sync(two, [a, b])[0]  # same header, two machines: each quote takes the table it shares most with
    assert out == a.read_text() + "\ntext\n\n" + b.read_text()
    # a rerun on one machine changes every row: the caption (command and machine) picks its table
    a.write_text("| m | ms |\n|---|---|\n| fwd | 30 |\n| step | 800 |\n\n`bench` on Intel Xeon (avx512-bf16), 1 thread.\n")
    b.write_text("| m | ms |\n|---|---|\n| fwd | 20 |\n| step | 500 |\n\n`bench --dtypes fp32` on AMD EPYC, 1 thread.\n")
    for order in ([a, b], [b, a]):
        out = sync(two.replace("\ntext\n", "\n`bench` on Intel Xeon, 1 thread.\n"), order)[0]
        assert out.startswith("| m | ms |\n|---|---|\n| fwd | 30 |\n| step | 800 |\n\n`bench` on Intel Xeon, 1 thread.")
        assert out.endswith("| fwd | 20 |\n| step | 500 |\n")


def test_an_extended_run_is_collected_once_and_labelled_by_its_schedule(tmp_path):
    """A cool-down run that started from a finished constant-LR run carries its curve as its first
    part: collect keeps each evaluation once (in the run that made it), the run rows say the
    schedule, and the study tables take only the preset's own schedule."""
    from lambda_blocks import plotting as P
    from lambda_blocks.train import run

    try:
        from tests.test_train import tiny_cfg
    except ImportError:
        from test_train import tiny_cfg
    base = {"train.eval_every": 2, "train.ckpt_every": 0, "eval.n_eval": 2}
    short = tiny_cfg(arm="linear", **base, **{"train.steps": 4})
    cool = tiny_cfg(arm="linear", **base, **{"train.steps": 6, "train.decay_steps": 2})
    runs = tmp_path / "runs"
    run(short, runs, progress=False)
    run(cool, runs, progress=False)
    out = collect(runs, tmp_path / "results")
    ev, rr = out["evals"], out["runs"].set_index("run_id")
    assert sorted(ev[ev["run_id"] == short.run_name]["step"]) == [2, 4]
    assert sorted(ev[ev["run_id"] == cool.run_name]["step"]) == [6]  # steps 2 and 4 are the short run's
    assert rr.loc[cool.run_name, "extended_from"] == short.run_name and rr.loc[cool.run_name, "train_decay_steps"] == 2
    assert "cool-down 4→6" in P._recipes(ev[ev["run_id"] == cool.run_name])[0]
    assert np.allclose(ev["train_lr"], short.train.lr)  # every evaluation row says its run's learning rate
    assert set(ev["unet_overrides"]) == {'{"context_dim":32,"num_tokens":4,"widths":[16,32]}'}  # and its architecture
    assert set(P.with_recipe(out["runs"], "smoke")["run_id"]) == {short.run_name}  # a cool-down is not a study row
    longer = tiny_cfg(arm="linear", **base, **{"train.steps": 8})
    run(longer, runs, progress=False)
    rows = collect(runs, tmp_path / "results2")["runs"]
    assert set(P.with_recipe(rows, "smoke")["run_id"]) == {short.run_name, longer.run_name}  # neither is the preset's 40
    as_preset = rows.assign(train_steps=[40 if r == longer.run_name else s for r, s in zip(rows["run_id"], rows["train_steps"])])
    assert set(P.with_recipe(as_preset, "smoke")["run_id"]) == {longer.run_name}  # the preset's budget wins
    # collected on its own into results that hold the short run (--merge): the evaluations it copied
    # from the short run are still kept once, or the convergence mean would count that seed twice
    only = tmp_path / "only"
    only.mkdir()
    (only / longer.run_name).symlink_to(runs / longer.run_name)
    merged = collect(only, tmp_path / "results", mode="merge")["evals"]
    assert sorted(merged[merged["run_id"] == longer.run_name]["step"]) == [6, 8]
    assert sorted(merged[merged["run_id"] == short.run_name]["step"]) == [2, 4]  # the merged-back run keeps its own


def test_a_learning_rate_probe_is_its_own_recipe_and_not_a_study_row():
    """A run at another learning rate than the preset's is a convergence variant: labelled by its lr
    in the convergence table, left out of the study rows (which compare arms at one recipe)."""
    from lambda_blocks import plotting as P

    base = P.preset_recipe("dev")
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "arm": "lmi", "prediction": "v", "loss_weighting": "min_snr",
                         "train_decay_steps": 0, "train_steps": base["steps"], "train_lr": [base["lr"], 2 * base["lr"], np.nan],
                         "lambda_gain": base["lambda_gain"]})
    assert set(P.with_recipe(runs, "dev")["run_id"]) == {"a", "c"}  # c: recorded before the column existed
    ev = runs.assign(step=2000, seed=0, lpips=[0.04, 0.05, 0.06], n=32)
    labels = P._recipes(ev, base["lr"], base["lambda_gain"])
    assert labels[0] == labels[2] == "v + Min-SNR" and labels[1] == f"v + Min-SNR, lr {2 * base['lr']:g}"
    table = P.convergence_table(ev, steps=(2000,), base_lr=base["lr"], base_gain=base["lambda_gain"])
    assert f"| LλMI | v + Min-SNR, lr {2 * base['lr']:g} | 2000 | 0.050 |" in table
    assert "| LλMI | v + Min-SNR | 2000 | 0.050 |" in table  # a and c: mean 0.05, the probe apart
    wide = runs.assign(unet_overrides=['', '{"widths":[36,72]}', np.nan], train_lr=base["lr"])
    assert set(P.with_recipe(wide, "dev")["run_id"]) == {"a", "c"}  # an architecture variant is not the arm's row
    only_wide = wide.assign(unet_overrides='{"widths":[36,72]}')
    assert set(P.with_recipe(only_wide, "dev")["run_id"]) == {"a", "b", "c"}  # unless it is all there is
    assert P._recipes(wide.assign(step=2000), base["lr"], base["lambda_gain"])[1] == "v + Min-SNR, widths [36, 72]"


def test_a_lambda_arm_without_the_presets_gain_is_a_probe_and_others_are_untouched():
    """The dev preset gives the lambda layers an output gain (model.lambda_gain): an arm with lambda
    layers trained without it (or with another) is a labelled probe, not the arm's study row; an arm
    without lambda layers records no gain and stays a study row."""
    from lambda_blocks import plotting as P

    base = P.preset_recipe("dev")
    assert base["lambda_gain"] is not None
    assert P.lambda_arm("lmi") and P.lambda_arm("local_lambda") and P.lambda_arm("interactive_lambda")
    assert not P.lambda_arm("linear") and not P.lambda_arm("vanilla") and not P.lambda_arm("swap_ffn")
    assert not P.lambda_arm("moebius_paper")  # the authors' layers: no gain reaches them
    assert not P.lambda_arm("biharmonic") and not P.lambda_arm(np.nan)
    gains = [base["lambda_gain"], np.nan, 0.2, np.nan, "", base["lambda_gain"]]
    runs = pd.DataFrame({"run_id": list("abcdef"), "arm": ["lmi"] * 3 + ["linear", "linear", "local_lambda"],
                         "prediction": "v", "loss_weighting": "min_snr", "train_decay_steps": 0,
                         "train_steps": base["steps"], "train_lr": base["lr"], "lambda_gain": gains})
    assert set(P.with_recipe(runs, "dev")["run_id"]) == {"a", "d", "e", "f"}
    labels = P._recipes(runs, base["lr"], base["lambda_gain"])
    assert labels == ["v + Min-SNR", "v + Min-SNR, no λ gain", "v + Min-SNR, λ gain 0.2", "v + Min-SNR",
                      "v + Min-SNR", "v + Min-SNR"]
    via_kwargs = runs.iloc[[2]].assign(unet_overrides='{"cross_kwargs":{"layer_scale":0.2},"self_kwargs":{"layer_scale":0.2}}')
    assert P._recipes(via_kwargs, base["lr"], base["lambda_gain"]) == ["v + Min-SNR, λ gain 0.2"]  # said once
    table = P.convergence_table(runs.assign(step=500, seed=0, lpips=[0.05, 0.06, 0.07, 0.05, 0.05, 0.08], n=32),
                                steps=(500,), base_lr=base["lr"], base_gain=base["lambda_gain"])
    assert "| LλMI | v + Min-SNR, no λ gain | 500 | 0.060 |" in table and "| LλMI | v + Min-SNR | 500 | 0.050 |" in table


def test_collected_csvs_keep_whole_numbers_exact_next_to_unfinished_runs(tmp_path):
    from ablations.collect import _write_csv

    df = pd.DataFrame({"macs": [377561088.0, np.nan], "lpips": [0.0216214123, np.nan], "steps": [3000.0, 0.0]})
    _write_csv(df, tmp_path / "x.csv")
    back = pd.read_csv(tmp_path / "x.csv")
    assert back["macs"].iloc[0] == 377561088 and back["steps"].tolist() == [3000, 0]
    assert (tmp_path / "x.csv").read_text().splitlines()[1] == "377561088,0.0216214,3000"


def test_set_reaches_every_point_and_its_hash(tmp_path, capsys):
    """`ablations run --set KEY=VALUE`: merged into each point's overrides (so its config and run
    folder), the floor takes only data.* / eval.*, unknown keys are one line before any work."""
    from ablations.__main__ import main
    from ablations.runner import with_sets

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "ablations" / "quality_vs_size.yaml")
    plain = run_sweep(sweep.notebook.parent.parent / "ablations" / "quality_vs_size.yaml", "smoke", tmp_path,
                      dry_run=True, echo=lambda m: None)
    lines = []
    changed = run_sweep(sweep.notebook.parent.parent / "ablations" / "quality_vs_size.yaml", "smoke", tmp_path,
                        dry_run=True, echo=lines.append, sets={"train.steps": 7, "data.image_size": 16})
    assert len(changed) == len(plain)
    assert not {r["run_dir"] for r in changed} & {r["run_dir"] for r in plain}  # a new config, a new folder
    assert all(json.loads(r["params"]["overrides"]) == {"train.steps": 7, "data.image_size": 16} for r in changed)
    floor = load_sweep(Path(__file__).resolve().parents[1] / "ablations" / "floor.yaml")
    pts = with_sets(floor, floor.points("dev"), {"train.steps": 7, "data.image_size": 16})
    assert {json.loads(p["overrides"])["data.image_size"] for p in pts} == {16}
    assert all("train.steps" not in json.loads(p["overrides"]) for p in pts)
    assert main(["run", "ablations/floor.yaml", "--preset", "smoke", "--runs", str(tmp_path), "--dry-run",
                 "--set", "train.stepz=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.stepz" in err[0]


def test_submitit_launcher_runs_each_point_as_a_job_with_the_same_results(tmp_path):
    """`--launcher submitit-local`: one submitit job per pending point (submitit's local executor
    here; Slurm on a cluster); the run folders and records are those of the local launcher."""
    pytest.importorskip("submitit")
    sweep = tmp_path / "floor2.yaml"
    sweep.write_text("name: floor2\nkind: floor\ngrid:\n  method: [mean, telea]\n"
                     "  overrides: ['{\"eval.fid\": false, \"eval.lpips\": false}']\n")
    local = run_sweep(sweep, "smoke", tmp_path / "local", echo=lambda m: None)
    lines = []
    sub = run_sweep(sweep, "smoke", tmp_path / "sub", echo=lines.append, launcher="submitit-local",
                    cluster={"timeout_min": 10})
    assert all(r["status"] == "done" for r in sub) and len(sub) == len(local) == 2
    assert all(r.get("job_id") for r in sub) and any("submitted 2 job(s) to local" in m for m in lines)
    for a in local:
        name = Path(a["run_dir"]).name
        sa = json.loads((tmp_path / "local" / name / "summary.json").read_text())
        sb = json.loads((tmp_path / "sub" / name / "summary.json").read_text())
        assert sa["psnr"] == pytest.approx(sb["psnr"], rel=1e-9) and sa["ssim"] == pytest.approx(sb["ssim"], rel=1e-6)
    again = run_sweep(sweep, "smoke", tmp_path / "sub", echo=lambda m: None, launcher="submitit-local")
    assert {r["status"] for r in again} == {"skipped"}  # finished runs are not resubmitted
    with pytest.raises(ValueError, match="launcher"):
        run_sweep(sweep, "smoke", tmp_path / "x", launcher="ssh")


def test_equal_compute_arm_is_its_own_kd_table_row():
    """The Moebius student without KD trained as long as a KD run takes (ablations/distill.yaml) is
    a row of its own in the KD table, labelled, never averaged with the common-budget students."""
    import pandas as pd

    from lambda_blocks import plotting

    rows = []
    for seed in (0, 1):
        for kd, steps, lp in ((False, 300, 0.30), (True, 300, 0.20), (False, 642, 0.25)):
            rows.append(dict(run_id=f"lmi-{kd}-{steps}-s{seed}", arm="lmi", size="tiny", kd=kd, kd_weighting="adaptive",
                             teacher_run="t0" if kd else None, seed=seed, train_steps=steps, lpips=lp + 0.001 * seed,
                             kid=0.01, fid=100.0, psnr=20.0, params=455067, macs=10**8, work_size=16))
    rows.append(dict(run_id="t0", arm="vanilla", size="base", kd=False, seed=0, train_steps=900, lpips=0.05, kid=0.0,
                     fid=80.0, psnr=22.0, params=5e6, macs=10**9, work_size=16))
    md, _ = plotting.table_kd(pd.DataFrame(rows), "cap")
    lines = {ln.split("|")[4].strip(): ln for ln in md.splitlines() if "LλMI" in ln}
    assert set(lines) == {"no", "yes (adaptive)", "no, 642 steps (equal compute)"}
    assert "0.300 ±" in lines["no"] and "0.251 ±" in lines["no, 642 steps (equal compute)"] and "0.201 ±" in lines["yes (adaptive)"]
    assert "| teacher | Softmax attn | base | no |" in md  # the teacher's own budget is not relabelled


def test_collect_records_the_gain_the_lambda_mixers_started_at():
    from ablations.collect import _effective_gain
    from lambda_blocks.config import resolve

    assert _effective_gain(resolve("dev", arm="lmi").to_dict()) == 0.05
    assert _effective_gain(resolve("dev", arm="lmi", overrides={"model.lambda_gain": None}).to_dict()) is None
    probe = resolve("dev", arm="lmi", overrides={"model.lambda_gain": None, "unet.self_kwargs": {"layer_scale": 0.2},
                                                "unet.cross_kwargs": {"layer_scale": 0.2}})
    assert _effective_gain(probe.to_dict()) == 0.2
    assert _effective_gain(resolve("dev", arm="linear").to_dict()) is None


def test_the_budget_table_groups_by_steps_pairs_with_the_floor_and_states_the_target():
    from lambda_blocks import plotting as P

    rng = np.random.default_rng(0)
    ids = [f"img/{i:03d}" for i in range(12)]
    floors = pd.DataFrame({"run_id": ["bh", "te"], "arm": ["biharmonic", "telea"], "lpips": [0.018, 0.017],
                           "fid": [106.0, 120.0], "kid": [-0.004, 0.001], "psnr": [28.0, 27.0]})
    runs = pd.DataFrame({"run_id": ["a6", "b6", "a12"], "arm": "lmi", "size": "tiny", "seed": [0, 1, 0],
                         "train_steps": [6000, 6000, 12000], "lpips": [0.020, 0.018, 0.015],
                         "fid": [125.0, 121.0, 104.0], "kid": [0.0, -0.002, -0.006], "psnr": [25.0, 25.2, 25.6]})
    base = {"bh": 0.018, "te": 0.017, "a6": 0.020, "b6": 0.018, "a12": 0.012}
    per = pd.DataFrame([{"run_id": r, "id": i, "lpips": v + rng.normal(0, 1e-4), "psnr": 25.0} for r, v in base.items()
                        for i in ids])
    md = P.budget_table(runs, per, floors)
    rows = {ln.split("|")[3].strip(): ln.split("|") for ln in md.splitlines() if ln.startswith("| LλMI")}
    assert set(rows) == {"6000", "12000"}
    assert rows["6000"][8].strip() == "2" and rows["6000"][9].strip() == "no"  # mean FID 123 > 106
    assert rows["12000"][9].strip() == "yes"  # beats both fills on LPIPS, FID and KID
    lo_hi = rows["12000"][10].strip()  # Δ LPIPS vs biharmonic: -0.006, an interval that excludes 0
    assert lo_hi.startswith("-0.006 [") and float(lo_hi.split("[")[1].split(",")[1].rstrip("]")) < 0


def test_collect_records_finished_autoencoders_and_keeps_them_across_collections(tmp_path):
    from ablations.collect import collect
    from lambda_blocks.latent.autoencoder import ae_config, train_autoencoder

    runs, res = tmp_path / "runs", tmp_path / "results"
    cfg = ae_config("smoke", image_size=16, widths=(8, 16), n_train=16, n_test=4, steps=4, batch_size=4, warmup=1,
                    ckpt_every=0, log_every=2, threads=1, device="cpu")
    first = train_autoencoder(cfg, runs, progress=False)
    ae = collect(runs, res)["autoencoders"]
    assert list(ae["ae_run"]) == [first.name] and ae["steps"].item() == 4 and ae["perceptual_weight"].item() == 0
    assert ae["psnr"].item() == pytest.approx(json.loads((first / "summary.json").read_text())["psnr"])
    other = tmp_path / "runs2"
    second = train_autoencoder(ae_config("smoke", image_size=16, widths=(8, 16), n_train=16, n_test=4, steps=4,
                                         batch_size=4, warmup=1, ckpt_every=0, log_every=2, threads=1, device="cpu",
                                         seed=1), other, progress=False)
    ae2 = collect(other, res, mode="merge")["autoencoders"]
    assert set(ae2["ae_run"]) == {first.name, second.name}  # the first one's row is kept


def test_the_autoencoder_table_is_every_recorded_run():
    from lambda_blocks import plotting as P

    ae = pd.DataFrame({"ae_run": ["ae-a", "ae-b"], "factor": [4, 2], "widths": ["[16, 32]", "[32]"], "steps": [700, 3000],
                       "perceptual_weight": [0.0, 0.5], "psnr": [20.71, 26.06], "ssim": [0.57, 0.81], "lpips": [0.36, 0.047],
                       "train_time_s": [144.2, 443.1]})
    rows = [ln for ln in P.autoencoder_table(ae).splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows == ["| 4 | 16, 32 | 700 | 0 | 20.7 | 0.570 | 0.360 | 144 | ae-a |",
                    "| 2 | 32 | 3000 | 0.5 | 26.1 | 0.810 | 0.047 | 443 | ae-b |"]


def test_a_gain_set_on_the_layers_is_named_in_the_recipe():
    """An arm whose own layers have no gain (moebius_paper) given one through self_kwargs /
    cross_kwargs: the recipe label says so, though the preset's lambda_gain column is unchanged."""
    from lambda_blocks.plotting import recipe_label

    over = '{"cross_kwargs": {"layer_scale": 0.05, "norm": "batch"}, "self_kwargs": {"layer_scale": 0.05, "norm": "batch"}}'
    lab = recipe_label("v", "min_snr", unet=over, gain=0.05, base_gain=0.05, lambda_layers=True)
    assert lab.endswith(", λ gain 0.05") and lab.count("λ gain") == 1 and "layer_scale" not in lab
    plain = recipe_label("v", "min_snr", unet='{"widths": [36, 72]}', gain=0.05, base_gain=0.05, lambda_layers=True)
    assert "gain" not in plain and "widths [36, 72]" in plain
    assert recipe_label("v", "min_snr", unet=over, gain=None, base_gain=0.05, lambda_layers=True).endswith(", no λ gain")


def test_the_convergence_table_counts_a_seed_once_when_a_probe_and_a_longer_run_share_steps():
    """A 500-step probe and a 6000-step run of the same arm, seed and recipe (trained in different
    sessions) both report step 500: the table keeps the longer run's point instead of averaging the
    same network twice, and a second seed is still averaged in."""
    from lambda_blocks import plotting as P

    base = P.preset_recipe("dev")
    ev = pd.DataFrame({"run_id": ["probe", "long", "other"], "arm": "swap_conv", "seed": [0, 0, 1],
                       "prediction": "v", "loss_weighting": "min_snr", "train_decay_steps": 0,
                       "train_steps": [500, 6000, 6000], "train_lr": base["lr"], "lambda_gain": np.nan,
                       "step": 500, "lpips": [0.010, 0.050, 0.070], "n": 32})
    table = P.convergence_table(ev, steps=(500,), base_lr=base["lr"], base_gain=base["lambda_gain"])
    row = next(line for line in table.splitlines() if line.startswith("| ") and "| 500 |" in line)
    assert "| 0.060 |" in row and row.rstrip().endswith("| 2 |")  # (0.050 + 0.070) / 2, two seeds


def test_the_papers_ordering_claims_are_judged_by_paired_intervals_and_the_floor():
    """Table 2's claims (each compression alone hurts without KD; KD recovers; Moebius + KD close to
    the baseline + KD), each from paired per-image intervals, with whether both sides clear the floor."""
    from lambda_blocks import plotting as P

    rng = np.random.default_rng(0)
    ids = [f"img/{i:03d}" for i in range(24)]
    hard = rng.uniform(0.01, 0.03, len(ids))
    # (run, arm, kd, weighting, steps, LPIPS shift): runs record canonical arms (linear = baseline, lmi = Moebius)
    spec = [("lin0", "linear", False, None, 300, 0.0), ("lin1", "linear", False, None, 300, 0.0),
            ("ffn0", "swap_ffn", False, None, 300, 0.010),   # hurts: the claim holds
            ("self0", "local_lambda", False, None, 300, 0.0),  # no difference: not shown
            ("cross0", "interactive_lambda", False, None, 300, -0.010),  # better than the baseline: the claim fails
            ("moe0", "lmi", False, None, 300, 0.008),
            ("moekd0", "lmi", True, "adaptive", 300, 0.001),  # KD recovers
            ("moefix", "lmi", True, "fixed", 300, 0.5),  # fixed weights: not a Table 2 row
            ("moe642", "lmi", False, None, 642, -0.5),  # the equal-compute arm: not a Table 2 row
            ("linkd0", "linear", True, "adaptive", 300, 0.001), ("teach", "vanilla", False, None, 900, -0.5)]
    runs = pd.DataFrame([dict(run_id=r, arm=a, kd=kd, kd_weighting=w, train_steps=n, teacher_run="teach" if kd else None,
                              lpips=float(hard.mean() + s), fid=100.0 if r != "linkd0" else 90.0, kid=0.0)
                         for r, a, kd, w, n, s in spec])
    per = pd.DataFrame([dict(run_id=r, id=i, lpips=h + s + rng.normal(0, 2e-4)) for r, _, _, _, _, s in spec
                        for i, h in zip(ids, hard)])
    floors = pd.DataFrame({"run_id": ["bh", "te"], "arm": ["biharmonic", "telea"], "lpips": [0.5, 0.5],
                           "fid": [95.0, 95.0], "kid": [0.01, 0.01]})
    rows = P.paper_claims(per, runs, floors, metrics=("lpips",))
    got = {(r["claim"], r["arm_a"], r["kd_a"], r["arm_b"], r["kd_b"]): r for r in rows}
    assert got[(P.CLAIM_ALONE, "swap_ffn", False, "baseline", False)]["holds"] == "yes"
    assert got[(P.CLAIM_ALONE, "swap_self", False, "baseline", False)]["holds"] == "not shown"
    assert got[(P.CLAIM_ALONE, "swap_cross", False, "baseline", False)]["holds"] == "no"
    moe = got[(P.CLAIM_COMBINED, "moebius", False, "baseline", False)]
    assert moe["holds"] == "yes" and moe["seeds_a"] == 1 and moe["seeds_b"] == 2  # no fixed / equal-compute run in it
    assert abs(moe["diff"] - 0.008) < 1e-3
    kd = got[(P.CLAIM_KD, "moebius", True, "moebius", False)]
    assert kd["holds"] == "yes" and abs(kd["diff"] + 0.007) < 1e-3
    close = got[(P.CLAIM_CLOSE, "moebius", True, "baseline", True)]
    assert close["holds"] == "yes" and close["lo"] < 0 < close["hi"]
    # the floor: FID 100 loses to the fills' 95, the baseline + KD's 90 beats them
    assert (close["floor_a"], close["floor_b"]) == ("no", "yes")
    assert not any(r["arm_a"] == "vanilla" or r["arm_b"] == "vanilla" for r in rows)  # the teacher is no arm of it
    md = P.claims_table(rows)
    assert md.count("\n| ") == len(rows) and "| not shown |" in md and "no / yes" in md
    assert "| 95% CI |" in md
    # the interval column names the level the intervals were computed at, and refuses a mix
    rows90 = P.paper_claims(per, runs, floors, metrics=("lpips",), confidence=0.9)
    assert "| 90% CI |" in P.claims_table(rows90) and "95% CI" not in P.claims_table(rows90)
    with pytest.raises(ValueError, match="confidence levels"):
        P.claims_table(rows + rows90)


def test_scaling_slopes_come_from_one_consistent_measurement_with_arm_blocks(tmp_path):
    """The slopes table joins rows the way the cost figure does (one hardware, batch 1, newest per
    size), fits from 32² up, and lists arm blocks beside bare mixers; dev draws it from the
    repository's one profile table."""
    from ablations.__main__ import cost_profile
    from lambda_blocks import plotting as P

    rows = []
    for side in (16, 32, 64, 128):
        n = side * side
        for kind, var, mac, lat in (("block", "vanilla", n * n, n * n), ("block", "lmi", n, n),
                                    ("arm_block", "lmi", 3 * n, 3 * n)):
            lat = lat if side > 16 else lat * 50  # fixed per-call cost at 16²: below the fit's range
            rows.append(dict(kind=kind, variant=var, pixels=n, height=side, width=side, batch=1, threads=1,
                             dtype="float32", hardware="A", config=None, macs=mac, latency_ms_median=lat,
                             peak_mem_mb=n / 1e3, measured_at="2026-12-02", channels=64, **{"pass": "fwd"}))
            # a stale measurement on other hardware, which must not join the line
            rows.append({**rows[-1], "hardware": "B", "latency_ms_median": 1.0, "measured_at": "2026-11-01"})
    prof = pd.DataFrame(rows)
    prof = pd.concat([prof, prof[prof["hardware"] == "A"]])  # hardware A is the most common (repeats: newest wins)
    t = P.scaling_table(prof).set_index(["variant", "kind"])
    assert set(t.index) == {("vanilla", "mixer"), ("lmi", "mixer"), ("lmi", "arm block")}
    assert abs(t.loc[("vanilla", "mixer"), "latency_slope"] - 2.0) < 1e-9
    assert abs(t.loc[("lmi", "arm block"), "latency_slope"] - 1.0) < 1e-9  # 16² left out of the fit
    assert (t["sides"] == "32²→128²").all() and (t["hardware"] == "A").all()
    assert cost_profile("smoke", root=tmp_path) is None and cost_profile("dev", root=tmp_path) is None
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "profile.csv").write_text("kind\n")
    assert cost_profile("dev", root=tmp_path) == tmp_path / "results" / "profile.csv"
