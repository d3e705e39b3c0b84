"""Plain-text summaries of cascade answers: a per-question table and per-tier totals."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from .types import Answer


@dataclass
class TierTotals:
    """What one tier did over a run: requests it saw, answered, tokens, and batch seconds."""

    requests: int = 0
    answered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def tier_totals(answers: Sequence[Answer], tier_seconds: dict[str, float]) -> dict[str, TierTotals]:
    """Totals per tier name, in the order tiers first appear in the traces.

    Trace seconds are per batch (every request of a batch carries the batch's wall time),
    so a tier's seconds come from ``tier_seconds`` (``Cascade.tier_seconds``).
    """
    totals: dict[str, TierTotals] = defaultdict(TierTotals)
    for answer in answers:
        for step in answer.trace:
            t = totals[step.tier]
            t.requests += 1
            t.answered += step.decision in ("accept", "final")
            t.prompt_tokens += step.prompt_tokens
            t.completion_tokens += step.completion_tokens
    for name, seconds in tier_seconds.items():
        totals[name].seconds = seconds
    return dict(totals)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def answers_table(questions: Sequence[str], answers: Sequence[Answer], expected: Sequence[str] | None = None) -> str:
    """One row per question: question, answer, tier that answered, its score (and expected)."""
    rows = [("question", "answer", "tier", "score") + (("expected",) if expected else ())]
    for i, (q, a) in enumerate(zip(questions, answers)):
        row = (_clip(q, 46), _clip(a.text, 30), a.tier, f"{a.score:.3f}")
        rows.append(row + ((_clip(expected[i], 20),) if expected else ()))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def totals_table(answers: Sequence[Answer], totals: dict[str, TierTotals]) -> str:
    n = len(answers)
    escalated = sum(a.escalated for a in answers)
    lines = [f"{n} requests, {escalated} escalated ({escalated / n:.0%})" if n else "0 requests"]
    lines.append(f"{'tier':<14}{'saw':>6}{'answered':>10}{'prompt tok':>12}{'output tok':>12}{'seconds':>10}")
    for name, t in totals.items():
        lines.append(
            f"{name:<14}{t.requests:>6}{t.answered:>10}{t.prompt_tokens:>12}{t.completion_tokens:>12}{t.seconds:>10.2f}"
        )
    return "\n".join(lines)
