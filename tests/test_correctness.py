"""Scoring many answers at once: code items executed in the sandbox, each program once
(verdict cache), the other kinds by their string rules; and prices per token kind."""

import numpy as np
import pytest

from vcascade.calibration import correctness
from vcascade.calibration.correctness import score_answers
from vcascade.calibration.datasets import Item
from vcascade.calibration.job import token_costs
from vcascade.engine.config import parse_config

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
CODE = Item("c1", "Write add(a, b).", (TESTS,), "code")
HUMANEVAL_LIKE = Item("c2", "Complete it.", ("def check(candidate):\n    assert candidate([1]) == [1]\n\ncheck(same)\n",
                                             "from typing import List"), "code")
RIGHT = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"


def test_code_answers_are_executed_against_the_items_tests_and_other_kinds_use_their_rules(tmp_path):
    items = [CODE, CODE, HUMANEVAL_LIKE, Item("m", "1+1?", ("2",), "math"), Item("e", "Capital?", ("Paris",), "exact")]
    texts = [RIGHT, WRONG, "```python\ndef same(xs: List[int]) -> List[int]:\n    return xs\n```",
             "so \\boxed{2}", "Paris."]
    assert score_answers(texts, items, root=tmp_path) == [True, False, True, True, True]


def test_each_program_runs_once_and_a_reread_comes_from_the_verdict_cache(tmp_path, monkeypatch):
    assert score_answers([RIGHT, WRONG], [CODE, CODE], root=tmp_path) == [True, False]
    lines = correctness.verdict_cache_path(tmp_path).read_text().splitlines()
    assert len(lines) == 2

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached program ran again")

    monkeypatch.setattr("vcascade.engine.sandbox.run_programs", must_not_run)
    assert score_answers([WRONG, RIGHT, RIGHT], [CODE, CODE, CODE], root=tmp_path) == [False, True, True]


def test_a_program_that_never_ends_is_wrong_within_its_limit(tmp_path):
    import json

    hang = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    assert score_answers([hang], [CODE], root=tmp_path) == [False]
    [verdict] = [json.loads(line) for line in correctness.verdict_cache_path(tmp_path).read_text().splitlines()]
    assert verdict["reason"] == "timeout" and verdict["seconds"] < 10 + 5  # killed at the sandbox's 10 s limit


def test_prompt_and_output_tokens_are_priced_apart_in_the_jobs_costs():
    config = parse_config({"tiers": [
        {"name": "s", "model": "/m/s", "threshold": -1.0, "cost_per_prompt_token": 0.1, "cost_per_output_token": 1.0},
        {"name": "l", "model": "/m/l", "cost_per_token": 3.0}]})
    result = {"prompt_tokens": 100, "completion_tokens": 10, "samples": [{"token_logprobs": [0.0] * 5}]}
    records = [{"i": {"result": result}}, {"i": {"result": result}}]
    costs = token_costs(config, records, [Item("i", "q", ("a",), "exact")])
    assert costs.tolist() == [[pytest.approx(0.1 * 100 + 1.0 * 15), pytest.approx(3.0 * 115)]]
    assert np.all(costs > 0)
