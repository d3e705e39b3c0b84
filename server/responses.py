"""Engine answers → OpenAI responses and streamed chunks (chat and completions).

One place builds every body: the ``cascade`` extension, usage (the answering tier's tokens,
what the client received; every tier's tokens are in the trace), logprobs in the chat
format (``content[j] = {token, logprob, bytes, top_logprobs}``) and the completions format
(``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``), and the decision
headers ``x-vcascade-tier``, ``x-vcascade-escalated``, ``x-vcascade-score``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

from vcascade.engine.tiers.base import Chunk
from vcascade.engine.types import Answer, TraceStep, escalated

from .schemas import (AssistantMessage, CascadeInfo, ChatChoice, ChatCompletionResponse, ChoiceLogprobs,
                      CompletionChoice, CompletionLogprobs, CompletionResponse, TokenLogprob, TopLogprob, TraceEntry,
                      Usage)


@dataclass(frozen=True)
class Shape:
    """What the client asked for: endpoint kind, model id, logprobs (top-k; None = none)."""

    chat: bool
    model: str
    logprobs: int | None
    include_usage: bool = False


def decisive_step(trace: Sequence[TraceStep]) -> TraceStep | None:
    """The last step a rule scored (the accept, escalate or skip that decided), if any."""
    for step in reversed(trace):
        if step.score is not None and step.decision in ("accept", "commit", "escalate", "final", "skip"):
            return step
    return None


def decision_headers(tier: str, tier_index: int, trace: Sequence[TraceStep]) -> dict[str, str]:
    step = decisive_step(trace)
    score = None if step is None else step.score
    return {"x-vcascade-tier": tier, "x-vcascade-escalated": "true" if escalated(tier, trace) else "false",
            "x-vcascade-score": "none" if score is None else f"{score:.6g}"}


def _finite(value: float | None) -> float | None:
    """JSON has no infinities: an infinite score (an empty answer) or threshold (accept all /
    none) is sent as null; the decision beside it says what happened."""
    return value if value is None or math.isfinite(value) else None


def cascade_info(answer: Answer, models: dict[str, str]) -> CascadeInfo:
    steps = [TraceEntry(tier=s.tier, model=models[s.tier], score=_finite(s.score), threshold=_finite(s.threshold),
                        decision=s.decision,
                        prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens, seconds=s.seconds,
                        detail=s.detail, checkpoint=s.checkpoint) for s in answer.trace]
    step = decisive_step(answer.trace)
    return CascadeInfo(tier=answer.tier, tier_index=answer.tier_index, model=models[answer.tier],
                       score=None if step is None else _finite(step.score),
                       threshold=None if step is None else _finite(step.threshold),
                       escalated=answer.escalated, skipped=any(s.decision == "skip" for s in answer.trace),
                       in_scope=answer.in_scope, out_of_scope=list(answer.out_of_scope), group=answer.group,
                       trace=steps)


def _usage(answer: Answer) -> Usage:
    result = answer.result
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                 total_tokens=result.prompt_tokens + result.completion_tokens)


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(tokens: Sequence[str], logprobs: Sequence[float], top: Sequence[Sequence[tuple]], k: int
                  ) -> ChoiceLogprobs:
    content = [TokenLogprob(token=t, logprob=lp, bytes=_utf8(t),
                            top_logprobs=[TopLogprob(token=str(a), logprob=v, bytes=_utf8(str(a))) for a, v in alts[:k]])
               for t, lp, alts in zip(tokens, logprobs, top)]
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokens: Sequence[str], logprobs: Sequence[float], top: Sequence[Sequence[tuple]], k: int,
                        offset: int = 0) -> CompletionLogprobs:
    offsets, position = [], offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return CompletionLogprobs(tokens=list(tokens), token_logprobs=list(logprobs),
                              top_logprobs=[{str(a): v for a, v in alts[:k]} for alts in top], text_offset=offsets)


def full_response(request_id: str, shape: Shape, answer: Answer, models: dict[str, str]):
    """The non-streamed body for one answer."""
    result = answer.result
    info = cascade_info(answer, models)
    if shape.chat:
        logprobs = None
        if shape.logprobs is not None:
            logprobs = chat_logprobs(result.tokens, result.token_logprobs, result.top_logprobs, shape.logprobs)
        choice = ChatChoice(message=AssistantMessage(content=answer.text), logprobs=logprobs,
                            finish_reason=answer.finish_reason)
        return ChatCompletionResponse(id=request_id, model=shape.model, choices=[choice], usage=_usage(answer),
                                      cascade=info)
    logprobs = None
    if shape.logprobs is not None:
        logprobs = completion_logprobs(result.tokens, result.token_logprobs, result.top_logprobs, shape.logprobs)
    choice = CompletionChoice(text=answer.text, logprobs=logprobs, finish_reason=answer.finish_reason)
    return CompletionResponse(id=request_id, model=shape.model, choices=[choice], usage=_usage(answer), cascade=info)


class ChunkWriter:
    """Server-sent events for one streamed request, in the OpenAI chunk format."""

    def __init__(self, request_id: str, shape: Shape, created: int):
        self.id, self.shape, self.created = request_id, shape, created
        self.object = "chat.completion.chunk" if shape.chat else "text_completion"
        self.text_offset = 0

    def _event(self, body: dict) -> str:
        return f"data: {json.dumps(body)}\n\n"

    def _base(self, choices: list) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.shape.model,
                "choices": choices}

    def start(self) -> str:
        """The chat role chunk (completions have none)."""
        if not self.shape.chat:
            return ""
        return self._event(self._base([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]))

    def delta(self, chunk: Chunk) -> str:
        if not chunk.text and not chunk.token_logprobs:
            return ""
        k = self.shape.logprobs
        if self.shape.chat:
            logprobs = None if k is None else chat_logprobs(chunk.tokens, chunk.token_logprobs, chunk.top_logprobs,
                                                           k).model_dump()
            choice = {"index": 0, "delta": {"content": chunk.text}, "logprobs": logprobs, "finish_reason": None}
        else:
            logprobs = None
            if k is not None:
                logprobs = completion_logprobs(chunk.tokens, chunk.token_logprobs, chunk.top_logprobs, k,
                                               self.text_offset).model_dump()
            choice = {"index": 0, "text": chunk.text, "logprobs": logprobs, "finish_reason": None}
        self.text_offset += len(chunk.text)
        return self._event(self._base([choice]))

    def finish(self, answer: Answer, models: dict[str, str]) -> str:
        """The finish-reason chunk, the usage chunk when asked, [DONE]. The ``cascade`` decision
        rides on the last of them: the usage chunk (``stream_options.include_usage``), else
        the finish-reason chunk."""
        empty = {"content": ""} if self.shape.chat else None
        choice = {"index": 0, "logprobs": None, "finish_reason": answer.finish_reason}
        choice.update({"delta": empty} if self.shape.chat else {"text": ""})
        chunks = [self._base([choice])]
        if self.shape.include_usage:
            chunks.append({**self._base([]), "usage": _usage(answer).model_dump()})
        chunks[-1]["cascade"] = cascade_info(answer, models).model_dump()
        return "".join(self._event(c) for c in chunks) + "data: [DONE]\n\n"

    def error(self, status: int, body: dict) -> str:
        """An error after the stream started (vLLM sends the error body as an event)."""
        return self._event(body) + "data: [DONE]\n\n"
