"""Mid-generation deferral: decide at checkpoints inside the small tier's answer (numpy/scipy).

Setting. Two tiers, small and large. The small tier's greedy answer is scored by a prefix
rule after k_1 < … < k_m completion tokens ("checkpoints", e.g. 8, 16, 32, 64, 128) and
by the end-of-answer rule when it ends. At each checkpoint it reaches, an answer is

* **escalated** now: the small request is aborted (its cost is the prefix's, k_j tokens)
  and the large tier answers;
* **committed**: the small answer is kept — it runs to its end and can no longer escalate;
* or it **continues** to the next checkpoint.

An answer *reaches* checkpoint j when it has at least k_j tokens (``lengths >= k_j``: at
the moment its k_j-th token arrives, also when that token is its last). One that ends
before k_j skips the remaining checkpoints and the end rule decides: keep when
``end_score >= end`` ("end-keep"), else escalate ("end-escalate", the whole small answer
paid). With a pre-generation skip rule ("checkpoint 0") an item whose skip score is
``< skip`` never visits the small tier ("skip"), as in ``losses.routing``.

Precedence at a checkpoint: **escalate first**, then commit:

    escalate  if score <  escalate[j]
    commit    elif score >= commit[j]
    continue  otherwise

so overlapping bands resolve to the large tier, the safe side for every target.
``commit[j] = +inf`` never commits at j, ``escalate[j] = -inf`` never escalates early at j;
``escalate[j] = +inf`` escalates every answer reaching j. Scores may be ``-inf`` (empty
answers), never ``+inf`` (+inf is the threshold that keeps nothing) and, at a reached
checkpoint, never NaN.

With greedy decoding the first k tokens of a cached full answer are exactly what the
engine has produced at checkpoint k (``vcascade.engine.uncertainty.prefix``), so every
decision, loss and cost below is computed from cached full answers. Token-level deferral
in this spirit: Gupta et al., ICLR 2024 (token-level uncertainty for cascades) and
Narasimhan et al., ICLR 2025 (speculative cascades).

Losses (0/1, the kept answer is the small one, else the large one's; ``losses._losses_of``):
``accept-error`` = kept ∧ small wrong, ``quality-loss`` = kept ∧ small wrong ∧ large right
(the cascade wrong where the large tier is right), ``selective-error`` as a figure only.

Calibration: a configuration has 2m + 2 thresholds (commit and escalate per checkpoint,
end, skip); a grid over that space is far too large to test. Instead a *family* — an
ordered sequence of configurations g = 0, 1, …, G−1, ``path[0]`` = always escalate — is
fixed before the calibration split is seen, from a disjoint split. Two families:

* ``pareto_family`` (the default of ``calibration.checkpointing``): **Pareto Testing**
  (Laufer-Goldshtein, Fisch, Barzilay, Jaakkola, "Efficiently Controlling Multiple Risks
  with Pareto Testing", ICLR 2023). On the selection split only, a large candidate set —
  the union of the quantile paths of many shapes (commit shares including 0 = never
  commit, escalate shares including 0 = never escalate early, skip shares 0..1), a grid of
  end-only configurations over end × skip quantile levels, and optionally one-checkpoint
  refinements of the front — is scored by empirical risk and mean cost; the Pareto front
  (no other candidate has lower-or-equal risk and lower cost) ordered by selection-split
  risk ascending, always-escalate first, is the testing sequence. Thresholds are no longer
  tied to one aggressiveness level, so an end-only configuration with any skip level, or
  one that commits at a single checkpoint, can be on the sequence. Kept sets are *not*
  nested along it.
* ``checkpoint_family`` / ``select_family``: one quantile path (all thresholds tied to one
  aggressiveness level), its shape chosen on the selection split; kept sets are nested.

``fit_checkpoints`` runs fixed-sequence testing along either (Learn-then-Test,
Angelopoulos, Bates, Candès, Jordan, Lei 2021, its fixed-sequence procedure; Bauer 1991):
test H_g: R(g) > α with the exact binomial p-value P(Bin(n, α) <= k_g) (or
Hoeffding–Bentkus) at level δ for g = 0, 1, … and stop at the first H_g not rejected. The
order is fixed in advance, so this controls the family-wise error at δ whatever the risks along the path (no monotonicity needed): with
probability >= 1 − δ over the calibration draw, *every* rejected configuration has
R <= α. The deployed one is therefore any rejected configuration, chosen by any rule —
``select="last"`` (the least conservative, the default) or ``select="cheapest"`` (lowest
mean calibration cost among the rejected). What breaks the guarantee: counting a
configuration after the first non-rejected one (however small its own p-value), reordering
the path after seeing calibration data, or building the path on the calibration split.
Nothing rejected (fewer than ``bounds.min_items_to_certify`` items): always escalate.
The chosen configuration's losses are recomputed through ``route`` (the deployed rule)
and a mismatch with the tested counts raises ``fits.CertificateError``.

What serving must do to deploy a configuration as certified (not implemented here): stream
the small tier greedily under the calibrated decoding and ``max_tokens``; when the answer
reaches k_j tokens (also when the k_j-th is its last), score the prefix with the same
prefix rule and apply escalate-then-commit; on escalation abort the small request and
start the large one; a committed answer streams to its end; an answer that ends between
checkpoints goes to the end rule.

Shapes: n items, m checkpoints, G configurations on a path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .bounds import binomial_upper_bound, check_p_value_kind, min_items_to_certify, p_values
from .checks import DEFAULT_DELTA, FitError, check_level
from .fits import CertificateError
from .losses import _losses_of, check_target
from .statement import guarantee

SKIP, ESCALATE, COMMIT, END_KEEP, END_ESCALATE = range(5)
DECISION_KINDS = ("skip", "escalate", "commit", "end-keep", "end-escalate")
"""Decision codes 0..4 (``Routing.decision``) and their names (``Routing.kinds``)."""
FIT_TARGETS = ("accept-error", "quality-loss")
METHOD = "fixed-sequence-checkpoints"


# ---------------------------------------------------------------- data and configurations


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


# ---------------------------------------------------------------- routing (the deployed rule)


@dataclass(frozen=True)
class Routing:
    """What ``route`` decided for each of n items.

    Attributes
    ----------
    decision : int8 array, shape (n,) — a code into ``DECISION_KINDS``
    stage : int array, shape (n,) — where it was decided: 0 before generation (skip,
        "checkpoint 0"), j + 1 at ``checkpoints[j]``, m + 1 at the end of the answer
    tokens : int array, shape (n,) — small-tier completion tokens generated when the
        decision was taken (0 for a skip, k_j at a checkpoint, the length at the end)
    kept : bool array, shape (n,) — the small answer is the cascade's (commit, end-keep)
    cost : array, shape (n,) — cost paid: small (full or prefix) and/or large
    wasted : int array, shape (n,) — small-tier tokens generated for an escalated request
        (k_j for an early escalation, the length for an end-escalation, else 0)
    """

    decision: np.ndarray
    stage: np.ndarray
    tokens: np.ndarray
    kept: np.ndarray
    cost: np.ndarray
    wasted: np.ndarray

    @property
    def kinds(self) -> np.ndarray:
        """Decision names, shape (n,) str."""
        return np.asarray(DECISION_KINDS)[self.decision]

    @property
    def escalated(self) -> np.ndarray:
        return ~self.kept


def _padded_prefix_costs(data: CheckpointData) -> np.ndarray:
    """(n, m + 2): column s is the small cost paid when decided at stage s (0 for a skip)."""
    return np.concatenate([np.zeros((data.n, 1)), np.nan_to_num(data.prefix_costs), data.small_costs[:, None]],
                          axis=1)


def _outcome(data: CheckpointData, decision: np.ndarray, stage: np.ndarray):
    """(tokens, kept, cost, wasted) for decisions and stages of shape (..., n)."""
    rows = np.arange(data.n)
    at_tokens = np.concatenate([[0], data.checkpoints])
    tokens = np.where(stage > data.m, data.lengths, at_tokens[np.minimum(stage, data.m)])
    kept = (decision == COMMIT) | (decision == END_KEEP)
    small = np.where(kept, data.small_costs, _padded_prefix_costs(data)[rows, stage])
    cost = small + np.where(kept, 0.0, data.large_costs)
    wasted = np.where(kept, 0, tokens)
    return tokens, kept, cost, wasted


def route(data: CheckpointData, config: CheckpointConfig) -> Routing:
    """Route every item as the deployed mid-generation policy does.

    Stage by stage: the skip rule (``skip_score < skip``), then at each checkpoint j the
    answers still undecided that reach it (``lengths >= k_j``): escalate when
    ``score < escalate[j]``, else commit when ``score >= commit[j]``; the answers still
    undecided after the last checkpoint they reach are kept when ``end_score >= end``.

    Parameters
    ----------
    data : CheckpointData, n items, m checkpoints
    config : CheckpointConfig with the data's checkpoints

    Returns
    -------
    Routing
        Per item (shape (n,)): decision, stage, tokens, kept, cost, wasted.
    """
    _check_config(data, config)
    n, m = data.n, data.m
    decision = np.full(n, END_ESCALATE, dtype=np.int8)
    stage = np.full(n, m + 1, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    if config.skip is not None:
        skipped = data.skip_scores < config.skip
        decision[skipped], stage[skipped] = SKIP, 0
        undecided &= ~skipped
    for j in range(m):
        here = undecided & (data.lengths >= data.checkpoints[j])
        score = data.scores[:, j]
        escalate = here & (score < config.escalate[j])
        commit = here & ~escalate & (score >= config.commit[j])
        decision[escalate], decision[commit] = ESCALATE, COMMIT
        stage[escalate | commit] = j + 1
        undecided &= ~(escalate | commit)
    decision[undecided & (data.end_scores >= config.end)] = END_KEEP
    tokens, kept, cost, wasted = _outcome(data, decision, stage)
    return Routing(decision, stage, tokens, kept, cost, wasted)


def checkpoint_losses(data: CheckpointData, kept: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(losses, at_risk), both shaped like ``kept`` (..., n): the 0/1 losses of ``target``
    when the small answer is kept where ``kept`` and the large one answers elsewhere."""
    check_target(target)
    return _losses_of(data.correct, np.where(kept, 0, 1), target)


def item_losses(data: CheckpointData, config: CheckpointConfig, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(losses, at_risk), shape (n,) bool, of ``config`` routed by ``route``."""
    return checkpoint_losses(data, route(data, config).kept, target)


def verify_checkpoint_certificate(data: CheckpointData, config: CheckpointConfig, target: str, losses: int,
                                  at_risk: int) -> None:
    """Raise ``CertificateError`` unless ``config``, routed by ``route`` (the deployed rule),
    has exactly ``losses`` losses among ``at_risk`` items at risk on ``data``."""
    _verified_routing(data, config, target, losses, at_risk)


def _verified_routing(data: CheckpointData, config: CheckpointConfig, target: str, losses: int,
                      at_risk: int) -> Routing:
    routed = route(data, config)
    real, risky = checkpoint_losses(data, routed.kept, target)
    got = (int(real.sum()), int(risky.sum()))
    if got != (int(losses), int(at_risk)):
        raise CertificateError(f"checkpoint configuration {config.to_dict()} certified with {losses} losses of "
                               f"{at_risk} at risk, but the deployed rule gives {got[0]} of {got[1]}")
    return routed


# ---------------------------------------------------------------- the configuration family (path)


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


def _at(values: np.ndarray, q: float) -> float:
    """The threshold at quantile level q of ``values`` (training scores, non-NaN; may hold
    -inf): -inf at q <= 0, +inf at q >= 1, else the inverted-CDF quantile (an observed value)."""
    if q <= 0.0:
        return -math.inf
    if q >= 1.0 or values.size == 0:
        return math.inf
    return float(np.quantile(values, q, method="inverted_cdf"))


def _quantiles(values: np.ndarray, q) -> np.ndarray:
    """``_at`` for an array of levels q at once (the same thresholds)."""
    q = np.asarray(q, dtype=np.float64)
    out = np.full(q.shape, math.inf)
    out[q <= 0.0] = -math.inf
    inner = (q > 0.0) & (q < 1.0)
    if values.size and inner.any():
        out[inner] = np.quantile(values, q[inner], method="inverted_cdf")
    return out


def _columns(data: CheckpointData) -> list[np.ndarray]:
    """Per checkpoint, the scores of the answers that reach it."""
    return [data.scores[~np.isnan(data.scores[:, j]), j] for j in range(data.m)]


def checkpoint_family(train: CheckpointData, levels: int = 40, commit_share: float = 0.5,
                      escalate_share: float = 0.5, skip_share: float = 0.5,
                      skip: bool | None = None) -> CheckpointFamily:
    """The quantile path of configurations, built from a training split disjoint from calibration.

    ``path[0]`` is always escalate (every threshold +inf). For aggressiveness
    a = 1/L, 2/L, …, 1 (L = ``levels``), with Q_j the quantile function of the training
    scores at checkpoint j among training answers that reach it, Q_end of the end scores
    and Q_skip of the skip scores:

        commit[j]   = Q_j(1 − a · commit_share)        commit the top a·c share at j
        escalate[j] = Q_j((1 − a) · escalate_share)    escalate the bottom (1−a)·e share at j
        end         = Q_end(1 − a)                     keep the top a share at the end
        skip        = Q_skip((1 − a) · skip_share)     skip the bottom (1−a)·s share

    (level 0 → −inf, level 1 → +inf; a checkpoint no training answer reaches never commits
    and never escalates). Every threshold moves toward keeping as a grows, so an item kept
    at a is kept at every a' > a: the losses of ``accept-error`` and ``quality-loss`` grow
    along the path, from 0 (always escalate) to always keeping the small answer (a = 1:
    end = −inf). Fixed-sequence testing does not need this monotonicity; it makes the path
    an honest "conservative → aggressive" order.

    Parameters
    ----------
    train : CheckpointData — the training split (never the calibration split)
    levels : int L >= 1 — number of non-trivial configurations (G = L + 1)
    commit_share, escalate_share, skip_share : floats in [0, 1] — the path's shape
    skip : bool, optional — include the skip threshold (default: when ``train`` has skip scores)

    Returns
    -------
    CheckpointFamily
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    for name, share in (("commit_share", commit_share), ("escalate_share", escalate_share),
                        ("skip_share", skip_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    use_skip = train.has_skip if skip is None else bool(skip)
    if use_skip and not train.has_skip:
        raise ValueError("a skip threshold needs training skip scores")
    a = np.arange(1, levels + 1) / levels
    m = train.m
    commit = np.full((levels + 1, m), math.inf)
    escalate = np.full((levels + 1, m), math.inf)
    end = np.full(levels + 1, math.inf)
    skip_t = np.full(levels + 1, math.inf) if use_skip else None
    for j, column in enumerate(_columns(train)):
        if column.size == 0:
            commit[1:, j], escalate[1:, j] = math.inf, -math.inf
        else:
            commit[1:, j] = _quantiles(column, 1.0 - a * commit_share)
            escalate[1:, j] = _quantiles(column, (1.0 - a) * escalate_share)
    end[1:] = _quantiles(train.end_scores, 1.0 - a)
    if use_skip:
        skip_t[1:] = _quantiles(train.skip_scores, (1.0 - a) * skip_share)
    description = {"kind": "quantile-path", "levels": int(levels), "commit_share": float(commit_share),
                   "escalate_share": float(escalate_share), "skip_share": float(skip_share) if use_skip else None,
                   "train_n": int(train.n)}
    return CheckpointFamily(train.checkpoints, np.concatenate([[0.0], a]), commit, escalate, end, skip_t, description)


# ---------------------------------------------------------------- the path, vectorized


def _check_family(data: CheckpointData, family: CheckpointFamily) -> None:
    if not np.array_equal(family.checkpoints, data.checkpoints):
        raise ValueError(f"the family's checkpoints {family.checkpoints.tolist()} differ from the data's "
                         f"{data.checkpoints.tolist()}")
    if family.skip is not None and data.skip_scores is None:
        raise ValueError("the family has skip thresholds but the data has no skip scores")


def path_routing(data: CheckpointData, family: CheckpointFamily) -> tuple[np.ndarray, np.ndarray]:
    """Decisions and stages of every configuration on the path at once.

    The same rule as ``route``, broadcast over the G configurations; ``fit_checkpoints``
    tests these counts and re-derives the chosen one's through ``route``.

    Returns
    -------
    decision : int8 array, shape (G, n)
    stage : int array, shape (G, n)
    """
    _check_family(data, family)
    g, n, m = len(family), data.n, data.m
    decision = np.full((g, n), END_ESCALATE, dtype=np.int8)
    stage = np.full((g, n), m + 1, dtype=np.int64)
    undecided = np.ones((g, n), dtype=bool)
    if family.skip is not None:
        skipped = data.skip_scores[None, :] < family.skip[:, None]
        decision[skipped], stage[skipped] = SKIP, 0
        undecided &= ~skipped
    reached = data.reached
    for j in range(m):
        here = undecided & reached[None, :, j]
        score = data.scores[None, :, j]
        escalate = here & (score < family.escalate[:, j, None])
        commit = here & ~escalate & (score >= family.commit[:, j, None])
        decision[escalate], decision[commit] = ESCALATE, COMMIT
        stage[escalate | commit] = j + 1
        undecided &= ~(escalate | commit)
    decision[undecided & (data.end_scores[None, :] >= family.end[:, None])] = END_KEEP
    return decision, stage


def path_counts(data: CheckpointData, family: CheckpointFamily, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(losses, at_risk), int arrays of shape (G,): per configuration on the path, the items
    counting against ``target`` and the items at risk."""
    decision, _ = path_routing(data, family)
    losses, at_risk = checkpoint_losses(data, (decision == COMMIT) | (decision == END_KEEP), target)
    return losses.sum(axis=1), at_risk.sum(axis=1)


def path_costs(data: CheckpointData, family: CheckpointFamily) -> np.ndarray:
    """Mean cost per item of every configuration on the path, shape (G,)."""
    decision, stage = path_routing(data, family)
    return _outcome(data, decision, stage)[2].mean(axis=1)


# ---------------------------------------------------------------- the fits


@dataclass
class CheckpointFit:
    """A fitted mid-generation policy and what the calibration split says about it.

    ``index`` / ``level`` locate the chosen configuration on the path (None when nothing
    was certified and the policy always escalates); ``rejected`` is the number of path
    configurations certified (the rejected prefix). ``risk_bound`` is the Clopper–Pearson
    1 − δ upper bound on the chosen configuration's risk (None for the naive fit).
    ``certificate`` holds the tested counts (losses, at_risk, tested). ``cost_ratio`` is
    the mean calibration cost relative to always calling the large tier.
    """

    target: str
    method: str
    alpha: float
    delta: float | None
    n: int
    feasible: bool
    config: CheckpointConfig
    index: int | None
    level: float | None
    rejected: int
    path_length: int
    selection: str
    empirical_risk: float
    risk_bound: float | None
    cost_ratio: float
    p_value: str | None
    certificate: dict = field(default_factory=dict)
    guarantee: dict = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "config"}
        return {**out, "config": self.config.to_dict()}


SELECTIONS = ("last", "cheapest")


def _rejected_prefix(losses: np.ndarray, at_risk: np.ndarray, alpha: float, delta: float | None,
                     p_value_kind: str, correction: bool) -> int:
    """Fixed-sequence testing along the path: the number of leading configurations whose
    H_g: R(g) > α is rejected (p <= δ; ``correction=False``: k <= α m) before the first failure."""
    if not correction:
        passes = losses <= alpha * at_risk
    elif p_value_kind == "binomial":
        passes = p_values("binomial", losses, at_risk, alpha) <= delta
    else:  # one p-value at a time (Hoeffding–Bentkus is not vectorized), up to the first failure
        for g, (k, m) in enumerate(zip(losses, at_risk)):
            if p_values(p_value_kind, np.array([k]), np.array([m]), alpha)[0] > delta:
                return g
        return len(losses)
    return int(np.argmin(passes)) if not passes.all() else len(passes)


def _fit(data: CheckpointData, family: CheckpointFamily, target: str, alpha: float, delta: float | None,
         p_value_kind: str, select: str, correction: bool, largest: str | None) -> CheckpointFit:
    check_target(target)
    if target not in FIT_TARGETS:
        raise FitError(f"the checkpoint path starts at always-escalate, which keeps no answer, so the conditional "
                       f"{target} cannot be tested along it", f"use one of {', '.join(FIT_TARGETS)}")
    check_level("alpha", alpha)
    if correction:
        check_level("delta", delta)
        check_p_value_kind(p_value_kind)
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    if data.n == 0:
        raise FitError("no calibration items")
    _check_family(data, family)
    losses, at_risk = path_counts(data, family, target)
    rejected = _rejected_prefix(losses, at_risk, alpha, delta, p_value_kind, correction)
    reason = None
    if rejected == 0:
        index = None
        config = CheckpointConfig.always_escalate(family.checkpoints.tolist(), skip=data.has_skip)
        routed = route(data, config)
        if routed.kept.any():
            raise CertificateError("an infeasible checkpoint fit must always escalate")
        real, risky = checkpoint_losses(data, routed.kept, target)
        k, m_risk = int(real.sum()), int(risky.sum())
        need = min_items_to_certify(alpha, delta, p_value_kind) if correction else 1
        reason = (f"{data.n} items can never certify α = {alpha:g} at δ = {delta:g} (it needs at least {need})"
                  if correction and data.n < need else "the path's first configuration failed its test")
    else:
        if select == "last":
            index = rejected - 1
        else:
            index = int(np.argmin(path_costs(data, family)[:rejected]))
        config = commit_when_decided(family[index])  # the same routing, released sooner
        k, m_risk = int(losses[index]), int(at_risk[index])
        routed = _verified_routing(data, config, target, k, m_risk)
    if correction:
        statement = guarantee(target, alpha, delta, METHOD, largest)
    else:
        statement = {"kind": "none", "method": "empirical-risk",
                     "statement": "no guarantee: empirical calibration risk <= α, no finite-sample correction"}
    return CheckpointFit(
        target=target, method=METHOD if correction else "naive-empirical", alpha=alpha,
        delta=delta if correction else None, n=data.n, feasible=index is not None, config=config, index=index,
        level=None if index is None else float(family.levels[index]), rejected=rejected, path_length=len(family),
        selection=select, empirical_risk=k / m_risk if m_risk else 0.0,
        risk_bound=binomial_upper_bound(k, m_risk, delta) if correction else None,
        cost_ratio=float(routed.cost.mean() / data.large_costs.mean()),
        p_value=p_value_kind if correction else None,
        certificate={"losses": k, "at_risk": m_risk, "tested": data.n}, guarantee=statement, reason=reason)


def fit_checkpoints(data: CheckpointData, family: CheckpointFamily, target: str, alpha: float,
                    delta: float = DEFAULT_DELTA, p_value_kind: str = "binomial", select: str = "last",
                    largest: str | None = None) -> CheckpointFit:
    """Fixed-sequence testing along ``family``: the certified mid-generation policy.

    Tests H_g: R(g) > α for g = 0, 1, … in path order with the p-value ``p_value_kind``
    on the n calibration items, rejecting while p <= δ and stopping at the first failure
    (see the module docstring). With probability >= 1 − δ over the calibration draw,
    every rejected configuration — hence the returned one — has risk <= α.

    Parameters
    ----------
    data : CheckpointData — the calibration split (disjoint from the family's training split)
    family : CheckpointFamily — the path, fixed before ``data`` was seen
    target : ``accept-error`` or ``quality-loss``
    alpha, delta : floats in (0, 1)
    p_value_kind : ``binomial`` (exact for 0/1 losses) or ``hoeffding-bentkus``
    select : ``last`` (least conservative rejected) or ``cheapest`` (lowest mean
        calibration cost among the rejected); both keep the guarantee
    largest : the large tier's name, for the guarantee's sentence

    Returns
    -------
    CheckpointFit
        Always escalate (``feasible=False``, ``index=None``) when nothing is rejected.

    Raises
    ------
    FitError
        For an unknown or untestable target, or levels outside (0, 1).
    CertificateError
        If the chosen configuration routed by ``route`` does not lose what was tested.
    """
    return _fit(data, family, target, alpha, delta, p_value_kind, select, True, largest)


def fit_checkpoints_naive(data: CheckpointData, family: CheckpointFamily, target: str, alpha: float,
                          select: str = "last") -> CheckpointFit:
    """The same walk along the path with the plain empirical rule k_g <= α n (no
    finite-sample correction, no δ). No guarantee: it exists to show that the validity
    test catches its absence (its share of calibration draws above α is far above δ)."""
    return _fit(data, family, target, alpha, None, "binomial", select, False, None)


def select_family(train: CheckpointData, target: str, alpha: float, delta: float = DEFAULT_DELTA, *,
                  levels: int = 40, commit_shares=(0.25, 0.5, 0.75), escalate_shares=(0.0, 0.25, 0.5),
                  skip_shares=(0.0, 0.25, 0.5), p_value_kind: str = "binomial") -> CheckpointFamily:
    """Choose the path's shape on the training split: the ``checkpoint_family`` whose
    fixed-sequence fit *on the training split* is cheapest (ties: the first shape).

    Everything here sees the training split only, so the returned family is fixed before
    calibration and ``fit_checkpoints`` on a disjoint calibration split keeps its guarantee.
    ``description["train_cost_ratio"]`` records the winner's training cost ratio.
    """
    check_target(target)
    if target not in FIT_TARGETS:
        raise FitError(f"a checkpoint path cannot be tested for {target}", f"use one of {', '.join(FIT_TARGETS)}")
    check_level("alpha", alpha)
    check_level("delta", delta)
    check_p_value_kind(p_value_kind)
    shapes = [(c, e, s) for c in commit_shares for e in escalate_shares
              for s in (skip_shares if train.has_skip else (0.0,))]
    if not shapes:
        raise ValueError("select_family needs at least one commit, escalate (and skip) share")
    best, best_cost = None, math.inf
    for c, e, s in shapes:
        family = checkpoint_family(train, levels, c, e, s)
        losses, at_risk = path_counts(train, family, target)
        rejected = _rejected_prefix(losses, at_risk, alpha, delta, p_value_kind, True)
        cost = float(path_costs(train, family)[rejected - 1]) if rejected else math.inf
        if best is None or cost < best_cost:
            best, best_cost = family, cost
    best.description["train_cost_ratio"] = best_cost / float(train.large_costs.mean())
    best.description["selected_by"] = {"target": target, "alpha": alpha, "delta": delta, "shapes": len(shapes)}
    return best


PARETO_COMMIT_SHARES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
PARETO_ESCALATE_SHARES = (0.0, 0.1, 0.25, 0.5, 0.75)
PARETO_SKIP_SHARES = tuple(float(v) for v in np.round(np.linspace(0.0, 1.0, 11), 2))
"""``pareto_family``'s default path shapes: commit share 0 never commits, escalate share 0
never escalates early, skip shares 0..1 (with the end × skip grid, every end-only
configuration with every skip level is a candidate)."""


def _stack_rows(blocks: list[tuple], m: int, use_skip: bool) -> np.ndarray:
    """Candidate configurations as unique rows [commit (m), escalate (m), end, skip?]."""
    rows = []
    for commit, escalate, end, skip in blocks:
        parts = [np.atleast_2d(commit), np.atleast_2d(escalate), np.reshape(end, (-1, 1))]
        if use_skip:
            parts.append(np.reshape(skip, (-1, 1)))
        rows.append(np.concatenate(parts, axis=1))
    return np.unique(np.concatenate(rows, axis=0), axis=0)


def _family_of_rows(data: CheckpointData, rows: np.ndarray, levels, use_skip: bool,
                    description: dict | None = None) -> CheckpointFamily:
    m = data.m
    return CheckpointFamily(data.checkpoints, levels, rows[:, :m], rows[:, m:2 * m], rows[:, 2 * m],
                            rows[:, 2 * m + 1] if use_skip else None, description or {})


def _candidate_scores(data: CheckpointData, rows: np.ndarray, target: str, use_skip: bool,
                      chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(empirical risk, mean cost) on ``data`` of every candidate row, shape (C,) each."""
    risk, cost = np.empty(len(rows)), np.empty(len(rows))
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        family = _family_of_rows(data, part, np.zeros(len(part)), use_skip)
        decision, stage = path_routing(data, family)
        losses, at_risk = checkpoint_losses(data, (decision == COMMIT) | (decision == END_KEEP), target)
        k, n = losses.sum(axis=1), at_risk.sum(axis=1)
        risk[start:start + chunk] = np.where(n > 0, k / np.maximum(n, 1), 0.0)
        cost[start:start + chunk] = _outcome(data, decision, stage)[2].mean(axis=1)
    return risk, cost


def pareto_front(risk, cost) -> np.ndarray:
    """Indices of the Pareto-optimal candidates (lower risk, lower cost), by risk ascending.

    A candidate is kept when it is strictly cheaper than every candidate of lower risk and
    the cheapest of its own risk (ties in cost and risk: the first in index order), so
    along the result risk is strictly increasing and cost strictly decreasing.
    """
    risk, cost = np.asarray(risk, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    order = np.lexsort((np.arange(risk.size), cost, risk))
    c = cost[order]
    before = np.minimum.accumulate(np.concatenate([[math.inf], c[:-1]]))
    return order[c < before]


def pareto_family(select: CheckpointData, target: str, *, levels: int = 40,
                  commit_shares=PARETO_COMMIT_SHARES, escalate_shares=PARETO_ESCALATE_SHARES,
                  skip_shares=PARETO_SKIP_SHARES, end_skip_grid: bool = True, checkpoint_grid=(),
                  max_front: int | None = None) -> CheckpointFamily:
    """Pareto Testing's sequence: the selection split's risk–cost Pareto front, risk ascending.

    Pareto Testing (Laufer-Goldshtein, Fisch, Barzilay, Jaakkola, ICLR 2023) splits the
    data in two: on the first part, find the Pareto-optimal configurations of a large
    candidate set and order them; on the second, run Learn-then-Test's fixed-sequence
    procedure (Angelopoulos, Bates, Candès, Jordan, Lei 2021) along that order. Here:

    1. **Candidates (selection split).** The union of the quantile paths
       ``checkpoint_family(select, levels, c, e, s)`` for every commit share c, escalate
       share e and skip share s (c = 0: never commit; e = 0: never escalate early); with
       ``end_skip_grid`` the end-only configurations at every end × skip quantile level
       j/levels (so end-only policies with every skip level are candidates); with
       ``checkpoint_grid`` (quantile levels in [0, 1]), a second round that varies one
       threshold of one checkpoint of every front configuration — commit[j] or
       escalate[j] set to Q_j(q) for each q (q = 0 → −inf, q = 1 → +inf). Duplicates
       are dropped.
    2. **Front (selection split).** Each candidate's empirical risk of ``target`` and
       mean cost on ``select``; the Pareto front (``pareto_front``), ordered by risk
       ascending (cost therefore descending), always-escalate prepended (level 0) and
       removed from the front if it is on it. ``max_front`` keeps at most that many front
       configurations, evenly spaced in rank (the cheapest kept): a shorter sequence has
       fewer chances to stop on one unlucky configuration.
    3. **Testing (calibration split, ``fit_checkpoints``).** Fixed-sequence testing along
       the returned order, ``select="last"`` or ``"cheapest"`` among the rejected.

    Validity: everything here reads ``select`` only — thresholds, risks, costs, the front
    and its order — so the sequence is fixed before the calibration split is seen, and
    fixed-sequence testing on a disjoint calibration split controls the family-wise error
    at δ for any fixed order: with probability >= 1 − δ every rejected configuration, so
    the deployed one, has risk <= α. Selection-split risks along the front are optimistic
    (the front is chosen for low risk on those very items); that costs power (the test
    stops earlier than the selection risks suggest), never validity. Kept sets are not
    nested along the front and its risks on new data need not increase.

    Parameters
    ----------
    select : CheckpointData — the selection split (never the calibration split)
    target : ``accept-error`` or ``quality-loss`` — the risk of the front
    levels : int >= 1 — quantile levels per path and per axis of the end × skip grid
    commit_shares, escalate_shares, skip_shares : floats in [0, 1] — the paths' shapes
        (skip shares are ignored without skip scores)
    end_skip_grid : add the end-only end × skip quantile grid
    checkpoint_grid : quantile levels of the one-checkpoint refinement round (empty: none)
    max_front : optional cap on the front's length

    Returns
    -------
    CheckpointFamily
        ``levels`` = selection-split risk (non-decreasing, 0 first); ``description``:
        ``kind="pareto-front"``, the candidate and front sizes, each front
        configuration's selection risk and cost ratio, the settings.
    """
    check_target(target)
    if target not in FIT_TARGETS:
        raise FitError(f"a checkpoint path cannot be tested for {target}", f"use one of {', '.join(FIT_TARGETS)}")
    if select.n == 0:
        raise FitError("no selection items to build the Pareto front on")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if max_front is not None and max_front < 1:
        raise ValueError(f"max_front must be >= 1, got {max_front}")
    grid = np.asarray(checkpoint_grid, dtype=np.float64).reshape(-1)
    if ((grid < 0) | (grid > 1)).any():
        raise ValueError(f"checkpoint_grid levels must be in [0, 1], got {list(checkpoint_grid)}")
    use_skip = select.has_skip
    m = select.m
    shapes = [(c, e, s) for c in commit_shares for e in escalate_shares
              for s in (skip_shares if use_skip else (0.0,))]
    if not shapes:
        raise ValueError("pareto_family needs at least one commit, escalate (and skip) share")
    blocks = []
    for c, e, s in shapes:
        f = checkpoint_family(select, levels, c, e, s, skip=use_skip)
        blocks.append((f.commit, f.escalate, f.end, f.skip))
    if end_skip_grid:
        q = np.arange(levels + 1) / levels
        ends = _quantiles(select.end_scores, q)
        if use_skip:
            e_grid, s_grid = np.meshgrid(ends, _quantiles(select.skip_scores, q), indexing="ij")
            e_grid, s_grid = e_grid.ravel(), s_grid.ravel()
        else:
            e_grid, s_grid = ends, None
        size = e_grid.size
        blocks.append((np.full((size, m), math.inf), np.full((size, m), -math.inf), e_grid, s_grid))
    rows = _stack_rows(blocks, m, use_skip)
    risk, cost = _candidate_scores(select, rows, target, use_skip)
    front = rows[pareto_front(risk, cost)]
    refined = 0
    if grid.size:
        values = [_quantiles(column, grid) for column in _columns(select)]
        variants = []
        for j in range(m):
            for v in values[j]:
                for col in (j, m + j):  # commit[j], escalate[j]
                    changed = front.copy()
                    changed[:, col] = v
                    variants.append(changed)
        extra = np.unique(np.concatenate(variants, axis=0), axis=0)
        refined = len(extra)
        extra_risk, extra_cost = _candidate_scores(select, extra, target, use_skip)
        rows = np.concatenate([rows, extra])
        risk, cost = np.concatenate([risk, extra_risk]), np.concatenate([cost, extra_cost])
        # duplicates of first-round rows score the same and the first index wins ties
    keep = pareto_front(risk, cost)
    always = CheckpointConfig.always_escalate(select.checkpoints.tolist(), skip=use_skip)
    first = np.concatenate([always.commit, always.escalate, [always.end]] + ([[always.skip]] if use_skip else []))
    keep = keep[~(rows[keep] == first[None, :]).all(axis=1)]
    if max_front is not None and keep.size > max_front:
        keep = keep[np.unique(np.round(np.linspace(0, keep.size - 1, max_front)).astype(int))]
    sequence = np.concatenate([first[None, :], rows[keep]], axis=0)
    large = float(select.large_costs.mean())
    always_cost = float(route(select, always).cost.mean())
    sel_risk = np.concatenate([[0.0], risk[keep]])
    sel_cost = np.concatenate([[always_cost], cost[keep]]) / large
    description = {
        "kind": "pareto-front", "level": "selection-split empirical risk",
        "levels": int(levels), "commit_shares": [float(v) for v in commit_shares],
        "escalate_shares": [float(v) for v in escalate_shares],
        "skip_shares": [float(v) for v in skip_shares] if use_skip else None,
        "end_skip_grid": bool(end_skip_grid), "checkpoint_grid": [float(v) for v in grid],
        "max_front": max_front, "candidates": int(len(rows)), "refined_candidates": int(refined),
        "front": int(keep.size), "select_n": int(select.n),
        "select_risk": [round(float(v), 6) for v in sel_risk],
        "select_cost_ratio": [round(float(v), 6) for v in sel_cost],
        "selected_by": {"target": target, "split": "select", "n": int(select.n)},
    }
    return _family_of_rows(select, sequence, sel_risk, use_skip, description)


# ---------------------------------------------------------------- figures


def route_groups(data: CheckpointData, groups, configs, fallback: str | None = None) -> Routing:
    """Route every item by its group's configuration, as a per-group policy is served.

    Parameters
    ----------
    data : CheckpointData, n items
    groups : array, shape (n,) — each item's group label (used as strings)
    configs : mapping group -> CheckpointConfig (all with the data's checkpoints)
    fallback : the group whose configuration serves labels without one (None: every
        label must have a configuration)

    Returns
    -------
    Routing, per item (shape (n,)), each item routed by ``route`` under its group's
    configuration.
    """
    labels = np.asarray(groups).astype(str)
    if labels.shape != (data.n,):
        raise ValueError(f"groups must have shape ({data.n},), got {labels.shape}")
    n = data.n
    decision, stage = np.empty(n, dtype=np.int8), np.empty(n, dtype=np.int64)
    tokens, wasted = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    kept, cost = np.empty(n, dtype=bool), np.empty(n, dtype=np.float64)
    for label in np.unique(labels):
        if label in configs:
            config = configs[label]
        elif fallback is not None:
            config = configs[fallback]
        else:
            raise ValueError(f"no configuration for group {label!r} and no fallback group")
        idx = np.flatnonzero(labels == label)
        r = route(data.subset(idx), config)
        decision[idx], stage[idx], tokens[idx] = r.decision, r.stage, r.tokens
        kept[idx], cost[idx], wasted[idx] = r.kept, r.cost, r.wasted
    return Routing(decision, stage, tokens, kept, cost, wasted)


def _routed(data: CheckpointData, config, groups, fallback) -> tuple[Routing, Routing]:
    """(routing of ``config``, routing of its end-only counterpart): one configuration, or a
    mapping group -> configuration with ``groups`` (n,) labels."""
    if isinstance(config, CheckpointConfig):
        return route(data, config), route(data, CheckpointConfig.end_only(config.checkpoints, config.end,
                                                                          config.skip))
    if groups is None:
        raise ValueError("per-group configurations need the items' group labels")
    end_only = {g: CheckpointConfig.end_only(c.checkpoints, c.end, c.skip) for g, c in config.items()}
    return route_groups(data, groups, config, fallback), route_groups(data, groups, end_only, fallback)


def _escalation_figures(data: CheckpointData, r: Routing, early_tokens: int) -> dict:
    small, large = data.correct[:, 0], data.correct[:, 1]
    escalated = ~r.kept
    n_esc = int(escalated.sum())
    started = escalated & (r.decision != SKIP)
    n_started = int(started.sum())
    return {
        "quality_loss": float((r.kept & ~small & large).mean()),
        "accept_error": float((r.kept & ~small).mean()),
        "escalated": float(escalated.mean()),
        "escalated_early_share": float((escalated & (r.tokens <= early_tokens)).sum() / n_esc) if n_esc else 0.0,
        "started_escalated_early_share": float((started & (r.tokens <= early_tokens)).sum() / n_started)
        if n_started else 0.0,
        "wasted_tokens_total": int(r.wasted.sum()),
        "wasted_tokens_mean": float(r.wasted.sum() / n_esc) if n_esc else 0.0,
        "wasted_tokens_per_item": float(r.wasted.mean()),
        "cost_ratio": float(r.cost.mean() / data.large_costs.mean()),
    }


def checkpoint_figures(data: CheckpointData, config, early_tokens: int = 32, groups=None,
                       fallback: str | None = None) -> dict:
    """Realized figures of ``config`` on labelled items (JSON-ready).

    Parameters
    ----------
    data : CheckpointData, n items
    config : a CheckpointConfig for every item, or a mapping group -> CheckpointConfig
        (a per-group policy) with ``groups`` (n,) labels and optionally ``fallback``
        (``route_groups``)
    early_tokens : the token limit of ``escalated_early_share``

    Returns
    -------
    dict with
        ``n``; ``quality_loss``, ``accept_error`` (rates over all items), ``selective_error``
        (P̂(small wrong | kept), 0 when nothing is kept); ``accuracy`` (the cascade's) and
        ``small_accuracy``, ``large_accuracy``; ``kept``, ``committed``, ``escalated``,
        ``skipped`` shares; ``escalated_early_share``: of the escalated items, the share
        decided with at most ``early_tokens`` small tokens generated (skips count, at 0),
        and ``started_escalated_early_share`` the same among escalated items not skipped;
        ``wasted_tokens_total``, ``wasted_tokens_mean`` (per escalated item) and
        ``wasted_tokens_per_item``: small-tier tokens generated for escalated requests;
        ``cost_ratio`` (mean cost / mean cost of always calling the large tier);
        ``cost_ratio_end_only``: the same end and skip thresholds without mid-generation
        decisions, for contrast, and ``end_only``: that policy's ``quality_loss``,
        ``accept_error``, ``escalated``, ``escalated_early_share``, wasted tokens and
        ``cost_ratio``; ``decisions``: counts per stage — ``skip``, one entry per
        checkpoint (``"8"``: commit / escalate / continue), ``end`` (keep / escalate).
    """
    r, end_only = _routed(data, config, groups, fallback)
    small, large = data.correct[:, 0], data.correct[:, 1]
    right = np.where(r.kept, small, large)
    decisions: dict[str, dict] = {"skip": {"escalate": int((r.decision == SKIP).sum())}}
    for j, k in enumerate(data.checkpoints):
        here = r.stage == j + 1
        reached = (r.stage >= j + 1) & (r.decision != SKIP) & (data.lengths >= k)
        decisions[str(int(k))] = {"commit": int((here & (r.decision == COMMIT)).sum()),
                                  "escalate": int((here & (r.decision == ESCALATE)).sum()),
                                  "continue": int((reached & ~here).sum())}
    decisions["end"] = {"keep": int((r.decision == END_KEEP).sum()),
                        "escalate": int((r.decision == END_ESCALATE).sum())}
    kept_n = int(r.kept.sum())
    mine = _escalation_figures(data, r, early_tokens)
    contrast = _escalation_figures(data, end_only, early_tokens)
    return {
        "n": data.n,
        "quality_loss": mine["quality_loss"],
        "accept_error": mine["accept_error"],
        "selective_error": float((r.kept & ~small).sum() / kept_n) if kept_n else 0.0,
        "accuracy": float(right.mean()),
        "small_accuracy": float(small.mean()),
        "large_accuracy": float(large.mean()),
        "kept": float(r.kept.mean()),
        "committed": float((r.decision == COMMIT).mean()),
        "escalated": mine["escalated"],
        "skipped": float((r.decision == SKIP).mean()),
        "escalated_early_share": mine["escalated_early_share"],
        "started_escalated_early_share": mine["started_escalated_early_share"],
        "early_tokens": int(early_tokens),
        "wasted_tokens_total": mine["wasted_tokens_total"],
        "wasted_tokens_mean": mine["wasted_tokens_mean"],
        "wasted_tokens_per_item": mine["wasted_tokens_per_item"],
        "cost_ratio": mine["cost_ratio"],
        "cost_ratio_end_only": contrast["cost_ratio"],
        "end_only": contrast,
        "decisions": decisions,
    }


__all__ = [
    "DECISION_KINDS", "FIT_TARGETS", "SELECTIONS", "CheckpointConfig", "CheckpointData", "CheckpointFamily",
    "CheckpointFit", "Routing", "checkpoint_family", "checkpoint_figures", "checkpoint_losses", "fit_checkpoints",
    "fit_checkpoints_naive", "item_losses", "pareto_family", "pareto_front", "path_costs", "path_counts",
    "path_routing", "route", "route_groups", "select_family", "token_costs", "verify_checkpoint_certificate",
]
