"""OpenAI API schemas (the subset vcascade serves) as pydantic models, plus the ``cascade``
extension a response carries.

Requests accept the fields OpenAI clients send and ignore unknown ones (as ``vllm serve``
does); fields vcascade cannot honour (``n > 1``, ``echo``, non-text content) are refused
with a 400 naming the field. What vLLM would refuse is refused here, before it reaches an
engine: text that is not valid Unicode (a lone UTF-16 surrogate such as ``"\\udcff"``, which
JSON allows), empty stop strings, an empty completion prompt, a ``seed`` outside int64.
Nothing in a request can name a file, a model path or a config: ``model`` is matched against
the ids ``/v1/models`` lists.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_LOGPROBS = 20
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # vLLM's engine client sends seeds as int64 (msgpack)


def _unicode(text: str, what: str = "the string") -> str:
    """``text`` unchanged if it is valid Unicode (encodable as UTF-8), else a ValueError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} is not valid Unicode: lone surrogate {text[err.start]!a} at index {err.start}; "
                         "send UTF-8 text") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CascadeOptions(BaseModel):
    """The request extension: ``max_tier`` forbids escalation past that tier index; ``group``
    names the request's kind of traffic for a per-group artifact (also header ``x-vcascade-group``)."""

    model_config = ConfigDict(extra="forbid")
    max_tier: int | None = Field(None, ge=0)
    group: Text | None = Field(None, min_length=1, max_length=200)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content")
    @classmethod
    def _valid_text(cls, value):
        return _unicode(value, "content") if isinstance(value, str) else value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Sampling(_Request):
    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    n: int = Field(1, ge=1, le=1, description="vcascade returns one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    cascade: CascadeOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        for i, stop in enumerate([value] if isinstance(value, str) else value or []):
            where = "stop" if isinstance(value, str) else f"stop[{i}]"
            if not stop:
                raise ValueError(f"{where} is an empty string; a stop sequence needs at least one character")
            _unicode(stop, where)
        return value

    def stop_sequences(self) -> tuple[str, ...] | None:
        if self.stop is None:
            return None
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("vcascade serves one prompt per request")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty; a completion needs at least one prompt token")
        return _unicode(value, "prompt")

    def output_limit(self) -> int | None:
        return self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TraceEntry(BaseModel):
    tier: str
    model: str
    score: float | None
    threshold: float | None
    decision: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    detail: str | None = None
    checkpoint: int | None = None
    """Tokens of this tier's answer when the decision was taken: 0 a skip, k a commit or
    escalation at checkpoint k (mid-generation), null at the end of the answer."""


class CascadeInfo(BaseModel):
    """Which tier answered and why: the decision, visible to the client."""

    tier: str
    tier_index: int
    model: str
    score: float | None = Field(description="the score of the step that decided (accept, escalate or skip)")
    threshold: float | None = Field(description="the threshold that score was compared with")
    escalated: bool
    skipped: bool
    in_scope: bool = Field(description="true when the artifact's guarantee covers this request")
    out_of_scope: list[str] = Field(description="why it does not (empty when in scope): max_tokens, system_prompt, "
                                                "endpoint, decoding, tier_range, fallback_answer, forced_artifact, "
                                                "group_unknown, dtype, uncalibrated")
    group: str | None = Field(None, description="the group whose thresholds decided (per-group artifacts)")
    trace: list[TraceEntry]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    cascade: CascadeInfo


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    cascade: CascadeInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vcascade"
    root: str | None = None
    max_model_len: int | None = None
    cascade: dict[str, Any] | None = Field(None, description="for the cascade id: its tiers in cost order")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo
