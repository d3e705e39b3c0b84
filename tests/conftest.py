"""Shared fixtures: tiny locally generated models and real vLLM engines, built once per session.

Every engine is vLLM's ``AsyncLLM`` (its engine core in a child process) on this process's
runtime loop; engine fixtures are session-scoped (start-up costs ~20 s per engine) and are
shut down at exit. Synchronous tests drive them with ``vcascade.engine.runtime.run``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vcascade.engine import model_store
from vcascade.engine.config import parse_config
from vcascade.engine.runtime import run

TOKENIZER_SOURCE = "smollm2-135m-instruct"  # real tokenizer + chat template for the tiny models


def make_tiny_model(out: Path, layers: int, seed: int) -> Path:
    """A random Llama with head_dim 64 (CPU attention supports it) and a real tokenizer.

    The output head is scaled up so next-token distributions are peaked rather than
    uniform, which makes logprob comparisons meaningful.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_store.model_dir(TOKENIZER_SOURCE))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    if not model_store.is_fetched(TOKENIZER_SOURCE):
        pytest.fail(f"{TOKENIZER_SOURCE} is not fetched; run `make setup` (vcascade models fetch)")
    root = tmp_path_factory.mktemp("tiny-models")
    return {"tiny-a": make_tiny_model(root / "tiny-a", 2, seed=1), "tiny-b": make_tiny_model(root / "tiny-b", 3, seed=2)}


def tiny_tier_dict(name: str, model: Path, **extra) -> dict:
    """A tier of a tiny model as a config mapping (the YAML form)."""
    sampling = {"max_tokens": 12, "logprobs": 5, **extra.pop("sampling", {})}
    return {"name": name, "model": str(model), "max_model_len": 512, "kv_cache_mib": 32, "enforce_eager": True,
            "sampling": sampling, **extra}


def tiny_config(tiny_models, threshold: float = -1.0, **top):
    """The two tiny models as a two-tier cascade config (hand threshold on mean_logprob)."""
    tiers = [tiny_tier_dict(n, p) for n, p in tiny_models.items()]
    tiers[0]["threshold"] = threshold
    return parse_config({"signal": "mean_logprob", "tiers": tiers, **top})


@pytest.fixture(scope="session")
def tiny_tiers(tiny_models):
    """Two real vLLM engines, one per tiny model, each on its own core."""
    from vcascade.engine.tiers import build_tiers

    return run(build_tiers(tiny_config(tiny_models), warmup_batch=2))


@pytest.fixture(scope="session")
def smollm_tier():
    from vcascade.engine.tiers import build_tiers

    name = "smollm2-135m-instruct"
    if not model_store.is_fetched(name):
        pytest.fail(f"{name} is not fetched; run `make setup` (vcascade models fetch)")
    config = parse_config({"tiers": [{"name": name, "model": name, "max_model_len": 1024, "kv_cache_mib": 64,
                                      "enforce_eager": True, "sampling": {"max_tokens": 24, "logprobs": 5}}]})
    return run(build_tiers(config, warmup_batch=1))[0]


@pytest.fixture(scope="session")
def default_cascade():
    """The embedded default cascade (Qwen2.5-Coder 0.5B -> 1.5B) with its committed artifact."""
    from vcascade.engine.config import load_config
    from vcascade.engine.factory import build_cascade

    return run(build_cascade(load_config(), warmup_batch=1))


@pytest.fixture(scope="session")
def tiny_sampling_tier(tiny_models):
    """A tiny-model tier that draws up to 6 samples adaptively (2 first) at temperature 1."""
    from vcascade.engine.tiers import build_tiers

    tier = tiny_tier_dict("tiny-sampler", tiny_models["tiny-a"],
                          samples={"n": 6, "initial": 2, "temperature": 1.0, "max_tokens": 6})
    return run(build_tiers(parse_config({"tiers": [tier]}), warmup_batch=2))[0]
