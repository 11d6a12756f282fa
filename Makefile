# CoLA — run `make help` for the targets. Everything installs into .venv from this repo's own files.
PY_SYS ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo check-demo train test test-ci test-full lint format bench bench-table clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with its test tools

demo: install ## Train + test CoLA on the embedded synthetic grounding set (no downloads; 4-6 min on 2 idle CPU cores, README "Two commands")
	HF_HUB_OFFLINE=1 $(PY) train.py

check-demo: install ## The demo for seeds 0-4 (CoLA + frozen towers) against the README's numbers (~40 min)
	HF_HUB_OFFLINE=1 $(PY) scripts/check_demo.py $(ARGS)

train: install ## Train with Hydra overrides: make train ARGS="task=refcoco peft=cola rank=8"
	$(PY) train.py $(ARGS)

test: install ## Fast test suite (no slow/gpu/ci tests)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

test-ci: install ## Tests CI runs after `make test` (8-10.5 min): sweeps, CPU DDP, SIGTERM resume, train.py CLI errors, benchmark report
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -m ci

test-full: install ## Every test, slow ones included
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -m "not gpu"

lint: install ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: install ## Speed/FLOPs/memory benchmark of CoLA vs LoRA (tiny shapes; ARGS="--device cuda" etc.)
	$(PY) scripts/benchmark.py --tiny $(ARGS)

bench-table: install ## Regenerate README.md's performance table from docs/benchmarks/bench_*.json
	$(PY) scripts/benchmark_table.py

clean: ## Remove caches and run outputs (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache wandb lightning_logs
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
