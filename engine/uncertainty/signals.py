"""Confidence signals: functions ``TierResult -> float``, higher = more confident.

Every signal here reads the greedy answer's token log-probabilities (vLLM's raw
logprobs). Arrays per answer of T completion tokens:

* ``token_logprobs``: shape (T,), log p(chosen token)
* ``top_logprobs``:   T lists of the k most likely (token, logprob) pairs

An empty answer (T = 0) has no evidence of confidence, so every signal returns
``-inf`` for it: the policy never accepts an empty answer from a non-final tier.

Names in the registry: ``mean_logprob``, ``sum_logprob``, ``min_logprob``,
``quantile:<q>`` (q in [0, 1], e.g. ``quantile:0.1``), ``neg_topk_entropy``,
``mean_margin``, ``min_margin``; the confidence scores of vLLM Semantic Router's
confidence looper at their published normalization (``vsr:avg_logprob``, ``vsr:margin``,
``vsr:hybrid``); and the semantic-entropy signals over sampled answers from
``engine.uncertainty.semantic``: ``discrete_se``, ``weighted_se``, ``num_clusters``,
``greedy_agreement``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .semantic import SEMANTIC_SIGNALS
from ..types import TierResult, UnknownNameError

Signal = Callable[[TierResult], float]

EMPTY_SCORE = -math.inf


def _logprobs(result: TierResult) -> np.ndarray:
    return np.asarray(result.token_logprobs, dtype=np.float64)


def mean_logprob(result: TierResult) -> float:
    """Mean chosen-token log-probability (length-normalized sequence log-likelihood)."""
    lp = _logprobs(result)
    return float(lp.mean()) if lp.size else EMPTY_SCORE


def sum_logprob(result: TierResult) -> float:
    """Sequence log-likelihood, sum of chosen-token log-probabilities."""
    lp = _logprobs(result)
    return float(lp.sum()) if lp.size else EMPTY_SCORE


def min_logprob(result: TierResult) -> float:
    """Least likely chosen token: the weakest link of the answer."""
    lp = _logprobs(result)
    return float(lp.min()) if lp.size else EMPTY_SCORE


def quantile_logprob(q: float) -> Signal:
    """The q-quantile of chosen-token log-probabilities (Chow-Quantile, Gupta et al. ICLR 2024).

    q = 0 is ``min_logprob``; small q (0.1–0.3) ignores a few outlier tokens while still
    reacting to the uncertain part of a long answer. Linear interpolation between tokens.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")

    def signal(result: TierResult) -> float:
        lp = _logprobs(result)
        return float(np.quantile(lp, q)) if lp.size else EMPTY_SCORE

    signal.__name__ = f"quantile:{q:g}"
    return signal


def _topk_probs(result: TierResult) -> list[np.ndarray]:
    """Per position, the top-k probabilities renormalized to sum to 1, shape (k,) each."""
    out = []
    for position in result.top_logprobs:
        lp = np.asarray([v for _, v in position], dtype=np.float64)
        p = np.exp(lp - lp.max())
        out.append(p / p.sum())
    return out


def neg_topk_entropy(result: TierResult) -> float:
    """Minus the mean entropy (nats) of the renormalized top-k next-token distribution."""
    probs = _topk_probs(result)
    if not probs:
        return EMPTY_SCORE
    entropies = [float(-(p * np.log(np.clip(p, 1e-300, None))).sum()) for p in probs]
    return -float(np.mean(entropies))


def _margins(result: TierResult) -> np.ndarray:
    """Per position, p(top-1) − p(top-2) in raw probabilities; 1 − p(top-1)… when k = 1."""
    margins = []
    for position in result.top_logprobs:
        values = sorted((v for _, v in position), reverse=True)
        top1 = math.exp(values[0])
        top2 = math.exp(values[1]) if len(values) > 1 else 0.0
        margins.append(top1 - top2)
    return np.asarray(margins, dtype=np.float64)


def mean_margin(result: TierResult) -> float:
    """Mean top-1 minus top-2 probability margin over the answer's tokens."""
    m = _margins(result)
    return float(m.mean()) if m.size else EMPTY_SCORE


def min_margin(result: TierResult) -> float:
    """Smallest top-1 minus top-2 probability margin over the answer's tokens."""
    m = _margins(result)
    return float(m.min()) if m.size else EMPTY_SCORE


def _logprob_margins(result: TierResult) -> np.ndarray:
    """Per position, logprob(top-1) − logprob(top-2) (0 where only one alternative is known)."""
    out = []
    for position in result.top_logprobs:
        values = sorted((v for _, v in position), reverse=True)
        out.append(values[0] - values[1] if len(values) > 1 else 0.0)
    return np.asarray(out, dtype=np.float64)


def vsr_avg_logprob(result: TierResult) -> float:
    """vLLM Semantic Router's ``avg_logprob`` confidence: mean chosen-token logprob mapped
    linearly from [-3, 0] to [0, 1] and clamped (looper/confidence.go ``normalizeLogprob``);
    its published default threshold is -1.0 on this 0–1 score, i.e. it never escalates."""
    lp = _logprobs(result)
    return float(np.clip((lp.mean() + 3.0) / 3.0, 0.0, 1.0)) if lp.size else EMPTY_SCORE


def vsr_margin(result: TierResult) -> float:
    """vLLM Semantic Router's ``margin`` confidence: the mean top-1 − top-2 logprob margin m
    mapped to 1 − exp(−m/3) (``normalizeMargin``); published default threshold 0.5."""
    m = _logprob_margins(result)
    return float(1.0 - np.exp(-max(m.mean(), 0.0) / 3.0)) if m.size else EMPTY_SCORE


def vsr_hybrid(result: TierResult) -> float:
    """vLLM Semantic Router's ``hybrid``: 0.5 × avg_logprob score + 0.5 × margin score
    (default weights); published default threshold 0.5."""
    a, m = vsr_avg_logprob(result), vsr_margin(result)
    return EMPTY_SCORE if math.isinf(a) or math.isinf(m) else 0.5 * a + 0.5 * m


VSR_DEFAULT_THRESHOLDS = {"vsr:avg_logprob": -1.0, "vsr:margin": 0.5, "vsr:hybrid": 0.5}
"""The thresholds vLLM Semantic Router applies when the config sets none."""

SIGNALS: dict[str, Signal] = {
    "mean_logprob": mean_logprob,
    "sum_logprob": sum_logprob,
    "min_logprob": min_logprob,
    "neg_topk_entropy": neg_topk_entropy,
    "mean_margin": mean_margin,
    "min_margin": min_margin,
    "vsr:avg_logprob": vsr_avg_logprob,
    "vsr:margin": vsr_margin,
    "vsr:hybrid": vsr_hybrid,
    **SEMANTIC_SIGNALS,
}
SAMPLING_SIGNALS = frozenset(SEMANTIC_SIGNALS)  # signals that need the tier to sample


def signal_names() -> list[str]:
    return [*SIGNALS, "quantile:<q>"]


def get_signal(name: str) -> Signal:
    """Look up a signal by registry name; ``quantile:<q>`` is parameterized.

    Raises ``UnknownNameError`` (a KeyError) naming the known signals for an unknown name.
    """
    if name in SIGNALS:
        return SIGNALS[name]
    if name.startswith("quantile:"):
        try:
            q = float(name.split(":", 1)[1])
        except ValueError:
            raise UnknownNameError(f"bad quantile signal {name!r}: expected quantile:<number in [0,1]>") from None
        try:
            return quantile_logprob(q)
        except ValueError as err:
            raise UnknownNameError(f"bad quantile signal {name!r}: {err}") from None
    raise UnknownNameError(f"unknown signal {name!r}; known: {', '.join(signal_names())}")
