"""Mid-generation deferral in the controller, on scripted tiers (the real ``Tier`` and
``Cascade`` code): every path — escalate at each checkpoint, commit at each, run to the
end and be kept or escalated — plus aborts, streaming order, exact prefixes, pins, skips,
groups and disconnects."""

import asyncio
import contextlib
import math

import numpy as np
import pytest

from vcascade.engine.artifact import ArtifactError, policy_from_artifact
from vcascade.engine.cascade import Answer, Cascade, Delta
from vcascade.engine.policy import Checkpoints, Policy
from vcascade.engine.runtime import run
from vcascade.engine.types import Request
from vcascade.engine.uncertainty.rules import SignalRule
from tests.fakes import scripted_tier

HIGH, MID, LOW = -0.01, -0.5, -3.0
SCRIPT = {  # prompt -> small tier's answer: 8 tokens unless stated
    "esc2": ("escalated at 2", [LOW, LOW] + [HIGH] * 6),
    "esc4": ("escalated at 4", [MID, MID, LOW, LOW] + [HIGH] * 4),
    "com2": ("committed at 2", [HIGH] * 8),
    "com4": ("committed at 4", [MID, MID, 0.0, 0.0] + [MID] * 4),
    "keep": ("kept at the end", [MID] * 8),
    "end-esc": ("escalated at the end", [MID] * 4 + [-1.2] * 4),
    "short": ("one token", [HIGH]),
    "exact2": ("two tokens", [HIGH, HIGH]),
}
EXPECTED = {  # prompt -> (decisions, checkpoint of the first step, answering tier)
    "esc2": (["escalate", "final"], 2, "large"),
    "esc4": (["escalate", "final"], 4, "large"),
    "com2": (["commit"], 2, "small"),
    "com4": (["commit"], 4, "small"),
    "keep": (["accept"], None, "small"),
    "end-esc": (["escalate", "final"], None, "large"),
    "short": (["accept"], None, "small"),
    "exact2": (["commit"], 2, "small"),
}
CHECKPOINTS = Checkpoints((2, 4), (SignalRule("mean_logprob"),) * 2, commit=(-0.1, -0.3), escalate=(-2.0, -1.5))


def tiers(**small):
    return (scripted_tier("small", SCRIPT, **small),
            scripted_tier("large", {p: (f"{p} by large", [HIGH]) for p in SCRIPT}))


def checkpointed(checkpoints=CHECKPOINTS, **kw) -> Policy:
    return Policy((SignalRule("mean_logprob"),), (-0.6,), checkpoints=checkpoints, **kw)


def streamed(cascade, prompt, **kw) -> tuple[list, Answer]:
    async def go():
        events = []
        async with contextlib.aclosing(cascade.stream(Request(prompt=prompt), **kw)) as stream:
            async for item in stream:
                events.append(item)
        return events
    events = run(go())
    return [e for e in events if isinstance(e, Delta)], events[-1]


@pytest.mark.parametrize("prompt", list(EXPECTED))
def test_every_path_decides_where_its_thresholds_say(prompt):
    small, large = tiers()
    deltas, answer = streamed(Cascade([small, large], checkpointed()), prompt)
    decisions, checkpoint, tier = EXPECTED[prompt]
    assert [s.decision for s in answer.trace] == decisions and answer.tier == tier
    assert answer.trace[0].checkpoint == checkpoint
    assert "".join(d.chunk.text for d in deltas) == answer.text  # what streamed is the answer
    if tier == "large":
        assert answer.text == f"{prompt} by large" and large.backend.received == [prompt]
    else:
        assert answer.text == SCRIPT[prompt][0] and large.backend.received == []
    step = answer.trace[0]
    if checkpoint is not None:  # the threshold that decided, on the prefix's score
        j = CHECKPOINTS.tokens.index(checkpoint)
        prefix = np.mean(SCRIPT[prompt][1][:checkpoint])
        assert step.score == pytest.approx(prefix)
        assert step.threshold == (CHECKPOINTS.escalate[j] if step.decision == "escalate" else CHECKPOINTS.commit[j])


@pytest.mark.parametrize("prompt,tokens", [("esc2", 2), ("esc4", 4)])
def test_an_early_escalation_aborts_the_small_generation_there(prompt, tokens):
    small, large = tiers(token_delay=0.01)
    answer = run(Cascade([small, large], checkpointed()).answer(Request(prompt=prompt)))
    assert small.backend.aborted == [prompt]
    assert small.backend.produced[prompt] < len(SCRIPT[prompt][1])  # the rest was never decoded
    assert answer.trace[0].completion_tokens == tokens  # small tokens paid for the escalated request


def test_a_commit_streams_the_prefix_at_once_and_the_rest_as_it_is_decoded():
    small, large = tiers(token_delay=0.02)
    cascade = Cascade([small, large], checkpointed())

    async def go():
        seen = []
        async with contextlib.aclosing(cascade.stream(Request(prompt="com2"))) as stream:
            async for item in stream:
                if isinstance(item, Delta):
                    seen.append((small.backend.produced["com2"], len(item.chunk.token_logprobs), item.trace[-1].decision))
        return seen
    seen = run(go())
    assert seen[0] == (2, 2, "commit")  # first bytes after 2 of 8 tokens, the decision already in the trace
    assert [tokens for _, tokens, _ in seen] == [2] + [1] * 6 and small.backend.aborted == []


def test_an_undecided_answer_is_released_only_when_complete():
    small, large = tiers(token_delay=0.01)
    cascade = Cascade([small, large], checkpointed())

    async def first_delta():
        async with contextlib.aclosing(cascade.stream(Request(prompt="keep"))) as stream:
            async for item in stream:
                if isinstance(item, Delta):
                    return small.backend.produced["keep"]
    assert run(first_delta()) == 8


def test_the_committed_answer_keeps_its_full_length_and_time_in_the_trace():
    small, large = tiers(token_delay=0.01)
    answer = run(Cascade([small, large], checkpointed()).answer(Request(prompt="com4")))
    assert answer.trace[0].completion_tokens == 8 and answer.trace[0].seconds >= 0.06
    assert answer.result.completion_tokens == 8 and answer.score == pytest.approx(np.mean(SCRIPT["com4"][1][:4]))


class RecordingRule(SignalRule):
    """``mean_logprob`` that records how many tokens each result it scored had."""

    def __init__(self):
        super().__init__("mean_logprob")
        self.lengths = []

    def score_many(self, queries, results):
        self.lengths += [len(r.token_logprobs) for r in results]
        return super().score_many(queries, results)


def test_chunks_of_several_tokens_are_scored_on_exactly_each_checkpoints_prefix():
    rule = RecordingRule()
    checkpoints = Checkpoints((2, 4), (rule, rule), commit=(math.inf, math.inf), escalate=(-math.inf, -math.inf))
    small, large = tiers(chunk_tokens=3)
    answer = run(Cascade([small, large], checkpointed(checkpoints)).answer(Request(prompt="keep")))
    assert rule.lengths == [2, 4] and answer.trace[0].decision == "accept"


@pytest.mark.parametrize("pin", [dict(first=0, last=0), dict(last=0)])
def test_a_pinned_or_capped_request_is_never_decided_mid_generation(pin):
    small, large = tiers()
    answer = run(Cascade([small, large], checkpointed()).answer(Request(prompt="esc2"), **pin))
    assert [s.decision for s in answer.trace] == ["final"] and answer.trace[0].checkpoint is None
    assert small.backend.aborted == [] and answer.text == SCRIPT["esc2"][0]


class PromptSkip:
    """A skip rule that scores 'esc2' low (skip) and everything else high."""

    name, needs_embedding = "prompt-skip", False

    def score_many(self, queries):
        return np.array([0.0 if q.request.text == "esc2" else 1.0 for q in queries])

    def spec(self):
        return {"kind": "test"}


def test_a_skipped_request_never_reaches_tier_0_and_records_checkpoint_0():
    small, large = tiers()
    cascade = Cascade([small, large], checkpointed(skip=PromptSkip(), skip_threshold=0.5))
    skipped, kept = run(cascade.answer_all([Request(prompt="esc2"), Request(prompt="com2")]))
    assert [(s.decision, s.checkpoint) for s in skipped.trace] == [("skip", 0), ("final", None)]
    assert small.backend.received == ["com2"] and kept.trace[0].decision == "commit"


def test_each_group_decides_with_its_own_checkpoint_thresholds():
    never = ((math.inf, math.inf), (-math.inf, -math.inf))  # a group that never decides mid-generation
    policy = checkpointed(by_group={"eager": ((-0.6,), None, (CHECKPOINTS.commit, CHECKPOINTS.escalate)),
                                    "careful": ((-0.6,), None, never)}, fallback_group="careful")
    small, large = tiers()
    cascade = Cascade([small, large], policy)
    eager, careful = run(cascade.answer_all([Request(prompt="com2", group="eager"),
                                             Request(prompt="com2", group="careful")]))
    assert (eager.trace[0].decision, eager.trace[0].checkpoint) == ("commit", 2)
    assert (careful.trace[0].decision, careful.trace[0].checkpoint) == ("accept", None)


def test_a_client_that_leaves_after_a_commit_aborts_the_generation():
    small, large = tiers(token_delay=0.02)
    cascade = Cascade([small, large], checkpointed())

    async def leave_after_first_bytes():
        stream = cascade.stream(Request(prompt="com2"))
        async for item in stream:
            if isinstance(item, Delta):
                break
        await stream.aclose()  # what the server does when the client disconnects
        await asyncio.sleep(0.05)
    run(leave_after_first_bytes())
    assert small.backend.aborted == ["com2"] and small.backend.produced["com2"] < 8


def test_checkpoints_refuse_what_they_cannot_mean():
    rule = SignalRule("mean_logprob")
    with pytest.raises(ValueError, match="strictly increasing"):
        Checkpoints((4, 2), (rule, rule), (0.0, 0.0), (0.0, 0.0))
    with pytest.raises(ValueError, match="1 checkpoint commit for 2"):
        Checkpoints((2, 4), (rule, rule), (0.0,), (0.0, 0.0))
    with pytest.raises(ValueError, match="cannot read sampled answers"):
        Checkpoints((2,), (SignalRule("discrete_se"),), (0.0,), (0.0,))


def _artifact(tiers=2, **policy):
    rule = {"kind": "signal", "name": "mean_logprob"}
    return {"tiers": [{"name": f"t{i}"} for i in range(tiers)],
            "policy": {"rules": [rule], "thresholds": [-0.6], "skip": None, "skip_threshold": None,
                       "checkpoints": {"tokens": [2, 4], "rules": [rule, rule], "commit": [None, -0.3],
                                       "escalate": [-math.inf, -1.5]}, **policy}}


def test_an_artifact_with_checkpoints_loads_with_its_groups():
    policy = policy_from_artifact(_artifact())
    assert policy.checkpoints.tokens == (2, 4) and policy.checkpoints.commit == (math.inf, -0.3)
    grouped = policy_from_artifact(_artifact(groups={
        "short": {"thresholds": [-0.5], "skip_threshold": None, "commit": [-0.1, -0.2], "escalate": [-2, -2]},
        "long": {"thresholds": [None], "skip_threshold": None, "commit": [None, None], "escalate": [None, None]}},
        fallback_group="long", group_by="length"))
    assert grouped.checkpoints.commit == (math.inf, math.inf)  # the fallback group's at the top level
    short, _, _ = grouped.for_group("short")
    assert short.checkpoints.commit == (-0.1, -0.2) and short.thresholds == (-0.5,)
    assert "checkpoints 2 tokens" in grouped.describe()


def test_an_artifact_whose_checkpoints_cannot_be_served_is_refused():
    with pytest.raises(ArtifactError, match="certified for two tiers"):
        policy_from_artifact(_artifact(tiers=3))
    broken = _artifact()
    broken["policy"]["checkpoints"]["commit"] = [0.0]
    with pytest.raises(ArtifactError, match="malformed policy checkpoints"):
        policy_from_artifact(broken)


def test_the_monitor_of_a_checkpointed_policy_runs_only_the_tests_that_still_describe_it():
    from vcascade.engine.monitoring.monitor import Decision, Monitor
    from vcascade.engine.monitoring.reference import Reference

    rng = np.random.default_rng(0)
    scores, skips = rng.normal(size=(200, 1)), rng.normal(size=200)
    kw = dict(skip=PromptSkip(), skip_threshold=-1.0)
    end_only = Monitor(Reference.build(scores, skips, Policy((SignalRule("mean_logprob"),), (0.0,), **kw)),
                       ["small", "large"], audit_share=0.1, target="quality-loss", alpha=0.05)
    ours = Monitor(Reference.build(scores, skips, checkpointed(**kw)), ["small", "large"], audit_share=0.1,
                   target="quality-loss", alpha=0.05)
    assert set(end_only.martingales) == {"skip_score", "score:small"} and set(end_only.rates)
    assert set(ours.martingales) == {"skip_score"} and not ours.rates and ours.n_tests == 2  # + served_risk
    small, large = tiers()
    committed = run(Cascade([small, large], checkpointed()).answer(Request(prompt="com2")))
    assert Decision.from_answer(committed, ["small", "large"]).scores == {}  # a prefix score is no end score
