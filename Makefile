# Two commands do everything: `make run` (set up, train the default model if missing, serve it)
# and `make test` (set up, lint, type-check, run the tests).
PYTHON ?= python3
# The CPU wheel; override for another build, e.g. TORCH_SPEC='torch==2.13.0' with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
CHECKPOINT ?= checkpoints/fashion-mlp.safetensors
DATASET_DIR := /usr/share/datasets/fashion-mnist
SAMPLES ?= 100

.PHONY: setup data train evaluate run test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Debian/Ubuntu ship the real data set offline; elsewhere training downloads and verifies it.
data:
	@if [ ! -d $(DATASET_DIR) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

$(CHECKPOINT): | setup data
	$(PY) -m training train --out $@
	$(PY) -m training evaluate $@ --samples $(SAMPLES)

train: setup data
	$(PY) -m training train --out $(CHECKPOINT)

evaluate: setup data
	$(PY) -m training evaluate $(CHECKPOINT) --samples $(SAMPLES)

run: $(CHECKPOINT)
	MCDROPOUT_MODEL_PATH=$${MCDROPOUT_MODEL_PATH:-$(dir $(CHECKPOINT))} $(PY) -m service

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup data lint
	$(VENV)/bin/pytest

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
