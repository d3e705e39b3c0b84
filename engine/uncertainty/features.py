"""Features of a tier's answer and of the request, for learned deferral rules.

Answer features (one row per answer; Gupta et al., ICLR 2024, "Post-Hoc-Quantile": a small
model over token-logprob quantiles beats any single quantile) — from the greedy answer's
chosen-token logprobs and top-k alternatives:

* chosen-token logprob quantiles q ∈ {0, 0.1, 0.25, 0.5, 0.75, 1}, sum, mean
* first token: logprob, top-1 − top-2 probability margin, top-k entropy
* probability margins (mean, min), logprob margin mean, top-k entropy (mean, max)
* answer length log(1 + T), finish reason (stopped / cut at max_tokens), empty answer
* when the tier samples: greedy agreement, discrete and weighted semantic entropy, clusters

Request features: the prompt's all-MiniLM-L6-v2 sentence embedding (384) and log(1 +
words in the prompt). A pre-generation (skip) rule sees the request features only.

An empty answer has no logprobs; its logprob features take ``EMPTY_LOGPROB`` and the empty
flag is set. ``FEATURE_VERSION`` is stored with every learned rule; a rule trained on
another version is refused.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..types import TierResult
from .embedding import DIMENSIONS, EMBEDDING_MODEL
from .rules import Query, embed_queries
from .semantic import discrete_se, greedy_agreement, num_clusters, weighted_se

FEATURE_VERSION = 1
EMPTY_LOGPROB = -30.0
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
ANSWER_FEATURES = (
    *(f"logprob_q{q:g}" for q in QUANTILES), "sum_logprob", "mean_logprob",
    "first_logprob", "first_margin", "first_entropy",
    "mean_margin", "min_margin", "mean_logprob_margin", "mean_entropy", "max_entropy",
    "log_length", "stopped", "cut_at_max_tokens", "empty",
)
SAMPLE_FEATURES = ("greedy_agreement", "discrete_se", "weighted_se", "num_clusters")
REQUEST_FEATURES = (*(f"embedding_{i}" for i in range(DIMENSIONS)), "log_prompt_words")


def _position_stats(position: Sequence[tuple]) -> tuple[float, float, float]:
    """(probability margin top-1 − top-2, logprob margin, entropy of the renormalized top-k)."""
    values = np.sort(np.asarray([v for _, v in position], dtype=np.float64))[::-1]
    if values.size == 0:
        return 0.0, 0.0, 0.0
    p = np.exp(values - values.max())
    p /= p.sum()
    entropy = float(-(p * np.log(np.clip(p, 1e-300, None))).sum())
    second = values[1] if values.size > 1 else -np.inf
    return float(np.exp(values[0]) - np.exp(second)), float(values[0] - second if values.size > 1 else 0.0), entropy


def answer_features(result: TierResult, with_samples: bool = False) -> np.ndarray:
    """Shape (len(ANSWER_FEATURES) [+ len(SAMPLE_FEATURES)],) for one answer."""
    lp = np.asarray(result.token_logprobs, dtype=np.float64)
    empty = lp.size == 0
    if empty:
        lp = np.array([EMPTY_LOGPROB])
    stats = np.array([_position_stats(p) for p in result.top_logprobs] or [(0.0, 0.0, 0.0)])
    margins, log_margins, entropies = stats[:, 0], stats[:, 1], stats[:, 2]
    row = [
        *np.quantile(lp, QUANTILES), lp.sum(), lp.mean(),
        lp[0], margins[0], entropies[0],
        margins.mean(), margins.min(), log_margins.mean(), entropies.mean(), entropies.max(),
        np.log1p(len(result.token_logprobs)), float(result.finish_reason == "stop"),
        float(result.finish_reason == "length"), float(empty),
    ]
    if with_samples:
        row += [greedy_agreement(result), discrete_se(result), weighted_se(result), num_clusters(result)]
    return np.asarray(row, dtype=np.float64)


def request_features(queries: Sequence[Query]) -> np.ndarray:
    """Shape (n, 385): prompt embedding and log(1 + words) per query (embeds missing ones)."""
    embed_queries(queries)
    words = np.array([[np.log1p(len(q.request.text.split()))] for q in queries])
    return np.hstack([np.stack([q.embedding for q in queries]).astype(np.float64), words])


def feature_names(answer: bool, samples: bool, request: bool) -> list[str]:
    names = list(ANSWER_FEATURES) if answer else []
    names += list(SAMPLE_FEATURES) if samples else []
    return names + (list(REQUEST_FEATURES) if request else [])


def feature_matrix(queries: Sequence[Query], results: Sequence[TierResult] | None, samples: bool = False,
                   request: bool = True) -> np.ndarray:
    """Rows of [answer features (when ``results`` given), request features (when ``request``)],
    shape (n, F) in the order of ``feature_names``."""
    parts = []
    if results is not None:
        parts.append(np.stack([answer_features(r, samples) for r in results]))
    if request:
        parts.append(request_features(queries))
    return np.hstack(parts)


def feature_spec(answer: bool, samples: bool, request: bool) -> dict:
    """The JSON description of a feature set, stored with a learned rule."""
    return {"version": FEATURE_VERSION, "answer": answer, "samples": samples, "request": request,
            "embedding_model": EMBEDDING_MODEL if request else None,
            "count": len(feature_names(answer, samples, request))}
