"""Errors a request can meet in the engine, each knowing the OpenAI-style field it concerns.

The server maps them to HTTP statuses (``RequestError`` → 400, ``TierUnavailableError`` →
502/503, ``EngineDeadError`` → 503); the CLI prints their message.
"""

from __future__ import annotations


class RequestError(ValueError):
    """A request the tiers cannot serve as asked; ``param`` names the offending field."""

    param: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        if param is not None:
            self.param = param


class PromptTooLongError(RequestError):
    """A prompt that does not fit a tier's context (``max_model_len``)."""

    param = "input_tokens"


class MaxTokensError(RequestError):
    """``max_tokens`` larger than what the context leaves after the prompt."""

    param = "max_tokens"


class TierUnavailableError(RuntimeError):
    """A tier that could not answer (a remote endpoint down, timing out or failing after its
    retries). ``status`` is the HTTP status the server reports: 502 for a bad upstream
    answer, 503 when the upstream is unreachable or overloaded."""

    def __init__(self, message: str, tier: str, status: int = 502):
        super().__init__(message)
        self.tier = tier
        self.status = status


class EngineDeadError(RuntimeError):
    """A tier's engine process died; the server reports 503 and ``/health`` fails."""
