"""The real packaged models under vLLM: SmolLM2-135M and the default Qwen cascade."""

import pytest

from vcascade.engine.runtime import run
from vcascade.engine.types import Request

pytestmark = pytest.mark.real_model


SHORT = {"role": "system", "content": "Answer the question with a short phrase only."}


def test_smollm2_knows_the_capital_of_france(smollm_tier):
    # phrased so that the first answer token is not a near tie (bare "What is the capital of France?"
    # starts with 'L' vs 'The' 0.1 nats apart, which bf16 kernels of different CPUs may order differently)
    results = run(smollm_tier.generate_many([
        Request(messages=(SHORT, {"role": "user", "content": "What is the capital of France? Answer in one word."})),
        Request(messages=(SHORT, {"role": "user", "content": "What is 2+2?"}))]))
    assert "Paris" in results[0].text and "4" in results[1].text, [r.text for r in results]
    assert all(r.completion_tokens > 0 and r.token_logprobs for r in results)


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
