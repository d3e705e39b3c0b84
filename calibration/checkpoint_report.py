"""The printed tables of a checkpointed policy: ``vcascade calibrate``'s summary of the fit
(calibrate split) and ``vcascade evaluate``'s figures of the deployed policy (held-out items).

Each formatter takes the JSON-ready figures (``checkpoint_figures`` rows, per group and
pooled) and returns text; nothing here routes or fits.
"""

from __future__ import annotations

from typing import Sequence

from .checkpointing import ALL


def format_calibrated(checkpointed, figures: dict, grouped, fit, alpha: float, target: str) -> str:
    """The checkpointed policy in a few lines: feasibility, the checkpoints kept, the table.

    Parameters
    ----------
    checkpointed : ``checkpointing.CheckpointCalibration``
    figures : the artifact's ``figures`` (``"checkpoints"``: ``CheckpointCalibration.figures()``,
        ``"groups"``: the end-only fit's per-group rows)
    grouped, fit : the certified end-only fit (``conformal.GroupFit`` or None, and its ``Fit``),
        whose cost ratios fill the table's ``e-o fit`` column
    alpha, target : the guarantee's level and target
    """
    cp, prefix = checkpointed.policy, checkpointed.prefix
    infeasible = [g for g, f in cp.fits.items() if not f.feasible]
    verdict = ("feasible" + (" in every group" if cp.grouped else "")) if not infeasible else \
        f"INFEASIBLE in {', '.join(infeasible)}: always escalate there"
    dropped = "; dropped " + ", ".join(f"{d['tokens']} ({d['reason']})" for d in prefix.dropped) \
        if prefix.dropped else ""
    if grouped:
        end_only_fit = {g: row["cost_ratio"] for g, row in figures["groups"].items()}
        end_only_fit["pooled"] = grouped.pooled["cost_ratio"]
    else:
        end_only_fit = {"all": fit.cost_ratio}
    return "\n".join([
        f"checkpointed policy (deployed), checkpoints {list(prefix.checkpoints)} tokens{dropped}: {verdict}",
        "calibration split; cost vs always-largest: checkpointed, end-only with the same end/skip thresholds, "
        "the certified end-only fit ('e-o fit'); per checkpoint the shares committed / escalated there:",
        format_checkpoint_table(figures["checkpoints"], alpha, target, end_only_fit)])


def format_checkpoint_table(figures: dict, alpha: float, target: str = "quality-loss",
                            end_only_fit: dict[str, float] | None = None) -> str:
    """Per group (then pooled): n, realized loss of ``target``, cost vs always-large — checkpointed, end-only
    with the same end/skip thresholds, and ``end_only_fit`` (the certified end-only policy's
    cost per group, when given) — the early-escalation share, and per checkpoint the shares
    of the group's items committed / escalated there."""
    rows = dict(figures.get("groups") or {})
    rows["pooled" if rows else ALL] = figures["pooled"]
    first = next(iter(rows.values()))
    ks = [k for k in first["decisions"] if k not in ("skip", "end")]
    head = (f"{'group':<8}{'n':>6}{'loss':>8}{'cost':>7}{'end-only':>10}"
            + (f"{'e-o fit':>9}" if end_only_fit else "") + f"{'early esc':>11}{'skip':>7}"
            + "".join(f"{k + ' c/e':>14}" for k in ks) + f"{'end keep/esc':>15}")
    lines = [head]
    for name, f in rows.items():
        n = max(f["n"], 1)
        d = f["decisions"]
        loss = f["accept_error"] if target == "accept-error" else f["quality_loss"]
        mark = "  > α" if loss > alpha and name != "pooled" else ""
        fit_cost = "" if not end_only_fit else (f"{end_only_fit[name]:>9.3f}" if name in end_only_fit
                                                else f"{'-':>9}")
        lines.append(
            f"{name[:8]:<8}{f['n']:>6}{loss:>8.4f}{f['cost_ratio']:>7.3f}{f['cost_ratio_end_only']:>10.3f}"
            + fit_cost + f"{f['escalated_early_share']:>11.1%}{d['skip']['escalate'] / n:>7.1%}"
            + "".join(f"{d[k]['commit'] / n:>7.1%}/{d[k]['escalate'] / n:>6.1%}" for k in ks)
            + f"{d['end']['keep'] / n:>8.1%}/{d['end']['escalate'] / n:>6.1%}" + mark)
    return "\n".join(lines)


def format_checkpointed(figures: dict, alpha: float, tables: Sequence[str] = ("groups", "sources")) -> str:
    """The checkpointed figures for people. Per row: n, realized risk and cost vs
    always-largest (tokens; engine seconds when timed) of the checkpointed policy and, when
    ``figures["end_only_fit"]`` is there, of the certified end-only fit; the cost of end-only
    deferral with the checkpointed policy's own end/skip thresholds; the share of
    escalations decided within the early-token limit (all / those that started tier 0); the
    small-tier tokens wasted per escalated request (checkpointed / end-only fit)."""
    timed = "seconds" in figures["pooled"]
    fit = figures.get("end_only_fit")
    head = (f"{'':<16}{'n':>6}{'risk':>8}{'cost':>7}" + (f"{'sec':>7}" if timed else "")
            + (f"{'fit risk':>9}{'fit cost':>9}" + (f"{'fit sec':>8}" if timed else "") if fit else "")
            + f"{'same-thr':>9}{'early esc':>11}{'started':>9}{'wasted':>8}" + (f"{'fit wasted':>11}" if fit else ""))
    lines = [f"checkpointed policy at {figures['tokens']} tokens; cost vs always-largest; 'fit': the certified "
             "end-only fit; 'same-thr': end-only with the checkpointed policy's end/skip thresholds (not certified); "
             f"early: escalations decided within {figures['early_tokens']} small-tier tokens (all; of those that "
             "started the small tier); wasted: small-tier tokens per escalated request", head]

    def line(name: str, f: dict, g: dict | None) -> str:
        mark = "  > α" if f["risk"] > alpha else ""
        out = f"{name[:16]:<16}{f['n']:>6}{f['risk']:>8.4f}{f['cost_ratio']:>7.3f}"
        out += f"{f['seconds']['cost_ratio']:>7.3f}" if timed else ""
        if g is not None:
            out += f"{g['risk']:>9.4f}{g['cost_ratio']:>9.3f}"
            out += f"{g['seconds']['cost_ratio']:>8.3f}" if timed else ""
        out += (f"{f['cost_ratio_end_only']:>9.3f}{f['escalated_early_share']:>11.1%}"
                f"{f['started_escalated_early_share']:>9.1%}{f['wasted_tokens_mean']:>8.1f}")
        return out + (f"{g['wasted_tokens_mean']:>11.1f}" if g is not None else "") + mark

    lines.append(line("all", figures["pooled"], fit["pooled"] if fit else None))
    for table in tables:
        if figures.get(table):
            lines.append(f"per {table[:-1]}:")
            lines += [line(name, f, fit[table][name] if fit else None) for name, f in figures[table].items()]
    return "\n".join(lines)


__all__ = ["format_calibrated", "format_checkpoint_table", "format_checkpointed"]
