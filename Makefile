# Two commands do everything: `make run` (set up, train the default model if missing, serve it)
# and `make test` (set up, lint, type-check, run every test, the soak too: what CI runs).
# `make test-fast`, the edit-test loop: the unit tests alone (tests/conftest.py), no lint.
PYTHON ?= python3
# The CPU wheel; override for another build, e.g. TORCH_SPEC='torch==2.13.0' with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
# The default network: the CNN; ARCH=mlp for the chapter's MLP (checkpoints/fashion-mlp...).
ARCH ?= cnn
CHECKPOINT ?= checkpoints/fashion-$(ARCH).safetensors
DATASET_DIR := /usr/share/datasets/fashion-mnist
SAMPLES ?= 100

.PHONY: setup data train evaluate report experiments run test test-fast lint format clean bench

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
	$(PY) -m training train --arch $(ARCH) --out $@
	$(PY) -m training evaluate $@ --samples $(SAMPLES)

train: setup data
	$(PY) -m training train --arch $(ARCH) --out $(CHECKPOINT)

evaluate: setup data
	$(PY) -m training evaluate $(CHECKPOINT) --samples $(SAMPLES)

# The evaluation report (calibration, error detection, shift, OOD) beside the checkpoint.
report: setup data
	$(PY) -m training report $(CHECKPOINT)

# The chapter's exercises, one after another (a few minutes each), into docs/experiments/.
EXPERIMENTS ?= dropout-grid epochs activation-variance weight-decay dropconnect gaussian-noise
experiments: setup data
	for name in $(EXPERIMENTS); do $(PY) -m training experiment $$name || exit 1; done

run: $(CHECKPOINT)
	MCDROPOUT_MODEL_PATH=$${MCDROPOUT_MODEL_PATH:-$(dir $(CHECKPOINT))} $(PY) -m service

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup data lint
	$(VENV)/bin/pytest --soak

test-fast: setup data
	$(VENV)/bin/pytest -m unit

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The benchmarks of docs/performance.md, on this machine (minutes; best on an idle one). LitServe
# (the `bench` extra) and Debian's wrk serve the HTTP comparison.
bench: $(CHECKPOINT) $(VENV)/.bench-installed
	$(PY) bench/engine.py --threads 1 --requests 32
	$(PY) bench/masks.py
	$(PY) bench/engine_memory.py
	$(PY) bench/http_bench.py --checkpoint $(CHECKPOINT)
	$(PY) bench/gil_handoffs.py --checkpoint $(CHECKPOINT)
	$(PY) bench/peak_rss.py --checkpoint $(CHECKPOINT)

# Baal itself goes in without its dependencies (they include jupyter): what bench/engine.py imports
# of it needs only the bench extra's structlog and torchmetrics, and the dev tools' scipy.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m pip install --quiet --no-deps "baal>=2.1,<3"
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# Containers (docs/deploy.md). ENGINE=podman|docker picks the engine (default: docker where an
# engine answers, else podman). WHEELS=local builds offline from build/wheelhouse; BASE_IMAGE
# replaces python:3.11-slim, e.g. with the local Debian base of `make base-image`.
IMAGE ?= mcdropout-service:latest
BAKED_IMAGE ?= mcdropout-service:baked
BASE_IMAGE ?= python:3.11-slim
LOCAL_BASE ?= localhost/bookworm-py:local
WHEELS ?= index
IMAGE_ENV = BASE_IMAGE=$(BASE_IMAGE) WHEELS=$(WHEELS) TORCH_SPEC=$(TORCH_SPEC)
WHEELHOUSE_IF_LOCAL = $(if $(filter local,$(WHEELS)),wheelhouse)

.PHONY: wheelhouse base-image image image-baked smoke

# Every wheel the image installs (pip download finds the CPU torch where it is pinned locally).
wheelhouse: setup
	$(PY) -m pip download --quiet --dest build/wheelhouse "$(TORCH_SPEC)" "setuptools>=77" .

# Where no registry answers: a Debian 12 base with python3, built with mmdebstrap.
base-image:
	scripts/base-image.sh $(LOCAL_BASE)

# No model inside: mount a folder of checkpoints at /models.
image: $(WHEELHOUSE_IF_LOCAL)
	$(IMAGE_ENV) scripts/image.sh mount $(IMAGE)

# Every *.safetensors of $(CHECKPOINT)'s folder inside, at /models.
image-baked: $(CHECKPOINT) $(WHEELHOUSE_IF_LOCAL)
	$(IMAGE_ENV) MODEL_DIR=$(patsubst %/,%,$(dir $(CHECKPOINT))) scripts/image.sh baked $(BAKED_IMAGE)

# Build both targets and run them hardened: health, predict, uncertainty, uid, SIGTERM.
smoke: setup data $(WHEELHOUSE_IF_LOCAL)
	$(IMAGE_ENV) scripts/container-smoke.sh
