"""Realized figures of a policy on labelled items: risk, accuracy, escalation and cost —
for the whole set and per group (a per-group artifact's groups, else each item's source).

A policy is applied exactly as the server applies it: one configuration (thresholds
[, skip threshold]) per item, the item's group's when the policy has groups
(``Policy.for_group``; unknown groups get the fallback group's).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from vcascade.engine.policy import Policy

from .conformal import CalibrationData, GroupFit, item_losses, paid, routing


def policy_config(policy: Policy, group: str | None = None) -> list[float]:
    """The configuration (thresholds [, skip threshold]) ``policy`` applies to ``group``."""
    chosen, _, _ = policy.for_group(group)
    return list(chosen.thresholds) + ([] if chosen.skip_threshold is None else [chosen.skip_threshold])


def route_items(data: CalibrationData, configs: dict[str, list[float]], labels: np.ndarray):
    """``(tier (n,), skipped (n,), paid (n, K))`` with each item routed by its label's configuration."""
    tier = np.empty(data.n, dtype=np.int64)
    skipped = np.empty(data.n, dtype=bool)
    pays = np.empty(data.costs.shape, dtype=bool)
    for label, config in configs.items():
        idx = np.flatnonzero(labels == label)
        part = data.subset(idx)
        tier[idx], skipped[idx] = routing(part, config)
        pays[idx] = paid(part, config)
    return tier, skipped, pays


def _figures(data: CalibrationData, configs: dict[str, list[float]], labels: np.ndarray, target: str) -> dict:
    tier, skipped, pays = route_items(data, configs, labels)
    losses = {t: np.zeros(data.n, dtype=bool) for t in (target, "quality-loss")}
    at_risk = np.zeros(data.n, dtype=bool)
    for label, config in configs.items():
        idx = np.flatnonzero(labels == label)
        part = data.subset(idx)
        losses[target][idx], at_risk[idx] = item_losses(part, config, target)
        losses["quality-loss"][idx], _ = item_losses(part, config, "quality-loss")
    always_last = float(data.costs[:, -1].mean())
    return {
        "n": data.n,
        "risk": float(losses[target].sum() / at_risk.sum()) if at_risk.any() else 0.0,
        "quality_loss": float(losses["quality-loss"].mean()),
        "accuracy": float(data.correct[np.arange(data.n), tier].mean()),
        "escalated": float((tier > 0).mean()),
        "skipped": float(skipped.mean()),
        "cost_ratio": float((data.costs * pays).sum(axis=1).mean()) / always_last if always_last else math.nan,
        "tier": tier,
    }


def evaluate_policy(data: CalibrationData, policy: Policy, target: str, tier_names: list[str],
                    groups: Sequence[str] | None = None) -> dict:
    """Figures of the cascade next to each tier alone.

    ``groups`` (n,) are the items' groups for a per-group policy (``None``: one policy).
    ``risk`` is the realized value of the artifact's target; ``quality_loss`` the share of
    items where the cascade is wrong and the largest tier right (the joint probability the
    quality-loss target bounds); ``conditional_quality_loss`` that share among the items
    the largest tier gets right — a figure, not a guarantee; costs are relative to always
    calling the largest tier. ``configs`` maps each group to the configuration it got.
    """
    labels = np.asarray(groups if groups is not None else [""] * data.n).astype(str)
    configs = {label: policy_config(policy, label if groups is not None else None) for label in np.unique(labels)}
    figures = _figures(data, configs, labels, target)
    tier = figures.pop("tier")
    always_last = float(data.costs[:, -1].mean())
    right = data.correct[:, -1]
    figures.update(
        target=target,
        conditional_quality_loss=float(figures["quality_loss"] * data.n / right.sum()) if right.any() else math.nan,
        answered_by={name: float((tier == k).mean()) for k, name in enumerate(tier_names)},
        tiers_alone={name: {"accuracy": float(data.correct[:, k].mean()),
                            "cost_ratio": float(data.costs[:, k].mean()) / always_last}
                     for k, name in enumerate(tier_names)},
        configs=(configs if groups is not None else configs[""]),
    )
    return figures


def group_table(data: CalibrationData, groups: Sequence[str], policy, target: str) -> dict[str, dict]:
    """Per group: ``n``, ``risk``, ``quality_loss``, ``accuracy``, ``escalated``, ``skipped``,
    ``cost_ratio`` (within the group, vs always-largest there).

    ``policy`` is one configuration for every item, ``{group: configuration}`` (a per-group
    policy), or a ``GroupFit``.
    """
    labels = np.asarray(groups).astype(str)
    out = {}
    for label in np.unique(labels):
        if isinstance(policy, GroupFit):
            config = policy.fit_for(label).config
        elif isinstance(policy, dict):
            config = policy[label]
        else:
            config = list(policy)
        idx = np.flatnonzero(labels == label)
        row = _figures(data.subset(idx), {label: config}, labels[idx], target)
        row.pop("tier")
        out[str(label)] = row
    return out


def breakdown(data: CalibrationData, labels: Sequence[str], groups: Sequence[str],
              configs: dict[str, list[float]], target: str) -> dict[str, dict]:
    """``group_table``'s figures per ``labels`` (e.g. each item's source) while every item is
    routed by the configuration of its own policy group (``groups``, shape (n,)): what each
    source got from a per-group policy whose groups cut across sources."""
    labels, groups = np.asarray(labels).astype(str), np.asarray(groups).astype(str)
    out = {}
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        row = _figures(data.subset(idx), {g: configs[g] for g in np.unique(groups[idx])}, groups[idx], target)
        row.pop("tier")
        out[str(label)] = row
    return out


def format_groups(groups: dict[str, dict], alpha: float) -> str:
    """The per-group table for people; rows over α are marked."""
    lines = [f"{'group':<18}{'n':>6}{'risk':>8}{'q-loss':>8}{'accuracy':>10}{'escalated':>11}{'cost':>7}"]
    for name, g in groups.items():
        mark = "  > α" if g["risk"] > alpha else ""
        lines.append(f"{name[:18]:<18}{g['n']:>6}{g['risk']:>8.3f}{g['quality_loss']:>8.3f}{g['accuracy']:>10.3f}"
                     f"{g['escalated']:>11.1%}{g['cost_ratio']:>7.2f}{mark}")
    return "\n".join(lines)


def format_evaluation(figures: dict, alpha: float) -> str:
    lines = [f"{figures['n']} items; target {figures['target']}: realized risk {figures['risk']:.4f} "
             f"(α = {alpha}); quality loss {figures['quality_loss']:.4f} (P(cascade wrong and largest right)); "
             f"among the largest tier's right answers, {figures['conditional_quality_loss']:.1%} lost "
             "(a figure, not a guarantee)"]
    if "guarantee" in figures:
        lines.append(f"guarantee: {figures['guarantee']}")
    lines += [f"{'':<14}{'accuracy':>10}{'escalated':>11}{'skipped':>9}{'cost vs largest':>17}",
              f"{'cascade':<14}{figures['accuracy']:>10.3f}{figures['escalated']:>11.1%}{figures['skipped']:>9.1%}"
              f"{figures['cost_ratio']:>17.2f}"]
    for name, alone in figures["tiers_alone"].items():
        lines.append(f"{name:<14}{alone['accuracy']:>10.3f}{'':>11}{'':>9}{alone['cost_ratio']:>17.2f}")
    return "\n".join(lines)


__all__ = ["route_items", "breakdown", "evaluate_policy", "format_evaluation", "format_groups", "group_table", "policy_config"]
