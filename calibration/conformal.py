"""Conformal calibration of deferral thresholds (numpy/scipy only; never imports vLLM).

Setting. A cascade of K tiers; tier k < K-1 keeps its answer when its score is
``>= thresholds[k]``, the last tier always answers. Optionally a pre-generation skip score
sends an item straight to tier 1 when it is ``< skip_threshold`` (tier 0 is then not paid).
On n labelled calibration items:

* ``scores``       shape (n, K-1): score of every non-final tier's answer on every item
* ``correct``      shape (n, K):   is tier k's answer to item i correct
* ``costs``        shape (n, K):   cost of running tier k on item i
* ``skip_scores``  shape (n,) or None: the pre-generation score of every item

Targets (losses are 0/1 per item):

* ``accept-error``    L_i = 1{answered by a non-final tier and wrong}; bound P(L=1) <= α
* ``quality-loss``    L_i = 1{cascade wrong and last tier right}; bound P(L=1) <= α, i.e.
                      "lose at most α accuracy versus always calling the largest model"
* ``selective-error`` P(wrong | answered by a non-final tier) <= α

Guarantees and methods:

* **High-probability** (the default, δ = 0.1): with probability >= 1 − δ over the draw of
  the calibration set, the deployed risk is <= α.
  - Two tiers, ``accept-error`` / ``quality-loss``: fixed-sequence testing along the
    threshold path. Both losses are non-increasing in λ (a stricter threshold only moves
    items to the last tier), so testing H_λ: R(λ) > α from the strictest λ down, with the
    exact binomial p-value P(Bin(n, α) <= k(λ)), and stopping at the first failure, controls
    the family-wise error at δ (Learn-then-Test, Angelopoulos, Bates, Candès, Jordan, Lei
    2021, fixed-sequence procedure; equivalently the binomial upper-confidence-bound rule
    of RCPS, Bates et al. 2021). No data is spent on ordering: the order is λ itself.
  - Everything else (``selective-error``, three or more tiers, a skip rule): Learn-then-Test
    over a grid of threshold vectors. The grid (score quantiles) and the testing order
    (ascending p-value) are picked on a random ``grid_fraction`` of the calibration set and
    the tests run on the rest. For ``selective-error`` the p-value conditions on the m items
    a configuration accepts (k wrong of m ~ Binomial(m, R) given m).
* **Marginal** (``delta=None``; two tiers, ``accept-error`` / ``quality-loss``): conformal
  risk control (Angelopoulos, Bates, Fisch, Lei, Schuster 2022): λ̂ = inf{λ : (n R̂_n(λ) +
  1)/(n + 1) <= α} gives E[R(λ̂)] <= α on average over calibration draws. A single draw
  exceeds α about half the time; ``realized_risk_spread`` estimates how far by resampling.

Among certified configurations the cheapest (mean cost on all calibration items) is
chosen. An infeasible target (nothing certified) is reported, with thresholds +inf: the
policy then always escalates. It is never silently weakened.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

TARGETS = ("accept-error", "quality-loss", "selective-error")
P_VALUES = ("binomial", "hoeffding-bentkus")
DEFAULT_DELTA = 0.1
TARGET_WORDS = {
    "accept-error": "P(answered by a smaller tier and wrong)",
    "quality-loss": "quality loss (cascade wrong where the largest tier is right)",
    "selective-error": "P(wrong | answered by a smaller tier)",
}


@dataclass(frozen=True)
class CalibrationData:
    """Per-item calibration arrays; see the module docstring for shapes."""

    scores: np.ndarray
    correct: np.ndarray
    costs: np.ndarray
    skip_scores: np.ndarray | None = None

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
        skip = None
        if self.skip_scores is not None:
            skip = np.asarray(self.skip_scores, dtype=np.float64)
            if skip.shape != (n,) or np.isnan(skip).any():
                raise ValueError(f"skip_scores must have shape ({n},) without NaN")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "skip_scores", skip)

    @property
    def n(self) -> int:
        return self.correct.shape[0]

    @property
    def tiers(self) -> int:
        return self.correct.shape[1]

    @property
    def dims(self) -> int:
        """Length of a configuration vector: K-1 thresholds (+1 skip threshold)."""
        return self.tiers - 1 + (self.skip_scores is not None)

    def subset(self, index: np.ndarray) -> "CalibrationData":
        skip = None if self.skip_scores is None else self.skip_scores[index]
        return CalibrationData(self.scores[index], self.correct[index], self.costs[index], skip)

    def without_skip(self) -> "CalibrationData":
        return CalibrationData(self.scores, self.correct, self.costs)


def _split(data: CalibrationData, config) -> tuple[np.ndarray, float | None]:
    config = np.asarray(config, dtype=np.float64).reshape(-1)
    if config.size != data.dims:
        raise ValueError(f"a configuration for this data has {data.dims} entries, got {config.size}")
    if data.skip_scores is None:
        return config, None
    return config[:-1], float(config[-1])


def routing(data: CalibrationData, config) -> tuple[np.ndarray, np.ndarray]:
    """(answering tier, skipped), shapes (n,): the first visited tier k with
    ``scores[:, k] >= thresholds[k]`` else the last; ``skipped`` items never visit tier 0."""
    thresholds, skip_threshold = _split(data, config)
    accepted = data.scores >= thresholds[None, :]
    skipped = np.zeros(data.n, dtype=bool) if skip_threshold is None else data.skip_scores < skip_threshold
    accepted[:, 0] &= ~skipped
    tier = np.where(accepted.any(axis=1), np.argmax(accepted, axis=1), data.tiers - 1)
    return tier, skipped


def answering_tier(data: CalibrationData, config) -> np.ndarray:
    """Index of the tier that answers each item, shape (n,)."""
    return routing(data, config)[0]


def item_losses(data: CalibrationData, config, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(losses, at_risk), both shape (n,) bool.

    ``losses`` marks the items that count against the target; ``at_risk`` marks the items
    the risk is averaged over: all items, except for ``selective-error`` where it is the
    items answered by a non-final tier (the conditional risk's denominator).
    """
    tier = answering_tier(data, config)
    wrong = ~data.correct[np.arange(data.n), tier]
    early = tier < data.tiers - 1
    if target == "accept-error":
        return early & wrong, np.ones(data.n, dtype=bool)
    if target == "quality-loss":
        return wrong & data.correct[:, -1], np.ones(data.n, dtype=bool)
    if target == "selective-error":
        return early & wrong, early
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def risk(data: CalibrationData, config, target: str) -> float:
    losses, at_risk = item_losses(data, config, target)
    return float(losses.sum() / at_risk.sum()) if at_risk.any() else 0.0


def paid(data: CalibrationData, config) -> np.ndarray:
    """Which tiers each item pays for, shape (n, K): every visited tier up to the answering one."""
    tier, skipped = routing(data, config)
    mask = np.arange(data.tiers)[None, :] <= tier[:, None]
    mask[:, 0] &= ~skipped
    return mask


def expected_cost(data: CalibrationData, config) -> float:
    """Mean cost per item of the cascade."""
    return float((data.costs * paid(data, config)).sum(axis=1).mean())


# ---------------------------------------------------------------- p-values


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


def p_values(kind: str, wrong: np.ndarray, m: np.ndarray, alpha: float) -> np.ndarray:
    """Vectorized ``p_value`` over configurations, shape (G,)."""
    if kind == "binomial":
        return np.where(m > 0, stats.binom.cdf(wrong, np.maximum(m, 1), alpha), 1.0)
    return np.array([p_value(kind, int(w), int(k), alpha) for w, k in zip(wrong, m)])


def binomial_upper_bound(wrong: int, m: int, delta: float) -> float:
    """Clopper–Pearson upper confidence bound at level 1 - δ for a binomial rate (1 if m = 0)."""
    if m == 0 or wrong >= m:
        return 1.0
    return float(stats.beta.ppf(1 - delta, wrong + 1, m - wrong))


# ---------------------------------------------------------------- fitting


@dataclass
class Fit:
    """The fitted policy thresholds and what the calibration data says about them.

    ``risk_bound`` is the finite-sample bound the method certifies: (n R̂ + 1)/(n + 1) for
    conformal risk control, the Clopper–Pearson 1-δ upper bound on the tested items for the
    high-probability methods. ``acceptance`` is the share of calibration items each tier
    answers, shape (K,); ``skipped`` the share that skipped tier 0; ``cost_ratio`` the mean
    cost relative to always calling the last tier. ``guarantee`` says in words what holds.
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

    @property
    def config(self) -> list[float]:
        return self.thresholds + ([] if self.skip_threshold is None else [self.skip_threshold])

    def to_dict(self) -> dict:
        return asdict(self)


def check_level(name: str, value: float | None) -> None:
    if value is None or not (0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def guarantee(target: str, alpha: float, delta: float | None, method: str) -> dict:
    """The guarantee a fit gives, as a record with a sentence an operator can read."""
    what = f"{TARGET_WORDS[target]} <= {alpha:g}"
    if delta is None:
        return {"kind": "marginal", "method": method,
                "statement": f"on average over calibration draws, {what} "
                             "(a single calibration can land above it; see realized-risk spread)"}
    return {"kind": "high-probability", "method": method,
            "statement": f"with probability >= {1 - delta:.0%} over the calibration draw, {what}"}


def _loss_if_accepted(data: CalibrationData, target: str) -> np.ndarray:
    """Items whose acceptance by tier 0 would count against the target (two tiers)."""
    if target == "accept-error":
        return ~data.correct[:, 0]
    if target == "quality-loss":
        return ~data.correct[:, 0] & data.correct[:, 1]
    raise ValueError(f"a single-threshold path supports accept-error and quality-loss, not {target!r}")


def _threshold_path(data: CalibrationData, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rules "accept when score > λ" in increasing λ: λ = -inf, then each distinct
    score; returns (λ values, losses counted when accepting strictly above each λ)."""
    s = data.scores[:, 0]
    losses = _loss_if_accepted(data, target)
    order = np.argsort(s, kind="stable")
    s_sorted, l_sorted = s[order], losses[order]
    distinct, first_index = np.unique(s_sorted, return_index=True)
    tail = np.concatenate([np.cumsum(l_sorted[::-1])[::-1], [0]])  # losses of items at index >= j
    next_start = np.concatenate([first_index[1:], [data.n]])
    return np.concatenate([[-math.inf], distinct]), np.concatenate([[tail[0]], tail[next_start]])


def _policy_threshold(lam: float) -> float:
    """The policy keeps an answer when score >= t; the path accepts score > λ."""
    return -math.inf if lam == -math.inf else float(np.nextafter(lam, math.inf))


def crc_threshold(data: CalibrationData, target: str, alpha: float, correction: bool = True) -> float:
    """Conformal risk control for one non-final tier: the policy threshold t (keep when
    score >= t) equal to the CRC λ̂ = inf{λ : (n R̂_n(λ) + B)/(n + 1) <= α}, B = 1.

    Candidate λ is the strict rule "accept when score > λ" (losses right-continuous in λ,
    as CRC requires). Returns -inf when accepting everything passes and +inf when nothing
    does (infeasible). ``correction=False`` drops the finite-sample terms (plain empirical
    risk <= α); it exists only to show that the validity tests detect the difference.
    """
    if data.tiers != 2 or data.skip_scores is not None:
        raise ValueError("conformal risk control here calibrates one threshold (two tiers, no skip)")
    lams, losses = _threshold_path(data, target)
    budget = alpha * (data.n + 1) - 1 if correction else alpha * data.n
    ok = losses <= budget
    return _policy_threshold(lams[np.argmax(ok)]) if ok.any() else math.inf


def fixed_sequence_threshold(data: CalibrationData, target: str, alpha: float, delta: float,
                             correction: bool = True) -> float:
    """High-probability single threshold: fixed-sequence testing from the strictest λ down.

    H_λ: R(λ) > α is rejected when P(Bin(n, α) <= k(λ)) <= δ, k(λ) the calibration losses
    when accepting above λ. k(λ) only grows as λ loosens, so the rejected set is the prefix
    of the path with k(λ) <= k* = max{k : P(Bin(n, α) <= k) <= δ}; the loosest such λ is
    returned (+inf when even the strictest non-trivial λ fails). With probability >= 1 − δ,
    R(λ̂) <= α. ``correction=False`` certifies by the empirical risk alone (k <= α n).
    """
    if data.tiers != 2 or data.skip_scores is not None:
        raise ValueError("the fixed-sequence path calibrates one threshold (two tiers, no skip)")
    lams, losses = _threshold_path(data, target)
    if correction:
        passes = stats.binom.cdf(losses, data.n, alpha) <= delta
    else:
        passes = losses <= alpha * data.n
    return _policy_threshold(lams[np.argmax(passes)]) if passes.any() else math.inf


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


def config_counts(data: CalibrationData, configs: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """For every configuration (rows of ``configs``, shape (G, dims)): the number of items
    that count against the target and the number at risk, each shape (G,)."""
    configs = np.atleast_2d(configs)
    k = data.tiers - 1
    accepted = data.scores[None, :, :] >= configs[:, None, :k]  # (G, n, K-1)
    if data.skip_scores is not None:
        accepted[:, :, 0] &= ~(data.skip_scores[None, :] < configs[:, None, k])
    tier = np.where(accepted.any(axis=2), np.argmax(accepted, axis=2), data.tiers - 1)  # (G, n)
    wrong = ~data.correct[np.arange(data.n)[None, :], tier]
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
    perm = rng.permutation(data.n)
    cut = int(round(grid_fraction * data.n))
    grid_part, test_part = data.subset(perm[:cut]), data.subset(perm[cut:])
    configs = _configurations(_grid_candidates(grid_part, grid_size))
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
) -> Fit:
    """Fit the policy's thresholds for ``target`` at level α (and δ; see the module docstring).

    ``delta=None`` asks for the marginal guarantee (conformal risk control), which exists
    for two tiers with ``accept-error`` / ``quality-loss`` and no skip rule.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    check_level("alpha", alpha)
    path = uses_threshold_path(data, target)
    if delta is not None or not path:
        if delta is None:
            raise ValueError(f"delta must be in (0, 1), got None: the marginal guarantee (delta none) exists only "
                             f"for two tiers with accept-error or quality-loss and no skip rule")
        check_level("delta", delta)
    if data.n == 0:
        raise ValueError("no calibration items")
    if path:
        if delta is None:
            t, method = crc_threshold(data, target, alpha, correction), "conformal-risk-control"
        else:
            t, method = fixed_sequence_threshold(data, target, alpha, delta, correction), "fixed-sequence-binomial"
        config = np.array([t])
        losses, _ = item_losses(data, config, target)
        k = int(losses.sum())
        bound = (k + 1) / (data.n + 1) if delta is None else binomial_upper_bound(k, data.n, delta)
        feasible = math.isfinite(t)
        p_kind = None if delta is None else "binomial"
    else:
        chosen, test_part = learn_then_test(data, target, alpha, delta, np.random.default_rng(seed), grid_fraction,
                                            grid_size, p_value_kind, correction)
        feasible = chosen is not None
        config = chosen if feasible else np.full(data.dims, math.inf)
        losses, at_risk = item_losses(test_part, config, target)
        bound = binomial_upper_bound(int(losses.sum()), int(at_risk.sum()), delta)
        method, p_kind = "learn-then-test", p_value_kind
    thresholds, skip_threshold = _split(data, config)
    tier, skipped = routing(data, config)
    return Fit(target=target, method=method, alpha=alpha, delta=delta, n=data.n, feasible=bool(feasible),
               thresholds=[float(t) for t in thresholds], empirical_risk=risk(data, config, target),
               risk_bound=float(bound), acceptance=(np.bincount(tier, minlength=data.tiers) / data.n).tolist(),
               cost_ratio=expected_cost(data, config) / float(data.costs[:, -1].mean()),
               skip_threshold=skip_threshold, skipped=float(skipped.mean()), p_value=p_kind,
               guarantee=guarantee(target, alpha, delta, method))


def realized_risk_spread(data: CalibrationData, target: str, alpha: float, delta: float | None,
                         resamples: int = 500, quantile: float = 0.9, seed: int = 0) -> dict:
    """What a single deployment should expect from one calibration: refit the same two-tier
    method (CRC when ``delta`` is None, else fixed-sequence at δ) on bootstrap resamples of
    the calibration set and measure each fit's risk on the full set (the best available
    stand-in for the population). Returns the share of resampled calibrations whose risk
    exceeds α, the ``quantile`` and the mean of their risks."""
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
