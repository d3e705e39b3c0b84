"""Fitting the deferral thresholds: CRC, fixed-sequence testing, Learn-then-Test.

Guarantees and methods (the method is chosen by ``checks.fit_method``):

* **High-probability** (the default, δ = 0.1): with probability >= 1 − δ over the draw of
  the calibration set, the deployed risk is <= α.
  - Two tiers, ``accept-error`` / ``quality-loss``: fixed-sequence testing along the
    threshold path (``losses.threshold_path``). Both losses are non-increasing in the
    threshold t (a stricter threshold only moves items to the last tier), so testing
    H_t: R(t) > α from the strictest t down, with the exact binomial p-value
    P(Bin(n, α) <= k(t)), and stopping at the first failure, controls the family-wise
    error at δ (Learn-then-Test, Angelopoulos, Bates, Candès, Jordan, Lei 2021,
    fixed-sequence procedure; equivalently the binomial upper-confidence-bound rule of
    RCPS, Bates et al. 2021). No data is spent on ordering: the order is t itself.
  - Everything else (``selective-error``, three or more tiers, a skip rule): Learn-then-Test
    over a grid of threshold vectors. The grid (score quantiles) and the testing order
    (ascending p-value) are picked on a random ``grid_fraction`` of the calibration set and
    the tests run on the rest. For ``selective-error`` the p-value conditions on the m items
    a configuration accepts (k wrong of m ~ Binomial(m, R) given m).
* **Marginal** (``delta=None``; two tiers, ``accept-error`` / ``quality-loss``): conformal
  risk control (Angelopoulos, Bates, Fisch, Lei, Schuster 2022): t̂ = the loosest t on the
  path with (k(t) + 1)/(n + 1) <= α gives E[R(t̂)] <= α on average over calibration draws.
  A single draw exceeds α about half the time; ``realized_risk_spread`` estimates how far.

Every candidate is a *deployable* configuration: the threshold path's values are score
values themselves (plus −inf = accept all, +inf = accept none), so the items a certificate
counts are exactly those the deployed ``score >= t`` accepts. ``fit_thresholds`` re-derives
the chosen configuration's losses through ``losses.routing`` (the policy's own rule) and
raises ``CertificateError`` if they differ from the certified counts.

Among certified configurations the cheapest (mean cost on all calibration items) is
chosen. An infeasible target (nothing certified) is reported, with every threshold +inf:
the policy then always escalates. It is never silently weakened.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .bounds import binomial_certifies, binomial_upper_bound, crc_certifies, p_values
from .checks import DEFAULT_DELTA, FitError, check_fittable, grid_cut, min_items_for_fit
from .losses import (CalibrationData, always_escalate, config_counts, expected_cost, item_losses, risk, routing,
                     split_config, threshold_path)
from .statement import guarantee


class CertificateError(AssertionError):
    """The deployed configuration does not lose what its certificate counted (a bug, never data)."""


def verify_certificate(data: CalibrationData, config, target: str, losses: int, at_risk: int) -> None:
    """Raise ``CertificateError`` unless ``config``, routed as the policy routes it, has
    exactly ``losses`` losses among ``at_risk`` items at risk on ``data``."""
    real_losses, real_at_risk = item_losses(data, config, target)
    got = (int(real_losses.sum()), int(real_at_risk.sum()))
    if got != (int(losses), int(at_risk)):
        raise CertificateError(f"configuration {list(np.asarray(config, float))} certified with {losses} losses of "
                               f"{at_risk} at risk, but the deployed rule gives {got[0]} of {got[1]}")


@dataclass
class Fit:
    """The fitted policy thresholds and what the calibration data says about them.

    ``risk_bound`` is the finite-sample bound the method certifies: (k + 1)/(n + 1) for
    conformal risk control, the Clopper–Pearson 1-δ upper bound on the tested items for the
    high-probability methods. ``acceptance`` is the share of calibration items each tier
    answers, shape (K,); ``skipped`` the share that skipped tier 0; ``cost_ratio`` the mean
    cost relative to always calling the last tier. ``certificate`` holds the counts the
    method certified (losses, items at risk, items tested). ``reason`` says why an
    infeasible fit is infeasible. ``guarantee`` says in words what holds.
    """

    target: str
    method: str
    alpha: float
    delta: float | None
    n: int
    feasible: bool
    thresholds: list[float]
    empirical_risk: float
    risk_bound: float
    acceptance: list[float]
    cost_ratio: float
    skip_threshold: float | None = None
    skipped: float = 0.0
    p_value: str | None = None
    guarantee: dict = field(default_factory=dict)
    certificate: dict = field(default_factory=dict)
    reason: str | None = None

    @property
    def config(self) -> list[float]:
        return self.thresholds + ([] if self.skip_threshold is None else [self.skip_threshold])

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- one threshold


def _loosest_of_passing_suffix(thresholds: np.ndarray, passes: np.ndarray) -> int | None:
    """Fixed-sequence testing along a path ordered loosest → strictest: test from the
    strictest end, stop at the first failure; index of the loosest rejected H, or None."""
    failures = np.flatnonzero(~passes)
    first_ok = 0 if failures.size == 0 else int(failures[-1]) + 1
    return first_ok if first_ok < len(thresholds) else None


def _path_fit(data: CalibrationData, target: str, alpha: float, delta: float | None,
              correction: bool) -> tuple[float, int | None]:
    """(policy threshold, certified losses or None when infeasible) on the threshold path."""
    thresholds, losses = threshold_path(data, target)
    if not correction:
        passes = losses <= alpha * data.n
    elif delta is None:
        passes = crc_certifies(losses, data.n, alpha)
    else:
        passes = binomial_certifies(losses, data.n, alpha, delta)
    j = _loosest_of_passing_suffix(thresholds, passes)
    return (math.inf, None) if j is None else (float(thresholds[j]), int(losses[j]))


def crc_threshold(data: CalibrationData, target: str, alpha: float, correction: bool = True) -> float:
    """Conformal risk control for one non-final tier: the policy threshold t (keep when
    score >= t), the loosest t on the threshold path with (n R̂_n(t) + 1)/(n + 1) <= α.

    Parameters
    ----------
    data : CalibrationData with two tiers and no skip rule (n items)
    target : ``accept-error`` or ``quality-loss``
    alpha : float in (0, 1)
    correction : bool
        False drops the finite-sample terms (plain empirical risk <= α); it exists only to
        show that the validity tests detect the difference.

    Returns
    -------
    float
        −inf when accepting everything passes, +inf when nothing but "accept none" passes
        or nothing at all does (infeasible; ``fit_thresholds`` tells the two apart).
    """
    if data.tiers != 2 or data.skip_scores is not None:
        raise ValueError("conformal risk control here calibrates one threshold (two tiers, no skip)")
    return _path_fit(data, target, alpha, None, correction)[0]


def fixed_sequence_threshold(data: CalibrationData, target: str, alpha: float, delta: float,
                             correction: bool = True) -> float:
    """High-probability single threshold: fixed-sequence testing from the strictest t down.

    H_t: R(t) > α is rejected when P(Bin(n, α) <= k(t)) <= δ, k(t) the calibration losses
    of ``score >= t``. k(t) only grows as t loosens, so the rejected set is the strict end
    of the path with k(t) <= k* = max{k : P(Bin(n, α) <= k) <= δ}; the loosest such t is
    returned (+inf when even "accept none" fails, i.e. n < ``min_items_to_certify``).
    With probability >= 1 − δ, R(t̂) <= α. ``correction=False`` certifies by the
    empirical risk alone (k <= α n).
    """
    if data.tiers != 2 or data.skip_scores is not None:
        raise ValueError("the fixed-sequence path calibrates one threshold (two tiers, no skip)")
    return _path_fit(data, target, alpha, delta, correction)[0]


# ---------------------------------------------------------------- Learn-then-Test


def _grid_candidates(data: CalibrationData, grid_size: int) -> list[np.ndarray]:
    """Per configuration entry: candidate values = score quantiles of the grid split, + inf."""
    levels = np.linspace(0.0, 1.0, grid_size)
    columns = [data.scores[:, k] for k in range(data.tiers - 1)]
    if data.skip_scores is not None:
        columns.append(data.skip_scores)
    out = []
    for column in columns:
        finite = column[np.isfinite(column)]
        values = np.unique(np.quantile(finite, levels)) if finite.size else np.array([])
        out.append(np.concatenate([values, [math.inf]]))
    return out


def _configurations(candidates: list[np.ndarray]) -> np.ndarray:
    """All configuration vectors of the grid, shape (G, dims), strictest first."""
    mesh = np.meshgrid(*candidates, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)[::-1]


def _learn_then_test(data, target, alpha, delta, rng, grid_fraction, grid_size, p_value_kind, correction):
    """``learn_then_test`` plus the certified (losses, at risk) of the chosen configuration."""
    perm = rng.permutation(data.n)
    cut = grid_cut(data.n, grid_fraction)
    grid_part, test_part = data.subset(perm[:cut]), data.subset(perm[cut:])
    configs = _configurations(_grid_candidates(grid_part, grid_size))
    order = np.argsort(p_values(p_value_kind, *config_counts(grid_part, configs, target), alpha), kind="stable")
    ordered = configs[order]
    wrong, m = config_counts(test_part, ordered, target)
    if correction:
        passed = p_values(p_value_kind, wrong, m, alpha) <= delta
        stop = int(np.argmin(passed)) if not passed.all() else len(order)
        keep = np.arange(stop)
    else:
        keep = np.flatnonzero((m == 0) | (wrong <= alpha * m))
    if keep.size == 0:
        return None, test_part, None, None
    costs = [expected_cost(data, c) for c in ordered[keep]]
    best = int(keep[int(np.argmin(costs))])
    return ordered[best], test_part, int(wrong[best]), int(m[best])


def learn_then_test(
    data: CalibrationData,
    target: str,
    alpha: float,
    delta: float,
    rng: np.random.Generator,
    grid_fraction: float = 0.3,
    grid_size: int = 40,
    p_value_kind: str = "binomial",
    correction: bool = True,
) -> tuple[np.ndarray | None, CalibrationData]:
    """Learn-then-Test with fixed-sequence testing; returns (configuration or None, test split).

    The grid split picks candidate configurations and orders them by their p-value on the
    grid split (ties: stricter first); fixed-sequence testing on the test split rejects
    H_λ in that order while p <= δ and stops at the first failure. Of the rejected
    (certified) configurations, the cheapest on the full data is returned.
    ``correction=False`` instead certifies every configuration whose empirical risk on
    the test split is <= α (no p-values); only for showing that the validity tests catch it.
    """
    chosen, test_part, _, _ = _learn_then_test(data, target, alpha, delta, rng, grid_fraction, grid_size,
                                               p_value_kind, correction)
    return chosen, test_part


# ---------------------------------------------------------------- the fit


def uses_threshold_path(data: CalibrationData, target: str) -> bool:
    """Two tiers, no skip, a loss monotone in the threshold: one threshold on a path."""
    return data.tiers == 2 and data.skip_scores is None and target in ("accept-error", "quality-loss")


def fit_thresholds(
    data: CalibrationData,
    target: str,
    alpha: float,
    delta: float | None = DEFAULT_DELTA,
    seed: int = 0,
    p_value_kind: str = "binomial",
    grid_size: int = 40,
    grid_fraction: float = 0.3,
    correction: bool = True,
    largest: str | None = None,
) -> Fit:
    """Fit the policy's thresholds for ``target`` at level α (and δ; see the module docstring).

    Parameters
    ----------
    data : CalibrationData, n items, K tiers, optional skip scores
    target : one of ``TARGETS``
    alpha : float in (0, 1)
    delta : float in (0, 1), or None for the marginal guarantee (conformal risk control,
        two tiers with ``accept-error`` / ``quality-loss`` and no skip rule only)
    seed : int, Learn-then-Test's grid split
    p_value_kind, grid_size, grid_fraction : Learn-then-Test settings
    correction : bool, False only to show that validity tests detect its absence
    largest : str, optional, the largest tier's name for the guarantee's sentence

    Returns
    -------
    Fit

    Raises
    ------
    FitError
        For every combination ``check_fittable`` refuses (the same checks, the same words).
    CertificateError
        If the deployed configuration's in-sample losses differ from the certified ones.
    """
    method = check_fittable(target, alpha, delta, data.tiers, data.has_skip, p_value_kind=p_value_kind,
                            grid_fraction=grid_fraction)
    if data.n == 0:
        raise FitError("no calibration items")
    if method != "learn-then-test":
        t, certified = _path_fit(data, target, alpha, delta, correction)
        feasible = certified is not None
        config = np.array([t])
        tested, at_risk = data, data.n
        k = certified if feasible else 0
        bound = (k + 1) / (data.n + 1) if delta is None else binomial_upper_bound(k, data.n, delta)
        p_kind = None if delta is None else "binomial"
    else:
        chosen, tested, certified, at_risk = _learn_then_test(
            data, target, alpha, delta, np.random.default_rng(seed), grid_fraction, grid_size, p_value_kind,
            correction)
        feasible = chosen is not None
        config = chosen if feasible else always_escalate(data)
        if not feasible:
            losses, risky = item_losses(tested, config, target)
            certified, at_risk = None, int(risky.sum())
            k = int(losses.sum())
        else:
            k = certified
        bound = binomial_upper_bound(k, at_risk, delta)
        p_kind = p_value_kind
    tier, skipped = routing(data, config)
    reason = None
    if feasible:
        verify_certificate(tested, config, target, certified, at_risk)
    else:
        if (tier != data.tiers - 1).any():
            raise CertificateError("an infeasible fit must always escalate")
        need = min_items_for_fit(alpha, delta, method, p_value_kind, grid_fraction)
        reason = (f"{data.n} items can never certify α = {alpha:g} with {method} (it needs at least {need})"
                  if data.n < need else "no configuration passed the test at this α and δ")
    thresholds, skip_threshold = split_config(data, config)
    return Fit(target=target, method=method, alpha=alpha, delta=delta, n=data.n, feasible=bool(feasible),
               thresholds=[float(t) for t in thresholds], empirical_risk=risk(data, config, target),
               risk_bound=float(bound), acceptance=(np.bincount(tier, minlength=data.tiers) / data.n).tolist(),
               cost_ratio=expected_cost(data, config) / float(data.costs[:, -1].mean()),
               skip_threshold=skip_threshold, skipped=float(skipped.mean()), p_value=p_kind,
               guarantee=guarantee(target, alpha, delta, method, largest),
               certificate={"losses": certified, "at_risk": int(at_risk), "tested": tested.n}, reason=reason)


# ---------------------------------------------------------------- what a single calibration means


def realized_risk_spread(data: CalibrationData, target: str, alpha: float, delta: float | None,
                         resamples: int = 500, quantile: float = 0.9, seed: int = 0) -> dict:
    """What a single deployment should expect from one calibration: refit the same two-tier
    method (CRC when ``delta`` is None, else fixed-sequence at δ) on bootstrap resamples of
    the calibration set and measure each fit's risk on the full set (the best available
    stand-in for the population). Returns the share of resampled calibrations whose risk
    exceeds α, the ``quantile`` and the mean of their risks.

    Report it for the marginal form only: for a δ-fit the share is <= δ by construction
    and says nothing the guarantee does not (``price_of_guarantee`` omits it there).
    """
    rng = np.random.default_rng(seed)
    risks = np.empty(resamples)
    for b in range(resamples):
        sample = data.subset(rng.integers(0, data.n, data.n))
        t = crc_threshold(sample, target, alpha) if delta is None else fixed_sequence_threshold(sample, target,
                                                                                                 alpha, delta)
        risks[b] = risk(data, [t], target)
    return {"method": "bootstrap: refit on resamples of the calibration set, risk measured on all of it",
            "resamples": resamples, "share_above_alpha": float((risks > alpha).mean()),
            f"risk_q{int(quantile * 100)}": float(np.quantile(risks, quantile)), "mean_risk": float(risks.mean())}


def price_of_guarantee(data: CalibrationData, target: str, alpha: float, delta: float | None, *, seed: int = 0,
                       p_value_kind: str = "binomial", resamples: int = 300) -> dict:
    """Escalation and cost of the deployed policy's form under each guarantee, same data.

    Rows (the data as deployed, skip rule included):

    * ``high-probability``: the (α, δ) fit (δ = ``delta`` or ``DEFAULT_DELTA``);
    * ``marginal``: conformal risk control, only where it exists (two tiers, no skip,
      ``accept-error`` / ``quality-loss``), with its bootstrap ``spread``;
    * ``no-guarantee``: the same method certifying by empirical risk alone (k <= α n).

    Each row: ``delta``, ``method``, ``thresholds``, ``threshold`` (tier 0's),
    ``skip_threshold``, ``escalated`` (share not answered by tier 0), ``skipped``,
    ``cost_ratio``, ``empirical_risk``, ``feasible``.
    """
    level = DEFAULT_DELTA if delta is None else delta

    def row(fit: Fit) -> dict:
        return {"delta": fit.delta, "method": fit.method, "thresholds": fit.thresholds, "threshold": fit.thresholds[0],
                "skip_threshold": fit.skip_threshold, "escalated": 1 - fit.acceptance[0], "skipped": fit.skipped,
                "cost_ratio": fit.cost_ratio, "empirical_risk": fit.empirical_risk, "feasible": fit.feasible}

    out = {"high-probability": row(fit_thresholds(data, target, alpha, level, seed, p_value_kind))}
    if uses_threshold_path(data, target):
        out["marginal"] = {**row(fit_thresholds(data, target, alpha, None)),
                           "spread": realized_risk_spread(data, target, alpha, None, resamples=resamples, seed=seed)}
    out["no-guarantee"] = {**row(fit_thresholds(data, target, alpha, level, seed, p_value_kind, correction=False)),
                           "delta": None}
    return out
