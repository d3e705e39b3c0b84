"""Conformal calibration of deferral thresholds (numpy/scipy only; never imports vLLM).

Setting. A cascade of K tiers; tier k < K-1 keeps its answer when its confidence score
is ``>= thresholds[k]``, the last tier always answers. On n labelled calibration items:

* ``scores``  shape (n, K-1): confidence of every non-final tier on every item
* ``correct`` shape (n, K):   is tier k's answer to item i correct
* ``costs``   shape (n, K):   cost of running tier k on item i (tokens x cost per token)

Targets (losses are 0/1 per item, for thresholds λ):

* ``accept-error``    L_i = 1{answered by a non-final tier and wrong}; bound P(L=1) <= α
* ``quality-loss``    L_i = 1{cascade wrong and last tier right}; bound P(L=1) <= α, i.e.
                      "lose at most α accuracy versus always calling the largest model"
* ``selective-error`` P(wrong | answered by a non-final tier) <= α

Methods:

* Two tiers, ``accept-error`` / ``quality-loss``: conformal risk control (Angelopoulos,
  Bates, Fisch, Lei, Schuster, "Conformal Risk Control", 2022). Both losses are
  non-increasing in λ (a stricter threshold only moves items to the last tier, where
  they cost nothing), so λ̂ = inf{λ : (n R̂_n(λ) + 1) / (n + 1) <= α} gives
  E[L_{n+1}(λ̂)] <= α over calibration and test draws (marginal guarantee).
* ``selective-error`` and any target with three or more tiers: Learn-then-Test
  (Angelopoulos, Bates, Candès, Jordan, Lei, 2021). Each candidate configuration λ is a
  null hypothesis H_λ: R(λ) > α with a p-value (binomial tail, exact for 0/1 losses, or
  Hoeffding–Bentkus); fixed-sequence testing at level δ controls the family-wise error,
  so with probability >= 1 - δ every configuration that passes has R(λ) <= α. The grid
  and the testing order are picked on a random ``grid_fraction`` of the calibration set
  (candidate thresholds = score quantiles there, order = ascending p-value there) and the
  tests run on the rest, so the order is independent of the data it is tested on. For
  ``selective-error`` the p-value conditions on the m items a configuration accepts
  (k wrong of m ~ Binomial(m, R(λ)) given m).
  Among the configurations that pass, the one with the lowest mean cost is chosen.

An infeasible target (no configuration passes) is reported as such, with thresholds
+inf: the policy then always escalates to the last tier. It is never silently weakened.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
import numpy as np
from scipy import stats

TARGETS = ("accept-error", "quality-loss", "selective-error")
P_VALUES = ("binomial", "hoeffding-bentkus")


@dataclass(frozen=True)
class CalibrationData:
    """Per-item calibration arrays; see the module docstring for shapes."""

    scores: np.ndarray
    correct: np.ndarray
    costs: np.ndarray

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim == 1:
            scores = scores[:, None]
        correct = np.asarray(self.correct, dtype=bool)
        costs = np.asarray(self.costs, dtype=np.float64)
        n = correct.shape[0]
        if correct.ndim != 2 or correct.shape[1] < 2:
            raise ValueError(f"correct must have shape (n, K >= 2), got {correct.shape}")
        if scores.shape != (n, correct.shape[1] - 1):
            raise ValueError(f"scores must have shape (n, K-1) = {(n, correct.shape[1] - 1)}, got {scores.shape}")
        if costs.shape != correct.shape:
            raise ValueError(f"costs must have shape {correct.shape}, got {costs.shape}")
        if np.isnan(scores).any():
            raise ValueError("scores must not be NaN")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "costs", costs)

    @property
    def n(self) -> int:
        return self.correct.shape[0]

    @property
    def tiers(self) -> int:
        return self.correct.shape[1]

    def subset(self, index: np.ndarray) -> "CalibrationData":
        return CalibrationData(self.scores[index], self.correct[index], self.costs[index])


def answering_tier(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the tier that answers each item, shape (n,): the first k with
    ``scores[:, k] >= thresholds[k]``, else the last tier (K-1)."""
    accepted = scores >= np.asarray(thresholds, dtype=np.float64)[None, :]
    first = np.argmax(accepted, axis=1)
    return np.where(accepted.any(axis=1), first, scores.shape[1])


def item_losses(data: CalibrationData, thresholds, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(losses, at_risk), both shape (n,) bool.

    ``losses`` marks the items that count against the target; ``at_risk`` marks the items
    the risk is averaged over: all items, except for ``selective-error`` where it is the
    items answered by a non-final tier (the conditional risk's denominator).
    """
    tier = answering_tier(data.scores, thresholds)
    rows = np.arange(data.n)
    wrong = ~data.correct[rows, tier]
    early = tier < data.tiers - 1
    if target == "accept-error":
        return early & wrong, np.ones(data.n, dtype=bool)
    if target == "quality-loss":
        return wrong & data.correct[:, -1], np.ones(data.n, dtype=bool)
    if target == "selective-error":
        return early & wrong, early
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def expected_cost(data: CalibrationData, thresholds) -> float:
    """Mean cost per item of the cascade: every tier up to the answering one is paid."""
    tier = answering_tier(data.scores, thresholds)
    paid = np.arange(data.tiers)[None, :] <= tier[:, None]
    return float((data.costs * paid).sum(axis=1).mean())


# ---------------------------------------------------------------- p-values (LTT)


def binomial_p_value(wrong: int, m: int, alpha: float) -> float:
    """P(Binomial(m, α) <= wrong): exact p-value of H: risk > α for 0/1 losses (1 if m = 0)."""
    if m == 0:
        return 1.0
    return float(stats.binom.cdf(wrong, m, alpha))


def hoeffding_bentkus_p_value(risk_hat: float, m: int, alpha: float) -> float:
    """Hoeffding–Bentkus p-value of H: risk > α for losses in [0, 1] (LTT, eq. 9–10;
    as in MAPIE's ``compute_hoeffding_bentkus_p_value``)."""
    if m == 0:
        return 1.0

    def h1(y: float, mu: float) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(y * np.log(y / mu) + (1 - y) * np.log((1 - y) / (1 - mu)))

    r = min(risk_hat, alpha)
    hoeffding = math.exp(-m * h1(r, alpha)) if r > 0 else (1 - alpha) ** m
    bentkus = math.e * float(stats.binom.cdf(math.ceil(m * risk_hat), m, alpha))
    return min(hoeffding, bentkus, 1.0)


def p_value(kind: str, wrong: int, m: int, alpha: float) -> float:
    if kind == "binomial":
        return binomial_p_value(wrong, m, alpha)
    if kind == "hoeffding-bentkus":
        return hoeffding_bentkus_p_value(wrong / m if m else 0.0, m, alpha)
    raise ValueError(f"unknown p-value {kind!r}; known: {', '.join(P_VALUES)}")


def binomial_upper_bound(wrong: int, m: int, delta: float) -> float:
    """Clopper–Pearson upper confidence bound at level 1 - δ for a binomial rate (1 if m = 0)."""
    if m == 0 or wrong >= m:
        return 1.0
    return float(stats.beta.ppf(1 - delta, wrong + 1, m - wrong))


# ---------------------------------------------------------------- fitting


@dataclass
class Fit:
    """The fitted thresholds and what the calibration data says about them.

    ``risk_bound`` is the finite-sample bound the method certifies: the CRC-corrected risk
    (n R̂ + 1)/(n + 1) for conformal risk control, the Clopper–Pearson 1-δ upper bound on
    the test split for Learn-then-Test. ``acceptance`` is the share of calibration items
    each tier answers, shape (K,); ``cost_ratio`` is the mean cost relative to always
    calling the last tier.
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
    p_value: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_level(name: str, value: float | None) -> None:
    if value is None or not (0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def _summary(data: CalibrationData, thresholds: np.ndarray, target: str) -> tuple[float, list[float], float]:
    losses, at_risk = item_losses(data, thresholds, target)
    risk = float(losses.sum() / at_risk.sum()) if at_risk.any() else 0.0
    tier = answering_tier(data.scores, thresholds)
    acceptance = np.bincount(tier, minlength=data.tiers) / data.n
    always_last = float(data.costs[:, -1].mean())
    return risk, acceptance.tolist(), expected_cost(data, thresholds) / always_last


def crc_threshold(data: CalibrationData, target: str, alpha: float, correction: bool = True) -> float:
    """Conformal risk control for one non-final tier: the policy threshold t (accept when
    score >= t) equal to the CRC λ̂ = inf{λ : (n R̂_n(λ) + B)/(n + 1) <= α}, B = 1.

    Candidate λ is the strict rule "accept when score > λ" (losses right-continuous in λ,
    as CRC requires); the returned policy threshold is the next float above λ̂. Returns
    -inf when accepting everything passes and +inf when nothing does (infeasible).
    ``correction=False`` drops the finite-sample terms (plain empirical risk <= α); it
    exists only to show that the validity tests detect the difference.
    """
    if data.tiers != 2:
        raise ValueError("conformal risk control here calibrates one threshold (two tiers)")
    n = data.n
    s = data.scores[:, 0]
    # loss if accepted (score > λ): only items whose acceptance would count against the target
    if target == "accept-error":
        loss_if_accepted = ~data.correct[:, 0]
    elif target == "quality-loss":
        loss_if_accepted = ~data.correct[:, 0] & data.correct[:, 1]
    else:
        raise ValueError(f"conformal risk control supports accept-error and quality-loss, not {target!r}")
    budget = alpha * (n + 1) - 1 if correction else alpha * n
    # Candidates in increasing λ: -inf (accept all), then each distinct score (accept s > v).
    order = np.argsort(s, kind="stable")
    s_sorted, l_sorted = s[order], loss_if_accepted[order]
    distinct, first_index = np.unique(s_sorted, return_index=True)
    tail_losses = np.concatenate([np.cumsum(l_sorted[::-1])[::-1], [0]])  # losses of items at index >= j
    if tail_losses[0] <= budget:
        return -math.inf
    # λ = distinct[j] accepts the items strictly above it: indices >= first index of distinct[j+1]
    next_start = np.concatenate([first_index[1:], [n]])
    ok = tail_losses[next_start] <= budget
    if not ok.any():
        return math.inf
    lam = distinct[np.argmax(ok)]
    return float(np.nextafter(lam, math.inf))


def _grid_candidates(scores: np.ndarray, grid_size: int) -> list[np.ndarray]:
    """Per non-final tier: candidate thresholds = score quantiles of the grid split, plus +inf."""
    levels = np.linspace(0.0, 1.0, grid_size)
    out = []
    for k in range(scores.shape[1]):
        column = scores[:, k][np.isfinite(scores[:, k])]
        values = np.unique(np.quantile(column, levels)) if column.size else np.array([])
        out.append(np.concatenate([values, [math.inf]]))
    return out


def _configurations(candidates: list[np.ndarray]) -> np.ndarray:
    """All threshold vectors of the grid, shape (G, K-1), strictest first."""
    mesh = np.meshgrid(*candidates, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)[::-1]


def config_counts(data: CalibrationData, configs: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """For every configuration (rows of ``configs``, shape (G, K-1)): the number of items
    that count against the target and the number at risk, each shape (G,)."""
    accepted = data.scores[None, :, :] >= configs[:, None, :]  # (G, n, K-1)
    any_accepted = accepted.any(axis=2)
    tier = np.where(any_accepted, np.argmax(accepted, axis=2), data.tiers - 1)  # (G, n)
    wrong = ~np.take_along_axis(np.broadcast_to(data.correct, (len(configs), *data.correct.shape)),
                                tier[:, :, None], axis=2)[:, :, 0]
    early = tier < data.tiers - 1
    if target == "quality-loss":
        losses, at_risk = wrong & data.correct[None, :, -1], np.full(tier.shape, True)
    elif target == "accept-error":
        losses, at_risk = early & wrong, np.full(tier.shape, True)
    elif target == "selective-error":
        losses, at_risk = early & wrong, early
    else:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    return losses.sum(axis=1), at_risk.sum(axis=1)


def p_values(kind: str, wrong: np.ndarray, m: np.ndarray, alpha: float) -> np.ndarray:
    """Vectorized ``p_value`` over configurations, shape (G,)."""
    return np.array([p_value(kind, int(w), int(k), alpha) for w, k in zip(wrong, m)]) if kind != "binomial" \
        else np.where(m > 0, stats.binom.cdf(wrong, np.maximum(m, 1), alpha), 1.0)


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
    """Learn-then-Test with fixed-sequence testing; returns (thresholds or None, test split).

    The grid split picks candidate configurations and orders them by their p-value on the
    grid split (ties: stricter first); fixed-sequence testing on the test split rejects
    H_λ in that order while p <= δ and stops at the first failure. Of the rejected
    (certified) configurations, the cheapest on the full data is returned.
    ``correction=False`` instead certifies every configuration whose empirical risk on
    the test split is <= α (no p-values); only for showing that the validity tests catch it.
    """
    perm = rng.permutation(data.n)
    cut = int(round(grid_fraction * data.n))
    grid_part, test_part = data.subset(perm[:cut]), data.subset(perm[cut:])
    configs = _configurations(_grid_candidates(grid_part.scores, grid_size))
    order = np.argsort(p_values(p_value_kind, *config_counts(grid_part, configs, target), alpha), kind="stable")
    wrong, m = config_counts(test_part, configs[order], target)
    if correction:
        passed = p_values(p_value_kind, wrong, m, alpha) <= delta
        certified = configs[order][: int(np.argmin(passed)) if not passed.all() else len(order)]
    else:
        certified = configs[order][(m == 0) | (wrong <= alpha * m)]
    if len(certified) == 0:
        return None, test_part
    costs = [expected_cost(data, lam) for lam in certified]
    return certified[int(np.argmin(costs))], test_part


def fit_thresholds(
    data: CalibrationData,
    target: str,
    alpha: float,
    delta: float | None = None,
    seed: int = 0,
    p_value_kind: str = "binomial",
    grid_size: int = 40,
    grid_fraction: float = 0.3,
    correction: bool = True,
) -> Fit:
    """Fit per-tier thresholds for ``target`` at level α (and δ for Learn-then-Test).

    Two tiers with ``accept-error`` or ``quality-loss`` use conformal risk control (δ is
    not used); everything else uses Learn-then-Test and needs δ.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    check_level("alpha", alpha)
    use_crc = data.tiers == 2 and target != "selective-error"
    if not use_crc or delta is not None:  # δ is needed by Learn-then-Test, optional otherwise
        check_level("delta", delta)
    if data.n == 0:
        raise ValueError("no calibration items")
    infeasible = np.full(data.tiers - 1, math.inf)
    if use_crc:
        t = crc_threshold(data, target, alpha, correction=correction)
        thresholds = np.array([t])
        losses, _ = item_losses(data, thresholds, target)
        bound = (losses.sum() + 1) / (data.n + 1)
        feasible = math.isfinite(t) or bound <= alpha
        method, p_kind = "conformal-risk-control", None
    else:
        chosen, test_part = learn_then_test(data, target, alpha, delta, np.random.default_rng(seed), grid_fraction,
                                            grid_size, p_value_kind, correction)
        feasible = chosen is not None
        thresholds = chosen if feasible else infeasible
        losses, at_risk = item_losses(test_part, thresholds, target)
        bound = binomial_upper_bound(int(losses.sum()), int(at_risk.sum()), delta)
        method, p_kind = "learn-then-test", p_value_kind
    risk, acceptance, cost_ratio = _summary(data, thresholds, target)
    return Fit(target=target, method=method, alpha=alpha, delta=delta, n=data.n, feasible=bool(feasible),
               thresholds=[float(t) for t in thresholds], empirical_risk=risk, risk_bound=float(bound),
               acceptance=acceptance, cost_ratio=cost_ratio, p_value=p_kind)

