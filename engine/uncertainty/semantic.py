"""Semantic-entropy signals over a tier's sampled answers (higher = more confident).

Kuhn, Gal, Farquhar, "Semantic Uncertainty", ICLR 2023; Farquhar et al., "Detecting
hallucinations in large language models using semantic entropy", Nature 2024.

Inputs per result: N samples with cluster ids ``clusters`` (shape (N,), from
``engine.uncertainty.equivalence.cluster``) and length-normalized log-likelihoods. With C clusters:

* ``discrete_se``      −H(f), f_c = |c| / N (cluster frequencies; Farquhar et al.'s
                       discrete variant for black-box models)
* ``weighted_se``      −H(p), p_c ∝ Σ_{s∈c} exp(mean token logprob of s), normalized over the
                       sampled clusters (Kuhn et al.'s likelihood-weighted estimator)
* ``num_clusters``     −C
* ``greedy_agreement`` share of samples in the greedy answer's cluster (0 when the greedy
                       answer matches no sample); 1 when every sample agrees with it

Entropies are in nats. A result without samples is an error (configure ``samples`` on
the tier); empty sampled answers are clustered like any other answer.
"""

from __future__ import annotations

import numpy as np

from ..types import TierResult


def _require_samples(result: TierResult, signal: str) -> np.ndarray:
    if not result.samples:
        raise ValueError(f"signal {signal!r} needs sampled answers: configure 'samples' on the tier")
    return np.asarray(result.clusters, dtype=np.int64)


def entropy(p: np.ndarray) -> float:
    """Shannon entropy (nats) of a probability vector; 0 log 0 = 0."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def discrete_se(result: TierResult) -> float:
    clusters = _require_samples(result, "discrete_se")
    return -entropy(np.bincount(clusters) / clusters.size)


def weighted_se(result: TierResult) -> float:
    clusters = _require_samples(result, "weighted_se")
    loglik = np.asarray([s.mean_logprob for s in result.samples], dtype=np.float64)
    weights = np.exp(loglik - loglik.max())  # shift for stability; cancels on normalizing
    mass = np.bincount(clusters, weights=weights)
    return -entropy(mass / mass.sum())


def num_clusters(result: TierResult) -> float:
    clusters = _require_samples(result, "num_clusters")
    return -float(len(np.unique(clusters)))


def greedy_agreement(result: TierResult) -> float:
    clusters = _require_samples(result, "greedy_agreement")
    if result.greedy_cluster is None:
        return 0.0
    return float(np.mean(clusters == result.greedy_cluster))


SEMANTIC_SIGNALS = {
    "discrete_se": discrete_se,
    "weighted_se": weighted_se,
    "num_clusters": num_clusters,
    "greedy_agreement": greedy_agreement,
}
