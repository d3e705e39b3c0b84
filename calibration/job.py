"""The calibration job's data: every tier's answer to every item (cached, resumable), and
the arrays a fit needs.

Per tier and item source, generations are cached in
``$VCASCADE_CACHE/calibration/<source>-<tier>-<key>.jsonl``, one line per item: the full
``TierResult`` (text, token logprobs, top-k, samples) and its correctness. The key hashes
the source's identity and the tier's identity (model content hash + decoding settings), so
changing any of them starts a fresh file, and an interrupted or repeated job only generates
the items its file lacks. A mixed workload reuses its sources' caches. Any rule can be
scored later from the cached results without regenerating.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from vcascade.engine.artifact import tier_identity
from vcascade.engine.config import CascadeConfig
from vcascade.engine.model_store import cache_dir
from vcascade.engine.runtime import run
from vcascade.engine.types import TierResult
from vcascade.engine.uncertainty.rules import Query, Rule, SkipRule

from .conformal import CalibrationData
from .datasets import BUILTIN, Item, dataset_fingerprint, to_request
from .scoring import is_correct


def cache_path(source: str, identity: dict, root: Path | None = None) -> Path:
    key = hashlib.sha256(json.dumps([dataset_fingerprint(source), identity], sort_keys=True).encode()).hexdigest()
    label = Path(source).stem if source not in BUILTIN else source
    return (root or cache_dir().parent / "calibration") / f"{label}-{identity['name']}-{key[:16]}.jsonl"


def read_cache(path: Path) -> dict[str, dict]:
    """Cached records by item id; a torn last line (interrupted write) is ignored."""
    records = {}
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                records[record["id"]] = record
    return records


def generate_missing(tier, items: Sequence[Item], path: Path, batch_size: int = 64, progress: bool = True,
                     records: dict | None = None) -> dict:
    """Records for ``items`` from ``tier``: cached ones (``records``, read from ``path`` when
    not given) are kept, the rest generated ``batch_size`` at a time (all in flight at once)
    and appended to ``path`` batch by batch, so an interrupt loses one batch."""
    from tqdm import tqdm

    records = read_cache(path) if records is None else records
    todo = [item for item in items if item.id not in records]
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():  # drop a torn last line before appending
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
        with open(path, "a", encoding="utf-8") as sink, tqdm(
            total=len(items), initial=len(items) - len(todo), desc=tier.name, unit="item", disable=not progress,
            file=sys.stderr,
        ) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                results = run(tier.generate_many([to_request(i) for i in batch]))
                for item, result in zip(batch, results):
                    line = json.dumps({"id": item.id, "result": asdict(result),
                                       "correct": is_correct(result.text, item.answers, item.kind, item.options)})
                    records[item.id] = json.loads(line)  # the same form a resumed run reads back
                    sink.write(line + "\n")
                sink.flush()
                bar.update(len(batch))
    return {item.id: records[item.id] for item in items}


def collect(config: CascadeConfig, items: Sequence[Item], batch_size: int = 64, tiers=None,
            cache_root: Path | None = None, progress: bool = True) -> list[dict]:
    """Per tier (cost order), the records of every item, by item id.

    Engines start only for tiers whose caches lack items, one at a time (each gets all the
    cores) and are shut down when done; ``tiers`` injects started tiers (tests, benchmarks).
    """
    from vcascade.engine.tiers import build_tiers, shutdown_tiers

    by_source: dict[str, list[Item]] = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    out = []
    for index, tier_config in enumerate(config.tiers):
        identity = tier_identity(tier_config, config)
        paths = {source: cache_path(source, identity, cache_root) for source in by_source}
        cached = {source: read_cache(path) for source, path in paths.items()}
        missing = [s for s, group in by_source.items() if any(item.id not in cached[s] for item in group)]
        records: dict[str, dict] = {}
        for source in by_source:
            if source not in missing:
                records.update({item.id: cached[source][item.id] for item in by_source[source]})
        if missing:
            tier = tiers[index] if tiers is not None else run(build_tiers(config, only=[tier_config.name]))[0]
            try:
                for source in missing:
                    records.update(generate_missing(tier, by_source[source], paths[source], batch_size, progress,
                                                    records=cached[source]))
            finally:
                if tiers is None:
                    run(shutdown_tiers([tier]))
        out.append({item.id: records[item.id] for item in items})
    return out


def results(records: dict, items: Sequence[Item]) -> list[TierResult]:
    """One tier's cached results for ``items``, in order."""
    return [TierResult.from_dict(records[item.id]["result"]) for item in items]


def correctness(records: list[dict], items: Sequence[Item]) -> np.ndarray:
    """Shape (n, K): is tier k's answer to item i correct."""
    return np.array([[per_tier[item.id]["correct"] for per_tier in records] for item in items], dtype=bool)


def token_costs(config: CascadeConfig, records: list[dict], items: Sequence[Item]) -> np.ndarray:
    """Cost of running tier k on item i, shape (n, K): tokens (prompt, answer and samples)
    times the tier's cost per token."""
    costs = np.zeros((len(items), len(config.tiers)))
    for k, (tier, per_tier) in enumerate(zip(config.tiers, records)):
        for i, item in enumerate(items):
            result = per_tier[item.id]["result"]
            tokens = result["prompt_tokens"] + result["completion_tokens"]
            tokens += sum(len(s["token_logprobs"]) for s in result.get("samples", []))
            costs[i, k] = tier.cost_per_token * tokens
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
