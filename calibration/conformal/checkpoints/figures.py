"""Realized figures of a checkpointed policy on labelled items (numpy only; JSON-ready).

``checkpoint_figures`` routes the items by one configuration or by a per-group mapping
(``routing.route`` / ``routing.route_groups``) and reports losses, accuracy, the shares
kept / committed / escalated / skipped, early escalations, wasted small-tier tokens, the
cost ratio, the decisions per checkpoint, and the same figures of the end-only policy
with the same end and skip thresholds for contrast. Shapes: n items, m checkpoints.
"""

from __future__ import annotations

import numpy as np

from .data import CheckpointConfig, CheckpointData
from .routing import COMMIT, END_ESCALATE, END_KEEP, ESCALATE, SKIP, Routing, route, route_groups


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
