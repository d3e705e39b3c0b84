"""The data of a checkpointed cascade and its configurations (numpy only).

* ``CheckpointData`` — per-item arrays of a two-tier cascade whose small answer is scored
  at checkpoints k_1 < … < k_m: scores (n, m), end scores (n,), lengths (n,), correctness
  (n, 2), prefix costs (n, m), full small / large costs (n,), skip scores (n,) or None;
* ``CheckpointConfig`` — one deployable configuration: commit and escalate thresholds per
  checkpoint (m each), the end threshold, the skip threshold or None;
* ``CheckpointFamily`` — an ordered sequence of G configurations, arrays (G, m) and (G,),
  the fixed-sequence testing order (``fit.fit_checkpoints``);
* ``token_costs`` — the linear token-cost model of the small tier's prefixes;
* ``commit_when_decided`` — the same routing, released at the first checkpoint from which
  no answer can escalate.

The decision rule these thresholds feed is ``routing.route`` (see the package docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np


def _vector(values, n: int, name: str, dtype=np.float64) -> np.ndarray:
    out = np.asarray(values, dtype=dtype)
    if out.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {out.shape}")
    return out


@dataclass(frozen=True)
class CheckpointData:
    """Per-item arrays of a two-tier cascade with checkpoints in the small tier's answer.

    Parameters
    ----------
    checkpoints : int array, shape (m,)
        Token counts k_1 < … < k_m (>= 1) at which the prefix rule scores the answer.
    scores : array, shape (n, m)
        The prefix rule's score of the first k_j tokens; NaN exactly where the answer has
        fewer than k_j tokens (``lengths < checkpoints``). ``-inf`` allowed, ``+inf`` not.
    end_scores : array, shape (n,)
        The end-of-answer rule's score of the full small answer (no NaN, no +inf).
    lengths : int array, shape (n,)
        Completion tokens of the small answer.
    correct : bool array, shape (n, 2)
        Is the (small, large) answer correct.
    prefix_costs : array, shape (n, m)
        The small tier's cost of generating k_j tokens (prompt + k_j output tokens); read
        only where the checkpoint is reached (set to NaN elsewhere).
    small_costs, large_costs : arrays, shape (n,)
        Cost of the full small answer and of the large tier's answer.
    skip_scores : array, shape (n,), optional
        The pre-generation score ("checkpoint 0"): skip the small tier when ``< skip``.
    """

    checkpoints: np.ndarray
    scores: np.ndarray
    end_scores: np.ndarray
    lengths: np.ndarray
    correct: np.ndarray
    prefix_costs: np.ndarray
    small_costs: np.ndarray
    large_costs: np.ndarray
    skip_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        checkpoints = _checkpoints(self.checkpoints)
        correct = np.asarray(self.correct, dtype=bool)
        if correct.ndim != 2 or correct.shape[1] != 2:
            raise ValueError(f"correct must have shape (n, 2) (small, large), got {correct.shape}")
        n, m = correct.shape[0], checkpoints.size
        lengths = np.asarray(self.lengths)
        if lengths.shape != (n,) or (lengths < 0).any() or (lengths != np.round(lengths)).any():
            raise ValueError(f"lengths must be non-negative integers of shape ({n},)")
        lengths = lengths.astype(np.int64)
        reached = lengths[:, None] >= checkpoints[None, :]
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.shape != (n, m):
            raise ValueError(f"scores must have shape (n, m) = {(n, m)}, got {scores.shape}")
        if (np.isnan(scores) != ~reached).any():
            raise ValueError("scores must be NaN exactly where the answer ended before the checkpoint "
                             "(lengths < checkpoints)")
        if np.isposinf(scores).any():
            raise ValueError("scores must be < +inf: +inf is the threshold that keeps nothing")
        end = _vector(self.end_scores, n, "end_scores")
        if np.isnan(end).any() or np.isposinf(end).any():
            raise ValueError("end_scores must not be NaN or +inf")
        prefix = np.asarray(self.prefix_costs, dtype=np.float64)
        if prefix.shape != (n, m):
            raise ValueError(f"prefix_costs must have shape {(n, m)}, got {prefix.shape}")
        if not np.isfinite(prefix[reached]).all():
            raise ValueError("prefix_costs must be finite wherever the checkpoint is reached")
        prefix = np.where(reached, prefix, np.nan)
        small = _vector(self.small_costs, n, "small_costs")
        large = _vector(self.large_costs, n, "large_costs")
        if not (np.isfinite(small).all() and np.isfinite(large).all()):
            raise ValueError("small_costs and large_costs must be finite")
        skip = None
        if self.skip_scores is not None:
            skip = _vector(self.skip_scores, n, "skip_scores")
            if np.isnan(skip).any():
                raise ValueError("skip_scores must not be NaN")
        for name, value in (("checkpoints", checkpoints), ("scores", scores), ("end_scores", end),
                            ("lengths", lengths), ("correct", correct), ("prefix_costs", prefix),
                            ("small_costs", small), ("large_costs", large), ("skip_scores", skip)):
            object.__setattr__(self, name, value)

    @property
    def n(self) -> int:
        return self.correct.shape[0]

    @property
    def m(self) -> int:
        return self.checkpoints.size

    @property
    def has_skip(self) -> bool:
        return self.skip_scores is not None

    @property
    def reached(self) -> np.ndarray:
        """Which checkpoints each answer reaches, shape (n, m) bool (``lengths >= k_j``)."""
        return self.lengths[:, None] >= self.checkpoints[None, :]

    def subset(self, index) -> CheckpointData:
        skip = None if self.skip_scores is None else self.skip_scores[index]
        return CheckpointData(self.checkpoints, self.scores[index], self.end_scores[index], self.lengths[index],
                              self.correct[index], self.prefix_costs[index], self.small_costs[index],
                              self.large_costs[index], skip)

    def without_skip(self) -> CheckpointData:
        return CheckpointData(self.checkpoints, self.scores, self.end_scores, self.lengths, self.correct,
                              self.prefix_costs, self.small_costs, self.large_costs)


def _checkpoints(values) -> np.ndarray:
    k = np.asarray(values)
    if k.ndim != 1 or k.size == 0 or (k != np.round(k)).any():
        raise ValueError(f"checkpoints must be a non-empty 1-d array of token counts, got {values!r}")
    k = k.astype(np.int64)
    if k[0] < 1 or (np.diff(k) <= 0).any():
        raise ValueError(f"checkpoints must be strictly increasing token counts >= 1, got {k.tolist()}")
    return k


def token_costs(prompt_tokens, lengths, checkpoints, prompt_cost: float = 1.0,
                output_cost: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A linear token-cost model of the small tier: (prefix_costs (n, m), small_costs (n,)).

    ``prefix_costs[i, j] = prompt_cost · prompt_tokens[i] + output_cost · k_j`` where the
    answer reaches k_j (NaN elsewhere) and ``small_costs[i]`` the same with ``lengths[i]``
    output tokens. (Decoding dominates long answers: the committed engine-seconds model puts
    the 1.5B's cost per output token at 5.5× its cost per prompt token.)
    """
    prompt = np.asarray(prompt_tokens, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    k = _checkpoints(checkpoints).astype(np.float64)
    prefix = prompt_cost * prompt[:, None] + output_cost * k[None, :]
    prefix = np.where(lengths[:, None] >= k[None, :], prefix, np.nan)
    return prefix, prompt_cost * prompt + output_cost * lengths


def _thresholds(values, m: int, name: str) -> tuple[float, ...]:
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if out.size != m or np.isnan(out).any():
        raise ValueError(f"{name} must hold {m} thresholds without NaN, got {values!r}")
    return tuple(float(v) for v in out)


@dataclass(frozen=True)
class CheckpointConfig:
    """One deployable configuration: the thresholds of every checkpoint, the end and the skip.

    Parameters
    ----------
    checkpoints : tuple of int, length m — the token counts the thresholds belong to
    commit : tuple of float, length m — commit at checkpoint j when ``score >= commit[j]``
    escalate : tuple of float, length m — escalate at j when ``score < escalate[j]``
        (checked first)
    end : float — keep a finished answer when ``end_score >= end``, else escalate
    skip : float or None — skip the small tier when ``skip_score < skip``; None: no skip rule
    """

    checkpoints: tuple[int, ...]
    commit: tuple[float, ...]
    escalate: tuple[float, ...]
    end: float
    skip: float | None = None

    def __post_init__(self) -> None:
        k = _checkpoints(self.checkpoints)
        object.__setattr__(self, "checkpoints", tuple(int(v) for v in k))
        object.__setattr__(self, "commit", _thresholds(self.commit, k.size, "commit"))
        object.__setattr__(self, "escalate", _thresholds(self.escalate, k.size, "escalate"))
        if math.isnan(float(self.end)) or (self.skip is not None and math.isnan(float(self.skip))):
            raise ValueError("end and skip thresholds must not be NaN")
        object.__setattr__(self, "end", float(self.end))
        object.__setattr__(self, "skip", None if self.skip is None else float(self.skip))

    @property
    def m(self) -> int:
        return len(self.checkpoints)

    @classmethod
    def always_escalate(cls, checkpoints, skip: bool = False) -> CheckpointConfig:
        """Every item to the large tier: skipped (with a skip rule), else escalated at the
        first checkpoint it reaches, else at its end."""
        m = len(checkpoints)
        return cls(tuple(checkpoints), (math.inf,) * m, (math.inf,) * m, math.inf, math.inf if skip else None)

    @classmethod
    def end_only(cls, checkpoints, end: float, skip: float | None = None) -> CheckpointConfig:
        """No mid-generation decision (never commit, never escalate early): the end rule alone."""
        m = len(checkpoints)
        return cls(tuple(checkpoints), (math.inf,) * m, (-math.inf,) * m, end, skip)

    def to_dict(self) -> dict:
        return {"checkpoints": list(self.checkpoints), "commit": list(self.commit), "escalate": list(self.escalate),
                "end": self.end, "skip": self.skip}

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointConfig:
        def floats(values):
            return tuple(math.inf if v is None else float(v) for v in values)

        return cls(tuple(data["checkpoints"]), floats(data["commit"]), floats(data["escalate"]), float(data["end"]),
                   None if data.get("skip") is None else float(data["skip"]))


def commit_when_decided(config: CheckpointConfig) -> CheckpointConfig:
    """``config`` with its answers committed at the first checkpoint from which none can escalate.

    When the end rule keeps every finished answer (``end = -inf``) and no checkpoint from J on
    escalates (``escalate[j] = -inf`` for j >= J), every answer reaching checkpoint J is kept
    whatever its scores. Committing it there (``commit[J] = -inf``) routes every item to the
    same tier at the same cost — a committed answer still runs to its end — so the losses the
    certificate counted are unchanged, and the kept answer's text is released after k_J
    tokens instead of at its end (time to first token). Other configurations are returned
    as they are.
    """
    if config.end != -math.inf or not config.m:
        return config
    first = config.m
    while first > 0 and config.escalate[first - 1] == -math.inf:
        first -= 1
    if first == config.m or config.commit[first] == -math.inf:
        return config
    commit = list(config.commit)
    commit[first] = -math.inf
    return replace(config, commit=tuple(commit))


def _check_config(data: CheckpointData, config: CheckpointConfig) -> None:
    if config.checkpoints != tuple(int(k) for k in data.checkpoints):
        raise ValueError(f"the configuration's checkpoints {list(config.checkpoints)} differ from the data's "
                         f"{data.checkpoints.tolist()}")
    if config.skip is not None and data.skip_scores is None:
        raise ValueError("the configuration has a skip threshold but the data has no skip scores")



@dataclass(frozen=True)
class CheckpointFamily:
    """An ordered path of G configurations, most conservative first, fixed before calibration.

    The order is the fixed-sequence testing order (``fit_checkpoints``); nothing here
    requires nested kept sets or monotone risks (the quantile path has both, the Pareto
    path neither on new data), only that ``levels`` — the order's key — never decreases.

    Attributes
    ----------
    checkpoints : int array, shape (m,)
    levels : array, shape (G,), non-decreasing — the ordering key: the aggressiveness a of a
        quantile path (0 = always escalate), the selection-split empirical risk of a Pareto
        path (``description["level"]`` says which)
    commit, escalate : arrays, shape (G, m)
    end : array, shape (G,)
    skip : array, shape (G,), or None (no skip rule)
    description : dict — how the path was built (for the artifact and the report)
    """

    checkpoints: np.ndarray
    levels: np.ndarray
    commit: np.ndarray
    escalate: np.ndarray
    end: np.ndarray
    skip: np.ndarray | None = None
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = _checkpoints(self.checkpoints)
        levels = np.asarray(self.levels, dtype=np.float64).reshape(-1)
        g, m = levels.size, k.size
        arrays = {"commit": np.asarray(self.commit, dtype=np.float64),
                  "escalate": np.asarray(self.escalate, dtype=np.float64),
                  "end": np.asarray(self.end, dtype=np.float64).reshape(-1)}
        if self.skip is not None:
            arrays["skip"] = np.asarray(self.skip, dtype=np.float64).reshape(-1)
        for name, value in arrays.items():
            shape = (g, m) if name in ("commit", "escalate") else (g,)
            if value.shape != shape or np.isnan(value).any():
                raise ValueError(f"family {name} must have shape {shape} without NaN, got {value.shape}")
        if g == 0:
            raise ValueError("a family needs at least one configuration")
        if (np.diff(levels) < 0).any() or np.isnan(levels).any():
            raise ValueError("family levels (the testing order's key) must be non-decreasing")
        object.__setattr__(self, "checkpoints", k)
        object.__setattr__(self, "levels", levels)
        for name, value in arrays.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return self.levels.size

    def __getitem__(self, g: int) -> CheckpointConfig:
        return CheckpointConfig(tuple(int(v) for v in self.checkpoints), tuple(self.commit[g]),
                                tuple(self.escalate[g]), float(self.end[g]),
                                None if self.skip is None else float(self.skip[g]))

    def configs(self) -> list[CheckpointConfig]:
        return [self[g] for g in range(len(self))]



def _check_family(data: CheckpointData, family: CheckpointFamily) -> None:
    if not np.array_equal(family.checkpoints, data.checkpoints):
        raise ValueError(f"the family's checkpoints {family.checkpoints.tolist()} differ from the data's "
                         f"{data.checkpoints.tolist()}")
    if family.skip is not None and data.skip_scores is None:
        raise ValueError("the family has skip thresholds but the data has no skip scores")
