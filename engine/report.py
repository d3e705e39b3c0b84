"""Plain-text summaries of cascade answers: traces, a per-question table, per-tier totals."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from .types import Answer


@dataclass
class TierTotals:
    """What one tier did over a run: requests it saw, answered, tokens, and busy seconds."""

    requests: int = 0
    answered: int = 0
    skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def tier_totals(answers: Sequence[Answer], tier_seconds: dict[str, float]) -> dict[str, TierTotals]:
    """Totals per tier name, in the order tiers first appear in the traces.

    Requests overlap at a tier (continuous batching), so a tier's seconds are its busy time
    (``Cascade.tier_seconds``), not a sum of per-request latencies.
    """
    totals: dict[str, TierTotals] = defaultdict(TierTotals)
    for answer in answers:
        for step in answer.trace:
            t = totals[step.tier]
            if step.decision == "skip":
                t.skipped += 1
                continue
            t.requests += 1
            t.answered += step.decision in ("accept", "commit", "final")
            t.prompt_tokens += step.prompt_tokens
            t.completion_tokens += step.completion_tokens
    for name, seconds in tier_seconds.items():
        totals[name].seconds = seconds
    return dict(totals)


def format_score(score: float | None) -> str:
    return "-" if score is None else f"{score:.3f}"


def trace_lines(answer: Answer) -> list[str]:
    """One line per tier the answer visited: score, threshold, decision, tokens, seconds."""
    lines = []
    for step in answer.trace:
        threshold = "-" if step.threshold is None else f"{step.threshold:.3f}"
        extra = f" [{step.detail}]" if step.detail else ""
        if step.checkpoint:
            extra += f" at {step.checkpoint} tokens"
        lines.append(f"  [{step.tier}] score={format_score(step.score)} threshold={threshold} -> {step.decision} "
                     f"({step.completion_tokens} tokens, {step.seconds:.2f}s){extra}")
    return lines


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns with a rule under the header row."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def answers_table(questions: Sequence[str], answers: Sequence[Answer], marks: Sequence[str] | None = None,
                  references: Sequence[str] | None = None, shown: Sequence[str] | None = None) -> str:
    """One row per question: question, answer (or ``shown[i]``, a summary of a long one), tier
    that answered, its score (and whether it is right, and the reference)."""
    header = ["question", "answer", "tier", "score"] + (["ok"] if marks else []) + (["reference"] if references else [])
    rows = [header]
    for i, (q, a) in enumerate(zip(questions, answers)):
        row = [_clip(q, 46), _clip(shown[i] if shown else a.text, 28), a.tier, format_score(a.score)]
        row += [marks[i]] if marks else []
        row += [_clip(references[i], 20)] if references else []
        rows.append(row)
    return table(rows)


def totals_table(answers: Sequence[Answer], totals: dict[str, TierTotals]) -> str:
    n = len(answers)
    escalated = sum(a.escalated for a in answers)
    lines = [f"{n} requests, {escalated} answered past the first tier ({escalated / n:.0%})" if n else "0 requests"]
    lines.append(f"{'tier':<14}{'saw':>6}{'skipped':>9}{'answered':>10}{'prompt tok':>12}{'output tok':>12}"
                 f"{'busy s':>9}")
    for name, t in totals.items():
        lines.append(f"{name:<14}{t.requests:>6}{t.skipped:>9}{t.answered:>10}{t.prompt_tokens:>12}"
                     f"{t.completion_tokens:>12}{t.seconds:>9.2f}")
    return "\n".join(lines)
