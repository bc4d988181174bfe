# `make train` and `make test` are the whole set-up: both create .venv/ first if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast lint format bench clean-logs

install: $(STAMP)

# torch and torchvision resolve together from the registry (see pyproject.toml), then we prove
# torchvision's compiled ops load against the torch that was picked.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -c "import torch, torchvision, torchvision.ops; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

train: $(STAMP)
	$(PY) src/train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# ruff (lint rules in pyproject.toml, and the formatter's check) and mypy on src/aelab;
# .ci/run runs this before the tests
lint: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff check --fix src tests scripts
	$(PY) -m ruff format src tests scripts

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: $(STAMP)
	$(PY) scripts/benchmark.py $(ARGS)

clean-logs:
	rm -rf logs/train logs/analyze logs/eval
