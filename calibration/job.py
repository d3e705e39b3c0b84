"""The calibration job's data: every tier's answer to every item (cached, resumable), and
the arrays a fit needs.

Generations live in the request-keyed cache (``calibration.cache``): an interrupted or
repeated job only generates the requests the cache lacks, whatever file or dataset they
come from. Correctness is scored from each item's references as records are read (code items by
running them in the sandbox, with a verdict cache: ``calibration.correctness``). When a
tier's vLLM engine dies mid-job (a crowded machine, a killed process), the job starts the
engine again and resumes from the cache, a bounded number of times; a failure right after
a restart (no batch finished in between) stops the job with the reason.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

import numpy as np

from vcascade.engine.artifact import tier_identity
from vcascade.engine.config import CascadeConfig
from vcascade.engine.errors import EngineDeadError
from vcascade.engine.runtime import run
from vcascade.engine.types import TierResult
from vcascade.engine.uncertainty.rules import Query, Rule, SkipRule

from . import cache
from .conformal import CalibrationData
from .datasets import Item, to_request
from .correctness import score_answers

log = logging.getLogger("vcascade.calibration")

MAX_ENGINE_RESTARTS = 3
"""How many times one tier's engine may be restarted within one job."""
RPC_TIMEOUT_SECONDS = 1800
"""vLLM's ``execute_model`` RPC timeout for the job's engines (its default, 300 s, is shorter
than one large batch of a 1.5B model on a busy 2-core CPU)."""


def generate_missing(tier, items: Sequence[Item], path, batch_size: int = 64, progress: bool = True,
                     cached: dict | None = None) -> dict[str, dict]:
    """Result dicts by request key for ``items`` from ``tier``: cached ones (``cached``, read
    from ``path`` when not given) are kept, the rest generated ``batch_size`` at a time (all
    in flight at once) and appended to ``path`` batch by batch, so an interrupt loses one
    batch. Items that repeat a request are generated once."""
    from tqdm import tqdm

    cached = cache.read(path) if cached is None else cached
    keyed = {}
    for item in items:
        keyed.setdefault(cache.request_key(to_request(item)), item)
    todo = [(key, item) for key, item in keyed.items() if key not in cached]
    if todo:
        with cache.Writer(path) as writer, tqdm(
            total=len(keyed), initial=len(keyed) - len(todo), desc=tier.name, unit="item", disable=not progress,
            file=sys.stderr,
        ) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                results = run(tier.generate_many([to_request(item) for _, item in batch]))
                written = writer.append((key, item.id, result) for (key, item), result in zip(batch, results))
                cached.update({key: result for (key, _), result in zip(batch, written)})
                bar.update(len(batch))
    return cached


def _generate_with_restarts(config: CascadeConfig, tier_name: str, items: Sequence[Item], path, batch_size: int,
                            progress: bool, cached: dict) -> None:
    """Generate what the cache lacks with a freshly started engine; when the engine dies,
    start it again and resume, unless the previous restart made no progress."""
    from vcascade.engine.tiers import build_tiers, shutdown_tiers

    os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", str(RPC_TIMEOUT_SECONDS))
    restarts = 0
    while True:
        before = len(cached)
        tier = run(build_tiers(config, only=[tier_name]))[0]
        try:
            generate_missing(tier, items, path, batch_size, progress, cached=cached)
            return
        except EngineDeadError as err:
            progressed = len(cached) > before
            if restarts >= MAX_ENGINE_RESTARTS or (restarts and not progressed):
                raise EngineDeadError(
                    f"{err}; gave up after {restarts} restart(s) "
                    + ("(no batch finished since the last one)" if restarts and not progressed else "")
                    + f". Generated answers are cached in {path}: rerun the same command to resume.") from err
            restarts += 1
            message = (f"tier {tier_name}: the vLLM engine died ({err.__cause__ or err}); restarting it "
                       f"({restarts} of at most {MAX_ENGINE_RESTARTS}) and resuming from the cache")
            log.warning(message)
            print(message, file=sys.stderr)
        finally:
            try:
                run(shutdown_tiers([tier]))
            except Exception as err:  # a dead engine may fail to shut down cleanly; it is gone either way
                log.info("tier %s: shutdown after failure: %s", tier_name, err)


def collect(config: CascadeConfig, items: Sequence[Item], batch_size: int = 64, tiers=None,
            cache_root=None, progress: bool = True) -> list[dict]:
    """Per tier (cost order), ``{item id: {"result": TierResult dict, "correct": bool}}``.

    Engines start only for tiers whose caches lack requests, one at a time (each gets all
    the cores) and are shut down when done; ``tiers`` injects started tiers (tests,
    benchmarks), which are never restarted.
    """
    out = []
    keys = [cache.request_key(to_request(item)) for item in items]
    for index, tier_config in enumerate(config.tiers):
        path = cache.tier_cache_path(tier_identity(tier_config, config), cache_root)
        cached = cache.read(path)
        if any(key not in cached for key in keys):
            if tiers is not None:
                generate_missing(tiers[index], items, path, batch_size, progress, cached=cached)
            else:
                _generate_with_restarts(config, tier_config.name, items, path, batch_size, progress, cached)
        budget = tier_config.sampling.max_tokens
        for item, key in zip(items, keys):  # results cached before budgets were recorded
            cached[key].setdefault("max_tokens", item.max_tokens or budget)
        verdicts = score_answers([cached[key]["text"] for key in keys], items, progress=progress)
        out.append({item.id: {"result": cached[key], "correct": right}
                    for item, key, right in zip(items, keys, verdicts)})
    return out


def results(records: dict, items: Sequence[Item]) -> list[TierResult]:
    """One tier's cached results for ``items``, in order."""
    return [TierResult.from_dict(records[item.id]["result"]) for item in items]


def correctness(records: list[dict], items: Sequence[Item]) -> np.ndarray:
    """Shape (n, K): is tier k's answer to item i correct."""
    return np.array([[per_tier[item.id]["correct"] for per_tier in records] for item in items], dtype=bool)


def token_costs(config: CascadeConfig, records: list[dict], items: Sequence[Item]) -> np.ndarray:
    """Cost of running tier k on item i, shape (n, K): prompt tokens at the tier's prompt
    price plus generated tokens (answer and samples) at its output price
    (``cost_per_prompt_token`` / ``cost_per_output_token``, both ``cost_per_token`` unless set)."""
    costs = np.zeros((len(items), len(config.tiers)))
    for k, (tier, per_tier) in enumerate(zip(config.tiers, records)):
        for i, item in enumerate(items):
            result = per_tier[item.id]["result"]
            generated = result["completion_tokens"] + sum(len(s["token_logprobs"]) for s in result.get("samples", []))
            costs[i, k] = tier.price(result["prompt_tokens"], generated)
    return costs


def queries(items: Sequence[Item], embeddings: np.ndarray | None = None) -> list[Query]:
    """The rules' view of the items (with precomputed prompt embeddings when given)."""
    return [Query(to_request(item), None if embeddings is None else embeddings[i]) for i, item in enumerate(items)]


def rule_scores(rule: Rule, tier_records: dict, items: Sequence[Item], embeddings: np.ndarray | None = None
                ) -> np.ndarray:
    """Shape (n,): ``rule``'s score of one tier's answer to every item."""
    return rule.score_many(queries(items, embeddings), results(tier_records, items))


def calibration_data(config: CascadeConfig, records: list[dict], items: Sequence[Item], rules: Sequence[Rule],
                     skip: SkipRule | None = None, embeddings: np.ndarray | None = None,
                     costs: np.ndarray | None = None) -> CalibrationData:
    """Scores (n, K-1) of each non-final tier's rule, correctness (n, K), costs (n, K) and,
    with a skip rule, the pre-generation scores (n,)."""
    if len(rules) != len(config.tiers) - 1:
        raise ValueError(f"{len(rules)} rules for {len(config.tiers) - 1} non-final tiers")
    scores = np.stack([rule_scores(rule, records[k], items, embeddings) for k, rule in enumerate(rules)], axis=1)
    skip_scores = skip.score_many(queries(items, embeddings)) if skip is not None else None
    return CalibrationData(scores, correctness(records, items),
                           token_costs(config, records, items) if costs is None else costs, skip_scores)
