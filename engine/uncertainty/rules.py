"""Deferral rules: what scores a tier's answer (higher = keep it) and, before generating,
a request (higher = worth trying this tier at all).

A ``Rule`` scores (query, result) pairs — a built-in signal over the answer's logprobs
(``SignalRule``) or a learned model over many answer and request features
(``engine.uncertainty.learned``). A ``SkipRule`` scores the request alone. Both score
batches (``score_many``), so calibration scores thousands of cached items at once and the
cascade scores one; a ``Query`` carries the request and, when a rule needs it, the
prompt's sentence embedding, computed once per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..types import Request, TierResult
from .signals import SAMPLING_SIGNALS, Signal, get_signal


@dataclass
class Query:
    """A request as the rules see it, with its prompt features computed once per request:
    ``embedding`` (MiniLM) has shape (384,), ``hashed`` (hashed n-grams) shape (512,),
    ``static`` (static MiniLM token vectors) shape (256,)."""

    request: Request
    embedding: np.ndarray | None = None
    hashed: np.ndarray | None = None
    static: np.ndarray | None = None


def embed_queries(queries: Sequence[Query]) -> None:
    """Fill in the missing prompt embeddings, in one batch."""
    from .embedding import embed

    todo = [q for q in queries if q.embedding is None]
    if todo:
        for query, vector in zip(todo, embed([q.request.text for q in todo])):
            query.embedding = vector


class Rule(Protocol):
    """Scores answers; ``spec`` is its JSON description in an artifact."""

    name: str
    needs_samples: bool
    needs_embedding: bool

    def score_many(self, queries: Sequence[Query], results: Sequence[TierResult]) -> np.ndarray: ...

    def spec(self) -> dict: ...


class SkipRule(Protocol):
    """Scores requests before any generation (shape (n,) for n queries)."""

    name: str
    needs_embedding: bool

    def score_many(self, queries: Sequence[Query]) -> np.ndarray: ...

    def spec(self) -> dict: ...


class SignalRule:
    """A built-in signal (``engine.uncertainty.signals``) as a deferral rule."""

    needs_embedding = False

    def __init__(self, name: str):
        self.name = name
        self.signal: Signal = get_signal(name)
        self.needs_samples = name in SAMPLING_SIGNALS

    def score_many(self, queries: Sequence[Query], results: Sequence[TierResult]) -> np.ndarray:
        return np.array([self.signal(r) for r in results], dtype=np.float64)

    def spec(self) -> dict:
        return {"kind": "signal", "name": self.name}

    def __repr__(self) -> str:
        return f"SignalRule({self.name!r})"


def score_one(rule: Rule, query: Query, result: TierResult) -> float:
    return float(rule.score_many([query], [result])[0])
