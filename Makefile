# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 is pinned first so that pip takes the local CPU wheel; see README for CUDA builds.
TORCH ?= torch==2.13.0

.PHONY: demo test lint docs install clean serve-env gpu-check

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# `pconv serve` runs Triton (PyTriton, numpy<2) in a second venv without torch; built with the main one.
SERVE_VENV := .venv-serve

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q -e '.[serve]'
	touch $@

serve-env: $(SERVE_VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(BIN)/activate $(SERVE_VENV)/.installed
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: $(VENV)/.installed
	$(BIN)/ruff check pconv_deploy tests scripts
	$(BIN)/ruff format --check pconv_deploy tests scripts

# The documentation site: --strict turns a broken link or a page missing from the nav into a failure.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: $(VENV)/.installed lint docs
	$(BIN)/pytest -q -rs

# On a CUDA machine: the gpu extra, `pytest -m gpu -rs`, an FP16 engine and `pconv bench`, then a short report.
gpu-check: $(VENV)/.installed
	BIN=$(BIN) bash scripts/gpu_smoke.sh

clean:
	rm -rf $(VENV) $(SERVE_VENV) demo-out site
