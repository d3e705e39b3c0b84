"""Correctness of a model answer against reference answers (the calibration job scores its
items with it; the server scores feedback that brings a reference answer).

Five answer kinds:

* ``exact``   — SQuAD-style normalization (lower-case, drop punctuation and the articles
  a/an/the, collapse white space; Rajpurkar et al. 2016). Correct when a normalized
  reference equals the normalized answer, or appears as a whole-word span in the answer's
  first line (so "Paris, of course." and "The answer is Paris" count, a later
  explanation does not).
* ``numeric`` — the last number in the answer ("1,600" = 1600, "$5" = 5, "-3.50" = -3.5)
  equals a reference number.
* ``choice``  — the option letter the answer picks ("B", "(B)", "B)", "B. text",
  "The answer is B"), or the option whose text the answer states, equals the reference.
* ``math``    — worked reasoning (GSM8K with its steps, MATH): the reply's final answer (the
  last ``\\boxed{}``, else "The answer is ...", else the last number;
  ``uncertainty.math_answers.final_answer``) is mathematically equal to a reference, plain
  numbers or LaTeX (``math_equal``: MATH's ``is_equiv`` with Minerva's normalization, then
  ``sympy``; Hendrycks et al. 2021, Lewkowycz et al. 2022).
* ``code``    — a program (MBPP, HumanEval): the reply's code (``sandbox.extract_code``) is
  *executed* in the sandbox between the item's setup code (``references[1]``, optional)
  and its tests (``references[0]``), and is correct when the tests run to the end. The
  calibration job scores many at once with a verdict cache (``calibration.correctness``).
"""

from __future__ import annotations

from typing import Sequence

from .uncertainty.answers import choice_letter, contains_answer, normalize, parse_number
from .uncertainty.math_answers import final_answer, math_equal

__all__ = ["KINDS", "choice_letter", "code_passes", "code_program", "exact_match", "is_correct", "math_match", "normalize", "numeric_match",
           "parse_number"]
KINDS = ("exact", "numeric", "choice", "math", "code")


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    return any(contains_answer(prediction, ref) for ref in references)


def numeric_match(prediction: str, references: Sequence[str], tolerance: float = 1e-6) -> bool:
    got = parse_number(prediction)
    if got is None:
        return False
    for ref in references:
        want = parse_number(ref)
        if want is not None and abs(got - want) <= tolerance * max(1.0, abs(want)):
            return True
    return False


def math_match(prediction: str, references: Sequence[str]) -> bool:
    """The final answer of a worked solution ``math_equal`` to a reference (no final answer: wrong)."""
    answer = final_answer(prediction)
    return answer is not None and any(math_equal(answer, ref) for ref in references)


def code_program(prediction: str, references: Sequence[str]) -> str:
    """The program a ``code`` item runs: its setup, the reply's code, its tests."""
    from .sandbox import extract_code

    setup = references[1] if len(references) > 1 else ""
    return f"{setup}\n\n{extract_code(prediction)}\n\n{references[0]}\n"


def code_passes(prediction: str, references: Sequence[str]) -> bool:
    """Does the reply's code pass the item's tests in the sandbox?"""
    from .sandbox import run_program

    return run_program(code_program(prediction, references)).passed


def is_correct(prediction: str, references: Sequence[str], kind: str, options: Sequence[str] = ()) -> bool:
    """Is ``prediction`` correct for an item of answer ``kind``?"""
    if kind == "exact":
        return exact_match(prediction, references)
    if kind == "numeric":
        return numeric_match(prediction, references)
    if kind == "choice":
        letter = choice_letter(prediction, options)
        return letter is not None and letter in {r.strip().strip("()").upper() for r in references}
    if kind == "math":
        return math_match(prediction, references)
    if kind == "code":
        return code_passes(prediction, references)
    raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(KINDS)}")
