"""Clustering a tier's sampled answers and the adaptive-sampling stopping rule.

Pure functions over ``TierResult``s (no vLLM), used by every tier after each sampling
round and unit-tested with crafted samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .equivalence import Equivalence, cluster
from ..types import TierResult


def assign_clusters(results: Sequence[TierResult], equivalence: Equivalence) -> None:
    """Set ``clusters`` (shape (N,)) and ``greedy_cluster`` on every result, in place.

    Keys for all answers of all results are computed in one ``equivalence.keys`` call (one
    embedding batch for the embedding equivalence). The greedy answer joins the first
    sample cluster whose representative it is equivalent to; ``None`` if none.
    """
    texts = [t for r in results for t in (r.text, *(s.text for s in r.samples))]
    keys = iter(equivalence.keys(texts))
    for result in results:
        greedy_key = next(keys)
        sample_keys = [next(keys) for _ in result.samples]
        result.clusters = cluster(sample_keys, equivalence)
        representatives: dict[int, object] = {}
        for cid, key in zip(result.clusters, sample_keys):
            representatives.setdefault(cid, key)
        result.greedy_cluster = next(
            (cid for cid, rep in sorted(representatives.items()) if equivalence.same(rep, greedy_key)), None
        )


def is_decisive(result: TierResult, stop_share: float) -> bool:
    """Do the samples drawn so far agree decisively with the greedy answer?

    True when the greedy answer's cluster is a largest cluster and holds at least
    ``stop_share`` of the samples (``stop_share = 1``: every sample agrees with it).
    """
    if not result.clusters or result.greedy_cluster is None:
        return False
    counts = np.bincount(result.clusters)
    mine = counts[result.greedy_cluster]
    return mine == counts.max() and mine / len(result.clusters) >= stop_share


def largest_cluster_text(result: TierResult) -> str:
    """The first sample of the largest cluster (earliest cluster wins a tie)."""
    counts = np.bincount(result.clusters)
    target = int(np.argmax(counts))
    return next(s.text for s, c in zip(result.samples, result.clusters) if c == target)
