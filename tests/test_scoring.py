"""Correctness scoring on tricky answers."""

import pytest

from vcascade.calibration.scoring import choice_letter, is_correct, normalize, parse_number


def test_normalize_squad_style():
    assert normalize("The  Eiffel-Tower!") == "eiffel tower"
    assert normalize("An apple, a day") == "apple day"


@pytest.mark.parametrize(
    "prediction, refs, ok",
    [
        ("Paris", ["Paris"], True),
        ("paris.", ["Paris"], True),
        ("The Beatles", ["Beatles"], True),
        ("Paris, of course.", ["Paris"], True),
        ("The answer is Sunset Blvd.", ["Sunset Boulevard", "Sunset Blvd"], True),
        ("Parisian cafe", ["Paris"], False),  # whole words only
        ("Lyon\nParis is the capital", ["Paris"], False),  # only the first line counts
        ("Sydney", ["Canberra"], False),
        ("", ["Paris"], False),
        ("Yes, it does.", ["yes"], True),
        ("No.", ["yes"], False),
    ],
)
def test_exact(prediction, refs, ok):
    assert is_correct(prediction, refs, "exact") is ok


@pytest.mark.parametrize(
    "prediction, ref, ok",
    [
        ("1,600", "1600", True),
        ("$5", "5", True),
        ("It costs $5.00 in total", "5", True),
        ("First 3 then 18. The answer is 18", "18", True),
        ("-3.50", "-3.5", True),
        ("about 17", "18", False),
        ("no number here", "18", False),
    ],
)
def test_numeric(prediction, ref, ok):
    assert is_correct(prediction, [ref], "numeric") is ok


def test_parse_number():
    assert parse_number("#### 1,234.5") == 1234.5 and parse_number("none") is None


OPTIONS = ["cellular telephone", "television", "refrigerator", "airplane"]


@pytest.mark.parametrize(
    "prediction, letter",
    [
        ("B", "B"), ("(B)", "B"), ("B)", "B"), ("B. television", "B"), ("(B) television", "B"),
        ("The answer is B.", "B"), ("Answer: C", "C"), ("B because it is newer", "B"),
        ("television", "B"), ("The refrigerator", "C"), ("A refrigerator", "C"), ("I am not sure", None),
        ("A or B?", "A"), ("E", None),
    ],
)
def test_choice_letter(prediction, letter):
    assert choice_letter(prediction, OPTIONS) == letter


def test_choice_correctness_and_unknown_kind():
    assert is_correct("(A)", ["A"], "choice", OPTIONS)
    assert not is_correct("D. airplane", ["A"], "choice", OPTIONS)
    with pytest.raises(ValueError, match="unknown answer kind"):
        is_correct("x", ["x"], "fuzzy")
