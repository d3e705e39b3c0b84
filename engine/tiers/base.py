"""A tier: one model behind a backend, its decoding, its cost, and its sampling plan.

Every tier of every driver (CLI batch, calibration job, benchmarks, server) goes through
``Tier.stream`` — the one generation path. A backend (an in-process vLLM engine, or a
remote OpenAI-compatible server) provides two primitives:

* ``stream(request, decoding)`` — the greedy (or configured) answer as it is generated,
  in ``Chunk``s of new tokens with their logprobs and top-k alternatives;
* ``sample(request, decoding, n)`` — n sampled answers at once (semantic entropy).

The tier turns chunks into one ``TierResult``, runs the semantic-entropy sampling plan
(samples drawn concurrently with the greedy answer, adaptive second round, clustering by
meaning), and times the request. Requests are submitted one by one and concurrently;
batching is the engine's job (vLLM's continuous batching).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol, Sequence

from ..config import EngineTierConfig, RemoteTierConfig
from ..types import Request, Sample, TierResult
from ..uncertainty.equivalence import get_equivalence
from ..uncertainty.sampling import assign_clusters, is_decisive, largest_cluster_text


@dataclass(frozen=True)
class Decoding:
    """Effective decoding of one request at one tier: the tier's configured sampling with
    the request's overrides applied. ``logprobs`` is the top-k returned per position."""

    max_tokens: int
    temperature: float
    top_p: float
    logprobs: int
    stop: tuple[str, ...] | None = None
    seed: int | None = None


@dataclass
class Chunk:
    """New tokens of a streamed answer: each list has one entry per new token.

    ``prompt_tokens`` and the time spent turning the request into model input
    (``render_seconds`` wall, ``render_cpu_seconds`` CPU) are set on the first chunk;
    ``finish_reason`` on the last.
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[Any, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    render_seconds: float = 0.0
    render_cpu_seconds: float = 0.0


class Backend(Protocol):
    """Where a tier's model runs. ``max_model_len`` is its context length."""

    max_model_len: int

    def stream(self, request: Request, decoding: Decoding) -> AsyncIterator[Chunk]: ...

    async def sample(self, request: Request, decoding: Decoding, n: int) -> list[Sample]: ...

    def identity(self) -> dict[str, Any]: ...

    def check_health(self) -> None: ...

    async def shutdown(self) -> None: ...


class Tier:
    """One model + its decoding defaults + its cost, behind a ``Backend``."""

    def __init__(self, config: EngineTierConfig | RemoteTierConfig, backend: Backend):
        self.config = config
        self.name = config.name
        self.backend = backend
        self.samples = config.samples
        self.equivalence = get_equivalence(config.samples.equivalence) if config.samples else None
        self.busy = BusyClock()

    @property
    def max_model_len(self) -> int:
        return self.backend.max_model_len

    def decoding(self, request: Request) -> Decoding:
        """The tier's sampling with the request's overrides. The backend checks ``max_tokens``
        against the room the prompt leaves: an error when the request set it, else clamped."""
        s = self.config.sampling
        return Decoding(
            max_tokens=request.max_tokens or s.max_tokens,
            temperature=s.temperature if request.temperature is None else request.temperature,
            top_p=s.top_p if request.top_p is None else request.top_p,
            logprobs=s.logprobs,
            stop=request.stop,
            seed=request.seed,
        )

    def keeps_calibrated_decoding(self, request: Request) -> bool:
        """Does ``request`` sample as this tier was calibrated (temperature, top_p, stop and seed
        overrides, if any, equal the configured values)? ``max_tokens`` and the instructions
        are checked by ``engine.scope.Scope``."""
        s = self.config.sampling
        temperature = s.temperature if request.temperature is None else request.temperature
        return (temperature == s.temperature and (request.top_p is None or request.top_p == s.top_p)
                and not request.stop and (request.seed is None or temperature == 0))

    async def stream(self, request: Request, stream_text: bool = True) -> AsyncIterator[Chunk | TierResult]:
        """Yield the answer's ``Chunk``s as the backend produces them (when ``stream_text``
        and the returned text is the greedy answer), then the complete ``TierResult``.

        Samples for semantic entropy are drawn concurrently with the greedy answer. Closing
        the iterator early (a client that disconnects) aborts the generation in the backend.
        """
        decoding = self.decoding(request)
        start = time.perf_counter()
        first_round = None
        if self.samples is not None:
            first_round = asyncio.ensure_future(
                self.backend.sample(request, self._sample_decoding(decoding), self.samples.initial or self.samples.n))
        passthrough = stream_text and (self.samples is None or self.samples.answer == "greedy")
        chunks: list[Chunk] = []
        with self.busy:
            try:
                async for chunk in self.backend.stream(request, decoding):
                    chunks.append(chunk)
                    if passthrough:
                        yield chunk
                result = assemble(chunks)
                if first_round is not None:
                    result.samples = await first_round
                    first_round = None
                    await self._finish_sampling(request, decoding, result)
            finally:
                if first_round is not None:
                    first_round.cancel()
        result.seconds = time.perf_counter() - start
        result.max_tokens = decoding.max_tokens
        yield result

    async def generate(self, request: Request) -> TierResult:
        """The complete answer (and samples) for one request."""
        result = None
        async for item in self.stream(request, stream_text=False):
            result = item
        assert isinstance(result, TierResult)
        return result

    async def generate_many(self, requests: Sequence[Request]) -> list[TierResult]:
        """All requests submitted at once (the engine batches them); results in order."""
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    def _sample_decoding(self, greedy: Decoding) -> Decoding:
        s = self.samples
        return Decoding(max_tokens=min(s.max_tokens or greedy.max_tokens, greedy.max_tokens),
                        temperature=s.temperature, top_p=s.top_p, logprobs=0, stop=greedy.stop)

    async def _finish_sampling(self, request: Request, decoding: Decoding, result: TierResult) -> None:
        """Cluster the first round; draw the rest when it is not decisive; cluster again."""
        s = self.samples
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, assign_clusters, [result], self.equivalence)
        initial = s.initial or s.n
        if initial < s.n and not is_decisive(result, s.stop_share):
            result.samples += await self.backend.sample(request, self._sample_decoding(decoding), s.n - initial)
            await loop.run_in_executor(None, assign_clusters, [result], self.equivalence)
        if s.answer == "largest_cluster":
            result.text = largest_cluster_text(result)

    async def warm_up(self, batch: int) -> None:
        """Pay the one-off logprob compile and the first-batch cost before real traffic."""
        if batch:
            await self.generate_many([Request(prompt="Hello", max_tokens=4)] * batch)


def assemble(chunks: Sequence[Chunk]) -> TierResult:
    """One ``TierResult`` from a streamed answer's chunks (``seconds`` set by the caller)."""
    result = TierResult(text="", token_ids=[], token_logprobs=[], top_logprobs=[], cumulative_logprob=0.0,
                        finish_reason=None, prompt_tokens=0, completion_tokens=0, seconds=0.0)
    parts = []
    for chunk in chunks:
        parts.append(chunk.text)
        result.token_ids += chunk.token_ids
        result.tokens += chunk.tokens
        result.token_logprobs += chunk.token_logprobs
        result.top_logprobs += chunk.top_logprobs
        if chunk.prompt_tokens is not None:
            result.prompt_tokens = chunk.prompt_tokens
        if chunk.finish_reason is not None:
            result.finish_reason = chunk.finish_reason
        result.render_seconds += chunk.render_seconds
        result.render_cpu_seconds += chunk.render_cpu_seconds
    result.text = "".join(parts)
    result.cumulative_logprob = float(sum(result.token_logprobs))
    result.completion_tokens = len(result.token_logprobs)
    return result


class BusyClock:
    """Wall seconds during which at least one request was in flight at a tier.

    With continuous batching, requests overlap; the union of their intervals is the time
    the tier's engine was busy on this program's behalf (what a cascade's "seconds per
    tier" should add up). Use as a context manager around each request.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.in_flight = 0
        self._since = 0.0

    def __enter__(self) -> "BusyClock":
        if self.in_flight == 0:
            self._since = time.perf_counter()
        self.in_flight += 1
        return self

    def __exit__(self, *exc) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.seconds += time.perf_counter() - self._since

    def reset(self) -> None:
        self.seconds = 0.0
        if self.in_flight:
            self._since = time.perf_counter()
