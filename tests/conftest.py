"""Shared fixtures: tiny locally generated models and real vLLM engines, built once per session.

Engines are never torn down before the process exits (DESIGN.md: deleting one in-process
engine breaks the others), so every engine fixture is session-scoped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import model_store
from engine.config import SamplingConfig, TierConfig

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


def tiny_tier_config(name: str, model: Path, **sampling) -> TierConfig:
    return TierConfig(name=name, model=str(model), dtype="bfloat16", max_model_len=512, kv_cache_mib=32,
                      enforce_eager=True, sampling=SamplingConfig(max_tokens=12, logprobs=5, **sampling))


@pytest.fixture(scope="session")
def tiny_tiers(tiny_models):
    """Two real vLLM engines in this process, one per tiny model."""
    from engine.vllm_tier import VLLMTier

    return [VLLMTier(tiny_tier_config(n, p), str(p), tier_index=i, warmup_batch=2)
            for i, (n, p) in enumerate(tiny_models.items())]


def _real_tier(name: str, **overrides):
    from engine.vllm_tier import VLLMTier

    if not model_store.is_fetched(name):
        pytest.fail(f"{name} is not fetched; run `make setup` (vcascade models fetch)")
    config = TierConfig(name=name, model=name, max_model_len=1024, kv_cache_mib=64, enforce_eager=True,
                        sampling=SamplingConfig(max_tokens=24, logprobs=5), **overrides)
    return VLLMTier(config, str(model_store.model_dir(name)), warmup_batch=1)


@pytest.fixture(scope="session")
def smollm_tier():
    return _real_tier("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def default_cascade():
    """The embedded default cascade (Qwen2.5-Coder 0.5B -> 1.5B) on real engines."""
    from engine.config import load_config
    from engine.vllm_tier import build_cascade

    return build_cascade(load_config(), warmup_batch=1)


@pytest.fixture(scope="session")
def tiny_sampling_tier(tiny_models):
    """A tiny-model tier that draws up to 6 samples adaptively (2 first) at temperature 1."""
    from dataclasses import replace

    from engine.config import SamplesConfig
    from engine.vllm_tier import VLLMTier

    config = replace(tiny_tier_config("tiny-sampler", tiny_models["tiny-a"]),
                     samples=SamplesConfig(n=6, initial=2, temperature=1.0, max_tokens=6))
    return VLLMTier(config, str(tiny_models["tiny-a"]), warmup_batch=2)
