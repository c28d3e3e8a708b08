# mtlrun — `make help` lists the targets. `make run` and `make test` set everything up on a fresh clone.
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0# pinned: an unpinned torch pulls gigabytes of CUDA wheels; GPU users may change it
ARGS          ?=# extra arguments for `make run`, e.g. make run ARGS="weighting=uncertainty"
BENCH_ARGS    ?=# extra arguments for benchmarks/speed.py, e.g. make bench BENCH_ARGS="--save" or "--quick --only step"

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP  := $(VENV)/.installed-bench# the `bench` extra: TorchJD, which benchmarks/speed.py compares with
EXTRAS_STAMP := $(VENV)/.installed-extras# the Hydra plugins (extras sweep, slurm), so tests check their presets, the docs tools (extra docs) and the trackers (extras tensorboard, mlflow)

.DEFAULT_GOAL := help
.PHONY: help install install-extras run test test-all test-gpu lint format bench gpu-check docs docs-serve clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install mtlrun with its dependencies (torch pinned)

$(EXTRAS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,docs,sweep,slurm,tensorboard,mlflow]"
	@touch $(EXTRAS_STAMP)

install-extras: $(EXTRAS_STAMP) ## also install the Hydra plugins (joblib/SLURM launchers, Optuna), the docs tools and the trackers (extras sweep, slurm, docs, tensorboard, mlflow)

run: $(STAMP) ## train on the embedded default data set (MultiDigits); ARGS="..." adds overrides
	$(BIN)/mtlrun $(ARGS)

test: $(EXTRAS_STAMP) ## the fast test tier (what CI runs; installs the extras, whose presets and docs it checks)
	$(BIN)/python -m pytest

test-all: $(EXTRAS_STAMP) ## every test except GPU ones: the fast tier plus slow tests (presets, wheel, resume, launchers, Optuna); installs the extras
	$(BIN)/python -m pytest -m "not gpu"

test-gpu: $(STAMP) ## tests that need a CUDA device
	$(BIN)/python -m pytest -m gpu

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check mtlrun hydra_plugins tests benchmarks scripts docs/hooks.py
	$(BIN)/ruff format --check mtlrun hydra_plugins tests benchmarks scripts docs/hooks.py

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix mtlrun hydra_plugins tests benchmarks scripts docs/hooks.py
	$(BIN)/ruff format mtlrun hydra_plugins tests benchmarks scripts docs/hooks.py

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	@touch $(BENCH_STAMP)

bench: $(EXTRAS_STAMP) $(BENCH_STAMP) ## speed benchmarks, ratios measured side by side (benchmarks/speed.py; BENCH_ARGS="--save" records them)
	$(BIN)/python benchmarks/speed.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/tabular_load.py
	$(BIN)/python benchmarks/logging_cost.py

gpu-check: ## on a machine with an NVIDIA GPU: install, GPU tests and GPU benchmarks, all output under $OUT (scripts/gpu_check.sh)
	bash scripts/gpu_check.sh

docs: $(EXTRAS_STAMP) ## build the documentation site into build/site/ (mkdocs build --strict: any warning fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(EXTRAS_STAMP) ## serve the documentation at http://127.0.0.1:8000, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

clean: ## remove outputs, caches and build files (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
