"""Routing and 0/1 losses of a cascade configuration (pure numpy).

Setting. A cascade of K tiers; tier k < K-1 keeps its answer when its score is
``>= thresholds[k]``, the last tier always answers. Optionally a pre-generation skip score
sends an item straight to tier 1 when it is ``< skip_threshold`` (tier 0 is then not paid).
This is exactly what the deployed policy does (``vcascade.engine.policy.Policy``), and every
count a certificate relies on is computed with these functions, so a certified
configuration and a deployed one accept the same items.

A *configuration* is the vector ``thresholds (K-1,)`` followed, with a skip rule, by the
skip threshold: shape ``(dims,)``, ``dims = K - 1 + has_skip``. ``+inf`` everywhere is
"always escalate" (tier scores are < +inf by construction; skip scores < +inf skip).

Targets (losses are 0/1 per item):

* ``accept-error``    L_i = 1{answered by a non-final tier and wrong}; risk P(L = 1)
* ``quality-loss``    L_i = 1{cascade wrong and last tier right}; risk P(L = 1), the joint
                      probability. Since acc(largest) − acc(cascade) = P(cascade wrong ∧
                      largest right) − P(cascade right ∧ largest wrong), a bound α on it
                      bounds the accuracy drop versus always calling the largest tier by α.
* ``selective-error`` P(wrong | answered by a non-final tier)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TARGETS = ("accept-error", "quality-loss", "selective-error")


def check_target(target: str) -> None:
    if target not in TARGETS:
        from .checks import FitError  # local: checks imports this module

        raise FitError(f"unknown target {target!r}; known: {', '.join(TARGETS)}",
                       alternative=f"use one of {', '.join(TARGETS)}")


@dataclass(frozen=True)
class CalibrationData:
    """Per-item calibration arrays.

    Parameters
    ----------
    scores : array, shape (n, K-1)
        Score of every non-final tier's answer on every item (higher = more confident).
        ``-inf`` is allowed (the built-in signals give it to an empty answer); ``+inf`` is
        not: it is the threshold that accepts nothing.
    correct : bool array, shape (n, K)
        Is tier k's answer to item i correct.
    costs : array, shape (n, K)
        Cost of running tier k on item i.
    skip_scores : array, shape (n,), optional
        The pre-generation score of every item (skip tier 0 when ``< skip_threshold``).
    """

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
        if np.isposinf(scores).any():
            raise ValueError("scores must be < +inf: +inf is the threshold that accepts nothing (always escalate)")
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
    def has_skip(self) -> bool:
        return self.skip_scores is not None

    @property
    def dims(self) -> int:
        """Length of a configuration vector: K-1 thresholds (+1 skip threshold)."""
        return self.tiers - 1 + (self.skip_scores is not None)

    def subset(self, index: np.ndarray) -> "CalibrationData":
        skip = None if self.skip_scores is None else self.skip_scores[index]
        return CalibrationData(self.scores[index], self.correct[index], self.costs[index], skip)

    def without_skip(self) -> "CalibrationData":
        return CalibrationData(self.scores, self.correct, self.costs)


def always_escalate(data: CalibrationData) -> np.ndarray:
    """The configuration that sends every item to the last tier (skipping tier 0), shape (dims,)."""
    return np.full(data.dims, math.inf)


def split_config(data: CalibrationData, config) -> tuple[np.ndarray, float | None]:
    """(thresholds (K-1,), skip threshold or None) of a configuration vector (dims,)."""
    config = np.asarray(config, dtype=np.float64).reshape(-1)
    if config.size != data.dims:
        raise ValueError(f"a configuration for this data has {data.dims} entries, got {config.size}")
    if np.isnan(config).any():
        raise ValueError("a configuration must not contain NaN")
    if data.skip_scores is None:
        return config, None
    return config[:-1], float(config[-1])


_split = split_config  # the name this module's callers used before it became a package


def routing(data: CalibrationData, config) -> tuple[np.ndarray, np.ndarray]:
    """Where each item ends up under ``config``, as the deployed policy routes it.

    Returns
    -------
    tier : int array, shape (n,)
        The first visited tier k with ``scores[:, k] >= thresholds[k]``, else the last.
    skipped : bool array, shape (n,)
        Items whose skip score is ``< skip_threshold``: they never visit tier 0.
    """
    thresholds, skip_threshold = split_config(data, config)
    accepted = data.scores >= thresholds[None, :]
    skipped = np.zeros(data.n, dtype=bool) if skip_threshold is None else data.skip_scores < skip_threshold
    accepted[:, 0] &= ~skipped
    return _first_accepting(accepted), skipped


def _first_accepting(accepted: np.ndarray) -> np.ndarray:
    """Index of the first True along the last axis, else its length (the last tier)."""
    tier = np.full(accepted.shape[:-1], accepted.shape[-1], dtype=np.int64)
    for k in range(accepted.shape[-1] - 1, -1, -1):
        tier[accepted[..., k]] = k
    return tier


def answering_tier(data: CalibrationData, config) -> np.ndarray:
    """Index of the tier that answers each item, shape (n,)."""
    return routing(data, config)[0]


def _losses_of(correct: np.ndarray, tier: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(losses, at_risk) for answering tiers ``tier`` (..., n) and ``correct`` (n, K)."""
    n, k = correct.shape
    wrong = ~correct[np.arange(n), tier]
    early = tier < k - 1
    if target == "accept-error":
        return early & wrong, np.ones(tier.shape, dtype=bool)
    if target == "quality-loss":
        return wrong & correct[:, -1], np.ones(tier.shape, dtype=bool)
    if target == "selective-error":
        return early & wrong, early
    check_target(target)
    raise AssertionError("unreachable")


def item_losses(data: CalibrationData, config, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(losses, at_risk), both shape (n,) bool.

    ``losses`` marks the items that count against the target; ``at_risk`` marks the items
    the risk is averaged over: all items, except for ``selective-error`` where it is the
    items answered by a non-final tier (the conditional risk's denominator).
    """
    return _losses_of(data.correct, answering_tier(data, config), target)


def risk(data: CalibrationData, config, target: str) -> float:
    """Empirical risk of ``config``: losses / items at risk (0 when none is at risk)."""
    losses, at_risk = item_losses(data, config, target)
    return float(losses.sum() / at_risk.sum()) if at_risk.any() else 0.0


def conditional_quality_loss(data: CalibrationData, config) -> float:
    """P̂(cascade wrong | largest tier right): a *figure* for reports, not a guarantee.

    The quality-loss target bounds the joint P(cascade wrong ∧ largest right); dividing by
    the largest tier's accuracy gives the share of the largest tier's correct answers that
    the cascade loses. No certificate covers this ratio (its denominator is estimated too).
    NaN when the largest tier is never right.
    """
    losses, _ = item_losses(data, config, "quality-loss")
    right = int(data.correct[:, -1].sum())
    return float(losses.sum() / right) if right else float("nan")


def paid(data: CalibrationData, config) -> np.ndarray:
    """Which tiers each item pays for, shape (n, K): every visited tier up to the answering one."""
    tier, skipped = routing(data, config)
    mask = np.arange(data.tiers)[None, :] <= tier[:, None]
    mask[:, 0] &= ~skipped
    return mask


def expected_cost(data: CalibrationData, config) -> float:
    """Mean cost per item of the cascade."""
    return float((data.costs * paid(data, config)).sum(axis=1).mean())


def config_counts(data: CalibrationData, configs: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized ``item_losses`` summed over items, for many configurations at once.

    Parameters
    ----------
    configs : array, shape (G, dims)

    Returns
    -------
    losses, at_risk : int arrays, shape (G,)
        Number of items counting against the target, and number at risk, per configuration.
    """
    configs = np.atleast_2d(np.asarray(configs, dtype=np.float64))
    k = data.tiers - 1
    accepted = data.scores[None, :, :] >= configs[:, None, :k]  # (G, n, K-1)
    if data.skip_scores is not None:
        accepted[:, :, 0] &= ~(data.skip_scores[None, :] < configs[:, None, k])
    tier = _first_accepting(accepted)  # (G, n)
    losses, at_risk = _losses_of(data.correct, tier, target)
    return losses.sum(axis=1), at_risk.sum(axis=1)


def loss_if_accepted(data: CalibrationData, target: str) -> np.ndarray:
    """Items whose acceptance by tier 0 would count against the target, shape (n,) bool
    (two tiers, no skip; the single-threshold path)."""
    if target == "accept-error":
        return ~data.correct[:, 0]
    if target == "quality-loss":
        return ~data.correct[:, 0] & data.correct[:, 1]
    raise ValueError(f"a single-threshold path supports accept-error and quality-loss, not {target!r}")


def threshold_path(data: CalibrationData, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct deployable single threshold, loosest first, and its calibration losses.

    The policy keeps tier 0's answer when ``score >= t``. Distinct acceptance sets on the
    calibration items arise for t = each distinct score value; the path is

        t = -inf ("accept all"; once, also when some scores are -inf),
            each distinct finite score value in increasing order,
            +inf ("accept none": tier scores are < +inf),

    and ``losses[j]`` is the number of calibration items with ``score >= t[j]`` that count
    against the target. These are the items ``routing(data, [t[j]])`` accepts, so what a
    fit certifies along this path is what the deployed threshold does.

    Returns
    -------
    thresholds : array, shape (P,)
        Strictly increasing, ``thresholds[0] = -inf``, ``thresholds[-1] = +inf``.
    losses : int array, shape (P,)
        Non-increasing; ``losses[-1] = 0``.
    """
    if data.tiers != 2 or data.skip_scores is not None:
        raise ValueError("the threshold path has one threshold (two tiers, no skip)")
    s = data.scores[:, 0]
    lost = loss_if_accepted(data, target)
    order = np.argsort(s, kind="stable")
    s_sorted, l_sorted = s[order], lost[order]
    tail = np.concatenate([np.cumsum(l_sorted[::-1])[::-1], [0]]).astype(np.int64)  # losses of sorted items >= j
    finite = np.isfinite(s_sorted)
    distinct, first = np.unique(s_sorted[finite], return_index=True)
    first = first + int(np.argmax(finite)) if finite.any() else first  # -inf scores sort first
    thresholds = np.concatenate([[-math.inf], distinct, [math.inf]])
    losses = np.concatenate([[tail[0]], tail[first], [0]])
    return thresholds, losses
