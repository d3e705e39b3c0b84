"""Features of a tier's answer and of the request, for learned deferral rules.

Answer features (one row per answer; Gupta et al., ICLR 2024, "Post-Hoc-Quantile": a small
model over token-logprob quantiles beats any single quantile) — from the greedy answer's
chosen-token logprobs and top-k alternatives:

* chosen-token logprob quantiles q ∈ {0, 0.1, 0.25, 0.5, 0.75, 1}, sum, mean
* first token: logprob, top-1 − top-2 probability margin, top-k entropy
* probability margins (mean, min), logprob margin mean, top-k entropy (mean, max)
* answer length log(1 + T), finish reason (stopped / cut at max_tokens), empty answer
* when the tier samples: greedy agreement, discrete and weighted semantic entropy, clusters
* long-form (rules whose spec sets ``long_form``; every rule trained since the long-form
  workloads): the answer's length as a share of its budget (``TierResult.max_tokens``), and
  the logprob features of the *final-answer span* — the main fenced code block
  (``answers.code_block_span``), else the final answer of a worked solution (the last
  ``\boxed{}`` or "Answer:", ``math_answers.final_answer_span``): whether there is one,
  its mean / min / first chosen-token logprob, its length, its mean top-k entropy; and the
  mean logprob of the answer's last 16 tokens. A 300-token answer's overall mean hides
  the few tokens that decide it; the span features read them.

Request features, one of three ``prompt_features`` options (recorded in the rule's feature
spec), each with log(1 + words in the prompt); a pre-generation (skip) rule sees the
request features only:

* ``minilm`` — the prompt's all-MiniLM-L6-v2 sentence embedding (384): ~15-20 ms of CPU per
  prompt in the calling process (the option of every artifact made before the option existed,
  and the default's until 2026-12-02);
* ``hashed`` — the prompt's word unigrams and bigrams (lower-cased; words, digits and single
  punctuation marks), each hashed with CRC-32 into one of ``HASHED_DIMENSIONS`` buckets with
  a sign (the hashing trick: Weinberger et al., ICML 2009), L2-normalized: tens of
  microseconds per prompt, no model. It changes the rule's inputs: a rule must be trained on it;
* ``static`` — the prompt's static embedding (256): all-MiniLM-L6-v2 distilled into one
  vector per token with Model2Vec (``static_embedding``), tens of microseconds per prompt,
  keeping most of MiniLM's semantics. The default: over six split seeds of the default
  calibration its held-out cost and loss match MiniLM's (README, "How many decisions one
  process makes").

An empty answer has no logprobs; its logprob features take ``EMPTY_LOGPROB`` and the empty
flag is set. ``FEATURE_VERSION`` is stored with every learned rule; a rule trained on
another version is refused.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

from ..types import TierResult
from .embedding import DIMENSIONS, EMBEDDING_MODEL
from .static_embedding import STATIC_DIMENSIONS, STATIC_MODEL
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
LONG_FEATURES = ("budget_share", "has_span", "span_mean_logprob", "span_min_logprob", "span_first_logprob",
                 "span_log_length", "span_mean_entropy", "tail_mean_logprob")
TAIL_TOKENS = 16
SAMPLE_FEATURES = ("greedy_agreement", "discrete_se", "weighted_se", "num_clusters")
REQUEST_FEATURES = (*(f"embedding_{i}" for i in range(DIMENSIONS)), "log_prompt_words")
PROMPT_FEATURES = ("minilm", "hashed", "static")
HASHED_DIMENSIONS = 512
HASHING = {"tokens": r"(?u)\b\w+\b|[^\w\s]", "lowercase": True, "ngrams": [1, 2], "hash": "crc32(utf-8)",
           "bucket": "hash % 512", "sign": "-1 if bit 31 of the hash is set", "norm": "l2",
           "dimensions": HASHED_DIMENSIONS}
"""The hashed option's definition; a rule records it and is refused where it differs."""
_TOKENS = re.compile(HASHING["tokens"])
HASHED_REQUEST_FEATURES = (*(f"hashed_{i}" for i in range(HASHED_DIMENSIONS)), "log_prompt_words")
STATIC_REQUEST_FEATURES = (*(f"static_{i}" for i in range(STATIC_DIMENSIONS)), "log_prompt_words")


def default_prompt_features() -> str:
    """The option new rules are trained with: ``$VCASCADE_PROMPT_FEATURES`` (default ``static``)."""
    import os

    value = os.environ.get("VCASCADE_PROMPT_FEATURES", "static")
    if value not in PROMPT_FEATURES:
        raise ValueError(f"VCASCADE_PROMPT_FEATURES={value!r}; known: {', '.join(PROMPT_FEATURES)}")
    return value


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


def final_span_tokens(result: TierResult) -> tuple[int, int] | None:
    """Token index range ``[i, j)`` of the answer's final-answer span (see the module
    docstring), from the character offsets of its decoded tokens; ``None`` without a span
    or without token texts."""
    from .answers import code_block_span
    from .math_answers import final_answer_span

    text = result.text
    span = code_block_span(text) or final_answer_span(text)
    if span is None or not result.tokens:
        return None
    ends = np.cumsum([len(t) for t in result.tokens])
    first = int(np.searchsorted(ends, span[0], side="right"))
    last = int(np.searchsorted(ends, max(span[1] - 1, span[0]), side="right")) + 1
    last = min(last, len(result.token_logprobs))
    return (first, last) if first < last else None


def long_form_features(result: TierResult, lp: np.ndarray, entropies: np.ndarray) -> list[float]:
    """The ``LONG_FEATURES`` row of one answer (``lp``: chosen-token logprobs, shape (T,);
    ``entropies``: top-k entropy per position, shape (T,))."""
    budget = result.max_tokens or 0
    share = min(result.completion_tokens / budget, 1.0) if budget else 0.0
    tail = float(lp[-TAIL_TOKENS:].mean()) if lp.size else EMPTY_LOGPROB
    span = final_span_tokens(result) if lp.size else None
    if span is None:
        return [share, 0.0, EMPTY_LOGPROB, EMPTY_LOGPROB, EMPTY_LOGPROB, 0.0, 0.0, tail]
    seg = lp[span[0] : span[1]]
    ent = entropies[span[0] : span[1]] if entropies.size >= span[1] else np.zeros(1)
    return [share, 1.0, float(seg.mean()), float(seg.min()), float(seg[0]), float(np.log1p(seg.size)),
            float(ent.mean()), tail]


def answer_features(result: TierResult, with_samples: bool = False, long_form: bool = False) -> np.ndarray:
    """Shape (len(ANSWER_FEATURES) [+ len(LONG_FEATURES)] [+ len(SAMPLE_FEATURES)],) for one answer."""
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
    if long_form:
        row += long_form_features(result, np.asarray(result.token_logprobs, dtype=np.float64), entropies)
    if with_samples:
        row += [greedy_agreement(result), discrete_se(result), weighted_se(result), num_clusters(result)]
    return np.asarray(row, dtype=np.float64)


def hashed_vector(text: str) -> np.ndarray:
    """Shape (HASHED_DIMENSIONS,): the hashed unigram + bigram vector of ``text`` (see ``HASHING``)."""
    tokens = _TOKENS.findall(text.lower())
    grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
    h = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.int64, count=len(grams))
    row = np.bincount(h % HASHED_DIMENSIONS, weights=1.0 - 2.0 * ((h >> 31) & 1), minlength=HASHED_DIMENSIONS)
    norm = float(np.sqrt(row @ row))
    return row / norm if norm else row


def hash_queries(queries: Sequence[Query]) -> None:
    """Fill in the missing hashed prompt vectors."""
    for query in queries:
        if query.hashed is None:
            query.hashed = hashed_vector(query.request.text)


def static_queries(queries: Sequence[Query]) -> None:
    """Fill in the missing static prompt embeddings, in one batch."""
    from .static_embedding import static_vectors

    todo = [q for q in queries if q.static is None]
    if todo:
        for query, vector in zip(todo, static_vectors([q.request.text for q in todo])):
            query.static = vector


def fill_prompt_features(queries: Sequence[Query], prompt_features: str) -> list[Query]:
    """Compute ``prompt_features`` for the queries that lack them, in one batch; returns
    those queries (the ones featurized)."""
    attribute, fill = PROMPT_FEATURE_FILLERS[prompt_features]
    todo = [q for q in queries if getattr(q, attribute) is None]
    if todo:
        fill(todo)
    return todo


def request_features(queries: Sequence[Query], prompt_features: str = "minilm") -> np.ndarray:
    """Shape (n, 385) for ``minilm`` (prompt embedding, embedding missing ones), (n, 513)
    for ``hashed`` or (n, 257) for ``static``; the last column is log(1 + words) per query."""
    words = np.array([[np.log1p(len(q.request.text.split()))] for q in queries])
    fill_prompt_features(queries, prompt_features)
    attribute = PROMPT_FEATURE_FILLERS[prompt_features][0]
    return np.hstack([np.stack([getattr(q, attribute) for q in queries]).astype(np.float64), words])


PROMPT_FEATURE_FILLERS = {"minilm": ("embedding", embed_queries), "hashed": ("hashed", hash_queries),
                          "static": ("static", static_queries)}
"""Per ``prompt_features`` option: the ``Query`` attribute holding it and what fills it in."""


def feature_names(answer: bool, samples: bool, request: bool, prompt_features: str = "minilm",
                  long_form: bool = False) -> list[str]:
    names = list(ANSWER_FEATURES) if answer else []
    names += list(LONG_FEATURES) if answer and long_form else []
    names += list(SAMPLE_FEATURES) if samples else []
    request_names = {"hashed": HASHED_REQUEST_FEATURES, "static": STATIC_REQUEST_FEATURES}.get(
        prompt_features, REQUEST_FEATURES)
    return names + (list(request_names) if request else [])


def feature_matrix(queries: Sequence[Query], results: Sequence[TierResult] | None, samples: bool = False,
                   request: bool = True, prompt_features: str | None = None, long_form: bool = False) -> np.ndarray:
    """Rows of [answer features (when ``results`` given), request features (when ``request``)],
    shape (n, F) in the order of ``feature_names``; ``prompt_features`` defaults to
    ``default_prompt_features()`` (what a calibration trains with)."""
    parts = []
    if results is not None:
        parts.append(np.stack([answer_features(r, samples, long_form) for r in results]))
    if request:
        parts.append(request_features(queries, prompt_features or default_prompt_features()))
    return np.hstack(parts)


def feature_spec(answer: bool, samples: bool, request: bool, prompt_features: str | None = None,
                 long_form: bool = True) -> dict:
    """The JSON description of a feature set, stored with a learned rule (a spec without
    ``prompt_features`` — every rule made before the option — means ``minilm``; one without
    ``long_form`` — every rule made before the long-form features — means none)."""
    prompt_features = prompt_features or default_prompt_features()
    long_form = long_form and answer
    spec = {"version": FEATURE_VERSION, "answer": answer, "samples": samples, "request": request,
            "embedding_model": EMBEDDING_MODEL if request and prompt_features == "minilm" else None,
            "long_form": long_form,
            "count": len(feature_names(answer, samples, request, prompt_features, long_form))}
    if request:
        spec["prompt_features"] = prompt_features
        if prompt_features == "hashed":
            spec["hashing"] = dict(HASHING)
        if prompt_features == "static":
            from .static_embedding import probe

            spec["static_model"] = {**STATIC_MODEL, "probe": probe()}
    return spec
