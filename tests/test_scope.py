"""The guarantee's scope: every out-of-scope reason, per-group policies, on scripted fake tiers."""

import math

import pytest

from vcascade.engine.artifact import policy_from_artifact
from vcascade.engine.cascade import Cascade
from vcascade.engine.errors import TierUnavailableError
from vcascade.engine.policy import Policy
from vcascade.engine.runtime import run
from vcascade.engine.scope import REASONS, Scope
from vcascade.engine.types import Request
from vcascade.engine.uncertainty.rules import SignalRule
from tests.fakes import scripted_tier

SCRIPT = {"q": ("sure", [-0.1, -0.1]), "hard": ("unsure", [-3.0, -3.0])}
SYSTEM = "Answer briefly."


def cascade(scope=None, policy=None, fail_last=False, **tier0):
    tiers = [scripted_tier("small", SCRIPT, **tier0), scripted_tier("large", SCRIPT, fail=fail_last)]
    return Cascade(tiers, policy or Policy.from_signal("mean_logprob", (-1.0,)), scope)


CALIBRATED = Scope(system_prompt=SYSTEM, max_tokens=(8, 8))


def reasons(request, first=0, last=None, **kw):
    return run(cascade(CALIBRATED, **kw).answer(request, first, last)).out_of_scope


def test_a_request_shaped_like_the_calibration_items_is_in_scope():
    answer = run(cascade(CALIBRATED).answer(Request(prompt="q")))
    assert answer.in_scope and answer.out_of_scope == [] and answer.tier == "small"
    # the cascade's own system prompt sent explicitly, and max_tokens equal to the budget, change nothing
    same = Request(messages=({"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}), max_tokens=8)
    assert reasons(same) == []


@pytest.mark.parametrize("request_, expected", [
    (Request(prompt="q", max_tokens=4), ["max_tokens"]),
    (Request(prompt="q", max_tokens=64), ["max_tokens"]),
    (Request(messages=({"role": "system", "content": "Be verbose."}, {"role": "user", "content": "q"})),
     ["system_prompt"]),
    (Request(prompt="q", raw=True), ["endpoint"]),
    (Request(prompt="q", temperature=0.7), ["decoding"]),
    (Request(prompt="q", stop=("x",)), ["decoding"]),
    (Request(prompt="q", raw=True, max_tokens=3, temperature=1.0), ["endpoint", "max_tokens", "decoding"]),
])
def test_each_departure_from_the_calibrated_shape_is_named(request_, expected):
    assert reasons(request_) == expected


def test_a_pinned_tier_or_a_capped_cascade_is_out_of_scope():
    assert reasons(Request(prompt="q"), 1, 1) == ["tier_range"]
    assert reasons(Request(prompt="hard"), 0, 0) == ["tier_range"]


def test_a_fallback_answer_after_a_tier_error_is_out_of_scope():
    with pytest.raises(TierUnavailableError):  # without on_error: previous_answer there is no fallback
        run(cascade(CALIBRATED, fail_last=True).answer(Request(prompt="hard")))
    fallback = cascade(CALIBRATED, fail_last=True)
    fallback.tiers[1].config = fallback.tiers[1].config.model_copy(update={"on_error": "previous_answer"})
    answer = run(fallback.answer(Request(prompt="hard")))
    assert answer.tier == "small" and answer.out_of_scope == ["fallback_answer"]


def test_no_artifact_and_a_forced_artifact_guarantee_nothing():
    assert run(cascade(None).answer(Request(prompt="q"))).out_of_scope == ["uncalibrated"]
    forced = Scope(forced=True, system_prompt=SYSTEM, max_tokens=(8, 8))
    assert run(cascade(forced).answer(Request(prompt="q"))).out_of_scope == ["forced_artifact"]


def test_every_reason_has_a_meaning():
    assert set(REASONS) >= {"max_tokens", "system_prompt", "endpoint", "decoding", "tier_range", "fallback_answer",
                            "forced_artifact", "group_unknown", "uncalibrated"}


def grouped_policy():
    # group "easy" keeps everything down to -5; group "hard" escalates everything (+inf)
    return Policy((SignalRule("mean_logprob"),), (math.inf,), by_group={"easy": ((-5.0,), None), "hard": ((math.inf,), None)}, fallback_group="hard")


def test_each_group_is_decided_by_its_own_thresholds_and_an_unknown_group_by_the_most_conservative():
    scope = Scope(system_prompt=SYSTEM, max_tokens=(8, 8), groups=("easy", "hard"))
    c = cascade(scope, grouped_policy())
    easy = run(c.answer(Request(prompt="hard", group="easy")))
    assert easy.tier == "small" and easy.group == "easy" and easy.in_scope
    assert easy.trace[0].threshold == -5.0
    hard = run(c.answer(Request(prompt="q", group="hard")))
    assert hard.tier == "large" and hard.group == "hard" and hard.in_scope
    for group in ("nobody", None):
        unknown = run(c.answer(Request(prompt="q", group=group)))
        assert unknown.tier == "large" and unknown.group == "hard" and unknown.out_of_scope == ["group_unknown"]


def test_an_artifact_with_groups_loads_as_a_grouped_policy():
    artifact = {"policy": {"rules": [{"kind": "signal", "name": "mean_logprob"}], "thresholds": [-2.0],
                           "skip": None, "skip_threshold": None, "fallback_group": "b",
                           "groups": {"a": {"thresholds": [-9.0], "skip_threshold": None},
                                      "b": {"thresholds": [None], "skip_threshold": None}}}}
    policy = policy_from_artifact(artifact)
    assert policy.thresholds == (math.inf,)  # the fallback group's, shown by describe()
    assert policy.for_group("a")[0].thresholds == (-9.0,) and policy.for_group("zzz")[1:] == ("b", False)
    with pytest.raises(ValueError, match="fallback group"):
        Policy(policy.rules, (0.0,), by_group={"a": ((0.0,), None)}, fallback_group="missing")


def test_the_readme_table_names_every_reason():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("### What a guarantee covers"):readme.index("### A guarantee per kind of traffic")]
    for reason in REASONS:
        assert f"`{reason}`" in table, reason


def test_budgets_the_calibration_items_asked_for_are_in_scope_and_others_are_not():
    scope = Scope(system_prompt=SYSTEM, max_tokens=(8, 8), instructions="items", item_max_tokens=(320, 512))
    c = cascade(scope)
    own = ({"role": "system", "content": "Reason step by step."}, {"role": "user", "content": "q"})
    for budget in (None, 8, 320, 512):
        assert run(c.answer(Request(messages=own, max_tokens=budget))).in_scope, budget
    assert run(c.answer(Request(prompt="q", max_tokens=300))).out_of_scope == ["max_tokens"]
    # every calibration item set its own budget: the tiers' configured one was never calibrated
    only_long = Scope(system_prompt=SYSTEM, max_tokens=(8, 8), item_max_tokens=(320,), tier_budget_calibrated=False)
    assert run(cascade(only_long).answer(Request(prompt="q"))).out_of_scope == ["max_tokens"]
    assert run(cascade(only_long).answer(Request(prompt="q", max_tokens=320))).in_scope
    # what the artifact records is read back unchanged
    assert Scope.from_artifact({"scope": scope.to_dict(), "tiers": [
        {"decoding": {"system_prompt": SYSTEM, "sampling": {"max_tokens": 8}}}] * 2}) == scope


def test_length_groups_are_a_function_of_the_request_so_no_request_is_group_unknown():
    policy = Policy((SignalRule("mean_logprob"),), (math.inf,), by_group={"short": ((-5.0,), None),
                                                                       "long": ((math.inf,), None)},
                    fallback_group="long", group_by="length")
    scope = Scope(system_prompt=SYSTEM, max_tokens=(8, 8), groups=("long", "short"), group_by="length",
                  item_max_tokens=(64,))
    c = cascade(scope, policy)
    short = run(c.answer(Request(prompt="hard", group="long")))  # a named group is ignored
    assert short.group == "short" and short.tier == "small" and short.in_scope
    long = run(c.answer(Request(prompt="q", max_tokens=64)))
    assert long.group == "long" and long.tier == "large" and long.in_scope
    assert run(c.answer(Request(prompt="q", max_tokens=8))).group == "short"  # the tiers' own budget: short
