"""The calibration report: markdown plus PNG plots next to the artifact.

* deferral curves — accuracy of the cascade vs share of items escalated from tier 0,
  one curve per signal (the better signal sits higher at the same escalation)
* risk vs threshold — the target's empirical risk as tier 0's threshold moves, with the
  α line and the fitted threshold
* score histograms — tier 0's scores for its correct and wrong answers
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from .conformal import CalibrationData, Fit, answering_tier, item_losses


def _threshold_sweep(data: CalibrationData, fitted: list[float], points: int = 60) -> tuple[np.ndarray, list[np.ndarray]]:
    """Tier-0 thresholds from accept-all to escalate-all (other tiers keep their fitted
    thresholds); returns the grid and the threshold vectors."""
    finite = data.scores[:, 0][np.isfinite(data.scores[:, 0])]
    grid = np.unique(np.quantile(finite, np.linspace(0, 1, points))) if finite.size else np.array([0.0])
    grid = np.concatenate([[-math.inf], grid, [math.inf]])
    vectors = [np.array([t, *[f if math.isfinite(f) else math.inf for f in fitted[1:]]]) for t in grid]
    return grid, vectors


def deferral_curve(data: CalibrationData, fitted: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(share escalated from tier 0, cascade accuracy) along the tier-0 threshold sweep."""
    _, vectors = _threshold_sweep(data, fitted)
    shares, accuracy = [], []
    for lam in vectors:
        tier = answering_tier(data.scores, lam)
        shares.append(float((tier > 0).mean()))
        accuracy.append(float(data.correct[np.arange(data.n), tier].mean()))
    return np.array(shares), np.array(accuracy)


def write_report(out_dir: Path, fit: Fit, data_by_signal: dict[str, CalibrationData], signal: str,
                 tier_names: list[str], header: str) -> Path:
    """Write ``report.md`` and the PNG plots into ``out_dir``; return the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    data = data_by_signal[signal]

    def save(name: str, draw: Callable) -> str:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        draw(ax)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        return name

    def curves(ax):
        for name, d in data_by_signal.items():
            x, y = deferral_curve(d, fit.thresholds)
            ax.plot(x, y, label=name, lw=2 if name == signal else 1)
        ax.axhline(data.correct[:, -1].mean(), color="grey", ls="--", lw=1, label=f"{tier_names[-1]} alone")
        ax.set(xlabel=f"share escalated from {tier_names[0]}", ylabel="cascade accuracy", title="Deferral curves")
        ax.legend(fontsize=7)

    def risk(ax):
        grid, vectors = _threshold_sweep(data, fit.thresholds)
        values = []
        for lam in vectors:
            losses, at_risk = item_losses(data, lam, fit.target)
            values.append(losses.sum() / at_risk.sum() if at_risk.any() else 0.0)
        finite = np.isfinite(grid)
        ax.plot(grid[finite], np.array(values)[finite], label=f"empirical {fit.target}")
        ax.axhline(fit.alpha, color="red", ls="--", label=f"α = {fit.alpha}")
        if math.isfinite(fit.thresholds[0]):
            ax.axvline(fit.thresholds[0], color="green", ls=":", label="fitted threshold")
        ax.set(xlabel=f"{tier_names[0]} threshold on {signal}", ylabel="risk", title="Risk vs threshold")
        ax.legend(fontsize=7)

    def histogram(ax):
        s = data.scores[:, 0]
        finite = np.isfinite(s)
        bins = np.linspace(s[finite].min(), s[finite].max(), 30) if finite.any() else 10
        ax.hist(s[finite & data.correct[:, 0]], bins=bins, alpha=0.6, label="correct")
        ax.hist(s[finite & ~data.correct[:, 0]], bins=bins, alpha=0.6, label="wrong")
        ax.set(xlabel=f"{tier_names[0]} {signal}", ylabel="items", title="Scores by correctness")
        ax.legend(fontsize=7)

    images = [save("deferral_curves.png", curves), save("risk_vs_threshold.png", risk),
              save("score_histogram.png", histogram)]
    verdict = "feasible" if fit.feasible else "INFEASIBLE — the policy always escalates"
    rows = "\n".join(f"| {name} | {share:.1%} |" for name, share in zip(tier_names, fit.acceptance))
    text = f"""# Calibration report

{header}

- target **{fit.target}**, α = {fit.alpha}, δ = {fit.delta}, method: {fit.method}, n = {fit.n}: **{verdict}**
- signal `{signal}`; thresholds {fit.thresholds}
- empirical risk {fit.empirical_risk:.4f}; certified bound {fit.risk_bound:.4f}
- expected cost relative to always calling {tier_names[-1]}: {fit.cost_ratio:.2f}

| tier | share answered (calibration) |
|---|---|
{rows}

![deferral curves]({images[0]})
![risk vs threshold]({images[1]})
![score histogram]({images[2]})
"""
    path = out_dir / "report.md"
    path.write_text(text)
    return path
