"""The cascade controller against scripted fake tiers."""

import math

import pytest

from engine.cascade import Cascade
from engine.policy import Policy
from engine.types import Request
from tests.fakes import ScriptedTier

SURE, UNSURE = [-0.05, -0.05], [-1.0, -2.0]  # mean logprob -0.05 vs -1.5


def three_tiers():
    small = ScriptedTier("small", {"a": ("A-small", SURE), "b": ("B-small", UNSURE), "c": ("C-small", UNSURE),
                                   "d": ("D-small", SURE)}, seconds=1.0)
    mid = ScriptedTier("mid", {"b": ("B-mid", SURE), "c": ("C-mid", UNSURE)}, seconds=2.0)
    large = ScriptedTier("large", {"c": ("C-large", UNSURE)}, seconds=4.0)
    return small, mid, large


def test_batches_escalate_only_the_uncertain_subset_in_order():
    small, mid, large = three_tiers()
    cascade = Cascade([small, mid, large], Policy("mean_logprob", (-0.5, -0.5)))
    answers = cascade.run([Request(prompt=p, id=p) for p in "abcd"])
    assert small.batches == [["a", "b", "c", "d"]]
    assert mid.batches == [["b", "c"]]
    assert large.batches == [["c"]]
    assert [a.text for a in answers] == ["A-small", "B-mid", "C-large", "D-small"]
    assert [a.tier_index for a in answers] == [0, 1, 2, 0]
    assert [a.id for a in answers] == list("abcd")
    assert cascade.tier_seconds == {"small": 1.0, "mid": 2.0, "large": 4.0}


def test_last_tier_answers_even_when_unsure():
    small, mid, large = three_tiers()
    [answer] = Cascade([small, mid, large], Policy("mean_logprob", (0.0, 0.0))).run([Request(prompt="c")])
    assert answer.tier == "large" and answer.score == pytest.approx(-1.5)
    assert [s.decision for s in answer.trace] == ["escalate", "escalate", "final"]


def test_trace_records_every_tier_with_score_threshold_tokens_and_seconds():
    small, mid, large = three_tiers()
    [answer] = Cascade([small, mid, large], Policy("mean_logprob", (-0.5, -0.4))).run([Request(prompt="b")])
    assert [(s.tier, s.decision) for s in answer.trace] == [("small", "escalate"), ("mid", "accept")]
    first, second = answer.trace
    assert first.score == pytest.approx(-1.5) and first.threshold == -0.5
    assert second.score == pytest.approx(-0.05) and second.threshold == -0.4
    assert (first.completion_tokens, first.prompt_tokens, first.seconds) == (2, 7, 1.0)
    assert answer.escalated and answer.to_dict()["trace"][1]["tier"] == "mid"


def test_threshold_is_inclusive():
    tier = ScriptedTier("t", {"x": ("X", [-0.5])})
    last = ScriptedTier("z", {"x": ("Z", [-0.1])})
    [answer] = Cascade([tier, last], Policy("mean_logprob", (-0.5,))).run([Request(prompt="x")])
    assert answer.tier == "t"


def test_infinite_thresholds_mean_always_and_never_escalate():
    small, mid, large = three_tiers()
    never = Cascade([small, large], Policy("mean_logprob", (-math.inf,))).run([Request(prompt="c")])
    assert never[0].tier == "small"
    always = Cascade([small, mid], Policy("mean_logprob", (math.inf,))).run([Request(prompt="b")])
    assert always[0].tier == "mid"


def test_nothing_escalated_means_later_tiers_are_never_called():
    small, mid, large = three_tiers()
    Cascade([small, mid, large], Policy("mean_logprob", (-0.5, -0.5))).run([Request(prompt="a")])
    assert mid.batches == [] and large.batches == []


def test_single_tier_cascade_and_empty_batch():
    small, _, _ = three_tiers()
    cascade = Cascade([small], Policy("mean_logprob", ()))
    assert cascade.run([]) == []
    assert cascade.run([Request(prompt="b")])[0].trace[0].decision == "final"


def test_threshold_count_must_match_tiers():
    small, mid, large = three_tiers()
    with pytest.raises(ValueError, match="one per non-final tier"):
        Cascade([small, mid, large], Policy("mean_logprob", (-0.5,)))
    with pytest.raises(KeyError, match="unknown signal"):
        Policy("bogus", (0.1,))


def test_other_signal_changes_decisions():
    tier = ScriptedTier("t", {"x": ("X", [-0.01, -3.0])})  # mean -1.505, max -0.01
    last = ScriptedTier("z", {"x": ("Z", [-0.1])})
    by_quantile = Cascade([tier, last], Policy("quantile:1", (-0.1,))).run([Request(prompt="x")])
    by_mean = Cascade([tier, last], Policy("mean_logprob", (-0.1,))).run([Request(prompt="x")])
    assert (by_quantile[0].tier, by_mean[0].tier) == ("t", "z")
