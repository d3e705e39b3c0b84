"""Real vLLM engines (AsyncLLM) on tiny locally generated models (head_dim 64)."""

import asyncio

import numpy as np
import psutil
import pytest

from vcascade.engine.cascade import Cascade
from vcascade.engine.errors import MaxTokensError, PromptTooLongError
from vcascade.engine.policy import Policy
from vcascade.engine.runtime import run
from vcascade.engine.tiers import core_bindings
from vcascade.engine.types import Request, TierResult
from vcascade.engine.uncertainty.signals import get_signal

pytestmark = pytest.mark.engine

PROMPTS = ["What is the capital of France?", "Name a colour.", "Count to three."]


def generate(tier, requests):
    return run(tier.generate_many(requests))


def test_two_tiers_in_one_process_generate_results(tiny_tiers):
    a, b = tiny_tiers
    for tier in (a, b):
        results = generate(tier, [Request(prompt=p) for p in PROMPTS])
        assert len(results) == len(PROMPTS)
        for r in results:
            assert r.completion_tokens == len(r.token_ids) == len(r.token_logprobs) == len(r.top_logprobs) > 0
            assert len(r.tokens) == r.completion_tokens and r.prompt_tokens > 5 and r.seconds > 0
            assert r.finish_reason in ("stop", "length")
            assert all(lp <= 0 for lp in r.token_logprobs)
            assert r.cumulative_logprob == pytest.approx(sum(r.token_logprobs), abs=1e-3)
            for lp, top in zip(r.token_logprobs, r.top_logprobs):
                assert len(top) == 5
                values = [v for _, v in top]
                assert values == sorted(values, reverse=True)
                assert lp == pytest.approx(values[0], abs=1e-4)  # greedy: chosen = most likely
    ta = generate(a, [Request(prompt=PROMPTS[0])])[0].token_ids
    tb = generate(b, [Request(prompt=PROMPTS[0])])[0].token_ids
    assert ta != tb  # different models really are different engines


def test_each_engine_core_is_pinned_to_its_own_core(tiny_tiers):
    assert core_bindings(2, [0, 1]) == ["0", "1"] and core_bindings(1, [0, 1]) == ["0-1"]
    assert core_bindings(3, [0, 1, 2, 3, 4, 5]) == ["0-1", "2-3", "4-5"] and core_bindings(3, [0, 1]) == ["0", "1", "0"]
    if len(psutil.Process().cpu_affinity()) < 2:
        pytest.skip("needs two cores")
    affinities = []
    for tier in tiny_tiers:
        core = psutil.Process(tier.backend.engine_core_pid)
        workers = [p for p in core.children(recursive=True) if p.name().startswith("VLLM::Worker")]
        assert len(workers) == 1  # the model runs in the engine core's worker, pinned by VLLM_CPU_OMP_THREADS_BIND
        affinities.append(sorted(workers[0].cpu_affinity()))
    assert [tier.backend.cpu_bind for tier in tiny_tiers] == ["0", "1"]
    assert affinities[0] != affinities[1] and all(len(a) == 1 for a in affinities), affinities


def test_chosen_token_logprobs_match_transformers(tiny_tiers, tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    tier = tiny_tiers[0]
    requests = [Request(prompt=p) for p in PROMPTS]
    results = generate(tier, requests)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-a"], dtype=torch.float32).eval()
    for request, result in zip(requests, results):
        prompt_ids = tier.backend.render(request)
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


def test_concurrent_results_match_single_requests(tiny_tiers):
    tier = tiny_tiers[1]
    batch = generate(tier, [Request(prompt=p) for p in PROMPTS])
    single = [generate(tier, [Request(prompt=p)])[0] for p in PROMPTS]
    assert [r.token_ids for r in batch] == [r.token_ids for r in single]


def test_streamed_chunks_add_up_to_the_result(tiny_tiers):
    tier = tiny_tiers[0]

    async def collect():
        return [item async for item in tier.stream(Request(prompt=PROMPTS[1], max_tokens=8))]

    items = run(collect())
    chunks, result = items[:-1], items[-1]
    assert isinstance(result, TierResult) and len(chunks) >= 2
    assert "".join(c.text for c in chunks) == result.text
    assert sum(len(c.token_logprobs) for c in chunks) == result.completion_tokens
    assert chunks[0].prompt_tokens == result.prompt_tokens and chunks[-1].finish_reason == result.finish_reason


def test_messages_raw_prompts_and_max_tokens(tiny_tiers):
    tier = tiny_tiers[0]
    chat = Request(messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}))
    raw = Request(prompt="Once upon a time", raw=True, max_tokens=3)
    rendered = tier.backend.tokenizer.decode(tier.backend.render(chat))
    assert "Be brief." in rendered and "<|im_start|>assistant" in rendered
    assert "<|im_start|>" not in tier.backend.tokenizer.decode(tier.backend.render(raw))
    r_chat, r_raw = generate(tier, [chat, raw])
    assert r_raw.completion_tokens <= 3 and r_chat.completion_tokens >= 1


def test_prompt_longer_than_context_and_max_tokens_too_large_are_clear_errors(tiny_tiers):
    with pytest.raises(PromptTooLongError, match="maximum context length is 512 tokens") as err:
        generate(tiny_tiers[0], [Request(prompt="word " * 600, id="long-1")])
    assert err.value.param == "input_tokens"
    with pytest.raises(MaxTokensError, match="you requested") as err:
        generate(tiny_tiers[0], [Request(prompt="hi", max_tokens=600)])
    assert err.value.param == "max_tokens"


def test_decoding_overrides_reach_the_engine(tiny_tiers):
    tier = tiny_tiers[0]
    [free] = generate(tier, [Request(prompt=PROMPTS[2], max_tokens=12)])
    stop = free.text[2:4]
    [stopped] = generate(tier, [Request(prompt=PROMPTS[2], max_tokens=12, stop=(stop,))])
    assert stop not in stopped.text and len(stopped.text) < len(free.text)
    sampled = generate(tier, [Request(prompt=PROMPTS[2], temperature=1.5, seed=s) for s in range(4)])
    assert len({tuple(r.token_ids) for r in sampled}) > 1


def test_cancelling_a_request_aborts_it_in_the_engine(tiny_tiers):
    tier = tiny_tiers[0]
    engine = tier.backend.engine

    async def start_then_cancel():
        task = asyncio.ensure_future(tier.generate(Request(prompt="Tell a long story.", max_tokens=400)))
        await asyncio.sleep(0.3)
        running = engine.get_num_unfinished_requests()
        task.cancel()
        await asyncio.sleep(0.5)
        return running, engine.get_num_unfinished_requests()

    before, after = run(start_then_cancel())
    assert before == 1 and after == 0


def test_real_cascade_over_two_engines(tiny_tiers):
    a, b = tiny_tiers
    requests = [Request(prompt=p, id=str(i)) for i, p in enumerate(PROMPTS)]
    scores = [get_signal("mean_logprob")(r) for r in generate(a, requests)]
    threshold = float(np.median(scores))  # half the requests escalate
    cascade = Cascade([a, b], Policy.from_signal("mean_logprob", (threshold,)))
    answers = run(cascade.answer_all(requests))
    for answer, score in zip(answers, scores):
        assert answer.trace[0].score == pytest.approx(score, abs=1e-6)
        assert answer.tier == ("tiny-a" if score >= threshold else "tiny-b")
        assert len(answer.trace) == (1 if score >= threshold else 2)
    assert all(s > 0 for s in cascade.tier_seconds.values())
