"""The real packaged models under vLLM: SmolLM2-135M and the default Qwen cascade."""

import pytest

from vcascade.engine.types import Request

pytestmark = pytest.mark.real_model


def test_smollm2_knows_the_capital_of_france(smollm_tier):
    [result] = smollm_tier.generate([Request(prompt="What is the capital of France?")])
    assert "Paris" in result.text
    assert result.completion_tokens > 0 and result.token_logprobs


def test_default_cascade_answers_canberra(default_cascade):
    [answer] = default_cascade.run([Request(prompt="What is the capital of Australia?")])
    assert "Canberra" in answer.text, answer.to_dict()
    first = answer.trace[0]
    assert first.tier == "qwen-0.5b" and first.threshold is not None
    # The 0.5B tends to say Sydney with low confidence: the cascade must then have escalated.
    if answer.tier == "qwen-1.5b":
        assert first.decision == "escalate" and first.score < first.threshold
        assert answer.trace[1].decision == "final"
    else:
        assert first.decision == "accept" and first.score >= first.threshold


def test_default_cascade_batch_decisions_follow_threshold(default_cascade):
    questions = ["What is the chemical symbol for gold?", "What is the capital of Turkey?",
                 "How many bits are in a byte?", "Which element has the atomic number 1?"]
    answers = default_cascade.run([Request(prompt=q) for q in questions])
    assert all(a.trace[0].tier == "qwen-0.5b" for a in answers)
    for a in answers:
        assert (a.tier == "qwen-0.5b") == (a.trace[0].score >= a.trace[0].threshold)
