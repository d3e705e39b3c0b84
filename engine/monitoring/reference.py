"""What the calibration split saw, as the monitor compares served traffic with it.

An artifact's ``"monitor"`` section (written by ``vcascade calibrate``) keeps, for a
deterministic uniform subsample of at most ``MAX_STORED`` calibration items (a uniform
subsample of exchangeable items is exchangeable with them too), aligned per item:

* ``scores``: one list per non-final tier — that tier's rule score of the item's answer;
* ``skip_scores``: the skip rule's score (or ``null`` without a skip rule);
* ``groups``: the item's group label (per-group artifacts; else ``null``);
* ``disagree``: one list per non-final tier — 1 when that tier's answer is not equivalent to
  the last tier's (``equivalence`` names the test: the tier's semantic-entropy equivalence,
  or normalized exact match);

and the full split's figures under the certified policy: ``acceptance_rate`` (answered by
tier 0), ``skip_rate``, ``disagreement_rate`` (among items a smaller tier keeps, the share
whose kept answer differs from the last tier's) and the counts behind them.

``Reference`` routes the stored items with a policy exactly as the controller does (the
skip rule first, then the first tier whose score reaches its threshold), so the monitor
knows which calibration scores a live score of tier k is to be ranked among: those of the
items that reached tier k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

MAX_STORED = 5000
"""At most this many calibration items are kept in an artifact's monitor section."""


def route(scores: np.ndarray, skip_scores: np.ndarray | None, thresholds: Sequence[float],
          skip_threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(answering tier (n,), skipped (n,)) of items under one policy, as the controller routes.

    Parameters
    ----------
    scores : array, shape (n, K-1)
        Each non-final tier's rule score.
    skip_scores : array, shape (n,), or None
    thresholds : K-1 floats
        Tier k keeps its answer when its score is ``>= thresholds[k]``.
    skip_threshold : float or None
        Items whose skip score is ``< skip_threshold`` never visit tier 0.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    n, k = scores.shape
    accepted = scores >= np.asarray(thresholds, dtype=np.float64)[None, :]
    skipped = np.zeros(n, dtype=bool)
    if skip_threshold is not None and skip_scores is not None:
        skipped = np.asarray(skip_scores, dtype=np.float64) < skip_threshold
    if k:
        accepted[:, 0] &= ~skipped
    tier = np.full(n, k, dtype=np.int64)
    for j in range(k - 1, -1, -1):
        tier[accepted[:, j]] = j
    return tier, skipped


def reached(answered: np.ndarray, skipped: np.ndarray, k: int) -> np.ndarray:
    """Items whose tier-k answer was generated and scored (visited tier k), shape (n,)."""
    return (answered >= k) & ~(skipped & (k == 0))


def subsample(n: int, limit: int = MAX_STORED, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic uniform subsample of at most ``limit`` of ``n`` items."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _float_list(values) -> list:
    return [float(v) for v in np.asarray(values, dtype=np.float64)]


def monitor_section(scores: np.ndarray, skip_scores: np.ndarray | None, answered: np.ndarray,
                    skipped: np.ndarray, disagree: np.ndarray, groups: Sequence[str] | None = None,
                    equivalence: str = "normalized", limit: int = MAX_STORED, seed: int = 0) -> dict[str, Any]:
    """The artifact's ``"monitor"`` section from the calibration split's arrays.

    Parameters
    ----------
    scores : array, shape (n, K-1)
    skip_scores : array, shape (n,), or None
    answered, skipped : arrays, shape (n,)
        Routing of every item under the certified policy (``route``, per group when grouped).
    disagree : bool array, shape (n, K-1)
        Tier k's answer is not equivalent to the last tier's.
    groups : n labels, or None
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(len(answered), -1)
    disagree = np.asarray(disagree, dtype=bool).reshape(scores.shape)
    n, k = scores.shape
    last = k
    kept = answered < last
    kept_disagree = kept & disagree[np.arange(n), np.minimum(answered, max(k - 1, 0))] if k else kept
    idx = subsample(n, limit, seed)
    return {
        "n": int(n), "n_stored": int(idx.size), "subsample_seed": seed, "equivalence": equivalence,
        "scores": [_float_list(scores[idx, j]) for j in range(k)],
        "skip_scores": None if skip_scores is None else _float_list(np.asarray(skip_scores)[idx]),
        "groups": None if groups is None else [str(groups[i]) for i in idx],
        "disagree": [[int(v) for v in disagree[idx, j]] for j in range(k)],
        "acceptance_rate": float(np.mean(answered == 0)) if n else None,
        "skip_rate": float(np.mean(skipped)) if n and skip_scores is not None else None,
        "disagreement_rate": float(kept_disagree.sum() / kept.sum()) if kept.any() else None,
        "counts": {"items": int(n), "answered_by_tier": [int((answered == j).sum()) for j in range(k + 1)],
                   "skipped": int(skipped.sum()), "kept_by_smaller": int(kept.sum()),
                   "kept_disagree": int(kept_disagree.sum())},
    }


@dataclass
class Reference:
    """The stored calibration items (see the module docstring), routed by one policy.

    ``scores`` (n, K-1), ``skip_scores`` (n,) or None, ``groups`` (n,) or None,
    ``disagree`` (n, K-1) bool or None; ``answered`` (n,) and ``skipped`` (n,) under
    ``policy``; ``grouped`` when the policy has per-group thresholds; ``checkpointed`` when
    it decides mid-generation (``engine.policy.Checkpoints``): the stored end scores and the
    end-only routing then do not describe what reaches tier 0's end rule or who keeps an
    answer, so the monitor runs only the tests that do not depend on them.
    """

    scores: np.ndarray
    skip_scores: np.ndarray | None
    groups: np.ndarray | None
    disagree: np.ndarray | None
    answered: np.ndarray
    skipped: np.ndarray
    grouped: bool
    thresholds: tuple[float, ...]
    skip_threshold: float | None
    figures: dict[str, Any]
    checkpointed: bool = False

    @classmethod
    def build(cls, scores, skip_scores, policy, groups=None, disagree=None, figures=None) -> "Reference":
        """Route the items with ``policy`` (an ``engine.policy.Policy``: ``thresholds``,
        ``skip_threshold``, ``by_group`` and ``for_group``)."""
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(-1, 1)
        n = scores.shape[0]
        skip = None if skip_scores is None else np.asarray(skip_scores, dtype=np.float64).reshape(-1)
        labels = None if groups is None else np.asarray([str(g) for g in groups])
        grouped = bool(getattr(policy, "by_group", None))
        skip_threshold = policy.skip_threshold if getattr(policy, "skip", None) is not None else None
        if not grouped:
            answered, skipped = route(scores, skip, policy.thresholds, skip_threshold)
        else:
            answered = np.empty(n, dtype=np.int64)
            skipped = np.zeros(n, dtype=bool)
            names = labels if labels is not None else np.full(n, "")
            for g in np.unique(names):
                sub, _, _ = policy.for_group(str(g) if labels is not None else None)
                at = np.flatnonzero(names == g)
                sub_skip = sub.skip_threshold if sub.skip is not None else None
                answered[at], skipped[at] = route(scores[at], None if skip is None else skip[at], sub.thresholds,
                                                  sub_skip)
        dis = None if disagree is None else np.asarray(disagree, dtype=bool).reshape(scores.shape)
        return cls(scores, skip, labels, dis, answered, skipped, grouped, tuple(policy.thresholds), skip_threshold,
                   dict(figures or {}), getattr(policy, "checkpoints", None) is not None)

    @classmethod
    def from_artifact(cls, artifact: dict[str, Any], policy) -> "Reference":
        """From an artifact's ``"monitor"`` section; ``ValueError`` when it has none."""
        section = artifact.get("monitor")
        if not section or not section.get("scores"):
            raise ValueError("the artifact has no 'monitor' section (recalibrate with this vcascade to monitor it)")
        scores = np.array([[(-math.inf if v is None else v) for v in col] for col in section["scores"]],
                          dtype=np.float64).T
        skip = section.get("skip_scores")
        figures = {k: section.get(k) for k in ("n", "acceptance_rate", "skip_rate", "disagreement_rate",
                                               "equivalence", "counts")}
        return cls.build(scores, None if skip is None else [(-math.inf if v is None else v) for v in skip], policy,
                         section.get("groups"), None if section.get("disagree") is None else
                         np.array(section["disagree"], dtype=bool).T, figures)

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_tiers(self) -> int:
        return int(self.scores.shape[1]) + 1

    def reached(self, k: int) -> np.ndarray:
        return reached(self.answered, self.skipped, k)

    @property
    def kept(self) -> np.ndarray:
        """Answered by a smaller tier, shape (n,)."""
        return self.answered < self.n_tiers - 1

    @property
    def kept_disagree(self) -> np.ndarray | None:
        """Kept by a smaller tier whose answer differs from the last tier's, shape (n,)."""
        if self.disagree is None:
            return None
        col = np.minimum(self.answered, self.n_tiers - 2)
        return self.kept & self.disagree[np.arange(self.n), col]
