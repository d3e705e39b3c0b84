"""Prefixes of a greedy answer: what a streaming tier had produced after k tokens.

With greedy decoding the first k tokens of a cached full answer are exactly the tokens a
streaming engine has produced when it reaches k, so a prefix rule (one that scores the
answer so far, at checkpoints k_1 < … < k_m) is trained and calibrated from cached full
answers (``vcascade.calibration.conformal.checkpoints``; DESIGN.md, "Mid-generation
deferral"). Gupta et al., ICLR 2024 and Narasimhan et al., ICLR 2025 (speculative
cascades) defer at the token level in the same spirit.

A prefix carries no samples: semantic-entropy samples are drawn after the greedy answer
ends, so a sampling rule cannot score a prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..types import TierResult
from .rules import Query, Rule


def answer_length(result: TierResult) -> int:
    """Completion tokens of the greedy answer (one chosen-token logprob per token)."""
    return len(result.token_logprobs)


def prefix_result(result: TierResult, k: int) -> TierResult:
    """The greedy answer cut to its first ``k`` tokens, as a stream has it after k tokens.

    ``text`` is the first k decoded token pieces joined (``result.tokens``; the stream's
    text can lag behind it while a stop string or a split multi-byte character is pending);
    ``token_ids`` (empty for remote tiers that report none), ``token_logprobs`` and
    ``top_logprobs`` are cut to k; ``cumulative_logprob`` is their sum;
    ``completion_tokens = k``; ``finish_reason`` is None ("still running") and ``seconds``
    the full answer's scaled by k / T (decode time is about linear in tokens). Samples and
    clusters are dropped. With k equal to the answer's length T the answer had finished
    at that token: the full result's text and finish reason are kept, so a full-length
    prefix has the full answer's content.

    Parameters
    ----------
    result : TierResult with T completion tokens and T ``tokens`` pieces
    k : int, 0 <= k <= T

    Raises
    ------
    ValueError
        When k is outside [0, T], or the result has no per-token texts to cut its text from.
    """
    total = answer_length(result)
    k = int(k)
    if not 0 <= k <= total:
        raise ValueError(f"a prefix of {k} tokens of an answer with {total} tokens")
    full = k == total
    if not full and len(result.tokens) != total:
        raise ValueError(f"the answer has {len(result.tokens)} token texts for {total} tokens: its prefix text "
                         "cannot be cut")
    logprobs = list(result.token_logprobs[:k])
    return replace(
        result,
        text=result.text if full else "".join(result.tokens[:k]),
        token_ids=list(result.token_ids[:k]),
        tokens=list(result.tokens[:k]),
        token_logprobs=logprobs,
        top_logprobs=[list(position) for position in result.top_logprobs[:k]],
        cumulative_logprob=result.cumulative_logprob if full else float(sum(logprobs)),
        finish_reason=result.finish_reason if full else None,
        completion_tokens=k,
        seconds=result.seconds if full else (result.seconds * k / total if total else 0.0),
        samples=[],
        clusters=[],
        greedy_cluster=None,
    )


def prefix_scores(rule: Rule, queries: Sequence[Query], results: Sequence[TierResult],
                  checkpoints: Sequence[int]) -> np.ndarray:
    """Score every answer's prefix at every checkpoint with ``rule`` (one batch per checkpoint).

    Parameters
    ----------
    rule : anything with ``score_many(queries, results)`` (a ``Rule``); not a sampling rule
    queries : n queries
    results : n full greedy answers
    checkpoints : m strictly increasing token counts >= 1

    Returns
    -------
    array, shape (n, m)
        ``rule``'s score of the first k_j tokens of answer i; NaN where the answer has
        fewer than k_j tokens (it had ended before the checkpoint).
    """
    if len(queries) != len(results):
        raise ValueError(f"{len(queries)} queries for {len(results)} results")
    if getattr(rule, "needs_samples", False):
        raise ValueError(f"rule {getattr(rule, 'name', rule)!r} needs samples, which a prefix does not have")
    ks = [int(k) for k in checkpoints]
    if not ks or ks[0] < 1 or any(b <= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"checkpoints must be strictly increasing token counts >= 1, got {list(checkpoints)}")
    lengths = np.array([answer_length(r) for r in results], dtype=np.int64)
    out = np.full((len(results), len(ks)), np.nan)
    for j, k in enumerate(ks):
        index = np.flatnonzero(lengths >= k)
        if index.size:
            scores = rule.score_many([queries[i] for i in index], [prefix_result(results[i], k) for i in index])
            out[index, j] = np.asarray(scores, dtype=np.float64)
    return out


__all__ = ["answer_length", "prefix_result", "prefix_scores"]
