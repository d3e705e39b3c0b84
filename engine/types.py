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

    Decoding overrides (``None``: the tier's configured value): ``max_tokens``,
    ``temperature``, ``top_p``, ``stop``, ``seed``. A calibration certifies the tiers'
    configured decoding; ``engine.scope.Scope`` tells when a request departs from it.
    ``group`` names the kind of traffic the request belongs to (a per-group artifact has a
    policy per group); it never changes what a tier generates.
    """

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    raw: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    id: str | None = None
    group: str | None = None

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
        if self.stop is not None:
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def text(self) -> str:
        """What the user asked, as plain text: the prompt, or the user turns joined by newlines
        (the input of request-level features such as the prompt embedding)."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")  # type: ignore[union-attr]


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
        return self.cumulative_logprob / len(self.token_logprobs) if self.token_logprobs else 0.0


@dataclass
class TierResult:
    """What one tier produced for one request (greedy answer).

    ``token_logprobs[i]`` is the log-probability of the i-th chosen token (text
    ``tokens[i]``, id ``token_ids[i]``; remote tiers report no ids); ``top_logprobs[i]``
    lists the k most likely ``(token, logprob)`` pairs at position i, most likely first
    (k = the tier's ``logprobs`` setting); ``max_tokens`` is the answer budget it ran with. Log-probabilities are the model's raw ones
    (before temperature / top-p). ``seconds`` is the wall time from submitting the request
    to this tier until its answer was complete.

    When the tier samples (semantic entropy), ``samples`` holds the N sampled answers,
    ``clusters`` their cluster ids, shape (N,), and ``greedy_cluster`` the cluster the greedy
    answer belongs to (``None`` when it matches no sample).
    """

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    top_logprobs: list[list[tuple[Any, float]]]
    cumulative_logprob: float
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    tokens: list[str] = field(default_factory=list)
    render_seconds: float = 0.0
    render_cpu_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    clusters: list[int] = field(default_factory=list)
    greedy_cluster: int | None = None
    max_tokens: int | None = None
    """The answer budget the tier generated under (``None``: not recorded, e.g. results
    cached before it was)."""

    @property
    def sampled_tokens(self) -> int:
        """Tokens generated for the samples (the sampling cost beyond the greedy answer)."""
        return sum(len(s.token_logprobs) for s in self.samples)

    @classmethod
    def from_dict(cls, data: dict) -> "TierResult":
        """Inverse of ``dataclasses.asdict`` (cached results, JSON round trips)."""
        samples = [Sample(**s) for s in data.get("samples", [])]
        top = [[tuple(p) for p in position] for position in data["top_logprobs"]]
        return cls(**{**data, "samples": samples, "top_logprobs": top})


DECISIONS = ("accept", "commit", "escalate", "final", "skip", "error")
"""``accept``: a non-final tier keeps its finished answer; ``commit``: it keeps its answer at a
checkpoint, mid-generation (the rest streams as it is decoded); ``escalate``: its score is
below the threshold (at a checkpoint: tier 0's generation is aborted there); ``final``: the
last tier allowed answers; ``skip``: the pre-generation score sent the request past this tier
without generating; ``error``: the tier failed and the config let the cascade answer with an
earlier tier."""


@dataclass
class TraceStep:
    """One tier's turn for one request; ``decision`` is one of ``DECISIONS``.

    ``score`` is the tier's rule score (``None`` for a tier without a rule: the last one);
    ``seconds`` is the wall time the request spent at this tier (0 for a skip);
    ``detail`` carries an error message or the skip rule's name; ``checkpoint`` is the number
    of the tier's tokens the decision was taken at: 0 for a skip (before generating), k for a
    mid-generation commit or escalation at checkpoint k, ``None`` at the end of the answer.
    """

    tier: str
    score: float | None
    threshold: float | None
    decision: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    detail: str | None = None
    checkpoint: int | None = None


def escalated(tier: str, trace: list[TraceStep]) -> bool:
    """Did ``tier`` answer after an earlier tier of the ``trace`` (so far) escalated or was skipped?"""
    return bool(trace) and trace[0].tier != tier


@dataclass
class Answer:
    """The cascade's answer to one request: the answering tier's result plus the full trace."""

    text: str
    tier: str
    tier_index: int
    score: float | None
    finish_reason: str | None
    trace: list[TraceStep] = field(default_factory=list)
    id: str | None = None
    result: TierResult | None = field(default=None, repr=False, compare=False)
    """The answering tier's full result (tokens and logprobs), for API responses."""
    out_of_scope: list[str] = field(default_factory=list)
    """Why the calibrated guarantee does not cover this answer (``engine.scope.REASONS``); empty: it does."""
    group: str | None = None
    """The group whose policy decided (a per-group artifact), ``None`` for one policy."""
    skip_score: float | None = None
    """The skip rule's score of the request, also when it did not skip (``None``: no skip rule
    ran); the guarantee monitor compares it with the calibration items' skip scores."""

    @property
    def in_scope(self) -> bool:
        return not self.out_of_scope

    @property
    def escalated(self) -> bool:
        """Did a tier later than the first one the request visited answer (by escalation or
        skip)? A request pinned to one tier is never escalated."""
        return escalated(self.tier, self.trace)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the answer and its trace (without the token-level result)."""
        data = asdict(self)
        data.pop("result")
        return data
