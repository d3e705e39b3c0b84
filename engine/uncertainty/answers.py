"""Reading answer text: SQuAD normalization, the final number, the chosen option letter.

Shared by answer equivalence (semantic entropy, ``engine.equivalence``) and correctness
scoring (``calibration.scoring``).
"""

from __future__ import annotations

import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def normalize(text: str) -> str:
    """SQuAD answer normalization (Rajpurkar et al. 2016): lower, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line
    return ""


def contains_answer(prediction: str, reference: str) -> bool:
    """Does the normalized ``reference`` equal the normalized prediction, or stand as a
    whole-word span in its first line ("Paris, of course." contains "Paris")?"""
    ref = normalize(reference)
    return bool(ref) and (ref == normalize(prediction) or f" {ref} " in f" {normalize(first_line(prediction))} ")


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
    head = first_line(prediction)
    for pattern in _EXPLICIT_LETTER:
        m = pattern.search(head)
        if m and m.group(1) in valid:
            return m.group(1)
    stated = [i for i, text in enumerate(options) if contains_answer(prediction, text)]
    if len(stated) == 1:
        return valid[stated[0]]
    m = _LEADING_LETTER.search(head)
    return m.group(1) if m and m.group(1) in valid else None



def code_block_span(text: str) -> tuple[int, int] | None:
    """Character offsets ``(start, end)`` in ``text`` of the code the sandbox would run
    (``engine.sandbox.extract_code``: the first Python block that defines a function, else
    the longest block), from its first to its last non-blank line; ``None`` without a fence."""
    from ..sandbox import extract_code

    if "```" not in text:
        return None
    lines = [line.strip() for line in extract_code(text).splitlines() if line.strip()]
    if not lines:
        return None
    start = text.find(lines[0])
    end = text.find(lines[-1], max(start, 0))
    if start < 0 or end < 0:
        return None
    return start, end + len(lines[-1])
