"""Correctness of a model answer against reference answers.

Three answer kinds:

* ``exact``   — SQuAD-style normalization (lower-case, drop punctuation and the articles
  a/an/the, collapse white space; Rajpurkar et al. 2016). Correct when a normalized
  reference equals the normalized answer, or appears as a whole-word span in the answer's
  first line (so "Paris, of course." and "The answer is Paris" count, a later
  explanation does not).
* ``numeric`` — the last number in the answer ("1,600" = 1600, "$5" = 5, "-3.50" = -3.5)
  equals a reference number.
* ``choice``  — the option letter the answer picks ("B", "(B)", "B)", "B. text",
  "The answer is B"), or the option whose text the answer states, equals the reference.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

KINDS = ("exact", "numeric", "choice")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def normalize(text: str) -> str:
    """SQuAD answer normalization: lower, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line
    return ""


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    answer = normalize(prediction)
    head = f" {normalize(_first_line(prediction))} "
    for ref in references:
        ref_norm = normalize(ref)
        if ref_norm and (ref_norm == answer or f" {ref_norm} " in head):
            return True
    return False


def parse_number(text: str) -> float | None:
    """The last number in ``text``, ignoring thousands separators and a dollar sign."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    raw = matches[-1].replace(",", "").replace("$", "")
    try:
        return float(raw)
    except ValueError:
        return None


def numeric_match(prediction: str, references: Sequence[str], tolerance: float = 1e-6) -> bool:
    got = parse_number(prediction)
    if got is None:
        return False
    for ref in references:
        want = parse_number(ref)
        if want is not None and abs(got - want) <= tolerance * max(1.0, abs(want)):
            return True
    return False


_EXPLICIT_LETTER = (
    re.compile(r"^\s*\(?([A-J])\)?\s*$"),  # "B", "(B)"
    re.compile(r"^\s*\(?([A-J])[\).:\]]"),  # "B)", "B.", "(B) text", "B: text"
    re.compile(r"(?i:answer)\s*(?:is|:)?\s*(?:option\s*)?\(?([A-J])\b"),  # "The answer is B"
)
_LEADING_LETTER = re.compile(r"^\s*(?:[Oo]ption\s+)?([A-J])\b(?!['’])")  # "B because ...", "Option B"


def choice_letter(prediction: str, options: Sequence[str] = ()) -> str | None:
    """The option letter an answer picks, or ``None``.

    ``options`` are the option texts in letter order (A, B, ...). Order of evidence: an
    explicit letter ("(B)", "B.", "answer is B"), then the text of exactly one option
    ("television"), then a leading letter ("B because ..."; after the option texts so
    that the article in "A refrigerator" is not read as option A). With options given,
    only their letters count.
    """
    valid = "ABCDEFGHIJ"[: len(options)] if options else "ABCDEFGHIJ"
    head = _first_line(prediction)
    for pattern in _EXPLICIT_LETTER:
        m = pattern.search(head)
        if m and m.group(1) in valid:
            return m.group(1)
    stated = [i for i, text in enumerate(options) if exact_match(prediction, [text])]
    if len(stated) == 1:
        return valid[stated[0]]
    m = _LEADING_LETTER.search(head)
    return m.group(1) if m and m.group(1) in valid else None


def is_correct(prediction: str, references: Sequence[str], kind: str, options: Sequence[str] = ()) -> bool:
    """Is ``prediction`` correct for an item of answer ``kind``?"""
    if kind == "exact":
        return exact_match(prediction, references)
    if kind == "numeric":
        return numeric_match(prediction, references)
    if kind == "choice":
        letter = choice_letter(prediction, options)
        return letter is not None and letter in {r.strip().strip("()").upper() for r in references}
    raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(KINDS)}")
