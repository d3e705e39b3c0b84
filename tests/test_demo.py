"""The demo's choice of held-out items and how it shows long answers (no engines)."""

from collections import Counter

from vcascade.calibration.datasets import load_dataset, split
from vcascade.calibration.demo import _reference, _shown, demo_items
from vcascade.engine.types import Answer
from tests.fakes import result_with_logprobs

META = {"dataset": {"name": "mixed-long", "n_calibration": 2900, "seed": 0}}


LONG = ("gsm8k_cot", "math500", "mbpp", "humaneval")


def test_demo_takes_held_out_short_items_one_worked_solution_and_one_program():
    items = demo_items(META)
    counts = Counter(item.source for item in items)
    assert Counter(item.group for item in items if item.source in LONG) == {"reasoning": 1, "code": 1}
    assert all(n == 3 for s, n in counts.items() if s not in LONG) and len(items) == 24 + 2
    _, held_out = split(load_dataset("mixed-long"), 2900, 0)
    assert {item.id for item in items} <= {item.id for item in held_out}


def test_long_answers_are_shown_by_what_decides_them():
    items = {item.source: item for item in demo_items(META, long_per_source=5)}

    def answer(text):
        result = result_with_logprobs(text, [-0.1] * 5)
        return Answer(text, "small", 0, -0.1, "stop", result=result)

    assert _shown(answer("First 3 + 4 = 7.\nSo \\boxed{7}"), items["gsm8k_cot"]) == "… 7 (5 tok)"
    code = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert _shown(answer(code), items["mbpp"]) == "def add(a, b): (5 tok)"
    assert _reference(items["mbpp"]).startswith("runs ") and _reference(items["mbpp"]).endswith(" asserts")
    short = next(item for item in demo_items(META) if item.max_tokens is None)
    assert _shown(answer("Paris"), short) == "Paris" and _reference(short) == short.answers[0]
