"""Mid-generation deferral over real vLLM engines (two tiny in-process models) behind the
real HTTP server, driven by the official ``openai`` client: a commit streams tier 0's own
greedy answer from its checkpoint on; an escalation at a checkpoint aborts tier 0's request
in vLLM and tier 1 answers; the decision and its checkpoint are in the ``cascade`` object
and in ``/metrics``."""

import asyncio
import contextlib
import math

import httpx
import openai
import pytest

from vcascade.engine.cascade import Cascade
from vcascade.engine.policy import Checkpoints, Policy
from vcascade.engine.uncertainty.rules import SignalRule
from vcascade.server.app import Settings, create_app
from tests.servers import serve_app
from tests.test_server import eventually, metric

pytestmark = pytest.mark.engine
QUESTION = [{"role": "user", "content": "Name three rivers in Europe."}]
RULE = SignalRule("mean_logprob")


def policy(commit: float, escalate: float) -> Policy:
    """One checkpoint at 2 tokens; the end rule keeps everything (never reached when the checkpoint decides)."""
    return Policy((RULE,), (-math.inf,), checkpoints=Checkpoints((2,), (RULE,), (commit,), (escalate,)))


@contextlib.contextmanager
def served(tiny_tiers, commit: float, escalate: float):
    with serve_app(create_app(Cascade(tiny_tiers, policy(commit, escalate)), Settings())) as url:
        yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def stream_chat(client, **extra) -> tuple[str, dict]:
    chunks = list(client.chat.completions.create(model="vcascade", messages=QUESTION, stream=True,
                                                 stream_options={"include_usage": True}, **extra))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].model_extra["cascade"]


@contextlib.contextmanager
def recorded_aborts(engine):
    aborted: list[str] = []
    abort = engine.abort

    async def recording_abort(request_id, *args, **kwargs):
        aborted.append(request_id)
        return await abort(request_id, *args, **kwargs)

    engine.abort = recording_abort
    try:
        yield aborted
    finally:
        del engine.abort


def test_a_commit_streams_tier_0s_own_greedy_answer_and_says_where_it_decided(tiny_tiers):
    with served(tiny_tiers, commit=-math.inf, escalate=-math.inf) as (url, client):  # commit every answer at 2
        pinned = client.chat.completions.create(model="tiny-a", messages=QUESTION)
        text, cascade = stream_chat(client)
        assert text == pinned.choices[0].message.content  # the committed answer is tier 0's whole greedy answer
        assert cascade["tier"] == "tiny-a" and not cascade["escalated"]
        [step] = cascade["trace"]
        assert (step["decision"], step["checkpoint"]) == ("commit", 2)
        assert step["completion_tokens"] == pinned.usage.completion_tokens > 2
        exposition = httpx.get(f"{url}/metrics").text
        assert metric(exposition, "vcascade:decisions_total", tier="tiny-a", decision="commit", checkpoint="2") == 1


def test_an_escalation_at_a_checkpoint_aborts_tier_0_in_vllm(tiny_tiers):
    engine = tiny_tiers[0].backend.engine
    with served(tiny_tiers, commit=math.inf, escalate=math.inf) as (url, client), \
            recorded_aborts(engine) as aborted:  # escalate every answer at 2
        # a budget far beyond what can arrive before the decision, however slow the machine: tiny-a is unfinished
        # when it escalates (vLLM merges the tokens a slow reader has not taken yet into one chunk)
        text, cascade = stream_chat(client, max_tokens=300)
        large = client.chat.completions.create(model="tiny-b", messages=QUESTION, max_tokens=300)
        assert text == large.choices[0].message.content and cascade["tier"] == "tiny-b" and cascade["escalated"]
        assert [(s["decision"], s["checkpoint"]) for s in cascade["trace"]] == [("escalate", 2), ("final", None)]
        assert 2 <= cascade["trace"][0]["completion_tokens"] < 300  # cut short at its checkpoint
        assert eventually(lambda: engine.get_num_unfinished_requests() == 0)
        assert len(aborted) == 1
        exposition = httpx.get(f"{url}/metrics").text
        assert metric(exposition, "vcascade:decisions_total", tier="tiny-a", decision="escalate", checkpoint="2") == 1


def test_a_pinned_request_is_not_decided_mid_generation(tiny_tiers):
    with served(tiny_tiers, commit=math.inf, escalate=math.inf) as (url, client):
        answer = client.chat.completions.create(model="tiny-a", messages=QUESTION)
        [step] = answer.model_extra["cascade"]["trace"]
        assert (step["decision"], step["checkpoint"]) == ("final", None)
