"""Plain dataclasses that flow through the engine: requests, tier results, answers, traces."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name (signal, equivalence); a ValueError for the CLI's error path."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Request:
    """One generation request.

    Exactly one of ``prompt`` and ``messages`` is set. A ``prompt`` is sent as a single
    user turn through the model's chat template, unless ``raw`` is true, in which case it
    is sent as plain text (completion style). ``messages`` are OpenAI-style chat turns.
    ``max_tokens`` overrides the tier's default when set.
    """

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    raw: bool = False
    max_tokens: int | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a request needs exactly one of 'prompt' and 'messages'")
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
            if not self.messages:
                raise ValueError("'messages' must not be empty")
            for turn in self.messages:
                if not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
                    raise ValueError("each message needs string 'role' and 'content'")
            if self.raw:
                raise ValueError("'raw' applies to 'prompt' only")


@dataclass
class Sample:
    """One sampled answer: ``token_logprobs`` has shape (T,), log p(chosen token)."""

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    cumulative_logprob: float

    @property
    def mean_logprob(self) -> float:
        """Length-normalized sequence log-likelihood (0.0 for a zero-token sample)."""
        return self.cumulative_logprob / len(self.token_ids) if self.token_ids else 0.0


@dataclass
class TierResult:
    """What one tier produced for one request (greedy answer).

    ``token_logprobs[i]`` is the log-probability of the chosen token ``token_ids[i]``;
    ``top_logprobs[i]`` lists the k most likely ``(token_id, logprob)`` pairs at position
    i, most likely first (k = the tier's ``logprobs`` setting). Log-probabilities are the
    model's raw ones (before temperature / top-p). ``seconds`` is the wall time of the
    batch this request was generated in.

    When the tier samples (semantic entropy), ``samples`` holds the N sampled answers,
    ``clusters`` their cluster ids, shape (N,), and ``greedy_cluster`` the cluster the greedy
    answer belongs to (``None`` when it matches no sample).
    """

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    cumulative_logprob: float
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    clusters: list[int] = field(default_factory=list)
    greedy_cluster: int | None = None


@dataclass
class TraceStep:
    """One tier's turn for one request: ``decision`` is ``accept``, ``escalate`` or ``final``."""

    tier: str
    score: float
    threshold: float | None
    decision: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@dataclass
class Answer:
    """The cascade's answer to one request: the accepted tier's text plus the full trace."""

    text: str
    tier: str
    tier_index: int
    score: float
    finish_reason: str | None
    trace: list[TraceStep] = field(default_factory=list)
    id: str | None = None

    @property
    def escalated(self) -> bool:
        return self.tier_index > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
