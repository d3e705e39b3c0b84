"""Realized figures of a policy on labelled items: risk, accuracy, escalation and cost."""

from __future__ import annotations

import numpy as np

from .conformal import CalibrationData, answering_tier, expected_cost, item_losses


def _risk(data: CalibrationData, thresholds, target: str) -> float:
    losses, at_risk = item_losses(data, thresholds, target)
    return float(losses.sum() / at_risk.sum()) if at_risk.any() else 0.0


def evaluate_thresholds(data: CalibrationData, thresholds, target: str, tier_names: list[str]) -> dict:
    """Figures of the cascade with ``thresholds`` next to each tier alone.

    ``risk`` is the realized value of the artifact's target; ``quality_loss`` is the share
    of items where the cascade is wrong and the largest tier right; costs are relative to
    always calling the largest tier.
    """
    tier = answering_tier(data.scores, thresholds)
    answered_correct = data.correct[np.arange(data.n), tier]
    always_last = float(data.costs[:, -1].mean())
    return {
        "n": data.n,
        "target": target,
        "risk": _risk(data, thresholds, target),
        "quality_loss": _risk(data, thresholds, "quality-loss"),
        "accuracy": float(answered_correct.mean()),
        "escalated": float((tier > 0).mean()),
        "answered_by": {name: float((tier == k).mean()) for k, name in enumerate(tier_names)},
        "cost_ratio": expected_cost(data, thresholds) / always_last,
        "tiers_alone": {name: {"accuracy": float(data.correct[:, k].mean()),
                               "cost_ratio": float(data.costs[:, k].mean()) / always_last}
                        for k, name in enumerate(tier_names)},
    }


def format_evaluation(figures: dict, alpha: float) -> str:
    lines = [f"{figures['n']} items; target {figures['target']}: realized risk {figures['risk']:.4f} "
             f"(α = {alpha}); quality loss {figures['quality_loss']:.4f}",
             f"{'':<14}{'accuracy':>10}{'escalated':>11}{'cost vs largest':>17}",
             f"{'cascade':<14}{figures['accuracy']:>10.3f}{figures['escalated']:>11.1%}{figures['cost_ratio']:>17.2f}"]
    for name, alone in figures["tiers_alone"].items():
        lines.append(f"{name:<14}{alone['accuracy']:>10.3f}{'':>11}{alone['cost_ratio']:>17.2f}")
    return "\n".join(lines)
