"""Conformal calibration: guarantees checked empirically over many random splits.

Synthetic scores with known distributions. Two tiers: s ~ U(0, 1), tier 0 is right with
probability s, tier 1 with probability 0.85 (independent), so the population risks of
"accept when s >= t" are exact:
  accept-error    R(t) = ∫_t^1 (1 - s) ds = (1 - t)^2 / 2
  quality-loss    R(t) = 0.85 (1 - t)^2 / 2
  selective-error R(t) = (1 - t) / 2
Three tiers: population risks from a pool of 400k items.

Each validity check also runs the method without its finite-sample correction and
asserts that the same check then fails, so the tests can tell the difference. Marginal
guarantees (conformal risk control) are checked on the mean over splits; high-probability
guarantees (fixed-sequence, Learn-then-Test) on the share of splits above α.
"""

import math

import numpy as np
import pytest

from vcascade.calibration.conformal import (
    CalibrationData, binomial_p_value, config_counts, crc_threshold, fit_thresholds, fixed_sequence_threshold,
    hoeffding_bentkus_p_value, realized_risk_spread,
)

ALPHA, DELTA = 0.1, 0.1


def two_tiers(rng, n):
    s = rng.random(n)
    correct = np.stack([rng.random(n) < s, rng.random(n) < 0.85], axis=1)
    return CalibrationData(s[:, None], correct, np.stack([np.ones(n), np.full(n, 3.0)], axis=1))


def clip01(t):
    return min(max(t, 0.0), 1.0)


EXACT_RISK = {
    "accept-error": lambda t: (1 - clip01(t)) ** 2 / 2,
    "quality-loss": lambda t: 0.85 * (1 - clip01(t)) ** 2 / 2,
    "selective-error": lambda t: (1 - clip01(t)) / 2 if t < 1 else 0.0,
}


@pytest.mark.parametrize("target", ["accept-error", "quality-loss"])
def test_conformal_risk_control_mean_test_risk_is_at_most_alpha(target):
    rng = np.random.default_rng(7)
    splits, n = 2000, 50

    def mean_and_se(correction):
        risks = np.array([EXACT_RISK[target](crc_threshold(two_tiers(rng, n), target, ALPHA, correction))
                          for _ in range(splits)])
        return risks.mean(), risks.std() / math.sqrt(splits)

    mean, se = mean_and_se(True)
    assert mean <= ALPHA + 3 * se, (mean, se)
    assert mean >= ALPHA - 2 / (n + 1) - 3 * se  # CRC is also tight: not trivially conservative
    naive_mean, naive_se = mean_and_se(False)
    assert naive_mean > ALPHA + 3 * naive_se, "the check must fail without the finite-sample correction"


@pytest.mark.parametrize("target", ["accept-error", "quality-loss"])
def test_fixed_sequence_holds_with_probability_1_minus_delta(target):
    """Two tiers, (α, δ): the share of calibration draws whose population risk exceeds α is <= δ."""
    rng = np.random.default_rng({"accept-error": 21, "quality-loss": 22}[target])
    splits, n = 600, 300
    se = math.sqrt(DELTA * (1 - DELTA) / splits)

    def violation_share(correction):
        draws = [EXACT_RISK[target](fixed_sequence_threshold(two_tiers(rng, n), target, ALPHA, DELTA, correction))
                 for _ in range(splits)]
        return float(np.mean(np.array(draws) > ALPHA))

    assert violation_share(True) <= DELTA + 3 * se
    assert violation_share(False) > DELTA + 3 * se, "the check must fail with the plain empirical-risk rule"


def test_marginal_crc_exceeds_alpha_in_about_half_of_single_calibrations():
    """Why the high-probability form is the default: CRC is right on average, not per draw."""
    rng = np.random.default_rng(23)
    risks = np.array([EXACT_RISK["quality-loss"](crc_threshold(two_tiers(rng, 300), "quality-loss", ALPHA))
                      for _ in range(600)])
    assert risks.mean() <= ALPHA + 3 * risks.std() / math.sqrt(600)
    assert 0.25 < (risks > ALPHA).mean() < 0.75
    hp = np.array([EXACT_RISK["quality-loss"](fixed_sequence_threshold(two_tiers(rng, 300), "quality-loss", ALPHA,
                                                                      DELTA)) for _ in range(600)])
    assert (hp > ALPHA).mean() < (risks > ALPHA).mean()  # the price: a stricter threshold on average
    assert hp.mean() < risks.mean()


def test_realized_risk_spread_reports_the_share_of_resampled_calibrations_above_alpha():
    data = two_tiers(np.random.default_rng(24), 1000)
    marginal = realized_risk_spread(data, "quality-loss", ALPHA, None, resamples=200)
    assert 0.2 < marginal["share_above_alpha"] < 0.8
    assert marginal["risk_q90"] > ALPHA > marginal["mean_risk"] - 0.02
    assert "bootstrap" in marginal["method"]
    strict = realized_risk_spread(data, "quality-loss", ALPHA, DELTA, resamples=200)
    assert strict["share_above_alpha"] < marginal["share_above_alpha"] and strict["risk_q90"] < marginal["risk_q90"]


def skip_and_defer(rng, n):
    """A pre-generation score r (noisy view of how hard the item is) and the answer's score s."""
    difficulty = rng.random(n)
    s = np.clip(difficulty + 0.15 * rng.standard_normal(n), 0, 1)
    r = np.clip(difficulty + 0.3 * rng.standard_normal(n), 0, 1)
    correct = np.stack([rng.random(n) < difficulty, rng.random(n) < 0.85], axis=1)
    costs = np.tile([1.0, 3.0], (n, 1))
    return CalibrationData(s[:, None], correct, costs, skip_scores=r)


@pytest.mark.parametrize("target", ["quality-loss", "accept-error"])
def test_joint_skip_and_deferral_calibration_holds_at_delta(target):
    pool = skip_and_defer(np.random.default_rng(31), 400_000)
    rng = np.random.default_rng(32)
    splits, n = 500, 400
    se = math.sqrt(DELTA * (1 - DELTA) / splits)

    def violation_share(correction):
        bad = 0
        for i in range(splits):
            fit = fit_thresholds(skip_and_defer(rng, n), target, ALPHA, DELTA, seed=i, grid_size=10,
                                 correction=correction)
            assert fit.method == "learn-then-test" and fit.skip_threshold is not None
            wrong, m = config_counts(pool, np.asarray([fit.config]), target)
            bad += wrong[0] / m[0] > ALPHA
        return bad / splits

    assert violation_share(True) <= DELTA + 3 * se
    assert violation_share(False) > DELTA + 3 * se, "the check must fail without p-values"


def test_skip_rule_saves_tier_zero_cost_on_items_it_skips():
    data = skip_and_defer(np.random.default_rng(33), 3000)
    with_skip = fit_thresholds(data, "quality-loss", ALPHA, DELTA)
    assert with_skip.feasible and with_skip.skipped > 0
    # skipped items pay only the last tier (3), kept ones 1, escalated ones 4
    early, late = with_skip.acceptance
    expected = (early * 1 + (late - with_skip.skipped) * 4 + with_skip.skipped * 3) / 3
    assert with_skip.cost_ratio == pytest.approx(expected)


def test_learn_then_test_selective_error_holds_with_probability_1_minus_delta():
    rng = np.random.default_rng(11)
    splits, n = 500, 300

    def violation_share(correction):
        bad = 0
        for i in range(splits):
            fit = fit_thresholds(two_tiers(rng, n), "selective-error", ALPHA, DELTA, seed=i, correction=correction)
            bad += EXACT_RISK["selective-error"](fit.thresholds[0]) > ALPHA
        return bad / splits

    se = math.sqrt(DELTA * (1 - DELTA) / splits)
    assert violation_share(True) <= DELTA + 3 * se
    assert violation_share(False) > DELTA + 3 * se, "the check must fail without p-values"


def three_tiers(rng, n):
    s0, s1 = rng.random(n), rng.random(n)
    correct = np.stack([rng.random(n) < s0, rng.random(n) < 0.4 + 0.5 * s1, rng.random(n) < 0.9], axis=1)
    costs = np.tile([1.0, 2.0, 4.0], (n, 1))
    return CalibrationData(np.stack([s0, s1], axis=1), correct, costs)


@pytest.fixture(scope="module")
def population():
    return three_tiers(np.random.default_rng(99), 400_000)


def population_risk(pool, thresholds, target):
    wrong, m = config_counts(pool, np.asarray([thresholds]), target)
    return float(wrong[0] / m[0]) if m[0] else 0.0


@pytest.mark.parametrize("target", ["accept-error", "quality-loss", "selective-error"])
def test_three_tiers_learn_then_test_holds_for_every_target(population, target):
    rng = np.random.default_rng({"accept-error": 1, "quality-loss": 2, "selective-error": 3}[target])
    splits, n = 500, 400
    se = math.sqrt(DELTA * (1 - DELTA) / splits)

    def violation_share(correction):
        bad = 0
        for i in range(splits):
            fit = fit_thresholds(three_tiers(rng, n), target, ALPHA, DELTA, seed=i, grid_size=10, correction=correction)
            assert fit.method == "learn-then-test" and len(fit.thresholds) == 2
            bad += population_risk(population, fit.thresholds, target) > ALPHA
        return bad / splits

    assert violation_share(True) <= DELTA + 3 * se
    assert violation_share(False) > DELTA + 3 * se, "the check must fail without p-values"


def test_infeasible_target_is_reported_and_always_escalates():
    data = two_tiers(np.random.default_rng(0), 5)
    fit = fit_thresholds(data, "quality-loss", 0.01, delta=None)  # needs 1/(n+1) <= α: impossible with 5 items
    assert not fit.feasible and fit.thresholds == [math.inf] and fit.acceptance[0] == 0.0
    hp = fit_thresholds(data, "quality-loss", 0.01, delta=0.1)  # needs (1 - α)^n <= δ: impossible too
    assert not hp.feasible and hp.thresholds == [math.inf]
    sel = fit_thresholds(two_tiers(np.random.default_rng(1), 200), "selective-error", 0.001, 0.1)
    assert not sel.feasible and sel.thresholds == [math.inf]


def test_fit_reports_risk_bound_acceptance_cost_and_guarantee():
    data = two_tiers(np.random.default_rng(3), 2000)
    fit = fit_thresholds(data, "quality-loss", ALPHA, delta=None)
    assert fit.feasible and fit.method == "conformal-risk-control"
    assert fit.empirical_risk <= fit.risk_bound <= ALPHA
    assert fit.guarantee["kind"] == "marginal" and "on average over calibration draws" in fit.guarantee["statement"]
    hp = fit_thresholds(data, "quality-loss", ALPHA)  # the default: δ = 0.1
    assert hp.method == "fixed-sequence-binomial" and hp.delta == 0.1 and hp.guarantee["kind"] == "high-probability"
    assert "with probability >= 90% over the calibration draw" in hp.guarantee["statement"]
    assert hp.risk_bound <= ALPHA + 0.01 and hp.thresholds[0] >= fit.thresholds[0]
    assert sum(fit.acceptance) == pytest.approx(1.0)
    # cost relative to always-largest: accepted items pay 1, escalated pay 1 + 3, over 3
    assert fit.cost_ratio == pytest.approx((fit.acceptance[0] * 1 + fit.acceptance[1] * 4) / 3)


def test_looser_alpha_accepts_more():
    data = two_tiers(np.random.default_rng(4), 1000)
    strict, loose = (fit_thresholds(data, "accept-error", a, delta) for a in (0.05, 0.2) for delta in [None])
    assert strict.thresholds[0] > loose.thresholds[0] and strict.acceptance[0] < loose.acceptance[0]


@pytest.mark.parametrize("alpha, delta, message", [(0.0, 0.1, "alpha"), (1.0, 0.1, "alpha"), (0.1, 1.5, "delta"),
                                                   (-0.2, 0.1, "alpha")])
def test_levels_outside_unit_interval_are_rejected(alpha, delta, message):
    with pytest.raises(ValueError, match=f"{message} must be in \\(0, 1\\)"):
        fit_thresholds(two_tiers(np.random.default_rng(0), 50), "selective-error", alpha, delta)


def test_marginal_guarantee_only_where_crc_applies():
    with pytest.raises(ValueError, match="marginal guarantee"):
        fit_thresholds(two_tiers(np.random.default_rng(0), 50), "selective-error", 0.1, delta=None)


def test_unknown_target_and_bad_shapes():
    data = two_tiers(np.random.default_rng(0), 10)
    with pytest.raises(ValueError, match="unknown target 'accuracy'"):
        fit_thresholds(data, "accuracy", 0.1)
    with pytest.raises(ValueError, match="scores must have shape"):
        CalibrationData(np.zeros((10, 2)), np.zeros((10, 2), bool), np.zeros((10, 2)))


def test_p_values_agree_with_mapie():
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    rng = np.random.default_rng(5)
    for _ in range(300):
        m = int(rng.integers(1, 500))
        alpha = float(rng.uniform(0.01, 0.5))
        wrong = int(rng.integers(0, m + 1))
        r_hat = float(rng.uniform(0, 1))
        ours_hb = hoeffding_bentkus_p_value(r_hat, m, alpha)
        theirs_hb = float(compute_hoeffding_bentkus_p_value(np.array([r_hat]), m, alpha)[0, 0])
        assert ours_hb == pytest.approx(min(theirs_hb, 1.0), rel=1e-9, abs=1e-12)
        if math.ceil(m * (wrong / m)) != wrong:
            continue  # MAPIE takes ceil(m * r_hat) in floating point; skip products that round up
        theirs_binary = float(compute_hoeffding_bentkus_p_value(np.array([wrong / m]), m, alpha, binary=True)[0, 0])
        assert binomial_p_value(wrong, m, alpha) == pytest.approx(min(theirs_binary, 1.0), rel=1e-6, abs=1e-12)
