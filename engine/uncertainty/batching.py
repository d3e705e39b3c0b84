"""Scoring the requests that wait together, in one batch.

The controller scores one request at a time in ``Cascade.stream`` (a skip score before
tier 0, a rule score after each non-final tier), but many requests are in flight at once.
Scoring each alone pays a rule's fixed costs every time: a one-row prediction of a
gradient-boosted model costs about as much as a 64-row one, and a prompt embedding alone
costs more CPU per prompt than in a batch. ``ScoringBatcher`` collects the scoring jobs
submitted while the previous batch ran (or within ``window`` seconds, default 0: those
already waiting), then computes their prompt features in one batch and each rule's scores
in one ``score_many`` call per rule, and hands every request its score and its share of
the CPU.

A batch that needs the MiniLM embedding runs in a worker thread (the model releases the
GIL; the event loop keeps serving); others run inline on the loop, which costs less than
a thread hop. At most one batch runs at a time per event loop, so batches grow with the
load by themselves: at low load every request is scored at once, alone.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import Sequence

from ..types import TierResult
from .rules import Query
from .threads import single_threaded


@dataclass
class Scored:
    """One job's score and the batch's work it took part in: wall seconds of that work (the
    job waited for all of it) and its share of the CPU seconds.

    ``embedding_*`` is the prompt features' work (zero when the query had them already);
    ``wait`` the wall time from submission to the start of its batch."""

    score: float
    embedding_wall: float = 0.0
    embedding_cpu: float = 0.0
    scoring_wall: float = 0.0
    scoring_cpu: float = 0.0
    wait: float = 0.0
    featurized: bool = False


@dataclass
class _Job:
    rule: object
    query: Query
    result: TierResult | None
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _State:
    """Per event loop: the jobs waiting and whether a batch is running or scheduled."""

    pending: list[_Job] = field(default_factory=list)
    busy: bool = False
    scheduled: bool = False


class ScoringBatcher:
    """Batches ``score`` calls made concurrently on one event loop (see the module docstring)."""

    def __init__(self, window: float = 0.0, max_batch: int = 256):
        self.window = window
        self.max_batch = max_batch
        self._states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _State]" = weakref.WeakKeyDictionary()

    async def score(self, rule, query: Query, result: TierResult | None) -> Scored:
        """``rule``'s score of ``result`` for ``query`` (a skip rule's of the query when
        ``result`` is None), computed in a batch with the other jobs waiting."""
        loop = asyncio.get_running_loop()
        state = self._states.setdefault(loop, _State())
        job = _Job(rule, query, result, loop.create_future())
        state.pending.append(job)
        if not state.busy and not state.scheduled:
            state.scheduled = True
            if self.window > 0:
                loop.call_later(self.window, self._flush, loop, state)
            else:
                loop.call_soon(self._flush, loop, state)
        return await job.future

    def _flush(self, loop: asyncio.AbstractEventLoop, state: _State) -> None:
        state.scheduled = False
        if state.busy or not state.pending:
            return
        batch, state.pending = state.pending[: self.max_batch], state.pending[self.max_batch :]
        state.busy = True
        loop.create_task(self._run(loop, state, batch))

    async def _run(self, loop: asyncio.AbstractEventLoop, state: _State, batch: list[_Job]) -> None:
        try:
            if any(_needs_embedding(job) for job in batch):
                outcomes = await loop.run_in_executor(None, score_batch, batch)
            else:
                outcomes = score_batch(batch)
        except BaseException as err:  # noqa: BLE001 - handed to every waiting request
            outcomes = [err] * len(batch)
        finally:
            state.busy = False
            if state.pending and not state.scheduled:
                state.scheduled = True
                loop.call_soon(self._flush, loop, state)
        for job, outcome in zip(batch, outcomes):
            if job.future.done():  # the request was cancelled meanwhile
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)


def _needs_embedding(job: _Job) -> bool:
    return bool(getattr(job.rule, "needs_embedding", False)) and job.query.embedding is None


def _prompt_features(jobs: Sequence[_Job]) -> tuple[set[int], float, float]:
    """Compute the missing prompt features of ``jobs``' queries in one batch per kind;
    returns (ids of the queries featurized, wall, CPU)."""
    from .features import fill_prompt_features

    wall, cpu = time.perf_counter(), time.thread_time()
    by_option: dict[str, dict[int, Query]] = {}
    for job in jobs:
        option = getattr(job.rule, "prompt_features", None) or ("minilm" if _needs_embedding(job) else None)
        if option is not None:
            by_option.setdefault(option, {})[id(job.query)] = job.query
    featurized: set[int] = set()
    for option, queries in by_option.items():
        featurized |= {id(q) for q in fill_prompt_features(list(queries.values()), option)}
    return featurized, time.perf_counter() - wall, time.thread_time() - cpu


def score_batch(batch: Sequence[_Job]) -> list[Scored | BaseException]:
    """Prompt features for the whole batch, then one ``score_many`` per rule; every job gets
    its score and an equal share of the work it took part in (in the calling thread)."""
    started = time.perf_counter()
    outcomes: list[Scored | BaseException] = [None] * len(batch)  # type: ignore[list-item]
    with single_threaded():
        try:
            featurized, f_wall, f_cpu = _prompt_features(batch)
        except Exception as err:  # noqa: BLE001
            return [err] * len(batch)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault((id(job.rule), job.result is None), []).append(i)
        for (_, skip), members in groups.items():
            rule = batch[members[0]].rule
            queries = [batch[i].query for i in members]
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                scores = rule.score_many(queries) if skip else rule.score_many(queries, [batch[i].result for i in members])
            except Exception as err:  # noqa: BLE001 - this rule's jobs fail, the others go on
                for i in members:
                    outcomes[i] = err
                continue
            wall, cpu = time.perf_counter() - wall, (time.thread_time() - cpu) / len(members)
            for i, score in zip(members, scores):
                outcomes[i] = Scored(float(score), scoring_wall=wall, scoring_cpu=cpu,
                                     wait=started - batch[i].submitted)
    n = len(featurized)
    for job, outcome in zip(batch, outcomes):  # charged to the first job of each query
        if isinstance(outcome, Scored) and id(job.query) in featurized:
            featurized.discard(id(job.query))
            outcome.featurized = True
            outcome.embedding_wall, outcome.embedding_cpu = f_wall, f_cpu / n
    return outcomes
