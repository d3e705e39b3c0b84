"""Realized figures of a policy on labelled items: risk, accuracy, escalation and cost."""

from __future__ import annotations

import math

import numpy as np

from .conformal import CalibrationData, expected_cost, risk, routing


def evaluate_policy(data: CalibrationData, thresholds, skip_threshold: float | None, target: str,
                    tier_names: list[str]) -> dict:
    """Figures of the cascade next to each tier alone.

    ``risk`` is the realized value of the artifact's target; ``quality_loss`` the share of
    items where the cascade is wrong and the largest tier right; costs are relative to
    always calling the largest tier.
    """
    thresholds = [math.inf if t is None else float(t) for t in thresholds]
    config = thresholds + ([] if data.skip_scores is None else [skip_threshold])
    tier, skipped = routing(data, config)
    answered_correct = data.correct[np.arange(data.n), tier]
    always_last = float(data.costs[:, -1].mean())
    return {
        "n": data.n,
        "target": target,
        "risk": risk(data, config, target),
        "quality_loss": risk(data, config, "quality-loss"),
        "accuracy": float(answered_correct.mean()),
        "escalated": float((tier > 0).mean()),
        "skipped": float(skipped.mean()),
        "answered_by": {name: float((tier == k).mean()) for k, name in enumerate(tier_names)},
        "cost_ratio": expected_cost(data, config) / always_last,
        "tiers_alone": {name: {"accuracy": float(data.correct[:, k].mean()),
                               "cost_ratio": float(data.costs[:, k].mean()) / always_last}
                        for k, name in enumerate(tier_names)},
    }


def format_evaluation(figures: dict, alpha: float) -> str:
    lines = [f"{figures['n']} items; target {figures['target']}: realized risk {figures['risk']:.4f} "
             f"(α = {alpha}); quality loss {figures['quality_loss']:.4f}"]
    if "guarantee" in figures:
        lines.append(f"guarantee: {figures['guarantee']}")
    lines += [f"{'':<14}{'accuracy':>10}{'escalated':>11}{'skipped':>9}{'cost vs largest':>17}",
              f"{'cascade':<14}{figures['accuracy']:>10.3f}{figures['escalated']:>11.1%}{figures['skipped']:>9.1%}"
              f"{figures['cost_ratio']:>17.2f}"]
    for name, alone in figures["tiers_alone"].items():
        lines.append(f"{name:<14}{alone['accuracy']:>10.3f}{'':>11}{'':>9}{alone['cost_ratio']:>17.2f}")
    return "\n".join(lines)
