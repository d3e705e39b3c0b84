"""Signals against hand-computed logprob arrays."""

import math

import numpy as np
import pytest

from vcascade.engine.uncertainty.signals import get_signal, signal_names
from vcascade.engine.types import TierResult


def make(token_logprobs, top=None):
    top = top if top is not None else [[(0, lp)] for lp in token_logprobs]
    return TierResult("x", list(range(len(token_logprobs))), list(token_logprobs), top,
                      float(sum(token_logprobs)), "stop", 3, len(token_logprobs), 0.1)


LP = [-0.1, -2.0, -0.5, -0.3]


def test_mean_sum_min():
    r = make(LP)
    assert get_signal("mean_logprob")(r) == pytest.approx(-2.9 / 4)
    assert get_signal("sum_logprob")(r) == pytest.approx(-2.9)
    assert get_signal("min_logprob")(r) == pytest.approx(-2.0)


def test_quantiles_interpolate_between_sorted_tokens():
    r = make(LP)  # sorted: -2.0, -0.5, -0.3, -0.1 at positions 0, 1/3, 2/3, 1
    assert get_signal("quantile:0")(r) == pytest.approx(-2.0)
    assert get_signal("quantile:1")(r) == pytest.approx(-0.1)
    assert get_signal("quantile:0.5")(r) == pytest.approx((-0.5 + -0.3) / 2)
    # q = 0.1 lies 0.3 of the way from -2.0 to -0.5
    assert get_signal("quantile:0.1")(r) == pytest.approx(-2.0 + 0.3 * 1.5)


def test_topk_entropy_renormalizes_topk():
    # position 1: two equal tokens -> entropy ln 2; position 2: one token -> 0
    top = [[(1, math.log(0.3)), (2, math.log(0.3))], [(3, math.log(0.9))]]
    r = make([math.log(0.3), math.log(0.9)], top)
    assert get_signal("neg_topk_entropy")(r) == pytest.approx(-(math.log(2) + 0.0) / 2)


def test_topk_entropy_of_uneven_distribution():
    p = np.array([0.5, 0.25, 0.25])
    top = [[(i, math.log(v * 0.8)) for i, v in enumerate(p)]]  # renormalizing removes the 0.8
    r = make([math.log(0.4)], top)
    assert get_signal("neg_topk_entropy")(r) == pytest.approx(float((p * np.log(p)).sum()))


def test_margins():
    top = [[(1, math.log(0.6)), (2, math.log(0.3))], [(3, math.log(0.9)), (4, math.log(0.05))], [(5, math.log(0.7))]]
    r = make([math.log(0.6), math.log(0.9), math.log(0.7)], top)
    margins = [0.3, 0.85, 0.7]  # k = 1 at the last position: top-2 counts as 0
    assert get_signal("mean_margin")(r) == pytest.approx(np.mean(margins))
    assert get_signal("min_margin")(r) == pytest.approx(0.3)


def test_margin_sorts_unsorted_topk():
    top = [[(2, math.log(0.3)), (1, math.log(0.6))]]
    assert get_signal("min_margin")(make([math.log(0.6)], top)) == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["mean_logprob", "sum_logprob", "min_logprob", "quantile:0.2",
                                  "neg_topk_entropy", "mean_margin", "min_margin"])
def test_empty_answer_is_least_confident(name):
    assert get_signal(name)(make([], [])) == -math.inf


def test_higher_is_more_confident():
    sure, unsure = make([-0.01, -0.02]), make([-1.5, -2.5])
    for name in ["mean_logprob", "sum_logprob", "min_logprob", "quantile:0.25"]:
        assert get_signal(name)(sure) > get_signal(name)(unsure)


@pytest.mark.parametrize("bad", ["nope", "quantile:abc", "quantile:1.5"])
def test_unknown_signal_names_are_rejected(bad):
    with pytest.raises(KeyError, match="signal"):
        get_signal(bad)


def test_registry_lists_names():
    assert "mean_logprob" in signal_names() and "quantile:<q>" in signal_names()


def test_vllm_semantic_router_scores_follow_its_published_normalization():
    from tests.fakes import result_with_logprobs

    # mean logprob -0.75 → (−0.75 + 3) / 3 = 0.75; below −3 clamps to 0
    r = result_with_logprobs("ok", [-0.5, -1.0])
    assert get_signal("vsr:avg_logprob")(r) == pytest.approx(0.75)
    assert get_signal("vsr:avg_logprob")(result_with_logprobs("x", [-5.0])) == 0.0
    # margins: top-1 minus top-2 logprob, top-2 is ln 0.01 in the fake: m = lp + 4.60517 per token
    m = np.mean([-0.5 + 4.605170, -1.0 + 4.605170])
    assert get_signal("vsr:margin")(r) == pytest.approx(1 - math.exp(-m / 3))
    assert get_signal("vsr:hybrid")(r) == pytest.approx(0.5 * 0.75 + 0.5 * (1 - math.exp(-m / 3)))
    for name in ("vsr:avg_logprob", "vsr:margin", "vsr:hybrid"):
        assert get_signal(name)(result_with_logprobs("", [])) == -math.inf
