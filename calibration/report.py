"""The calibration report: markdown plus PNG plots next to the artifact.

* the guarantee in force, in words, and what a single deployment should expect
* the price of the stronger guarantee: marginal vs (α, δ) on the same data
* how the rule was chosen (selection split) and the pre-generation skip
* deferral curve of the chosen rule on the calibration split, against random and the oracle
* risk vs threshold — the target's empirical risk as tier 0's threshold moves
* score histograms — tier 0's scores for its correct and wrong answers
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from .conformal import CalibrationData, risk
from .metrics import deferral_curve, oracle_scores


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _plots(out_dir: Path, data: CalibrationData, artifact: dict, names: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit, rule = artifact["fit"], artifact["policy"]["rules"][0]["name"]

    def save(name: str, draw: Callable) -> str:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        draw(ax)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        return name

    pair = data.correct[:, [0, -1]]
    pair_costs = data.costs[:, [0, -1]]

    def curves(ax):
        for label, scores in ((rule, data.scores[:, 0]), ("oracle", oracle_scores(pair))):
            c = deferral_curve(scores, pair, pair_costs)
            ax.plot(c.share, c.accuracy, label=label, lw=2 if label == rule else 1)
        ax.plot([0, 1], [pair[:, 0].mean(), pair[:, 1].mean()], color="grey", ls="--", lw=1, label="random")
        ax.set(xlabel=f"share escalated from {names[0]}", ylabel="cascade accuracy", title="Deferral curve")
        ax.legend(fontsize=7)

    def risk_plot(ax):
        s = data.scores[:, 0]
        finite = s[np.isfinite(s)]
        grid = np.unique(np.quantile(finite, np.linspace(0, 1, 60))) if finite.size else np.array([0.0])
        rest = [t if t is not None and math.isfinite(t) else math.inf for t in fit["thresholds"][1:]]
        extra = [] if data.skip_scores is None else [fit["skip_threshold"]]
        values = [risk(data, [t, *rest, *extra], fit["target"]) for t in grid]
        ax.plot(grid, values, label=f"empirical {fit['target']}")
        ax.axhline(fit["alpha"], color="red", ls="--", label=f"α = {fit['alpha']}")
        if fit["thresholds"][0] is not None and math.isfinite(fit["thresholds"][0]):
            ax.axvline(fit["thresholds"][0], color="green", ls=":", label="fitted threshold")
        ax.set(xlabel=f"{names[0]} threshold on {rule}", ylabel="risk", title="Risk vs threshold")
        ax.legend(fontsize=7)

    def histogram(ax):
        s = data.scores[:, 0]
        finite = np.isfinite(s)
        bins = np.linspace(s[finite].min(), s[finite].max(), 30) if finite.any() else 10
        ax.hist(s[finite & data.correct[:, 0]], bins=bins, alpha=0.6, label="correct")
        ax.hist(s[finite & ~data.correct[:, 0]], bins=bins, alpha=0.6, label="wrong")
        ax.set(xlabel=f"{names[0]} {rule}", ylabel="items", title="Scores by correctness")
        ax.legend(fontsize=7)

    return [save("deferral_curve.png", curves), save("risk_vs_threshold.png", risk_plot),
            save("score_histogram.png", histogram)]


def checkpoint_section(artifact: dict) -> list[str]:
    """The report's lines on a checkpointed policy: its thresholds per group and its figures
    on the calibration split next to end-only deferral with the same end/skip thresholds."""
    policy, record = artifact["policy"], artifact["fit"]["checkpoints"]
    block, figures = policy["checkpoints"], artifact["figures"]["checkpoints"]
    tokens = block["tokens"]
    lines = ["## Mid-generation checkpoints (deployed)", "",
             f"Prefix rules at {', '.join(map(str, tokens))} tokens of the small tier's answer (trained on the train "
             "split); at checkpoint j an answer escalates when its prefix score is below escalate[j], else commits "
             "when it is at least commit[j], else continues; an answer that never commits meets the end rule. "
             "All thresholds were certified together (fixed-sequence Learn-then-Test along a path fixed on the "
             "selection split).", ""]
    for dropped in record.get("dropped") or []:
        lines.append(f"- checkpoint {dropped['tokens']} dropped: {dropped['reason']}")
    groups = policy.get("groups") or {"all": {"thresholds": policy["thresholds"], "commit": block["commit"],
                                              "escalate": block["escalate"],
                                              "skip_threshold": policy["skip_threshold"]}}
    lines += ["", "| group | " + " | ".join(f"{k}: escalate < / commit >=" for k in tokens) + " | end >= | skip < |",
              "|---" * (len(tokens) + 3) + "|"]
    for name, g in groups.items():
        cells = [f"{_fmt(e, 3)} / {_fmt(c, 3)}" for c, e in zip(g["commit"], g["escalate"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(g['thresholds'][0], 4)} | "
                     f"{_fmt(g['skip_threshold'], 4)} |")
    rows = dict(figures.get("groups") or {})
    rows["pooled" if rows else "all"] = figures["pooled"]
    lines += ["", "Calibration split (cost relative to always calling the largest tier; 'end-only' keeps the same "
              "end and skip thresholds without mid-generation decisions):", "",
              "| group | n | quality loss | cost | end-only cost | committed | escalated | escalated within "
              f"{figures['pooled']['early_tokens']} tokens | small tokens wasted per escalation (end-only) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, f in rows.items():
        lines.append(f"| {name} | {f['n']} | {f['quality_loss']:.4f} | {f['cost_ratio']:.3f} | "
                     f"{f['cost_ratio_end_only']:.3f} | {f['committed']:.1%} | {f['escalated']:.1%} | "
                     f"{f['escalated_early_share']:.1%} | {f['wasted_tokens_mean']:.1f} "
                     f"({f['end_only']['wasted_tokens_mean']:.1f}) |")
    return lines + [""]


def write_report(out_dir: Path, artifact: dict, data: CalibrationData, names: list[str], header: str) -> Path:
    """Write ``report.md`` and the PNG plots into ``out_dir``; return the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = _plots(out_dir, data, artifact, names)
    fit, policy = artifact["fit"], artifact["policy"]
    verdict = "feasible" if fit["feasible"] else "INFEASIBLE — the policy always escalates"
    rule_names = ", ".join(f"`{r['name']}`" for r in policy["rules"])
    skip = "none"
    if policy["skip"]:
        skip = (f"`{policy['skip']['name']}` below {_fmt(fit['skip_threshold'], 4)} "
                f"({fit['skipped']:.1%} of items skip {names[0]})")
    rows = "\n".join(f"| {name} | {share:.1%} |" for name, share in zip(names, fit["acceptance"]))
    lines = [
        "# Calibration report", "", header, "",
        f"**Guarantee:** {artifact['guarantee']['statement']} — assuming {artifact['guarantee']['assumption']}.", "",
        *(["- **deployed: the checkpointed policy** (section 'Mid-generation checkpoints'); the lines that follow "
           "describe the end-only fit on the same items, for comparison"] if policy.get("checkpoints") else []),
        *([f"- per-group thresholds (table below); the lines that follow are the fallback group "
           f"`{policy['fallback_group']}`'s fit, the policy for requests of no known group"]
          if policy.get("groups") else []),
        f"- target **{fit['target']}**, α = {fit['alpha']}, δ = {fit['delta']}, method: {fit['method']}, "
        f"n = {fit['n']}: **{verdict}**",
        f"- rules: {rule_names}; thresholds {[_fmt(t, 4) for t in fit['thresholds']]}",
        f"- skip: {skip}",
        f"- empirical risk {fit['empirical_risk']:.4f}; certified bound {fit['risk_bound']:.4f}",
        f"- expected cost relative to always calling {names[-1]}: {fit['cost_ratio']:.2f}",
        f"- splits: {artifact['dataset']['splits']}", "",
        "| tier | share answered (calibration split) |", "|---|---|", rows, "",
    ]
    price = artifact.get("price_of_guarantee")
    if price:
        lines += ["## Price of the guarantee", "",
                  "The deployed policy's form (same rule, skip rule included, same calibration items) under each "
                  "guarantee. 'no guarantee' certifies by the empirical risk alone (losses <= α n). The spread — the "
                  "share of bootstrap-resampled calibrations whose fit lands above α on the full calibration set — "
                  "is shown for the marginal form only: for a δ-fit it is <= δ by construction.", "",
                  "| guarantee | δ | thresholds | skip below | escalated | skipped | cost vs largest | "
                  "resampled fits above α |", "|---|---|---|---|---|---|---|---|"]
        for label, row in price.items():
            spread = row.get("spread")
            above = f"{spread['share_above_alpha']:.1%}" if spread else "-"
            lines.append(f"| {label} | {_fmt(row['delta'])} | {[_fmt(t, 4) for t in row['thresholds']]} | "
                         f"{_fmt(row['skip_threshold'], 4)} | {row['escalated']:.1%} | {row['skipped']:.1%} | "
                         f"{row['cost_ratio']:.3f} | {above} |")
        lines.append("")
    figures = artifact.get("figures") or {}
    if figures.get("conditional_quality_loss") is not None:
        lines += [f"Among the calibration items {names[-1]} answers correctly, the cascade loses "
                  f"{figures['conditional_quality_loss']:.1%} — a figure, not a guarantee (the target bounds the "
                  "joint probability).", ""]
    if figures.get("groups"):
        grouped = (artifact.get("dataset") or {}).get("group_by")
        lines += ["## Per group (calibration split)", "",
                  ("Each group has its own thresholds and guarantee." if grouped else
                   "One policy for the mix: the guarantee covers the mix, not each source."), "",
                  "| group | n | risk | quality loss | accuracy | escalated | cost vs largest |",
                  "|---|---|---|---|---|---|---|"]
        for name, g in figures["groups"].items():
            lines.append(f"| {name} | {g['n']} | {g['risk']:.4f} | {g['quality_loss']:.4f} | {g['accuracy']:.3f} | "
                         f"{g['escalated']:.1%} | {g['cost_ratio']:.3f} |")
        lines.append("")
    if figures.get("checkpoints"):
        lines += checkpoint_section(artifact)
    selection = artifact.get("selection")
    if selection:
        lines += ["## How the rule was chosen (selection split)", "",
                  "Cost of the cheapest configuration meeting the target on the selection split"
                  + (" within each group (the fit is per group)" if artifact["dataset"].get("group_by") else "")
                  + " (no guarantee: for comparing rules), share of the oracle's gain over random deferral, and "
                    "APGR.", "",
                  "| tier | rule | selection cost | gain share | APGR |", "|---|---|---|---|---|"]
        for row in selection["table"]:
            lines.append(f"| {row['tier']} | `{row['rule']}` | {row['selection_cost']:.3f} | "
                         f"{_fmt(row['gain_share'])} | {_fmt(row['apgr'])} |")
        if selection["skip"]:
            lines += ["", "| skip rule | selection cost |", "|---|---|"]
            lines += [f"| `{row['skip']}` | {row['selection_cost']:.3f} |" for row in selection["skip"]]
        for refusal in selection["refused"]:
            lines.append(f"\n- not trained: `{refusal['rule']}` (tier {refusal['tier']}): {refusal['reason']}")
        lines.append("")
    lines += [f"![deferral curve]({images[0]})", f"![risk vs threshold]({images[1]})", f"![score histogram]({images[2]})"]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
