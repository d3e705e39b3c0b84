"""A scripted fake backend for unit-testing the cascade controller without vLLM.

``ScriptedBackend`` answers each prompt with a scripted (text, per-token logprobs) and
records every request it receives; ``scripted_tier`` wraps it in the real ``Tier`` so the
controller runs exactly the code it runs over vLLM.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from vcascade.engine.config import EngineTierConfig, SamplingConfig
from vcascade.engine.errors import TierUnavailableError
from vcascade.engine.tiers import Chunk, Tier
from vcascade.engine.types import Request, Sample, TierResult

SECOND = -4.605170  # ln 0.01: the runner-up token at every position


def result_with_logprobs(text: str, logprobs: Sequence[float], seconds: float = 0.5) -> TierResult:
    """A TierResult whose chosen tokens have ``logprobs`` (top-1 = chosen, top-2 = ln 0.01)."""
    return TierResult(
        text=text,
        token_ids=list(range(len(logprobs))),
        token_logprobs=list(logprobs),
        top_logprobs=[[(f"t{i}", lp), (f"alt{i}", SECOND)] for i, lp in enumerate(logprobs)],
        cumulative_logprob=float(sum(logprobs)),
        finish_reason="stop",
        prompt_tokens=7,
        completion_tokens=len(logprobs),
        seconds=seconds,
        tokens=[f"t{i}" for i in range(len(logprobs))],
    )


class ScriptedBackend:
    """Streams each scripted answer after ``delay`` seconds, ``chunk_tokens`` tokens per chunk
    and ``token_delay`` seconds per chunk; ``fail`` makes every request raise
    ``TierUnavailableError``. ``produced[prompt]`` counts the tokens streamed so far and
    ``aborted`` lists the prompts whose stream was closed before its last token (an engine
    abort)."""

    def __init__(self, name: str, script: dict[str, tuple[str, Sequence[float]]], delay: float = 0.0,
                 fail: bool = False, token_delay: float = 0.0, chunk_tokens: int = 1):
        self.name, self.script, self.delay, self.fail = name, script, delay, fail
        self.token_delay, self.chunk_tokens = token_delay, chunk_tokens
        self.max_model_len = 512
        self.received: list[str] = []
        self.produced: dict[str, int] = {}
        self.aborted: list[str] = []

    async def stream(self, request: Request, decoding):
        self.received.append(request.text)
        if self.fail:
            raise TierUnavailableError(f"tier {self.name} is down", tier=self.name)
        await asyncio.sleep(self.delay)
        text, logprobs = self.script[request.text]
        pieces = [text[: len(text) // 2], text[len(text) // 2 :]] if len(logprobs) == 2 else [text] + [""] * (
            len(logprobs) - 1)
        self.produced[request.text] = 0
        finished = False
        try:
            for first in range(0, len(logprobs), self.chunk_tokens):
                if first and self.token_delay:
                    await asyncio.sleep(self.token_delay)
                span = range(first, min(first + self.chunk_tokens, len(logprobs)))
                self.produced[request.text] = span[-1] + 1
                finished = span[-1] == len(logprobs) - 1
                yield Chunk(text="".join(pieces[i] if i < len(pieces) else "" for i in span),
                            token_ids=list(span), tokens=[f"t{i}" for i in span],
                            token_logprobs=[logprobs[i] for i in span],
                            top_logprobs=[[(f"t{i}", logprobs[i]), (f"alt{i}", SECOND)] for i in span],
                            finish_reason="stop" if finished else None, prompt_tokens=7 if first == 0 else None)
        finally:
            if not finished:
                self.aborted.append(request.text)

    async def sample(self, request: Request, decoding, n: int) -> list[Sample]:
        text, logprobs = self.script[request.text]
        return [Sample(text, list(range(len(logprobs))), list(logprobs), float(sum(logprobs)))] * n

    def identity(self):
        return {"backend": "scripted"}

    def check_health(self):
        pass

    async def shutdown(self):
        pass


def scripted_tier(name: str, script: dict[str, tuple[str, Sequence[float]]], delay: float = 0.0, fail: bool = False,
                  token_delay: float = 0.0, chunk_tokens: int = 1, max_tokens: int = 8, **config) -> Tier:
    tier_config = EngineTierConfig(name=name, model=f"/models/{name}", sampling=SamplingConfig(max_tokens=max_tokens),
                                   **config)
    return Tier(tier_config, ScriptedBackend(name, script, delay, fail, token_delay, chunk_tokens))
