"""Ranking and deferral metrics (pure numpy/scipy).

Deferral curves (two tiers, or tier 0 against the last tier): defer the items the rule
scores lowest first; at deferral share d the cascade's accuracy is

    acc(d) = acc_small + (1/n) Σ_{deferred} (correct_large − correct_small).

Tied scores are deferred in random order; the curve is its expectation (linear between
tie-group boundaries). Reference rules: **random** deferral (a straight line from acc_small
to acc_large) and the **oracle** (defer exactly the items where the large tier is right and
the small one wrong, first). Metrics:

* ``audc``        area under the deferral curve, d ∈ [0, 1]
* ``gain_share``  (audc − audc_random) / (audc_oracle − audc_random): the share of the
                  oracle's gain over random deferral that the rule captures (0 = random,
                  1 = oracle, < 0 = worse than random)
* ``apgr``        RouteLLM's average performance gap recovered, (audc − acc_small) /
                  (acc_large − acc_small) (random = 0.5); ``cpt(x)`` the smallest share of
                  calls to the large tier at which acc(d) >= acc_small + x (acc_large − acc_small)
                  (Ong et al., "RouteLLM", 2024)
* ``cost_at_quality_loss(α)`` the cheapest deferral share whose quality loss (kept items
  where the small tier is wrong and the large right) is <= α, as cost relative to always
  calling the large tier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (shape (n,)) for predicting ``correct`` (bool, (n,)).

    The Mann–Whitney U statistic over average ranks, so ties count one half:
    P(score of a correct item > score of a wrong one) + ½ P(equal). ``-inf`` scores rank
    lowest. NaN when either class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n_pos, n_neg = int(correct.sum()), int((~correct).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties; -inf sorts first
    u = ranks[correct].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _tie_expected_cumsum(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Expected Σ of ``values`` over the j lowest-scored items, j = 0..n, with ties broken at
    random (linear within a tie group). Shape (n + 1,)."""
    order = np.argsort(scores, kind="stable")
    s, v = scores[order], values[order]
    cum = np.concatenate([[0.0], np.cumsum(v)])
    n = len(s)
    if n == 0:
        return cum
    boundaries = np.concatenate([[0], np.flatnonzero(s[1:] != s[:-1]) + 1, [n]])
    j = np.arange(n + 1)
    return np.interp(j, boundaries, cum[boundaries])


@dataclass
class DeferralCurve:
    """A rule's deferral curve: ``share`` (n + 1,) from 0 to 1, ``accuracy`` and
    ``quality_loss`` at each share, ``cost`` relative to always calling the large tier."""

    share: np.ndarray
    accuracy: np.ndarray
    quality_loss: np.ndarray
    cost: np.ndarray


def deferral_curve(scores: np.ndarray, correct: np.ndarray, costs: np.ndarray,
                   skip: np.ndarray | None = None) -> DeferralCurve:
    """Defer the lowest-scored items first. ``correct`` (n, 2) = [small, large];
    ``costs`` (n, 2) per-item costs. ``skip`` (n,) bool marks items that skipped the small
    tier (they are deferred from the start and do not pay it)."""
    scores = np.asarray(scores, dtype=np.float64)
    small, large = correct[:, 0].astype(float), correct[:, -1].astype(float)
    n = len(scores)
    skip = np.zeros(n, dtype=bool) if skip is None else skip
    scores = np.where(skip, -np.inf, scores)
    gain = large - small
    lost = ((small == 0) & (large == 1)).astype(float)
    deferred_gain = _tie_expected_cumsum(scores, gain)
    deferred_lost = _tie_expected_cumsum(scores, lost)
    deferred_cost = _tie_expected_cumsum(scores, costs[:, -1])
    small_cost = np.where(skip, 0.0, costs[:, 0]).sum()
    always_large = costs[:, -1].sum()
    return DeferralCurve(
        share=np.arange(n + 1) / n,
        accuracy=(small.sum() + deferred_gain) / n,
        quality_loss=(lost.sum() - deferred_lost) / n,
        cost=(small_cost + deferred_cost) / always_large,
    )


def oracle_scores(correct: np.ndarray) -> np.ndarray:
    """Scores that defer gain items first and loss items last (the oracle's order)."""
    return -(correct[:, -1].astype(float) - correct[:, 0].astype(float))


def area(curve: DeferralCurve) -> float:
    return float(np.trapezoid(curve.accuracy, curve.share))


def cpt(curve: DeferralCurve, fraction: float, acc_small: float, acc_large: float) -> float:
    """Smallest share of calls to the large tier reaching ``fraction`` of the accuracy gap (nan if never)."""
    target = acc_small + fraction * (acc_large - acc_small)
    reached = np.flatnonzero(curve.accuracy >= target - 1e-12)
    return float(curve.share[reached[0]]) if reached.size else float("nan")


def cost_at_quality_loss(curve: DeferralCurve, alpha: float) -> tuple[float, float]:
    """(cost relative to always-large, deferral share) of the cheapest point with quality
    loss <= α; the curve's cost grows with the share, so it is the first such point."""
    ok = np.flatnonzero(curve.quality_loss <= alpha + 1e-12)
    i = ok[np.argmin(curve.cost[ok])]
    return float(curve.cost[i]), float(curve.share[i])


def deferral_metrics(scores: np.ndarray, correct: np.ndarray, costs: np.ndarray, alpha: float,
                     extra_costs: dict[str, np.ndarray] | None = None) -> dict:
    """Every metric of the module docstring for one rule; ``extra_costs`` adds the cost at
    quality loss <= α under other per-item cost measures (e.g. measured seconds)."""
    acc_small, acc_large = float(correct[:, 0].mean()), float(correct[:, -1].mean())
    curve = deferral_curve(scores, correct, costs)
    oracle = area(deferral_curve(oracle_scores(correct), correct, costs))
    random_area = (acc_small + acc_large) / 2
    audc = area(curve)
    gap = acc_large - acc_small
    cost, share = cost_at_quality_loss(curve, alpha)
    out = {
        "audc": audc,
        "gain_share": (audc - random_area) / (oracle - random_area) if oracle > random_area else float("nan"),
        "apgr": (audc - acc_small) / gap if gap else float("nan"),
        "cpt50": cpt(curve, 0.5, acc_small, acc_large),
        "cpt80": cpt(curve, 0.8, acc_small, acc_large),
        "cost_at_alpha": cost,
        "deferred_at_alpha": share,
    }
    for name, per_item in (extra_costs or {}).items():
        out[f"cost_at_alpha_{name}"] = cost_at_quality_loss(deferral_curve(scores, correct, per_item), alpha)[0]
    return out
