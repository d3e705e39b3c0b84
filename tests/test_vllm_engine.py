"""Real vLLM engines on tiny locally generated models (head_dim 64)."""

import numpy as np
import pytest

from engine.cascade import Cascade
from engine.policy import Policy
from engine.types import Request

pytestmark = pytest.mark.engine

PROMPTS = ["What is the capital of France?", "Name a colour.", "Count to three."]


def test_two_tiers_in_one_process_generate_results(tiny_tiers):
    a, b = tiny_tiers
    for tier in (a, b):
        results = tier.generate([Request(prompt=p) for p in PROMPTS])
        assert len(results) == len(PROMPTS)
        for r in results:
            assert r.completion_tokens == len(r.token_ids) == len(r.token_logprobs) == len(r.top_logprobs) > 0
            assert r.prompt_tokens > 5 and r.seconds > 0
            assert r.finish_reason in ("stop", "length")
            assert all(lp <= 0 for lp in r.token_logprobs)
            assert r.cumulative_logprob == pytest.approx(sum(r.token_logprobs), abs=1e-3)
            for lp, top in zip(r.token_logprobs, r.top_logprobs):
                assert len(top) == 5
                values = [v for _, v in top]
                assert values == sorted(values, reverse=True)
                assert lp == pytest.approx(values[0], abs=1e-4)  # greedy: chosen = most likely
    # different models really are different engines
    ta = a.generate([Request(prompt=PROMPTS[0])])[0].token_ids
    tb = b.generate([Request(prompt=PROMPTS[0])])[0].token_ids
    assert ta != tb


def test_chosen_token_logprobs_match_transformers(tiny_tiers, tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    tier = tiny_tiers[0]
    requests = [Request(prompt=p) for p in PROMPTS]
    results = tier.generate(requests)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-a"], dtype=torch.float32).eval()
    for request, result in zip(requests, results):
        prompt_ids = tier.render(request)
        ids = torch.tensor([prompt_ids + result.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
        expected = logprobs[positions, torch.tensor(result.token_ids)].numpy()
        got = np.asarray(result.token_logprobs)
        # vLLM computes in bf16, transformers here in fp32 on the same bf16 weights
        assert np.abs(got - expected).max() < 0.15, (got, expected)
        assert np.abs(got - expected).mean() < 0.05


def test_batch_results_match_single_requests(tiny_tiers):
    tier = tiny_tiers[1]
    batch = tier.generate([Request(prompt=p) for p in PROMPTS])
    single = [tier.generate([Request(prompt=p)])[0] for p in PROMPTS]
    assert [r.token_ids for r in batch] == [r.token_ids for r in single]


def test_messages_raw_prompts_and_max_tokens(tiny_tiers):
    tier = tiny_tiers[0]
    chat = Request(messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}))
    raw = Request(prompt="Once upon a time", raw=True, max_tokens=3)
    rendered = tier.tokenizer.decode(tier.render(chat))
    assert "Be brief." in rendered and "<|im_start|>assistant" in rendered
    assert "<|im_start|>" not in tier.tokenizer.decode(tier.render(raw))
    r_chat, r_raw = tier.generate([chat, raw])
    assert r_raw.completion_tokens <= 3 and r_chat.completion_tokens >= 1


def test_prompt_longer_than_context_is_a_clear_error(tiny_tiers):
    from engine.vllm_tier import PromptTooLongError

    with pytest.raises(PromptTooLongError, match="max_model_len 512"):
        tiny_tiers[0].generate([Request(prompt="word " * 600, id="long-1")])


def test_real_cascade_over_two_engines_escalates_as_batch(tiny_tiers):
    a, b = tiny_tiers
    requests = [Request(prompt=p, id=str(i)) for i, p in enumerate(PROMPTS)]
    scores = [Policy("mean_logprob", ()).score(r) for r in a.generate(requests)]
    threshold = float(np.median(scores))  # half the requests escalate
    answers = Cascade([a, b], Policy("mean_logprob", (threshold,))).run(requests)
    for answer, score in zip(answers, scores):
        assert answer.trace[0].score == pytest.approx(score, abs=1e-6)
        assert answer.tier == ("tiny-a" if score >= threshold else "tiny-b")
        assert len(answer.trace) == (1 if score >= threshold else 2)
