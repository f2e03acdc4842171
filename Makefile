# partial-relevance: every experiment is one command. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
EXP ?= prvr_synthetic
ARGS ?=
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@# Install the CPU wheel of torch first when none is present, so pip never pulls a CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the package with its dev extras (once)

train: $(STAMP) ## Train + evaluate (default: PRVR base model on the synthetic corpus, < 2 min); EXP=, ARGS=
	$(PY) -m partial_relevance.train experiment=$(EXP) $(ARGS)

train-prem: $(STAMP) ## PREM stage-wise pipeline (retriever -> rankings -> localizer -> VCMR val tables + submission check) on the synthetic corpus; ARGS=
	$(PY) -m partial_relevance.prem_pipeline $(ARGS)

notebooks: $(STAMP) ## Install the notebooks extra (JupyterLab) and open notebooks/ in it
	$(PY) -m pip install -q -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks/

test: $(STAMP) ## Run the fast test suite
	$(PY) -m pytest -q

test-slow: $(STAMP) ## Run only the slow tests (subprocess runs, DDP, multiruns, launchers)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP) ## Run every test, the slow ones too
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP) ## ruff check + ruff format --check + notebooks committed without outputs
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) notebooks/check_stripped.py

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

T ?= prvr_ablation
DATA ?= synthetic
SEEDS ?= 3
TABLES := $(basename $(notdir $(wildcard experiments/*.yaml)))

table: $(STAMP) ## Rebuild one paper table: T=prvr_ablation DATA=synthetic|real SEEDS=3 ARGS="--override trainer=gpu"
	$(PY) -m partial_relevance.tables --table $(T) --data $(DATA) --seeds $(SEEDS) $(ARGS)

tables: $(STAMP) ## Rebuild every table of experiments/ (DATA=, SEEDS=, ARGS= as for `table`)
	@set -e; for t in $(TABLES); do \
		$(PY) -m partial_relevance.tables --table $$t --data $(DATA) --seeds $(SEEDS) $(ARGS); \
	done

bench: $(STAMP) ## Run every benchmark; writes benchmarks/RESULTS.md and results.json
	$(PY) benchmarks/run_all.py

clean: ## Remove caches and build leftovers (keeps .venv, outputs/ and the corpus cache)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## Also remove .venv and the generated synthetic corpora (never outputs/)
	rm -rf $(VENV) .cache

.PHONY: help setup train train-prem notebooks test test-slow test-all lint format bench clean distclean table tables
