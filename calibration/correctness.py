"""Correctness of many answers at once, as the calibration job reads its cache.

Most kinds are string rules (``engine.scoring.is_correct``: microseconds each). ``code``
items are scored by *executing* the answer's code against the item's tests in the sandbox
(``engine.sandbox``): tens of milliseconds to seconds per program, so programs run several
at a time and each verdict is kept in a verdict cache keyed by the program's text, so a
re-read of the generation cache never executes a program twice.

Verdict cache: ``$VCASCADE_CACHE/execution/verdicts.jsonl``, one line per program,
``{"key": sha256 of (sandbox version, program), "passed": bool, "reason": str, "seconds": float}``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from vcascade.engine.model_store import cache_dir
from vcascade.engine.scoring import code_program, is_correct

from .cache import read_keyed
from .datasets import Item

EXECUTION_WORKERS = 2


def verdict_cache_path(root: Path | None = None) -> Path:
    return (root or cache_dir().parent / "execution") / "verdicts.jsonl"


def _program_key(program: str) -> str:
    from vcascade.engine.sandbox import SANDBOX_VERSION

    return hashlib.sha256(f"{SANDBOX_VERSION}\0{program}".encode()).hexdigest()[:32]


def execute_programs(programs: Sequence[str], root: Path | None = None, progress: bool = False) -> list[dict]:
    """Verdicts ``{"passed", "reason", "seconds"}`` for ``programs`` (complete programs: setup,
    solution and tests), from the verdict cache or by running the missing ones in the sandbox."""
    from vcascade.engine.sandbox import run_programs

    path = verdict_cache_path(root)
    verdicts = read_keyed(path)
    keys = [_program_key(p) for p in programs]
    todo = list(dict.fromkeys(k for k in keys if k not in verdicts))
    if todo:
        source = {k: p for k, p in zip(keys, programs)}
        path.parent.mkdir(parents=True, exist_ok=True)
        results = run_programs([source[k] for k in todo], workers=EXECUTION_WORKERS, progress=progress)
        with open(path, "a", encoding="utf-8") as sink:
            for key, result in zip(todo, results):
                record = {"key": key, "passed": bool(result.passed), "reason": result.reason,
                          "seconds": round(float(result.seconds), 4)}
                verdicts[key] = record
                sink.write(json.dumps(record) + "\n")
    return [verdicts[k] for k in keys]


def score_answers(texts: Sequence[str], items: Sequence[Item], root: Path | None = None,
                  progress: bool = False) -> list[bool]:
    """Shape (n,): is ``texts[i]`` a correct answer to ``items[i]``? Code items run in the sandbox."""
    out = [False] * len(items)
    code = [i for i, item in enumerate(items) if item.kind == "code"]
    for i, item in enumerate(items):
        if item.kind != "code":
            out[i] = is_correct(texts[i], item.answers, item.kind, item.options)
    if code:
        programs = [code_program(texts[i], items[i].answers) for i in code]
        for i, verdict in zip(code, execute_programs(programs, root, progress)):
            out[i] = verdict["passed"]
    return out
