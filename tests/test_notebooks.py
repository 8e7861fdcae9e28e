"""Every notebook: committed without outputs, one validated `parameters` cell, and it executes
under papermill at the smoke preset (kept small with overrides)."""
import json
from pathlib import Path

import nbformat
import pytest

from tests.test_ablations import fixture_results

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"00_lambda_walkthrough", "10_train_inpaint", "20_profile", "30_quality_vs_size", "40_distillation",
            "90_paper_figures"}


def test_all_notebooks_present():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has committed outputs"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    after = next(c for c in nb.cells[tagged[0] + 1 :] if c.cell_type == "code")
    assert "validate" in after.source, f"{path.name}: the cell after 'parameters' must validate them"


def _run(name, tmp_path, **params):
    import papermill as pm

    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=params, cwd=str(ROOT),
                        kernel_name="python3", progress_bar=False)
    return nbformat.read(out, as_version=4)


@pytest.mark.notebook
def test_unknown_parameter_fails_at_once(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="sede"):
        _run("10_train_inpaint", tmp_path, sede=3, out_root=str(tmp_path))
    assert not any(tmp_path.glob("*/config.json"))  # nothing started


@pytest.mark.notebook
def test_train_notebook_smoke(tmp_path):
    fast = {"train.steps": 4, "train.eval_every": 4, "train.ckpt_every": 4, "eval.n_eval": 4, "eval.ddim_steps": 3,
            "eval.periodic_n": 2, "eval.n_grid": 2, "data.n_train": 32}
    _run("10_train_inpaint", tmp_path, preset="smoke", arm="lmi", size="tiny", seed=0, out_root=str(tmp_path / "runs"),
         overrides=json.dumps(fast))
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 4 and summary["arm"] == "lmi"
    assert summary["psnr"] > 0 and (run_dir / "samples.png").exists() and (run_dir / "curves.png").exists()


@pytest.mark.notebook
def test_distillation_notebook_smoke(tmp_path):
    """Autoencoder, teacher and KD student in one go, a few steps each."""
    fast = {"train.steps": 3, "train.eval_every": 3, "train.ckpt_every": 3, "eval.n_eval": 2, "eval.ddim_steps": 2,
            "eval.periodic_n": 2, "eval.n_grid": 2, "eval.fid": False, "data.n_train": 16,
            "latent.ae_overrides": {"steps": 6, "n_train": 16, "n_test": 2, "ckpt_every": 0},
            "kd.teacher_size": "tiny", "kd.teacher_overrides": {"train.steps": 3}}
    nb = _run("40_distillation", tmp_path, preset="smoke", arm="moebius", size="tiny", seed=0, kd=True,
              weighting="adaptive", out_root=str(tmp_path / "runs"), overrides=json.dumps(fast))
    (run_dir,) = [p for p in (tmp_path / "runs").glob("lmi-latent-kd-*") if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["kd"] is True and summary["space"] == "latent"
    assert (tmp_path / "runs" / summary["teacher_run"] / "summary.json").exists()
    assert (run_dir / "kd_weights.png").exists()
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "w_c" in text and "teacher" in text.lower()


@pytest.mark.notebook
def test_profile_notebook_smoke(tmp_path):
    _run("20_profile", tmp_path, preset="smoke", mode="block", variants="vanilla,lmi", sizes="8,16", width=16,
         out_dir=str(tmp_path / "prof"))
    import pandas as pd

    df = pd.read_csv(tmp_path / "prof" / "profile.csv")
    assert set(df["variant"]) == {"vanilla", "lmi"} and set(df["height"]) == {8, 16}
    assert (tmp_path / "prof" / "cost_vs_resolution.png").exists()


@pytest.mark.notebook
@pytest.mark.parametrize("name", ["30_quality_vs_size", "90_paper_figures"])
def test_figure_notebooks_on_fixture_results(tmp_path, name):
    (tmp_path / "tmp").mkdir()
    res = fixture_results(tmp_path / "tmp")
    (tmp_path / "study" / "results").mkdir(parents=True)
    res.rename(tmp_path / "study" / "results" / "dev")
    _run(name, tmp_path, preset="dev", root=str(tmp_path / "study"))
    figs = tmp_path / "study" / "figures" / "dev"
    assert (figs / "quality_vs_size_lpips.png").exists()
    if name == "90_paper_figures":
        assert (tmp_path / "study" / "paper_assets" / "dev" / "table2_ablation.tex").exists()


@pytest.mark.notebook
def test_walkthrough_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's sampling cells: no oversubscription on a loaded machine
    nb = _run("00_lambda_walkthrough", tmp_path, out_dir=str(tmp_path / "walk"))
    names = {p.name for p in (tmp_path / "walk").iterdir()}
    assert {"walkthrough_trained_fills.png", "walkthrough_trained_attention.png"} <= names
    assert any(p.suffix == ".png" for p in (tmp_path / "walk").iterdir())
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    text = "\n".join(o.get("data", {}).get("text/plain", "") if o.get("output_type") != "stream" else o.get("text", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "output std at init" in text  # section 2d measured the mixers' branch scale
    assert "beats biharmonic and Telea on FID, KID and LPIPS:" in text  # section 6 prints the card's verdict
