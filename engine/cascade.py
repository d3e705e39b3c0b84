"""The cascade controller: the cheapest tier answers unless its confidence is too low.

Batch semantics (DESIGN.md): every request goes to tier 0 in one batch; the requests
whose score falls below tier 0's threshold go to tier 1 together, and so on. The last
tier always answers. Every answer carries a trace of each tier it visited.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from .policy import Policy
from .types import Answer, Request, TierResult, TraceStep


class Tier(Protocol):
    """Anything that turns a batch of requests into one ``TierResult`` per request."""

    name: str

    def generate(self, requests: Sequence[Request]) -> list[TierResult]: ...


class Cascade:
    """Ordered tiers (cheapest first) under one deferral ``Policy``."""

    def __init__(self, tiers: Sequence[Tier], policy: Policy):
        if not tiers:
            raise ValueError("a cascade needs at least one tier")
        if len(policy.thresholds) != len(tiers) - 1:
            raise ValueError(
                f"the policy has {len(policy.thresholds)} threshold(s) for {len(tiers)} tiers; "
                f"it needs one per non-final tier ({len(tiers) - 1})"
            )
        self.tiers = list(tiers)
        self.policy = policy
        self.tier_seconds: dict[str, float] = {t.name: 0.0 for t in self.tiers}
        """Wall seconds each tier spent generating, summed over batches since creation."""

    def run(self, requests: Sequence[Request]) -> list[Answer]:
        """Answer every request; returns answers in request order."""
        answers: list[Answer | None] = [None] * len(requests)
        traces: list[list[TraceStep]] = [[] for _ in requests]
        pending = list(range(len(requests)))
        last = len(self.tiers) - 1
        for index, tier in enumerate(self.tiers):
            if not pending:
                break
            results = tier.generate([requests[j] for j in pending])
            if len(results) != len(pending):
                raise RuntimeError(f"tier {tier.name} returned {len(results)} results for {len(pending)} requests")
            self.tier_seconds[tier.name] += max(r.seconds for r in results)
            escalated = []
            for j, result in zip(pending, results):
                score = self.policy.score(result)
                accepted = self.policy.accepts(index, score)
                decision = "final" if index == last else ("accept" if accepted else "escalate")
                traces[j].append(
                    TraceStep(
                        tier=tier.name,
                        score=score,
                        threshold=self.policy.threshold(index),
                        decision=decision,
                        prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        seconds=result.seconds,
                    )
                )
                if accepted:
                    answers[j] = Answer(
                        text=result.text,
                        tier=tier.name,
                        tier_index=index,
                        score=score,
                        finish_reason=result.finish_reason,
                        trace=traces[j],
                        id=requests[j].id,
                    )
                else:
                    escalated.append(j)
            pending = escalated
        assert all(a is not None for a in answers), "the last tier answers every request"
        return answers  # type: ignore[return-value]
