"""Checkpoint families — the testing sequences, built on a split disjoint from calibration.

* ``checkpoint_family`` — one quantile path: every threshold tied to one aggressiveness
  level a = 0, 1/L, …, 1, kept sets nested along it;
* ``select_family`` — that path's shape (commit, escalate, skip shares) chosen by the
  fixed-sequence fit on the training split;
* ``pareto_family`` — Pareto Testing (Laufer-Goldshtein, Fisch, Barzilay, Jaakkola, ICLR
  2023): the selection split's risk–cost Pareto front (``pareto_front``) of many quantile
  paths and the end-only end × skip grid, ordered by selection risk ascending.

Everything here reads the training / selection split only, so the sequence is fixed before
``fit.fit_checkpoints`` sees the calibration split. Shapes: a family of G configurations
has commit / escalate (G, m), end and skip (G,); candidate rows are
[commit (m), escalate (m), end, skip?].
"""

from __future__ import annotations

import math

import numpy as np

from ..bounds import check_p_value_kind
from ..checks import DEFAULT_DELTA, FitError, check_level
from ..losses import check_target
from .data import CheckpointConfig, CheckpointData, CheckpointFamily
from .fit import FIT_TARGETS, _rejected_prefix
from .routing import COMMIT, END_KEEP, _outcome, checkpoint_losses, path_costs, path_counts, path_routing, route


def _check_path_target(target: str) -> None:
    """A family starts at always-escalate, which keeps no answer: only the joint targets
    (``FIT_TARGETS``) can be tested along it."""
    check_target(target)
    if target not in FIT_TARGETS:
        raise FitError(f"a checkpoint path cannot be tested for {target}", f"use one of {', '.join(FIT_TARGETS)}")


def _shapes(commit_shares, escalate_shares, skip_shares, use_skip: bool, caller: str) -> list[tuple]:
    """Every (commit, escalate, skip) share triple, skip share 0 alone without skip scores."""
    shapes = [(c, e, s) for c in commit_shares for e in escalate_shares
              for s in (skip_shares if use_skip else (0.0,))]
    if not shapes:
        raise ValueError(f"{caller} needs at least one commit, escalate (and skip) share")
    return shapes


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


def select_family(train: CheckpointData, target: str, alpha: float, delta: float = DEFAULT_DELTA, *,
                  levels: int = 40, commit_shares=(0.25, 0.5, 0.75), escalate_shares=(0.0, 0.25, 0.5),
                  skip_shares=(0.0, 0.25, 0.5), p_value_kind: str = "binomial") -> CheckpointFamily:
    """Choose the path's shape on the training split: the ``checkpoint_family`` whose
    fixed-sequence fit *on the training split* is cheapest (ties: the first shape).

    Everything here sees the training split only, so the returned family is fixed before
    calibration and ``fit_checkpoints`` on a disjoint calibration split keeps its guarantee.
    ``description["train_cost_ratio"]`` records the winner's training cost ratio.
    """
    _check_path_target(target)
    check_level("alpha", alpha)
    check_level("delta", delta)
    check_p_value_kind(p_value_kind)
    shapes = _shapes(commit_shares, escalate_shares, skip_shares, train.has_skip, "select_family")
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
    _check_path_target(target)
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
    shapes = _shapes(commit_shares, escalate_shares, skip_shares, use_skip, "pareto_family")
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
