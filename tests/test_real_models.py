"""The real packaged models under vLLM: SmolLM2-135M and the default Qwen cascade."""

import pytest

from vcascade.engine.runtime import run
from vcascade.engine.types import Request

pytestmark = pytest.mark.real_model


def test_smollm2_knows_the_capital_of_france(smollm_tier):
    result = run(smollm_tier.generate(Request(prompt="What is the capital of France?")))
    assert "Paris" in result.text
    assert result.completion_tokens > 0 and result.token_logprobs


def test_default_cascade_serves_its_artifact_and_decides_by_it(default_cascade):
    """The embedded default loads its committed artifact; every decision follows its policy."""
    policy = default_cascade.policy
    assert len(policy.rules) == 1 and len(policy.thresholds) == 1
    questions = ["What is the capital of Australia?", "What is the chemical symbol for gold?",
                 "Which planet is closest to the Sun?", "How many bits are in a byte?"]
    answers = run(default_cascade.answer_all([Request(prompt=q) for q in questions]))
    for a in answers:
        first = a.trace[0]
        assert first.tier == "qwen-0.5b"
        if first.decision == "skip":
            assert first.score < policy.skip_threshold and a.tier == "qwen-1.5b"
        elif first.decision == "accept":
            assert first.score >= first.threshold and a.tier == "qwen-0.5b"
        else:
            assert first.decision == "escalate" and first.score < first.threshold and a.tier == "qwen-1.5b"
            assert a.trace[1].decision == "final"
    if answers[0].tier == "qwen-1.5b":  # the 1.5B knows it (the 0.5B tends to say Sydney)
        assert "Canberra" in answers[0].text, answers[0].to_dict()
