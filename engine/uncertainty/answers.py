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


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def code_block_span(text: str) -> tuple[int, int] | None:
    """Character offsets ``(start, end)`` of the code of a reply's main fenced block: the
    first Python-tagged (``python``/``py``) or untagged block that defines a function, else
    the longest block; an unterminated last fence (a reply cut at ``max_tokens``) runs to
    the end. ``None`` when the reply has no fence."""
    blocks = [(m.start(2), m.end(2), m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        return None
    for start, end, tag, body in blocks:
        if tag in ("python", "py", "python3", "") and re.search(r"^\s*(?:async\s+)?def\s", body, re.M):
            return start, end
    start, end, _, _ = max(blocks, key=lambda b: b[1] - b[0])
    return start, end
