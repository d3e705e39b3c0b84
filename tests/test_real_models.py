"""The real packaged models under vLLM: SmolLM2-135M and the default Qwen cascade."""

import pytest

from vcascade.engine.runtime import run
from vcascade.engine.types import Request

pytestmark = pytest.mark.real_model


SHORT = {"role": "system", "content": "Answer the question with a short phrase only."}


def test_smollm2_knows_the_capital_of_france(smollm_tier):
    # plain completions whose first answer token leads by more than 2 nats on this machine, so that
    # bf16 kernels of other CPUs do not reorder it (chat answers of a 135M model are phrased
    # differently from one CPU to another: "Paris" vs 'The answer ... is "Paris"')
    prompts = ["The capital of France is", "The capital city of France is the city of"]
    results = run(smollm_tier.generate_many([Request(prompt=p, raw=True) for p in prompts]))
    for result in results:
        assert result.text.strip().startswith("Paris"), [r.text for r in results]
        (best, best_logprob), (_, runner_up) = result.top_logprobs[0][:2]
        assert best.strip() == "Paris" and best_logprob == pytest.approx(result.token_logprobs[0], abs=1e-3)
        assert best_logprob > runner_up


def test_smollm2_answers_through_its_chat_template(smollm_tier):
    chat = Request(messages=(SHORT, {"role": "user", "content": "What is the capital of France?"}))
    (result,) = run(smollm_tier.generate_many([chat]))
    assert result.prompt_tokens > len(chat.messages[1]["content"].split())  # template tokens added
    assert result.completion_tokens > 0 and len(result.token_logprobs) == result.completion_tokens
    assert "<|im_start|>" not in result.text and result.finish_reason in ("stop", "length")


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
        elif first.decision in ("accept", "commit"):  # kept at the end, or at a checkpoint
            assert first.score >= first.threshold and a.tier == "qwen-0.5b"
            assert (first.checkpoint is not None) == (first.decision == "commit")
        else:
            assert first.decision == "escalate" and first.score < first.threshold and a.tier == "qwen-1.5b"
            assert a.trace[1].decision == "final"
    if answers[0].tier == "qwen-1.5b":  # the 1.5B knows it (the 0.5B tends to say Sydney)
        assert "Canberra" in answers[0].text, answers[0].to_dict()


def test_default_cascade_behind_the_server_answers_the_openai_client(default_cascade):
    """`make serve`'s cascade: the decision follows the committed artifact, streamed or not."""
    import httpx
    import openai

    from tests.servers import serve_app
    from vcascade.server.app import Settings, create_app

    policy = default_cascade.policy
    with serve_app(create_app(default_cascade, Settings())) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list().data} == {"vcascade", "qwen-0.5b", "qwen-1.5b"}
        question = [{"role": "user", "content": "Which planet is closest to the Sun?"}]
        reply = client.chat.completions.with_raw_response.create(model="vcascade", messages=question)
        body = reply.parse()
        decision = body.model_extra["cascade"]
        first = decision["trace"][0]
        # a machine whose dtype auto differs from the calibration's is served outside the guarantee
        departs = ["dtype"] if default_cascade.scope.dtype_departs else []
        assert reply.headers["x-vcascade-tier"] == decision["tier"] and decision["out_of_scope"] == departs
        if policy.by_group:  # grouped by answer length: a short request gets the short group's thresholds
            assert decision["group"] == "short"
            policy = policy.for_group("short")[0]
        if first["decision"] == "skip":
            assert first["score"] < policy.skip_threshold and decision["tier"] == "qwen-1.5b"
        elif first["checkpoint"]:  # decided mid-generation, at one of the artifact's checkpoints
            j = policy.checkpoints.tokens.index(first["checkpoint"])
            escalated = first["score"] < policy.checkpoints.escalate[j]
            assert first["decision"] == ("escalate" if escalated else "commit")
            assert escalated or first["score"] >= policy.checkpoints.commit[j]
            assert decision["tier"] == ("qwen-1.5b" if escalated else "qwen-0.5b")
        else:
            kept = first["score"] >= policy.thresholds[0]
            assert first["decision"] == ("accept" if kept else "escalate")
            assert decision["tier"] == ("qwen-0.5b" if kept else "qwen-1.5b")
        stream = client.chat.completions.create(model="vcascade", messages=question, stream=True)
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == body.choices[0].message.content  # greedy: the same answer, the same decision
        assert chunks[-1].model_extra["cascade"]["tier"] == decision["tier"]
        # the committed artifact was calibrated on 32-token answers under the cascade's system prompt
        # and on long-form items with their own system turns and budgets (320, 384, 400, 512)
        short = client.chat.completions.create(model="vcascade", messages=question, max_tokens=16)
        assert short.model_extra["cascade"]["out_of_scope"] == departs + ["max_tokens"]
        own = client.chat.completions.create(model="vcascade", messages=[
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Reply with the single word OK."}], max_tokens=320)
        assert own.model_extra["cascade"]["out_of_scope"] == departs and own.model_extra["cascade"]["group"] == "long"
        odd = client.chat.completions.create(model="vcascade", messages=question, max_tokens=100)
        assert odd.model_extra["cascade"]["out_of_scope"] == departs + ["max_tokens"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'vcascade:request_success_total{' in metrics and 'tier="' + decision["tier"] + '"' in metrics
