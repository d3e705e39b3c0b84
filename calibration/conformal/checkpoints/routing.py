"""Routing as the deployed mid-generation policy routes, and its 0/1 losses (numpy only).

* ``route`` — one configuration, item by item: skip, then escalate-before-commit at every
  checkpoint an answer reaches, then the end rule (the package docstring states the rule);
  ``Routing`` holds per item (n,) the decision, stage, tokens, kept flag, cost and wasted
  small-tier tokens;
* ``route_groups`` — each item by its group's configuration, as a per-group policy is served;
* ``checkpoint_losses`` / ``item_losses`` — the 0/1 losses of ``accept-error`` or
  ``quality-loss`` (``conformal.losses._losses_of``) of kept sets shaped (..., n);
* ``verify_checkpoint_certificate`` — re-derive a configuration's tested counts through
  ``route`` (``fits.CertificateError`` on a mismatch);
* ``path_routing`` / ``path_counts`` / ``path_costs`` — the same rule broadcast over the
  G configurations of a ``CheckpointFamily``: decisions (G, n), counts (G,), mean costs (G,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fits import CertificateError
from ..losses import _losses_of, check_target
from .data import CheckpointConfig, CheckpointData, CheckpointFamily, _check_config, _check_family

SKIP, ESCALATE, COMMIT, END_KEEP, END_ESCALATE = range(5)
DECISION_KINDS = ("skip", "escalate", "commit", "end-keep", "end-escalate")
"""Decision codes 0..4 (``Routing.decision``) and their names (``Routing.kinds``)."""


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
