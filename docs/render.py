"""Render the walkthrough as one HTML page with its figures (``make docs``).

    python docs/render.py            # writes docs/00_lambda_walkthrough.html

The notebook is executed with its default parameters (papermill, one torch thread so the page does
not depend on the machine's load), converted by nbconvert with every figure embedded, and written
atomically. The page records the sha256 of the notebook's cell sources in a ``<meta>`` tag;
tests/test_docs.py fails when the committed page was rendered from other sources, so a change to the
notebook needs a ``make docs``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("00_lambda_walkthrough",)
META = "lambda-blocks-source-sha256"


def source_hash(notebook: Path) -> str:
    """sha256 of the (cell type, source) pairs of a notebook: what its rendering depends on."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    payload = json.dumps([[c["cell_type"], "".join(c["source"])] for c in cells], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def render(name: str, out_dir: Path = ROOT / "docs") -> Path:
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    sys.path.insert(0, str(ROOT))
    from lambda_blocks.records import atomic_write_text

    src = ROOT / "notebooks" / f"{name}.ipynb"
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernel
    with tempfile.TemporaryDirectory() as tmp:
        executed = Path(tmp) / f"{name}.ipynb"
        pm.execute_notebook(str(src), str(executed), parameters={"out_dir": str(Path(tmp) / "figures")},
                            cwd=str(ROOT), progress_bar=False)
        nb = nbformat.read(executed, as_version=4)
    html, _ = HTMLExporter().from_notebook_node(nb)
    tag = f'<meta name="{META}" content="{source_hash(src)}">'
    html = html.replace("<head>", "<head>\n" + tag, 1)
    out = Path(out_dir) / f"{name}.html"
    atomic_write_text(out, html)
    return out


def main() -> int:
    for name in NOTEBOOKS:
        print(f"wrote {render(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
