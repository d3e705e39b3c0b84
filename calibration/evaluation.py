"""Realized figures of a policy on labelled items: risk, accuracy, escalation and cost —
for the whole set and per group (a per-group artifact's groups, else each item's source).

A policy is applied exactly as the server applies it: one configuration (thresholds
[, skip threshold]) per item, the item's group's when the policy has groups
(``Policy.for_group``; unknown groups get the fallback group's). A checkpointed artifact's
policy is applied item by item through ``conformal.checkpoints.route`` with the
configurations ``checkpointing.deployed_configs`` reads (``evaluate_deployed_checkpoints``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np

from vcascade.engine.policy import Policy

from .checkpointing import checkpoint_costs, checkpoint_data, deployed_configs, end_only_fit_configs, small_price
from .conformal import CalibrationData, GroupFit, item_losses, paid, routing
from .conformal.checkpoints import CheckpointConfig, CheckpointData, checkpoint_figures
from .job import results, token_costs


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


# ---------------------------------------------------------------- checkpointed policies


def _checkpoint_rows(data: CheckpointData, configs: dict[str, CheckpointConfig], fallback: str,
                     route_labels: np.ndarray, table_labels: np.ndarray, target: str, early_tokens: int,
                     seconds: CheckpointData | None) -> dict[str, dict]:
    out = {}
    for label in np.unique(table_labels):
        idx = np.flatnonzero(table_labels == label)
        out[str(label)] = _checkpoint_row(data.subset(idx), configs, fallback, route_labels[idx], target,
                                          early_tokens, None if seconds is None else seconds.subset(idx))
    return out


def _checkpoint_row(data: CheckpointData, configs, fallback, route_labels, target, early_tokens, seconds) -> dict:
    row = checkpoint_figures(data, configs, early_tokens, route_labels, fallback)
    row["risk"] = row["accept_error"] if target == "accept-error" else row["quality_loss"]
    if seconds is not None:
        timed = checkpoint_figures(seconds, configs, early_tokens, route_labels, fallback)
        row["seconds"] = {"cost_ratio": timed["cost_ratio"], "cost_ratio_end_only": timed["cost_ratio_end_only"]}
    return row


def evaluate_checkpointed(data: CheckpointData, configs: dict[str, CheckpointConfig], fallback: str,
                          route_labels: Sequence[str], tables: dict[str, Sequence[str]], target: str,
                          seconds: CheckpointData | None = None, early_tokens: int = 32) -> dict:
    """Figures of a deployed checkpointed policy on labelled items, and of end-only deferral
    with the same end and skip thresholds (``checkpoint_figures``), pooled and per table.

    Parameters
    ----------
    data : CheckpointData of n items, costs in tokens × price
    configs : group -> the CheckpointConfig the artifact deploys for it; ``fallback`` serves
        labels without one (``checkpointing.deployed_configs``)
    route_labels : (n,) the group each item is served as
    tables : name -> (n,) labels to break the figures down by (e.g. ``{"groups": …, "sources": …}``)
    target : the artifact's target; each row's ``risk`` is its realized value
    seconds : the same items priced in engine seconds (a timing model), or None
    early_tokens : escalations decided within this many small-tier tokens count as early

    Returns
    -------
    dict with ``pooled`` and, per table name, ``{label: row}``; a row is
    ``checkpoint_figures``' (quality loss, cost vs always-largest and its end-only
    counterpart, early-escalation share, wasted small-tier tokens checkpointed and end-only,
    decisions per checkpoint) plus ``risk`` and, with ``seconds``, ``seconds.cost_ratio`` /
    ``seconds.cost_ratio_end_only``.
    """
    labels = np.asarray(route_labels).astype(str)
    out = {"tokens": [int(k) for k in data.checkpoints], "early_tokens": int(early_tokens),
           "pooled": _checkpoint_row(data, configs, fallback, labels, target, early_tokens, seconds)}
    for name, values in tables.items():
        out[name] = _checkpoint_rows(data, configs, fallback, labels, np.asarray(values).astype(str), target,
                                     early_tokens, seconds)
    return out


END_ONLY_KEYS = ("risk", "quality_loss", "accuracy", "escalated", "skipped", "cost_ratio", "conditional_quality_loss",
                 "answered_by", "groups", "sources")
"""The end-only figures ``evaluate_deployed_checkpoints`` keeps under ``figures["end_only"]``."""


def evaluate_deployed_checkpoints(figures: dict, artifact: dict, config, records, items, policy, prefix, labels,
                                  group_by, embeddings, timing) -> None:
    """Replace ``figures``' policy figures by those of the deployed checkpointed policy (each
    item routed by its group's configuration through ``conformal.checkpoints.route``); the
    end-only figures with the same end/skip thresholds move to ``figures["end_only"]`` and the
    checkpoint breakdown (per group, per source, engine seconds when timed) to
    ``figures["checkpoints"]``, with the certified end-only fit the artifact also records
    beside it (``figures["checkpoints"]["end_only_fit"]``, the same breakdown)."""
    names = [t.name for t in config.tiers]
    configs, fallback = deployed_configs(artifact["policy"])
    costs = token_costs(config, records, items)
    data = checkpoint_data(records, items, prefix, policy.rules[0], policy.skip, costs[:, [0, -1]],
                           small_price(config), embeddings)
    seconds = None
    if timing is not None:
        timed_costs, timed_small = seconds_costs(records, items, timing, names)
        seconds = replace(data, **checkpoint_costs(results(records[0], items), prefix.checkpoints,
                                                   timed_costs[:, [0, -1]], timed_small))  # scored once
    route_labels = np.asarray(labels if group_by else [fallback] * len(items)).astype(str)
    tables = {"groups": labels}
    if group_by and group_by != "source":
        tables["sources"] = [item.source for item in items]
    checkpointed = evaluate_checkpointed(data, configs, fallback, route_labels, tables, artifact["target"], seconds)
    fit_configs, fit_fallback = end_only_fit_configs(artifact)  # what calibrate without --checkpoints deploys
    checkpointed["end_only_fit"] = evaluate_checkpointed(
        data, fit_configs, fit_fallback, labels if group_by else [fit_fallback] * len(items), tables,
        artifact["target"], seconds)
    if timing is not None:
        checkpointed["timing"] = timing
    figures["end_only"] = {k: figures[k] for k in END_ONLY_KEYS if k in figures}
    pooled = checkpointed["pooled"]
    right = data.correct[:, 1]
    figures.update(
        deployed="checkpoints", checkpoints=checkpointed, risk=pooled["risk"], quality_loss=pooled["quality_loss"],
        accuracy=pooled["accuracy"], escalated=pooled["escalated"], skipped=pooled["skipped"],
        cost_ratio=pooled["cost_ratio"],
        conditional_quality_loss=float(pooled["quality_loss"] * data.n / right.sum()) if right.any() else math.nan,
        answered_by={names[0]: pooled["kept"], names[-1]: 1.0 - pooled["kept"]}, groups=checkpointed["groups"])
    if "sources" in checkpointed:
        figures["sources"] = checkpointed["sources"]


def read_timing(path, tier_names: Sequence[str]) -> dict[str, dict]:
    """An engine-seconds model per tier — ``{"per_item", "per_prompt_token",
    "per_output_token"}`` seconds — from a benchmark summary's ``"timing"`` (``benchmarks/
    deferral.py``: fitted per tier as seconds ≈ a + b·prompt + c·output tokens)."""
    import json
    from pathlib import Path

    data = json.loads(Path(path).read_text())
    timing = data.get("timing", data)
    missing = [name for name in tier_names if name not in timing]
    if missing:
        raise ValueError(f"{path}: no timing model for tier(s) {', '.join(missing)} (it has {', '.join(timing)})")
    return {name: {k: float(timing[name][k]) for k in ("per_item", "per_prompt_token", "per_output_token")}
            for name in tier_names}


def seconds_costs(records: list[dict], items, timing: dict[str, dict], tier_names: Sequence[str]):
    """``(costs (n, K), small_price)``: each tier's modelled engine seconds per item and tier
    0's (per item, per prompt token, per output token) for its prefixes."""
    costs = np.zeros((len(items), len(tier_names)))
    for k, name in enumerate(tier_names):
        m = timing[name]
        for i, item in enumerate(items):
            r = records[k][item.id]["result"]
            costs[i, k] = m["per_item"] + m["per_prompt_token"] * r["prompt_tokens"] + \
                m["per_output_token"] * r["completion_tokens"]
    small = timing[tier_names[0]]
    return costs, (small["per_item"], small["per_prompt_token"], small["per_output_token"])


__all__ = ["END_ONLY_KEYS", "breakdown", "evaluate_checkpointed", "evaluate_deployed_checkpoints", "evaluate_policy",
           "format_evaluation", "format_groups", "group_table", "policy_config", "read_timing", "route_items",
           "seconds_costs"]
