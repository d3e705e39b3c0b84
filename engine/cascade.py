"""The cascade controller: the cheapest tier answers unless its confidence is too low.

One controller for every driver (CLI batch, calibration, benchmarks, server). A request
walks the tiers cheapest first: the policy's skip rule may send it past tier 0 before any
generation; each tier answers; its rule scores the answer; the answer is kept when the
score reaches the tier's threshold, otherwise the request escalates. The last tier allowed
always answers, and every answer carries a trace of each tier it visited.

With a checkpointed policy (``Policy.checkpoints``) tier 0 is also decided mid-generation:
its answer streams from the engine, and when it reaches each checkpoint's token count the
prefix so far is scored by that checkpoint's rule — escalate (the generation is aborted
and tier 1 answers), commit (the prefix is released at once and the rest streams as the
engine decodes it) or continue; an answer that ends undecided goes to the end rule.
With greedy decoding the prefix scored here is exactly the prefix the calibration scored
(``engine.uncertainty.prefix``), so the certified configuration is the deployed one.

``stream`` yields the answering tier's text as it becomes final — a kept answer of a
non-final tier at once (it had to be complete to be scored), a committed one from its
checkpoint on, the last tier's tokens as the engine produces them — then the ``Answer``.
``answer`` and ``answer_all`` consume it.
Many requests run concurrently (``answer_all``): each engine batches what it receives, and
escalated requests reach the next tier while others are still at the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Sequence

from .errors import TierUnavailableError
from .policy import Checkpoints, Policy
from .scope import Scope
from .tiers.base import Chunk, Tier, assemble
from .types import Answer, Request, TierResult, TraceStep
from .uncertainty.batching import ScoringBatcher
from .uncertainty.prefix import prefix_result
from .uncertainty.rules import Query, Rule


@dataclass
class Delta:
    """Text of the answer that will be returned, as it becomes final, with its tokens'
    logprobs. ``trace`` is the request's trace so far (every decision taken before the
    answering tier's text started)."""

    chunk: Chunk
    tier_index: int
    trace: list[TraceStep]


@dataclass
class CheckpointStop:
    """A mid-generation decision in tier 0's answer: ``decision`` (``"commit"`` or
    ``"escalate"``) at ``checkpoint`` tokens, with the prefix rule's ``score`` and the
    ``threshold`` it was compared with; ``so_far`` is the answer as streamed until then."""

    decision: str
    checkpoint: int
    score: float
    threshold: float
    so_far: TierResult


@dataclass
class Overhead:
    """Time vcascade's own code spent on one request, by part: rendering the prompt, the
    prompt embedding, scoring (the server adds response building). ``parts`` are wall
    seconds (on a busy CPU they include waiting for a core); ``cpu`` the CPU seconds of the
    thread doing the work — what the code itself costs."""

    parts: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.parts.values())

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def add(self, part: str, wall: float, cpu: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + wall
        self.cpu[part] = self.cpu.get(part, 0.0) + cpu

    @contextlib.contextmanager
    def span(self, part: str):
        """Time a block of work on this thread under ``part``."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - wall, time.thread_time() - cpu)


class Cascade:
    """Ordered tiers (cheapest first) under one deferral ``Policy``."""

    def __init__(self, tiers: Sequence[Tier], policy: Policy, scope: Scope | None = None):
        if not tiers:
            raise ValueError("a cascade needs at least one tier")
        if len(policy.thresholds) != len(tiers) - 1:
            raise ValueError(
                f"the policy has {len(policy.thresholds)} threshold(s) for {len(tiers)} tiers; "
                f"it needs one per non-final tier ({len(tiers) - 1})"
            )
        for i, rule in enumerate(policy.rules):
            if rule.needs_samples and tiers[i].samples is None:
                raise ValueError(f"rule {rule.name!r} of tier {tiers[i].name} needs sampled answers; "
                                 "configure 'samples' on that tier")
        samples = tiers[0].samples
        if policy.checkpoints is not None and samples is not None and samples.answer != "greedy":
            raise ValueError(f"checkpoints read tier {tiers[0].name}'s greedy answer as it streams; its samples "
                             f"block answers with the {samples.answer!r}, which exists only at the end")
        self.tiers = list(tiers)
        self.policy = policy
        self.scorer = ScoringBatcher()
        """Scores the requests waiting together in one batch (``engine.uncertainty.batching``)."""
        self.scope = scope if scope is not None else Scope.uncalibrated()
        """The requests the policy's guarantee covers (uncalibrated: none)."""

    @property
    def tier_seconds(self) -> dict[str, float]:
        """Wall seconds each tier had requests in flight, since start-up (busy time)."""
        return {t.name: t.busy.seconds for t in self.tiers}

    def tier_index(self, name: str) -> int:
        for i, tier in enumerate(self.tiers):
            if tier.name == name:
                return i
        raise KeyError(name)

    async def stream(self, request: Request, first: int = 0, last: int | None = None,
                     overhead: Overhead | None = None) -> AsyncIterator[Delta | Answer]:
        """Run ``request`` through tiers ``first``..``last`` (default: all); see the module
        docstring. ``first == last`` pins one tier; ``last`` caps escalation."""
        last = len(self.tiers) - 1 if last is None else last
        if not 0 <= first <= last < len(self.tiers):
            raise ValueError(f"tier range {first}..{last} is outside 0..{len(self.tiers) - 1}")
        overhead = overhead if overhead is not None else Overhead()
        policy, group, _ = self.policy.for_group(
            self.policy.group_of(request, self.tiers[0].config.sampling.max_tokens))
        out_of_scope = self.scope.reasons(request, self.tiers, first, last)
        query = Query(request)
        trace: list[TraceStep] = []
        start = first
        skip_score = None
        if first == 0 < last and policy.skip is not None:
            score = skip_score = await self._score(overhead, query, policy.skip, None)
            if policy.skips(score):
                trace.append(TraceStep(self.tiers[0].name, score, policy.skip_threshold, "skip", 0, 0, 0.0,
                                       detail=policy.skip.name, checkpoint=0))
                start = 1
        kept: tuple[int, TierResult, float | None] | None = None
        for index in range(start, last + 1):
            tier, final = self.tiers[index], index == last
            checkpointed = index == 0 and not final and policy.checkpoints is not None
            emitted, stop = False, None
            try:
                result = None
                if final or checkpointed:
                    source = (self._checkpointed(tier, request, policy.checkpoints, query, overhead) if checkpointed
                              else tier.stream(request))
                    async with contextlib.aclosing(source) as items:
                        async for item in items:
                            if isinstance(item, TierResult):
                                result = item
                            elif isinstance(item, CheckpointStop):
                                stop = item
                                trace.append(TraceStep(tier.name, item.score, item.threshold, item.decision,
                                                       item.so_far.prompt_tokens, item.so_far.completion_tokens,
                                                       item.so_far.seconds, checkpoint=item.checkpoint))
                                if item.decision == "escalate":
                                    break  # closing the stream aborts tier 0's generation
                            else:
                                emitted = True
                                yield Delta(item, index, trace)
                else:
                    result = await tier.generate(request)
            except TierUnavailableError as err:
                # fall back to the last answer only if none of this tier's text went out yet
                if tier.config.on_error != "previous_answer" or kept is None or emitted:
                    raise
                trace.append(TraceStep(tier.name, None, policy.threshold(index), "error", 0, 0, 0.0,
                                       detail=str(err)))
                out_of_scope.append("fallback_answer")
                break
            if stop is not None and stop.decision == "escalate":
                overhead.add("rendering", stop.so_far.render_seconds, stop.so_far.render_cpu_seconds)
                continue  # a prefix is no answer to fall back to: ``kept`` stays as it was
            overhead.add("rendering", result.render_seconds, result.render_cpu_seconds)
            if stop is not None:  # committed: the answer was kept at its checkpoint and has streamed out
                trace[-1].completion_tokens, trace[-1].seconds = result.completion_tokens, result.seconds
                kept = (index, result, stop.score)
                break
            score = None
            if index < len(policy.rules):
                score = await self._score(overhead, query, policy.rules[index], result)
            accepted = final or policy.accepts(index, score)
            decision = "final" if final else ("accept" if accepted else "escalate")
            trace.append(TraceStep(tier.name, score, None if final else policy.threshold(index), decision,
                                   result.prompt_tokens, result.completion_tokens, result.seconds))
            kept = (index, result, score)
            if accepted:
                if not final:
                    yield Delta(_whole(result), index, trace)
                break
        else:  # pragma: no cover - the loop always breaks on the last tier
            raise AssertionError("the last tier answers every request")
        index, result, score = kept
        if trace[-1].decision == "error":
            yield Delta(_whole(result), index, trace)
        yield Answer(text=result.text, tier=self.tiers[index].name, tier_index=index, score=score,
                     finish_reason=result.finish_reason, trace=trace, id=request.id, result=result,
                     out_of_scope=out_of_scope, group=group, skip_score=skip_score)

    async def answer(self, request: Request, first: int = 0, last: int | None = None) -> Answer:
        """The cascade's answer to one request (see ``stream``)."""
        async with contextlib.aclosing(self.stream(request, first, last)) as stream:
            async for item in stream:
                if isinstance(item, Answer):
                    return item
        raise AssertionError("stream ended without an answer")

    async def answer_all(self, requests: Sequence[Request], first: int = 0, last: int | None = None) -> list[Answer]:
        """Answers to all ``requests``, run concurrently; in request order."""
        return list(await asyncio.gather(*(self.answer(r, first, last) for r in requests)))

    async def _checkpointed(self, tier: Tier, request: Request, checkpoints: Checkpoints, query: Query,
                            overhead: Overhead) -> AsyncIterator[CheckpointStop | Chunk | TierResult]:
        """Tier 0's answer decided at ``checkpoints`` as it streams.

        Yields, in order: a ``CheckpointStop`` when a checkpoint escalates (the caller stops
        iterating, which aborts the generation) or commits; after a commit, the answer so far
        as one ``Chunk`` and then each new chunk as the engine produces it; last, the complete
        ``TierResult`` (committed, or undecided: the end rule decides). A chunk may bring
        several tokens; the checkpoints it passes are scored in order, each on exactly its
        first k tokens (``prefix_result``), as the calibration scored them.
        """
        start = time.perf_counter()
        budget = tier.decoding(request).max_tokens
        chunks: list[Chunk] = []
        j, tokens, committed = 0, 0, False
        async with contextlib.aclosing(tier.stream(request)) as stream:  # leaving it aborts the generation
            async for item in stream:
                if isinstance(item, TierResult) or committed:
                    yield item
                    continue
                chunks.append(item)
                tokens += len(item.token_logprobs)
                while j < len(checkpoints.tokens) and tokens >= checkpoints.tokens[j]:
                    k = checkpoints.tokens[j]
                    so_far = assemble(chunks)
                    so_far.seconds, so_far.max_tokens = time.perf_counter() - start, budget
                    scored = so_far if so_far.finish_reason else replace(so_far, text="".join(so_far.tokens))
                    score = await self._score(overhead, query, checkpoints.rules[j], prefix_result(scored, k))
                    decision = checkpoints.decide(j, score)
                    if decision != "continue":
                        threshold = checkpoints.escalate[j] if decision == "escalate" else checkpoints.commit[j]
                        yield CheckpointStop(decision, k, score, threshold, so_far)
                        if decision == "escalate":
                            return
                        committed = True
                        yield _whole(so_far)
                        break
                    j += 1

    async def _score(self, overhead: Overhead, query: Query, rule: Rule, result: TierResult | None) -> float:
        """``rule``'s score of ``result`` (the skip rule: of the request alone, ``result`` None)."""
        scored = await self.scorer.score(rule, query, result)  # batched with the requests waiting meanwhile
        if scored.featurized:
            overhead.add("embedding", scored.embedding_wall, scored.embedding_cpu)
        overhead.add("scoring", scored.wait + scored.scoring_wall, scored.scoring_cpu)
        return scored.score


def _whole(result: TierResult) -> Chunk:
    """A complete result as one chunk (a kept answer is released at once)."""
    return Chunk(text=result.text, token_ids=list(result.token_ids), tokens=list(result.tokens),
                 token_logprobs=list(result.token_logprobs), top_logprobs=list(result.top_logprobs),
                 finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens)
