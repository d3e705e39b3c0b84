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


# ----------------------------------------------------- -inf scores (empty answers): certified = deployed
#
# Every built-in signal scores an empty answer -inf. The threshold path used to start with a
# sentinel -inf ("accept all") and np.unique added a second -inf ("accept score > -inf");
# both were deployed as `score >= -inf`, which accepts the empty answers the certificate
# had excluded. The cases below are the two constructed in issue 14.

from vcascade.calibration.conformal import (  # noqa: E402
    CertificateError, FitError, check_fittable, conditional_quality_loss, item_losses, loss_if_accepted,
    max_certified_losses,
    min_items_for_fit, min_items_to_certify, p_value, price_of_guarantee, risk, threshold_path, binomial_certifies,
)
from vcascade.engine.policy import Policy  # noqa: E402  (pure Python: the deployed acceptance rule)


def with_empty_answers(rng, n=1000, empty=0.15, right=0.97):
    """``empty`` share of answers are empty (score -inf) and wrong; the others are right
    with probability ``right``; the large tier is always right."""
    is_empty = np.arange(n) < int(round(empty * n))
    s = np.where(is_empty, -np.inf, rng.random(n))
    small = ~is_empty & (rng.random(n) < right)
    return CalibrationData(s[:, None], np.stack([small, np.ones(n, bool)], axis=1), np.tile([1.0, 3.0], (n, 1)))


def deployed_quality_loss(data, thresholds):
    """Quality loss of the thresholds as the engine's Policy applies them, item by item."""
    policy = Policy.from_signal("mean_logprob", thresholds)
    kept = np.array([policy.accepts(0, float(s)) for s in data.scores[:, 0]])
    wrong = np.where(kept, ~data.correct[:, 0], ~data.correct[:, 1])
    return float((wrong & data.correct[:, 1]).mean()), kept


@pytest.mark.parametrize("delta", [0.1, None])
def test_empty_answers_the_certificate_excluded_stay_excluded_when_deployed(delta):
    data = with_empty_answers(np.random.default_rng(0))
    fit = fit_thresholds(data, "quality-loss", 0.1, delta)
    realized, kept = deployed_quality_loss(data, fit.thresholds)
    assert fit.feasible and math.isfinite(fit.thresholds[0])  # was: thresholds [-inf], feasible False
    assert realized == pytest.approx(fit.empirical_risk) == pytest.approx(fit.certificate["losses"] / data.n)
    assert realized <= 0.1  # was 0.177: every empty answer accepted
    assert not kept[np.isneginf(data.scores[:, 0])].any() and fit.acceptance[0] == pytest.approx(0.85)


def test_threshold_functions_never_deploy_minus_inf_when_empty_answers_must_escalate():
    data = with_empty_answers(np.random.default_rng(1))
    for t in (crc_threshold(data, "quality-loss", 0.1), fixed_sequence_threshold(data, "quality-loss", 0.1, 0.1),
              crc_threshold(data, "accept-error", 0.1), fixed_sequence_threshold(data, "accept-error", 0.1, 0.1)):
        assert math.isfinite(t)
        assert deployed_quality_loss(data, [t])[0] <= 0.1


def test_infeasible_with_empty_answers_always_escalates_with_plus_inf():
    data = with_empty_answers(np.random.default_rng(2), n=15)  # 15 < 22 items: nothing certifiable at α = δ = 0.1
    fit = fit_thresholds(data, "quality-loss", 0.1, 0.1)
    assert not fit.feasible and fit.thresholds == [math.inf] and fit.acceptance[0] == 0.0
    assert "needs at least 22" in fit.reason
    assert deployed_quality_loss(data, fit.thresholds)[1].sum() == 0


def test_all_answers_empty():
    rng = np.random.default_rng(3)
    n = 200
    data = CalibrationData(np.full((n, 1), -np.inf), np.stack([np.zeros(n, bool), rng.random(n) < 0.9], axis=1),
                           np.tile([1.0, 3.0], (n, 1)))
    thresholds, losses = threshold_path(data, "quality-loss")
    assert list(thresholds) == [-math.inf, math.inf]  # accept all (once), accept none
    fit = fit_thresholds(data, "quality-loss", 0.1, 0.1)
    assert fit.feasible and fit.thresholds == [math.inf] and fit.empirical_risk == 0.0


def test_accepting_empty_answers_is_deployed_as_minus_inf_only_when_certified():
    """When the empties are mostly right (say, a task whose right answer is empty), accepting
    everything is certified and -inf deploys exactly that set."""
    rng = np.random.default_rng(4)
    n = 1000
    s = np.where(np.arange(n) < 150, -np.inf, rng.random(n))
    data = CalibrationData(s[:, None], np.stack([rng.random(n) < 0.99, np.ones(n, bool)], axis=1),
                           np.tile([1.0, 3.0], (n, 1)))
    fit = fit_thresholds(data, "quality-loss", 0.1, 0.1)
    assert fit.thresholds == [-math.inf] and fit.acceptance[0] == 1.0
    assert deployed_quality_loss(data, fit.thresholds)[0] == pytest.approx(fit.empirical_risk)


def test_threshold_path_counts_exactly_what_the_routing_accepts():
    """Every path entry, with ties and -inf scores: its loss count is the deployed rule's."""
    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        s = rng.choice([-np.inf, -2.0, -1.0, -0.5, 0.0, float(rng.normal())], size=n)
        correct = rng.random((n, 2)) < [0.6, 0.8]
        data = CalibrationData(s[:, None], correct, np.ones((n, 2)))
        for target in ("accept-error", "quality-loss"):
            thresholds, losses = threshold_path(data, target)
            assert thresholds[0] == -math.inf and thresholds[-1] == math.inf and (np.diff(thresholds) > 0).all()
            assert losses[-1] == 0 and (np.diff(losses) <= 0).all()
            for t, k in zip(thresholds, losses):
                assert item_losses(data, [t], target)[0].sum() == k


def test_the_fit_refuses_a_configuration_whose_deployed_losses_differ_from_the_certified(monkeypatch):
    """The old path (sentinel -inf plus np.unique's -inf, both deployed as -inf) trips the check."""
    from vcascade.calibration.conformal import fits

    def old_path(data, target):
        s, lost = data.scores[:, 0], loss_if_accepted(data, target)
        distinct = np.unique(s)
        counts = np.array([lost[s > lam].sum() for lam in distinct])
        deployed = np.where(np.isneginf(distinct), -math.inf, np.nextafter(distinct, math.inf))  # "score > λ"
        return np.concatenate([[-math.inf], deployed]), np.concatenate([[lost.sum()], counts])

    monkeypatch.setattr(fits, "threshold_path", old_path)
    with pytest.raises(CertificateError, match="deployed rule gives"):
        fit_thresholds(with_empty_answers(np.random.default_rng(6)), "quality-loss", 0.1, 0.1)


def test_bootstrap_spread_and_price_table_with_empty_answers():
    data = with_empty_answers(np.random.default_rng(7))
    spread = realized_risk_spread(data, "quality-loss", 0.1, None, resamples=100)
    assert spread["share_above_alpha"] < 0.5 and spread["mean_risk"] < 0.1  # was 1.0 and 0.177
    price = price_of_guarantee(data, "quality-loss", 0.1, 0.1, resamples=50)
    assert set(price) == {"high-probability", "marginal", "no-guarantee"}
    for row in price.values():
        assert math.isfinite(row["threshold"]) and row["empirical_risk"] <= 0.1
    assert "spread" in price["marginal"] and "spread" not in price["high-probability"]


def test_skip_rule_with_empty_answers_keeps_its_certificate():
    data = skip_and_defer(np.random.default_rng(8), 2000)
    s = data.scores.copy()
    s[:300, 0] = -np.inf
    correct = data.correct.copy()
    correct[:300, 0] = False
    data = CalibrationData(s, correct, data.costs, data.skip_scores)
    fit = fit_thresholds(data, "quality-loss", ALPHA, DELTA)  # re-checks the certificate inside
    assert fit.feasible and fit.certificate["tested"] == 2000 - 600
    assert risk(data, fit.config, "quality-loss") == pytest.approx(fit.empirical_risk)
    price = price_of_guarantee(data, "quality-loss", ALPHA, DELTA)
    assert "marginal" not in price and price["high-probability"]["skip_threshold"] == fit.skip_threshold


def test_plus_inf_scores_are_refused():
    with pytest.raises(ValueError, match=r"\+inf is the threshold that accepts nothing"):
        CalibrationData(np.array([[np.inf], [0.0]]), np.ones((2, 2), bool), np.ones((2, 2)))


# ----------------------------------------------------- how many items can certify α; refusing early


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.2, 0.3])
@pytest.mark.parametrize("delta", [0.01, 0.05, 0.1, 0.2])
def test_min_items_to_certify_is_the_smallest_n_where_zero_losses_pass(alpha, delta):
    n = min_items_to_certify(alpha, delta)
    assert (1 - alpha) ** n <= delta < (1 - alpha) ** (n - 1)
    assert min_items_to_certify(alpha, delta, "hoeffding-bentkus") == n
    assert p_value("hoeffding-bentkus", 0, n, alpha) <= delta < p_value("hoeffding-bentkus", 0, n - 1, alpha)
    crc = min_items_to_certify(alpha, None)
    assert 1 / (crc + 1) <= alpha < 1 / crc
    # the fits agree: one item fewer is infeasible, exactly n with zero losses is feasible
    for m, ok in ((n - 1, False), (n, True)):
        data = CalibrationData(np.linspace(0, 1, m)[:, None], np.ones((m, 2), bool), np.ones((m, 2)))
        assert fit_thresholds(data, "quality-loss", alpha, delta).feasible is ok
    for m, ok in ((crc - 1, False), (crc, True)):
        if m > 0:
            data = CalibrationData(np.linspace(0, 1, m)[:, None], np.ones((m, 2), bool), np.ones((m, 2)))
            assert fit_thresholds(data, "quality-loss", alpha, None).feasible is ok


def test_max_certified_losses_matches_the_tests():
    for n in (22, 100, 1000):
        for delta in (None, 0.1):
            k = max_certified_losses(n, 0.1, delta)
            if delta is None:
                assert (k + 1) / (n + 1) <= 0.1 < (k + 2) / (n + 1)
            else:
                assert binomial_certifies([k], n, 0.1, delta)[0] and not binomial_certifies([k + 1], n, 0.1, delta)[0]


@pytest.mark.parametrize("kwargs, words", [
    (dict(target="quality-loss", delta=None, n_tiers=2, has_skip=True), ["cannot fit a skip rule", "--no-skip"]),
    (dict(target="selective-error", delta=None, n_tiers=2, has_skip=False), ["does not exist for selective-error",
                                                                             "pass a δ"]),
    (dict(target="accept-error", delta=None, n_tiers=3, has_skip=False), ["3 tiers", "Learn-then-Test"]),
    (dict(target="quality-loss", delta=0.1, n_tiers=2, has_skip=False, n=15), ["15 calibration items",
                                                                               "at least 22", "more items"]),
    (dict(target="quality-loss", delta=0.1, n_tiers=2, has_skip=True, n=25), ["at least 31", "learn-then-test"]),
    (dict(target="quality-loss", delta=0.1, n_tiers=2, has_skip=False, group_sizes={"math": 12, "trivia": 900}),
     ["'math' has 12", "at least 22"]),
    (dict(target="quality-loss", delta=0.1, n_tiers=2, has_skip=False, group_sizes={"a": 25, "b": 900},
          delta_split="bonferroni"), ["'a' has 25", "δ/G with G = 2", "at least 29"]),
    (dict(target="quality-loss", delta=None, n_tiers=2, has_skip=False, group_sizes={"a": 50},
          delta_split="bonferroni"), ["bonferroni", "per-group"]),
    (dict(target="accuracy", delta=0.1, n_tiers=2, has_skip=False), ["unknown target 'accuracy'"]),
    (dict(target="quality-loss", delta=1.5, n_tiers=2, has_skip=False), ["delta must be in (0, 1)"]),
])
def test_check_fittable_refuses_with_reason_and_alternative(kwargs, words):
    kwargs = {"alpha": 0.1, **kwargs}
    with pytest.raises(FitError) as err:
        check_fittable(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_check_fittable_returns_the_method_and_the_fit_refuses_with_the_same_words():
    assert check_fittable("quality-loss", 0.1, None, 2, False, n=50) == "conformal-risk-control"
    assert check_fittable("quality-loss", 0.1, 0.1, 2, False, n=50) == "fixed-sequence-binomial"
    assert check_fittable("quality-loss", 0.1, 0.1, 2, True, n=50) == "learn-then-test"
    assert check_fittable("selective-error", 0.1, 0.1, 3, False) == "learn-then-test"
    assert min_items_for_fit(0.1, 0.1, "learn-then-test") == 31  # 31 - round(0.3 · 31) = 22 tested
    data = skip_and_defer(np.random.default_rng(9), 100)
    with pytest.raises(FitError) as early:
        check_fittable("quality-loss", 0.1, None, data.tiers, data.has_skip)
    with pytest.raises(FitError) as deep:
        fit_thresholds(data, "quality-loss", 0.1, None)
    assert str(early.value) == str(deep.value) and early.value.alternative == "pass --no-skip, or a δ (e.g. --delta 0.1)"


# ----------------------------------------------------- wording


def test_quality_loss_statement_names_the_joint_probability_and_the_accuracy_bound():
    data = two_tiers(np.random.default_rng(10), 1000)
    fit = fit_thresholds(data, "quality-loss", 0.05, 0.1, largest="qwen-1.5b")
    assert ("with probability >= 90% over the calibration draw, P(cascade wrong and qwen-1.5b right) <= 0.05, "
            "i.e. accuracy at most 0.05 below always-qwen-1.5b") == fit.guarantee["statement"]
    plain = fit_thresholds(data, "quality-loss", 0.05, None)
    assert "P(cascade wrong and the largest tier right) <= 0.05" in plain.guarantee["statement"]
    assert "where the largest tier is right" not in plain.guarantee["statement"]
    # the conditional share is a larger figure, never part of the guarantee
    share = conditional_quality_loss(data, fit.config)
    assert share == pytest.approx(fit.empirical_risk * data.n / data.correct[:, 1].sum()) and share > fit.empirical_risk
    assert "|" not in fit.guarantee["statement"]


def test_artifacts_with_the_old_wording_are_read_with_the_joint_one():
    from vcascade.engine.artifact import guarantee_statement

    old = {"tiers": [{"name": "qwen-0.5b"}, {"name": "qwen-1.5b"}],
           "guarantee": {"statement": "with probability >= 90% over the calibration draw, quality loss (cascade "
                                      "wrong where the largest tier is right) <= 0.05"}}
    assert guarantee_statement(old) == ("with probability >= 90% over the calibration draw, P(cascade wrong and "
                                        "qwen-1.5b right) <= 0.05, i.e. accuracy at most 0.05 below always-qwen-1.5b")
    new = fit_thresholds(two_tiers(np.random.default_rng(0), 500), "quality-loss", 0.1, 0.1, largest="qwen-1.5b")
    assert guarantee_statement({"tiers": old["tiers"], "guarantee": new.guarantee}) == new.guarantee["statement"]
