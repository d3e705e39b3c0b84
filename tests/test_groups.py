"""Per-group (Mondrian) fits: each group's risk <= α with probability >= 1 − δ.

A synthetic mix of three groups of very different difficulty: for s ~ U(0, 1) the small
tier is right with probability a_g · s and the large tier with probability p_g, so

    quality-loss  R_g(t) = p_g ∫_t^1 (1 − a_g s) ds = p_g (1 − t)(1 − a_g (1 + t)/2)

"hard" (a = 0.3) is 8 % of the mix: a fit on the mix meets α on average while the hard
group loses several times α. The validity checks run ``validity_experiment`` (the reusable
function, also meant for real cached generations) on a large pool, over >= 500 splits.
"""

import math

import numpy as np
import pytest

from vcascade.calibration.conformal import (
    CalibrationData, FitError, check_fittable, fit_groups, fit_thresholds, group_figures, min_items_for_fit, routing,
    validity_experiment,
)

ALPHA, DELTA = 0.1, 0.1
MIX = {"easy": (0.75, 1.0, 0.9), "mid": (0.17, 0.8, 0.9), "hard": (0.08, 0.3, 0.95)}  # weight, a_g, p_g


def mixed_pool(rng, n, skip=False):
    """scores (n, 1), correct (n, 2), costs (n, 2), groups (n,) [, skip scores (n,)]."""
    names = np.array(list(MIX))
    groups = names[rng.choice(len(MIX), size=n, p=[w for w, _, _ in MIX.values()])]
    a = np.vectorize(lambda g: MIX[g][1])(groups)
    p = np.vectorize(lambda g: MIX[g][2])(groups)
    s = rng.random(n)
    correct = np.stack([rng.random(n) < a * s, rng.random(n) < p], axis=1)
    costs = np.tile([1.0, 3.0], (n, 1))
    out = [s[:, None], correct, costs, groups]
    if skip:
        out.append(np.clip(a * s + 0.2 * rng.standard_normal(n), 0, 1))  # a noisy pre-generation view
    return out


@pytest.fixture(scope="module")
def pool():
    return mixed_pool(np.random.default_rng(2024), 100_000)


def exact_quality_loss(group, t):
    _, a, p = MIX[group]
    t = min(max(t, 0.0), 1.0)
    return p * (1 - t) * (1 - a * (1 + t) / 2)


def test_per_group_fit_holds_for_every_group_and_the_mix_fit_does_not(pool):
    scores, correct, costs, groups = pool
    common = dict(target="quality-loss", alpha=ALPHA, delta=DELTA, calibration_size=1500, splits=500, seed=1)
    grouped = validity_experiment(scores, correct, costs, groups, grouped=True, **common)
    assert grouped.all_pass, grouped.per_group
    for name, row in grouped.per_group.items():
        assert row["share_above_alpha"] <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 500), name
    assert grouped.per_group["hard"]["n_calibration"] == pytest.approx(0.08 * 1500, abs=15)
    mix = validity_experiment(scores, correct, costs, groups, grouped=False, **common)
    assert "hard" in mix.failing_groups and mix.per_group["hard"]["share_above_alpha"] > 0.9
    assert mix.per_group["hard"]["mean_risk"] > 2 * ALPHA  # several times α on the under-weighted group
    # the price of per-group guarantees: the hard group escalates more than under the mix's policy
    assert grouped.per_group["hard"]["mean_cost_ratio"] > mix.per_group["hard"]["mean_cost_ratio"]


def test_the_pool_measures_what_the_exact_risk_says(pool):
    """The held-out risk the experiment reads agrees with the closed form."""
    scores, correct, costs, groups = pool
    data = CalibrationData(scores, correct, costs)
    figures = group_figures(data, groups, np.array([0.6]), "quality-loss")
    for g in MIX:
        se = math.sqrt(0.25 / figures[g]["n"])
        assert figures[g]["risk"] == pytest.approx(exact_quality_loss(g, 0.6), abs=4 * se)


def test_per_group_with_a_skip_rule_holds_for_every_group():
    scores, correct, costs, groups, skip = mixed_pool(np.random.default_rng(7), 100_000, skip=True)
    result = validity_experiment(scores, correct, costs, groups, skip_scores=skip, target="quality-loss",
                                 alpha=ALPHA, delta=DELTA, calibration_size=2000, splits=500, grid_size=8, seed=2)
    assert result.all_pass, result.per_group


def test_bonferroni_split_holds_for_all_groups_at_once(pool):
    scores, correct, costs, groups = pool
    result = validity_experiment(scores, correct, costs, groups, target="quality-loss", alpha=ALPHA, delta=DELTA,
                                 delta_split="bonferroni", calibration_size=1500, splits=500, seed=3)
    assert result.share_any_above_alpha <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 500)
    assert all(row["delta"] == pytest.approx(DELTA / 3) for row in result.per_group.values())
    assert result.all_pass


def test_marginal_per_group_crc_holds_on_average_per_group(pool):
    scores, correct, costs, groups = pool
    common = dict(target="accept-error", alpha=ALPHA, delta=None, calibration_size=1500, splits=500, seed=4)
    grouped = validity_experiment(scores, correct, costs, groups, **common)
    assert grouped.all_pass, grouped.per_group
    mix = validity_experiment(scores, correct, costs, groups, grouped=False, **common)
    assert "hard" in mix.failing_groups


@pytest.mark.parametrize("target", ["accept-error", "quality-loss", "selective-error"])
@pytest.mark.parametrize("skip", [False, True])
def test_fit_groups_returns_per_group_policies_for_every_target(target, skip):
    rng = np.random.default_rng(11)
    scores, correct, costs, groups, skip_scores = mixed_pool(rng, 6000, skip=True)
    data = CalibrationData(scores, correct, costs, skip_scores if skip else None)
    fit = fit_groups(data, groups, target, ALPHA, DELTA, largest="big", grid_size=10)
    assert set(fit.groups) == set(MIX) and fit.n == 6000
    summary = fit.summary()
    for g, row in summary.items():
        assert row["n"] == int((groups == g).sum()) and len(row["thresholds"]) == 1
        assert (row["skip_threshold"] is not None) == skip
        if target == "selective-error" and g != "easy":  # P(wrong | kept) >= 1 - a_g >= 0.2 always: infeasible
            assert not row["feasible"] and row["thresholds"] == [math.inf] and row["acceptance"][0] == 0.0
            continue
        certificate = fit.groups[g].certificate
        assert row["feasible"] and certificate["losses"] / certificate["at_risk"] <= row["risk_bound"]
        assert sum(row["acceptance"]) == pytest.approx(1.0) and 0 < row["cost_ratio"] <= 4 / 3
    # the group whose policy escalates most on the pooled items serves unknown groups, out of scope
    pooled_escalation = {g: (routing(data, f.config)[0] == 1).mean() for g, f in fit.groups.items()}
    assert pooled_escalation[fit.conservative_group] == max(pooled_escalation.values())
    if not skip:  # one threshold: the hard group's is the highest
        assert fit.conservative_group == "hard"
    assert fit.pooled["groups"] == 3 and sum(fit.pooled["acceptance"]) == pytest.approx(1.0)
    assert fit.fit_for("never-seen") is fit.groups[fit.conservative_group] and not fit.in_scope("never-seen")
    assert fit.in_scope("easy") and fit.fit_for("easy") is fit.groups["easy"]
    assert fit.guarantee["delta_split"] == "per-group" and fit.guarantee["delta_per_group"] == DELTA
    assert fit.guarantee["conditional_on"] == "group" and "for each group (easy, hard, mid) separately" in \
        fit.guarantee["statement"]
    assert f"({fit.conservative_group!r}) and no guarantee" in fit.guarantee["statement"]
    figures = group_figures(data, groups, fit, target)
    assert figures["hard"]["escalated"] >= figures["easy"]["escalated"]
    assert figures["hard"]["n"] == fit.groups["hard"].n
    assert fit.to_dict()["groups"]["hard"]["thresholds"] == fit.groups["hard"].thresholds


def test_quality_loss_group_statement_is_conditional_on_the_group_and_joint_within_it():
    scores, correct, costs, groups = mixed_pool(np.random.default_rng(12), 5000)
    fit = fit_groups(CalibrationData(scores, correct, costs), groups, "quality-loss", 0.05, DELTA,
                     delta_split="bonferroni", largest="qwen-1.5b")
    statement = fit.guarantee["statement"]
    assert "simultaneously for every group" in statement and "δ/3" in statement
    assert "P(cascade wrong and qwen-1.5b right | group) <= 0.05" in statement
    assert "accuracy within the group at most 0.05 below always-qwen-1.5b" in statement


def test_a_group_too_small_is_refused_naming_it_and_the_n_it_needs():
    scores, correct, costs, groups = mixed_pool(np.random.default_rng(13), 3000)
    groups = groups.copy()
    groups[:12] = "tiny"
    data = CalibrationData(scores, correct, costs)
    need = min_items_for_fit(ALPHA, DELTA, "fixed-sequence-binomial")
    with pytest.raises(FitError, match=f"'tiny' has 12 calibration items; each needs at least {need}"):
        fit_groups(data, groups, "quality-loss", ALPHA, DELTA)
    with pytest.raises(FitError, match="'tiny' has 12"):  # the same refusal, before any data exists
        check_fittable("quality-loss", ALPHA, DELTA, 2, False, {"tiny": 12, "easy": 2000})
    with pytest.raises(FitError, match="cannot fit a skip rule"):
        fit_groups(CalibrationData(scores, correct, costs, scores[:, 0]), groups, "quality-loss", ALPHA, None)


def test_each_group_fit_equals_a_fit_on_that_group_alone():
    scores, correct, costs, groups = mixed_pool(np.random.default_rng(14), 4000)
    data = CalibrationData(scores, correct, costs)
    fit = fit_groups(data, groups, "quality-loss", ALPHA, DELTA)
    for g in MIX:
        alone = fit_thresholds(data.subset(np.flatnonzero(groups == g)), "quality-loss", ALPHA, DELTA)
        assert fit.groups[g].thresholds == alone.thresholds


def test_rule_selection_for_a_per_group_fit_prices_each_group_at_its_own_threshold():
    from vcascade.calibration.selection import cheapest_per_group, empirical_cheapest

    rng = np.random.default_rng(3)
    n = 400
    groups = np.array(["short"] * 300 + ["long"] * 100)
    large = np.ones(n, dtype=bool)
    small = np.where(groups == "short", rng.random(n) < 0.95, rng.random(n) < 0.6)
    costs = np.where(groups[:, None] == "long", [[10.0, 20.0]], [[1.0, 2.0]])
    scores = rng.random(n) + small  # a score that separates right from wrong answers, imperfectly
    data = CalibrationData(scores[:, None], np.stack([small, large], axis=1), costs)
    pooled, _ = empirical_cheapest(data, "quality-loss", 0.05)
    grouped = cheapest_per_group(data, groups, "quality-loss", 0.05)
    # the mix may spend its whole loss budget on the long group, where savings are largest
    assert grouped >= pooled
    parts = [empirical_cheapest(data.subset(np.flatnonzero(groups == g)), "quality-loss", 0.05)[0] for g in ("long", "short")]
    long_total, short_total = costs[groups == "long", 1].sum(), costs[groups == "short", 1].sum()
    assert grouped == pytest.approx((parts[0] * long_total + parts[1] * short_total) / (long_total + short_total))
    assert cheapest_per_group(data, None, "quality-loss", 0.05) == pooled
