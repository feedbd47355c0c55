# xhs-profiles: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
# uv from PATH, else where `pip install --user` puts it, else the project's .tools venv (for a
# Python that refuses pip installs, PEP 668), else as a module of $(PY); evaluated at each use,
# so a uv that the `uv` target has just installed is found.
UV = $(shell command -v uv 2>/dev/null || { test -x $(HOME)/.local/bin/uv && echo $(HOME)/.local/bin/uv; } || { test -x .tools/bin/uv && echo .tools/bin/uv; } || echo "$(PY) -m uv")
VENV := .venv
BIN := $(VENV)/bin
IDS ?= data/sample_ids.csv
OUT ?= out
DEMO ?= out-demo
DEMO_DAYS := 01 02 03 04 05 06 07 08
# Extra arguments: to the CLI for `make run`, to pytest for `make test-fast`.
ARGS ?=

.PHONY: help uv install browser run demo test test-fast lint format bench bench-cluster fuzz soak clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

uv: # uv itself, installed with pip when the machine has none
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet uv 2>/dev/null \
	  || { $(PY) -m venv .tools && .tools/bin/pip install --quiet uv; }
	@# make expands a recipe before running it: this line cannot use $(UV), which was read above
	@{ command -v uv || test -x $(HOME)/.local/bin/uv || test -x .tools/bin/uv || $(PY) -m uv --version; } \
	  >/dev/null 2>&1 || { echo "uv is not installed and pip could not install it" >&2; exit 1; }

$(BIN)/xhs-profiles: pyproject.toml uv.lock | uv
	$(UV) sync --locked --group dev
	@touch $@

install: $(BIN)/xhs-profiles ## build .venv with the console script xhs-profiles (and the dev tools)

run: install ## run the main job (no JUSTONEAPI_TOKEN: the built-in sandbox on data/sample_ids.csv)
	@if [ -n "$$JUSTONEAPI_TOKEN" ]; then \
	  $(BIN)/xhs-profiles run $(IDS) --out $(OUT) $(ARGS); \
	else \
	  echo "JUSTONEAPI_TOKEN is not set: running against the built-in sandbox API instead."; \
	  $(BIN)/xhs-profiles run $(IDS) --out $(OUT) --sandbox $(ARGS); \
	fi

# Debian's chromium and a CJK font for the report's browser test, when they are missing and this
# is a root shell with apt-get; otherwise the test skips and says why.  Never a browser download.
browser: ## Debian's chromium + a CJK font for the report's browser test (root + apt-get; else it skips)
	@if [ -x /usr/bin/chromium ] && fc-list :lang=zh family 2>/dev/null | grep -q .; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium and fonts-wqy-zenhei for the report's browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium fonts-wqy-zenhei; } >/dev/null 2>&1 \
	    || echo "could not install chromium or the font: the browser test will skip" >&2; \
	else \
	  echo "no /usr/bin/chromium or CJK font, and no root apt-get to install them: the browser test will skip" >&2; \
	fi

demo: install ## eight daily snapshots against the drifting sandbox, then changes, report and examples
	rm -rf $(DEMO)
	@set -o pipefail; for day in $(DEMO_DAYS); do \
	  $(BIN)/xhs-profiles run $(IDS) --out $(DEMO) --sandbox --no-progress \
	    --snapshot-date 2026-11-$$day 2>/dev/null | sed -n 1p || exit 1; \
	done
	$(BIN)/xhs-profiles changes $(DEMO)
	$(BIN)/xhs-profiles report $(DEMO)
	$(BIN)/python examples/analysts.py $(DEMO)

test: install lint browser ## lint, type-check, run every test (bench smoke included), show the 15 slowest
	$(UV) sync --locked --inexact --quiet --group dev --group bench
	$(BIN)/pytest -q --durations=15

# The quick loop.  A -m in ARGS replaces the "not slow" filter (pytest keeps the last -m):
# ARGS='tests/test_state.py -k lock -m ""' runs the lock test, which starts a subprocess.
test-fast: install ## no lint, slow tests deselected; ARGS go to pytest, e.g. ARGS="tests/test_state.py -k ingest"
	$(UV) sync --locked --inexact --quiet --group dev --group bench
	$(BIN)/pytest -q -m "not slow" $(ARGS)

lint: install ## ruff (lint + format check), mypy and the import contracts
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix pipeline tests bench
	$(BIN)/ruff format pipeline tests bench

bench: install ## the benchmark: figures and ratios against the naive loop and dlt, into bench/RESULTS.md
	$(UV) sync --locked --group dev --group bench
	$(BIN)/python -m bench

bench-cluster: install ## 4 shards on a Dask LocalCluster vs 1 process at 50/s per token (~10 min), into bench/RESULTS-cluster.md
	$(UV) sync --locked --inexact --quiet --group dev --group bench
	$(BIN)/python -m bench.cluster $(ARGS)

fuzz: install ## the property tests (flatten, readers) with new random examples, many times
	for i in 1 2 3 4 5; do HYPOTHESIS_PROFILE=explore $(BIN)/pytest -q \
	  tests/test_profile_data.py tests/test_flatten.py -k "any_ or arbitrary or refuses_or_agrees" || exit 1; done

soak: install ## 50 random SIGKILLs and resumes against the sandbox
	$(BIN)/pytest -q tests/test_crash.py -k soak --soak-kills 50 -p no:randomly

clean: ## remove .venv, out/, caches and the .tools venv (uv, when installed there)
	rm -rf $(VENV) $(OUT) $(DEMO) .tools .pytest_cache .mypy_cache .ruff_cache
