"""Sampled answers from a real vLLM engine (tiny local model)."""

import numpy as np
import pytest

from vcascade.engine.runtime import run
from vcascade.engine.types import Request
from vcascade.engine.uncertainty.signals import get_signal

pytestmark = pytest.mark.engine


def test_samples_come_back_diverse_with_loglikelihoods(tiny_sampling_tier):
    requests = [Request(prompt=p) for p in ["Tell me a story.", "What is two plus two?", "Name a city."]]
    results = run(tiny_sampling_tier.generate_many(requests))
    for r in results:
        assert len(r.samples) in (2, 6)  # adaptive: 2 when decisive, else all 6
        assert len(r.clusters) == len(r.samples)
        texts = [s.text for s in r.samples]
        for s in r.samples:
            assert 1 <= len(s.token_ids) <= 6 and len(s.token_logprobs) == len(s.token_ids)
            assert s.cumulative_logprob == pytest.approx(sum(s.token_logprobs)) and s.cumulative_logprob < 0
        if len(r.samples) == 6:
            assert len(set(texts)) > 1  # temperature 1 on a random model: not all identical
        assert r.token_logprobs  # the greedy answer came alongside
        for name in ["discrete_se", "weighted_se", "num_clusters", "greedy_agreement"]:
            assert np.isfinite(get_signal(name)(r))
    # the random model disagrees with itself somewhere: at least one prompt drew all 6
    assert any(len(r.samples) == 6 for r in results)


def test_greedy_answer_is_unchanged_by_sampling(tiny_sampling_tier, tiny_tiers):
    request = Request(prompt="Name a colour.")
    sampled = run(tiny_sampling_tier.generate(request))
    plain = run(tiny_tiers[0].generate(request))  # same model, no samples
    assert sampled.token_ids == plain.token_ids
