"""The rendered walkthrough (``make docs``) is current: rendered from today's notebook, with its figures."""
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _render_module():
    spec = importlib.util.spec_from_file_location("docs_render", ROOT / "docs" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rendered_walkthrough_is_current_and_has_its_figures():
    R = _render_module()
    for name in R.NOTEBOOKS:
        page = ROOT / "docs" / f"{name}.html"
        assert page.exists(), f"docs/{name}.html is missing: run `make docs`"
        html = page.read_text()
        found = re.search(rf'<meta name="{R.META}" content="([0-9a-f]{{64}})">', html)
        assert found, f"docs/{name}.html has no source hash: run `make docs`"
        assert found.group(1) == R.source_hash(ROOT / "notebooks" / f"{name}.ipynb"), (
            f"docs/{name}.html was rendered from another version of notebooks/{name}.ipynb: run `make docs`")
        assert html.count("data:image/png;base64") >= 6  # every figure embedded, none linked to runs/
        assert "Traceback" not in html


def test_source_hash_sees_sources_not_outputs(tmp_path):
    import json

    R = _render_module()
    nb = {"cells": [{"cell_type": "code", "source": ["x = 1\n"], "outputs": [], "metadata": {}}]}
    a = tmp_path / "a.ipynb"
    a.write_text(json.dumps(nb))
    h = R.source_hash(a)
    nb["cells"][0]["outputs"] = [{"output_type": "stream", "text": "1"}]
    a.write_text(json.dumps(nb))
    assert R.source_hash(a) == h
    nb["cells"][0]["source"] = ["x = 2\n"]
    a.write_text(json.dumps(nb))
    assert R.source_hash(a) != h
