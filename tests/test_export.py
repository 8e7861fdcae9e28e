"""ONNX export (``lambda_blocks.export``) and the browser page's sampler (``web/``).

The default suite exports every distinct U-Net arm and compares onnxruntime with PyTorch, checks
that the Python twin of the page's DDIM loop is the PyTorch sampler, and that the page's
JavaScript noise and DDIM arithmetic equal their Python twins (Node). The page itself, driven in
headless Chromium, is behind the ``browser`` marker: ``make test-browser``.
"""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lambda_blocks import export as ex
from lambda_blocks.unet import ARM_ALIASES, build_unet

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
CANONICAL_ARMS = sorted(set(ARM_ALIASES.values()))


def _standard_ops_only(path: Path) -> set[str]:
    import onnx

    return {n.domain for n in onnx.load(str(path)).graph.node} - {"", "ai.onnx"}


@pytest.mark.parametrize("arm", CANONICAL_ARMS)
def test_every_arm_exports_and_matches_pytorch(arm, tmp_path):
    torch.manual_seed(0)
    model = build_unet(arm, "tiny", table_size=16).eval()
    for p in model.parameters():  # zero-initialised output convs would make the check vacuous
        p.data.add_(0.02 * torch.randn_like(p))
    info = ex.export_onnx(model, tmp_path / f"{arm}.onnx", 16)
    assert info["max_abs_err"] < 1e-4
    assert _standard_ops_only(tmp_path / f"{arm}.onnx") == set()
    # and the check is not vacuous: the output moves with the input
    x, t = ex._example_inputs(model, 16)
    sess = ex.onnx_session(tmp_path / f"{arm}.onnx")
    a = sess.run(["out"], {"x": x.numpy(), "t": t.numpy()})[0]
    b = sess.run(["out"], {"x": (x * 0.5).numpy(), "t": t.numpy()})[0]
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.slow  # 30 s of torch.export; the TorchScript exporter (the default) is checked for every arm above
def test_dynamo_exporter_gives_the_same_graph_numbers(tmp_path):
    torch.manual_seed(1)
    model = build_unet("lmi", "tiny", table_size=16).eval()
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    a = ex.export_onnx(model, tmp_path / "ts.onnx", 16)
    b = ex.export_onnx(model, tmp_path / "dy.onnx", 16, dynamo=True)
    assert b["exporter"] == "dynamo" and b["max_abs_err"] < 1e-4 and a["max_abs_err"] < 1e-4
    x, t = ex._example_inputs(model, 16, t=250)
    outs = [ex.onnx_session(tmp_path / f).run(["out"], {"x": x.numpy(), "t": t.numpy()})[0] for f in ("ts.onnx", "dy.onnx")]
    assert np.abs(outs[0] - outs[1]).max() < 1e-4


def test_export_refuses_a_size_the_unet_cannot_take_and_writes_nothing(tmp_path):
    model = build_unet("lmi", "tiny", table_size=16)
    with pytest.raises(ValueError, match="multiple of the U-Net's divisor"):
        ex.export_onnx(model, tmp_path / "m.onnx", 15)
    assert not any(tmp_path.iterdir())


def test_export_refuses_a_graph_that_disagrees_and_leaves_no_file(tmp_path, monkeypatch):
    model = build_unet("linear", "tiny", table_size=16)
    monkeypatch.setattr(ex, "check_onnx", lambda *a, **k: 0.5)
    with pytest.raises(AssertionError, match="differs from PyTorch by 0.5"):
        ex.export_onnx(model, tmp_path / "m.onnx", 16)
    assert not (tmp_path / "m.onnx").exists() and not any(tmp_path.iterdir())


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    assert ex.main(["--model", "no-such-model", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "no shipped model 'no-such-model'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ex.main([])  # neither -o nor --web
    assert ex.main(["--web", str(tmp_path / "w"), "--vendor", str(tmp_path)]) == 2
    assert "lacks ort.wasm.min.mjs" in capsys.readouterr().err and not (tmp_path / "w" / "model.onnx").exists()


@functools.lru_cache(maxsize=1)
def _shipped_web(tmp: str):
    return ex.write_web_assets(tmp, "lmi-dev-tiny", n_images=2)


def _python_fill(rec: dict, image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """The PyTorch sampler's fill for the page's inputs and noise: (3, H, W) in [-1, 1]-ish."""
    from lambda_blocks.pretrained import load_pretrained

    model, diffusion, _, _ = load_pretrained(rec["model"])
    s, c = rec["image_size"], rec["channels"]
    x = torch.from_numpy(image).float()[None]
    m = torch.from_numpy(mask).float().reshape(1, 1, s, s)
    noise = torch.from_numpy(ex.web_noise(seed, c * s * s)).float().reshape(1, c, s, s)
    out = diffusion.ddim_sample(model, x * (1 - m), m, noise=noise, steps=rec["steps"], spacing=rec["spacing"])
    return out[0].double().numpy()


def test_python_twin_of_the_page_loop_is_the_pytorch_sampler(tmp_path):
    rec = _shipped_web(str(tmp_path))
    assert rec["timesteps"][0] == 999 and rec["abar_prev"][-1] == 1.0 and len(rec["timesteps"]) == rec["steps"]
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / rec["images"][1])).transpose(2, 0, 1) / 127.5 - 1
    s = rec["image_size"]
    mask = np.zeros((s, s))
    mask[8:20, 10:26] = 1
    py = _python_fill(rec, img, mask, seed=5)
    sess = ex.onnx_session(tmp_path / "model.onnx")
    noise = ex.web_noise(5, 3 * s * s).reshape(1, 3, s, s)
    on = ex.ddim_onnx(sess, rec, (img * (1 - mask))[None].astype(np.float32), mask[None, None].astype(np.float32), noise)[0]
    hole = mask.astype(bool)
    assert np.abs(on - py)[:, hole].max() < 1e-3
    assert np.array_equal(on[:, ~hole], py[:, ~hole])  # known pixels pasted back in both
    assert np.abs(py[:, hole] - img[:, hole]).mean() < 0.5  # a fill, not noise


def _node(script: str) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the page's JavaScript is checked with Node)")
    return subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, check=True,
                          cwd=WEB).stdout


def test_page_noise_is_the_python_noise():
    js = json.loads(_node(f'import {{ gaussian }} from "{WEB / "sampler.js"}"; '
                          'console.log(JSON.stringify(Array.from(gaussian(12345, 3073))));'))
    py = ex.web_noise(12345, 3073)
    assert len(js) == 3073 and np.allclose(js, py, rtol=0, atol=1e-12)
    assert abs(py.mean()) < 0.06 and abs(py.std() - 1) < 0.05  # standard normals


def test_page_ddim_arithmetic_is_the_python_twin():
    """The same loop on a stand-in network (out = 0.3 x_t - 0.2 masked + t/2000) in JS and Python."""
    s, c = 4, 3
    rec = {"image_size": s, "channels": c, "prediction": "v", "timesteps": [999, 749, 499, 249],
           "abar": [2.4e-9, 0.12, 0.5, 0.86], "abar_prev": [0.12, 0.5, 0.86, 1.0]}
    rng = np.random.default_rng(0)
    masked = rng.uniform(-1, 1, (1, c, s, s)).astype(np.float32)
    mask = (rng.uniform(size=(1, 1, s, s)) > 0.5).astype(np.float32)
    masked *= 1 - mask
    noise = ex.web_noise(9, c * s * s).reshape(1, c, s, s)

    class Fake:
        def run(self, _names, feeds):
            x = feeds["x"]
            return [0.3 * x[:, :c] - 0.2 * x[:, c:2 * c] + feeds["t"][:, None, None, None] / 2000.0]

    for pred in ("v", "eps", "x0"):
        rec["prediction"] = pred
        py = ex.ddim_onnx(Fake(), rec, masked, mask, noise)[0]
        script = (f'import {{ ddim, gaussian }} from "{WEB / "sampler.js"}";'
                  f'const rec = {json.dumps(rec)}; const c = {c}, n = {c * s * s};'
                  f'const masked = Float32Array.from({json.dumps(masked.ravel().tolist())});'
                  f'const mask = Float32Array.from({json.dumps(mask.ravel().tolist())});'
                  'const run = async (x, t) => { const o = new Float32Array(n);'
                  ' for (let j = 0; j < n; j++) o[j] = 0.3 * x[j] - 0.2 * x[n + j] + t / 2000; return o; };'
                  'const x = await ddim(run, rec, masked, mask, gaussian(9, n));'
                  'console.log(JSON.stringify(Array.from(x)));')
        js = np.array(json.loads(_node(script))).reshape(c, s, s)
        assert np.allclose(js, py, rtol=0, atol=1e-5), pred  # float32 network output on both sides


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.browser
def test_page_in_headless_chromium_fills_like_the_python_sampler(tmp_path):
    """Build the page from the repo's files, serve it, paint a fixed stroke, run, compare."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    dist = WEB / "node_modules" / "onnxruntime-web" / "dist"
    assert chromium, "Debian's chromium is needed: apt-get install chromium (make test-browser does it)"
    assert dist.is_dir() and (WEB / "node_modules" / "puppeteer-core").is_dir(), "run `npm ci --prefix web` (make test-browser does it)"
    site = tmp_path / "site"
    site.mkdir()
    for f in ("index.html", "app.js", "sampler.js"):
        shutil.copy(WEB / f, site / f)
    rec = ex.write_web_assets(site, "lmi-dev-tiny", n_images=2, vendor_dist=dist)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    out.mkdir()
    try:
        subprocess.run(["node", str(WEB / "drive.mjs"), f"http://127.0.0.1:{server.server_port}/index.html", str(out),
                        "--chromium", chromium, "--image", "1", "--seed", "3"], check=True, timeout=600, cwd=WEB)
    finally:
        server.shutdown()
    res = json.loads((out / "result.json").read_text())
    assert (out / "page.png").stat().st_size > 10_000 and res["steps_per_s"] > 0
    s = rec["image_size"]
    mask = np.array(res["mask"]).reshape(s, s)
    assert 20 <= mask.sum() <= 400  # the painted stroke
    from PIL import Image

    img = np.asarray(Image.open(site / rec["images"][1])).transpose(2, 0, 1) / 127.5 - 1
    page = np.array(res["fill"]).reshape(3, s, s)
    py = _python_fill(rec, img, mask, seed=3)
    hole = mask.astype(bool)
    err = np.abs(page - py)[:, hole].max()
    print(f"page vs PyTorch sampler, max |diff| in the hole: {err:.2e}; page: {res['status']}")
    assert err < 1e-2  # close, not bit-exact (wasm kernels vs PyTorch's, 20 steps)
    assert np.abs(page[:, ~hole] - img[:, ~hole]).max() < 1e-6  # known pixels are the image's


def test_exporting_is_false_in_eager_and_true_under_trace_and_onnx_export(tmp_path):
    """The fast eager paths (Toeplitz / FFT lambda convolutions, the fused lambda application, the
    timestep check) are taken exactly when no tracer or exporter is running."""
    from lambda_blocks.layers.common import exporting

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(exporting())
            return x * 2

    assert exporting() is False
    Probe()(torch.ones(2))
    torch.jit.trace(Probe(), torch.ones(2))
    torch.onnx.export(Probe(), (torch.ones(2),), str(tmp_path / "p.onnx"), dynamo=False)
    assert seen[0] is False and seen[1] is True and seen[-1] is True
    with pytest.raises(ValueError, match="timesteps must be integers"):  # the eager check is on
        build_unet("linear", "tiny", table_size=16)(torch.zeros(1, 7, 16, 16), torch.tensor([1000]))
