"""The cascade controller against scripted backends (the real ``Tier`` and ``Cascade`` code)."""

import math
import time

import numpy as np
import pytest

from vcascade.engine.cascade import Answer, Cascade, Delta, Overhead
from vcascade.engine.errors import TierUnavailableError
from vcascade.engine.policy import Policy
from vcascade.engine.runtime import run
from vcascade.engine.types import Request
from tests.fakes import scripted_tier

SURE, UNSURE = [-0.05, -0.05], [-1.0, -2.0]  # mean logprob -0.05 vs -1.5


def three_tiers(**kw):
    small = scripted_tier("small", {"a": ("A-small", SURE), "b": ("B-small", UNSURE), "c": ("C-small", UNSURE),
                                    "d": ("D-small", SURE)}, **kw)
    mid = scripted_tier("mid", {"b": ("B-mid", SURE), "c": ("C-mid", UNSURE)})
    large = scripted_tier("large", {"c": ("C-large", UNSURE)})
    return small, mid, large


def policy(*thresholds, signal="mean_logprob"):
    return Policy.from_signal(signal, thresholds)


def answers(cascade, prompts, **kw):
    return run(cascade.answer_all([Request(prompt=p, id=p) for p in prompts], **kw))


def test_only_uncertain_requests_escalate_in_order():
    small, mid, large = three_tiers()
    result = answers(Cascade([small, mid, large], policy(-0.5, -0.5)), "abcd")
    assert sorted(small.backend.received) == list("abcd")
    assert sorted(mid.backend.received) == ["b", "c"] and large.backend.received == ["c"]
    assert [a.text for a in result] == ["A-small", "B-mid", "C-large", "D-small"]
    assert [a.tier_index for a in result] == [0, 1, 2, 0]
    assert [a.id for a in result] == list("abcd")


def test_last_tier_answers_even_when_unsure_and_is_not_scored():
    [answer] = answers(Cascade(list(three_tiers()), policy(0.0, 0.0)), "c")
    assert answer.tier == "large" and answer.score is None
    assert [s.decision for s in answer.trace] == ["escalate", "escalate", "final"]
    assert answer.trace[-1].threshold is None and answer.trace[0].score == pytest.approx(-1.5)


def test_trace_records_every_tier_with_score_threshold_tokens_and_seconds():
    small, mid, large = three_tiers(delay=0.05)
    [answer] = answers(Cascade([small, mid, large], policy(-0.5, -0.4)), "b")
    assert [(s.tier, s.decision) for s in answer.trace] == [("small", "escalate"), ("mid", "accept")]
    first, second = answer.trace
    assert first.score == pytest.approx(-1.5) and first.threshold == -0.5
    assert second.score == pytest.approx(-0.05) and second.threshold == -0.4
    assert (first.completion_tokens, first.prompt_tokens) == (2, 7) and first.seconds >= 0.05
    assert answer.escalated and answer.to_dict()["trace"][1]["tier"] == "mid" and "result" not in answer.to_dict()


def test_threshold_is_inclusive():
    tier = scripted_tier("t", {"x": ("X", [-0.5])})
    last = scripted_tier("z", {"x": ("Z", [-0.1])})
    assert answers(Cascade([tier, last], policy(-0.5)), "x")[0].tier == "t"


def test_infinite_thresholds_mean_always_and_never_escalate():
    small, mid, large = three_tiers()
    assert answers(Cascade([small, large], policy(-math.inf)), "c")[0].tier == "small"
    assert answers(Cascade([small, mid], policy(math.inf)), "b")[0].tier == "mid"


def test_requests_run_concurrently_not_one_after_another():
    small, mid, large = three_tiers(delay=0.2)
    cascade = Cascade([small, large], policy(-0.5))
    t = time.perf_counter()
    answers(cascade, "aaaaaaaaaa")
    assert time.perf_counter() - t < 1.0  # ten 0.2 s requests overlap
    assert cascade.tier_seconds["small"] < 1.0  # busy time is the union of intervals, not their sum


def test_pinning_a_tier_and_capping_escalation():
    small, mid, large = three_tiers()
    cascade = Cascade([small, mid, large], policy(-0.5, -0.5))
    [pinned] = answers(cascade, "b", first=1, last=1)
    assert pinned.tier == "mid" and [s.decision for s in pinned.trace] == ["final"] and "b" not in small.backend.received
    [capped] = answers(cascade, "c", last=0)
    assert capped.tier == "small" and capped.trace[0].decision == "final" and capped.score == pytest.approx(-1.5)
    with pytest.raises(ValueError, match="outside"):
        answers(cascade, "a", first=2, last=1)


def test_stream_releases_an_accepted_answer_at_once_and_streams_the_last_tier():
    small, _, large = three_tiers()
    cascade = Cascade([small, large], policy(-0.5))

    async def collect(prompt):
        return [item async for item in cascade.stream(Request(prompt=prompt))]

    kept = run(collect("a"))
    assert [type(x) for x in kept] == [Delta, Answer] and kept[0].chunk.text == "A-small"
    assert kept[0].trace[0].decision == "accept"
    escalated = run(collect("c"))
    deltas = [x for x in escalated if isinstance(x, Delta)]
    assert len(deltas) == 2 and "".join(d.chunk.text for d in deltas) == "C-large"  # token by token
    assert all(d.tier_index == 1 for d in deltas) and deltas[0].trace[0].decision == "escalate"


def test_single_tier_cascade_and_empty_batch():
    small, _, _ = three_tiers()
    cascade = Cascade([small], Policy((), ()))
    assert run(cascade.answer_all([])) == []
    assert answers(cascade, "b")[0].trace[0].decision == "final"


def test_threshold_count_must_match_tiers():
    small, mid, large = three_tiers()
    with pytest.raises(ValueError, match="one per non-final tier"):
        Cascade([small, mid, large], policy(-0.5))
    with pytest.raises(KeyError, match="unknown signal"):
        policy(0.1, signal="bogus")


def test_other_signal_changes_decisions():
    tier = scripted_tier("t", {"x": ("X", [-0.01, -3.0])})  # mean -1.505, max -0.01
    last = scripted_tier("z", {"x": ("Z", [-0.1])})
    assert answers(Cascade([tier, last], policy(-0.1, signal="quantile:1")), "x")[0].tier == "t"
    assert answers(Cascade([tier, last], policy(-0.1)), "x")[0].tier == "z"


def test_a_failing_tier_fails_the_request_unless_configured_to_fall_back():
    small = scripted_tier("small", {"b": ("B-small", UNSURE)})
    down = scripted_tier("large", {}, fail=True)
    with pytest.raises(TierUnavailableError, match="large is down"):
        answers(Cascade([small, down], policy(-0.5)), "b")
    tolerant = scripted_tier("large", {}, fail=True, on_error="previous_answer")
    [answer] = answers(Cascade([small, tolerant], policy(-0.5)), "b")
    assert answer.text == "B-small" and answer.tier == "small"
    assert [s.decision for s in answer.trace] == ["escalate", "error"] and "down" in answer.trace[1].detail


class FixedSkip:
    """A pre-generation rule that scores requests by a lookup table."""

    name, needs_embedding = "fixed-skip", False

    def __init__(self, scores):
        self.scores = scores

    def score_many(self, queries):
        return np.array([self.scores[q.request.prompt] for q in queries])

    def spec(self):
        return {"kind": "test"}


def test_skip_rule_sends_hopeless_requests_past_tier_zero():
    small, _, large = three_tiers()
    cascade = Cascade([small, large], Policy(policy(-0.5).rules, (-0.5,), FixedSkip({"a": 0.9, "c": 0.1}), 0.5))
    overhead = Overhead()

    async def go(prompt):
        return [x async for x in cascade.stream(Request(prompt=prompt), overhead=overhead)][-1]

    skipped, kept = run(go("c")), run(go("a"))
    assert skipped.tier == "large" and [s.decision for s in skipped.trace] == ["skip", "final"]
    assert skipped.trace[0].score == 0.1 and skipped.trace[0].threshold == 0.5 and "c" not in small.backend.received
    assert kept.tier == "small" and [s.decision for s in kept.trace] == ["accept"]
    assert overhead.parts["scoring"] > 0
    # a pinned or capped request never skips the tier it asked for
    [capped] = answers(cascade, "c", last=0)
    assert capped.tier == "small"
