# `make train` and `make test` are the whole set-up: both create .venv/ from the lock first if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# Exact versions with hashes: requirements/dev.lock (the package and its dev tools), or
# requirements/all.lock (the same plus the mlflow, wandb and export extras), e.g. make install LOCK=requirements/all.lock
LOCK ?= requirements/dev.lock
STAMP := $(VENV)/.installed-$(notdir $(LOCK))
# a lock holds Linux x86_64 wheels for CPython 3.11 (this project's machines and CI)
LOCK_FOR := --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --custom-compile-command "make lock"

.PHONY: install lock train test test-fast test-docs lint format bench gpu-check tensorboard clean-logs

install: $(STAMP)

# The locks are for CPython 3.11; pip installs uv from its own hashed lock.
$(UV): requirements/uv-bootstrap.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
		echo "make: the locks are for CPython 3.11 and $(PYTHON) is not; run make PYTHON=python3.11 ..., or pip install -e '.[dev]' for another Python" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/uv-bootstrap.lock
	touch $(UV)

# uv installs the lock (faster than pip on a fresh clone: docs/install.md), then the package itself, editable and
# without dependencies (its build tool, setuptools, comes from the lock too); then we prove
# torchvision's compiled ops load against the torch that was installed. all.lock holds everything
# dev.lock does, so installing it satisfies both.
$(STAMP): $(UV) $(LOCK) pyproject.toml
	$(UV) pip install --python $(PY) --require-hashes -r $(LOCK)
	$(UV) pip install --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, torchvision.ops; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP) $(if $(findstring all.lock,$(LOCK)),$(VENV)/.installed-dev.lock)

# Re-resolve the three locks (uv's own, all.lock, dev.lock) from pyproject.toml to the newest releases
# it allows, torch and torchvision as requirements/constraints.txt pins them; review the diff, commit.
lock: $(UV)
	$(UV) pip compile requirements/uv-bootstrap.in $(LOCK_FOR) --upgrade -o requirements/uv-bootstrap.lock
	$(UV) pip compile pyproject.toml --extra dev --extra mlflow --extra wandb --extra export -c requirements/constraints.txt \
		$(LOCK_FOR) --upgrade -o requirements/all.lock
	$(UV) pip compile pyproject.toml --extra dev -c requirements/constraints.txt -c requirements/all.lock \
		$(LOCK_FOR) --upgrade -o requirements/dev.lock

train: $(STAMP)
	$(PY) src/train.py $(ARGS)

# Every test but the pages' commands (test-docs): those take minutes beyond make test's budget
test: $(STAMP)
	$(PY) -m pytest -m "not docs" $(ARGS)

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
	$(PY) -m pytest -m "not slow and not docs" $(ARGS)

# Every command of README.md and docs/*.md, run as printed on tiny data (tests/test_docs.py); CI runs it after make test
test-docs: $(STAMP)
	$(PY) -m pytest -m docs $(ARGS)

bench: $(STAMP)
	$(PY) scripts/benchmark.py $(ARGS)

# On a machine with a CUDA GPU, everything a GPU checks and measures in one command: tests/test_gpu.py
# (the CUDA-graph path against the plain loop), then the benchmark on the official split at $AELAB_DATA_DIR.
gpu-check: $(STAMP)
	$(PY) -m pytest tests/test_gpu.py -n 0
	$(PY) scripts/benchmark.py --device cuda --variants a b g c p --epochs 5 --json gpu-bench.json

# the training runs (their eval/analyze figures included, not the debug= checks in logs/debug/) at
# http://localhost:6006, and links to CUSTOM SCALARS and IMAGES with the newest sweep's runs ticked
# (past 40 runs TensorBoard ticks none there); ARGS="--port 6007" etc. (aelab.board)
tensorboard: $(STAMP)
	$(PY) -m aelab.board --logdir logs/train $(ARGS)

clean-logs:
	rm -rf logs/train logs/eval logs/analyze logs/audit logs/encode logs/decode logs/export logs/debug logs/mlflow
