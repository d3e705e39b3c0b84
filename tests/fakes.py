"""A scripted fake tier for unit-testing the cascade controller without vLLM."""

from __future__ import annotations

from typing import Sequence

from engine.types import Request, TierResult


def result_with_logprobs(text: str, logprobs: Sequence[float], seconds: float = 0.5) -> TierResult:
    """A TierResult whose chosen tokens have ``logprobs`` (top-1 = chosen, top-2 = ln 0.01)."""
    return TierResult(
        text=text,
        token_ids=list(range(len(logprobs))),
        token_logprobs=list(logprobs),
        top_logprobs=[[(i, lp), (10_000 + i, -4.605170)] for i, lp in enumerate(logprobs)],
        cumulative_logprob=float(sum(logprobs)),
        finish_reason="stop",
        prompt_tokens=7,
        completion_tokens=len(logprobs),
        seconds=seconds,
    )


class ScriptedTier:
    """Answers each prompt with a scripted (text, per-token logprobs); records every batch."""

    def __init__(self, name: str, script: dict[str, tuple[str, Sequence[float]]], seconds: float = 0.5):
        self.name = name
        self.script = script
        self.seconds = seconds
        self.batches: list[list[str]] = []

    def generate(self, requests: Sequence[Request]) -> list[TierResult]:
        prompts = [r.prompt for r in requests]
        self.batches.append(prompts)
        return [result_with_logprobs(*self.script[p], seconds=self.seconds) for p in prompts]
