"""``vcascade demo``: the default cascade on held-out questions, marked right or wrong.

The questions are items of the artifact's calibration dataset (the mixed workload of the
built-in sets for the embedded default) that the calibration never saw: a few from each
source. The table marks each answer against its reference; the summary puts the cascade's
accuracy and cost next to each tier alone on the same questions, measured in this run.
"""

from __future__ import annotations

import time

from vcascade.engine.artifact import guarantee_statement, read_artifact
from vcascade.engine.cli import add_cascade_options, open_cascade
from vcascade.engine.config import load_config
from vcascade.engine.report import answers_table, table
from vcascade.engine.runtime import run
from vcascade.engine.uncertainty.answers import code_block_span
from vcascade.engine.uncertainty.math_answers import final_answer

from .correctness import score_answers
from .datasets import load_dataset, split, to_request

PER_SOURCE = 3
LONG_PER_SOURCE = 1
"""Long-form items (worked reasoning, code: hundreds of tokens each) per kind of long request
(the item's ``group``: one worked solution, one program), so the demo stays a few minutes."""
FALLBACK = {"name": "mixed", "n_calibration": 4800, "seed": 0}


def demo_items(artifact: dict | None, per_source: int = PER_SOURCE, long_per_source: int = LONG_PER_SOURCE):
    """``per_source`` held-out items of each short-answer source of the artifact's dataset
    and ``long_per_source`` of each kind of long-form request (items with their own answer
    budget, by group: reasoning, code)."""
    meta = artifact["dataset"] if artifact else FALLBACK
    _, held_out = split(load_dataset(meta["name"]), meta["n_calibration"], meta["seed"])
    chosen, counts = [], {}
    for item in held_out:
        key = item.source if item.max_tokens is None else ("long", item.group or item.source)
        if counts.get(key, 0) < (per_source if item.max_tokens is None else long_per_source):
            counts[key] = counts.get(key, 0) + 1
            chosen.append(item)
    return chosen


def _run(cascade, requests, first: int = 0, last: int | None = None):
    before = dict(cascade.tier_seconds)
    started = time.perf_counter()
    answers = run(cascade.answer_all(requests, first, last))
    busy = sum(cascade.tier_seconds[name] - before[name] for name in before)
    return answers, time.perf_counter() - started, busy


def _cost(cascade, answers) -> float:
    tiers = {t.name: t.config for t in cascade.tiers}
    return sum(tiers[s.tier].price(s.prompt_tokens, s.completion_tokens) for a in answers for s in a.trace)


def _shown(answer, item) -> str:
    """A long answer by what decides it: a solution's final answer, a program's first line."""
    if item.max_tokens is None or answer.result is None:
        return answer.text
    tokens = f" ({answer.result.completion_tokens} tok)"
    if item.kind == "code":
        span = code_block_span(answer.text)
        code = answer.text[span[0]:span[1]] if span else answer.text
        return next((line.strip() for line in code.splitlines() if line.strip().startswith("def ")),
                    code.strip()[:40]) + tokens
    final = final_answer(answer.text)
    return ("… " + final if final is not None else "no final answer") + tokens


def _reference(item) -> str:
    if item.kind == "code":
        return f"runs {sum(line.strip().startswith('assert') for line in item.answers[0].splitlines())} asserts"
    return item.answers[0]


def cmd_demo(args) -> int:
    config = load_config(args.config).with_artifact(args.artifact)
    artifact = read_artifact(config.artifact) if config.artifact else None
    items = demo_items(artifact)
    cascade = open_cascade(args)
    source = f"artifact {config.artifact}" if artifact else "the config's hand-set thresholds (no guarantee)"
    print(f"policy: {cascade.policy.describe()}\n  from {source}")
    if artifact:
        print(f"  guarantee: {guarantee_statement(artifact)} (calibrated on {artifact['dataset']['name']})")
    requests = [to_request(item) for item in items]
    runs = {"cascade": _run(cascade, requests)}
    for k, tier in enumerate(cascade.tiers):
        runs[f"{tier.name} alone"] = _run(cascade, requests, k, k)
    answers = runs["cascade"][0]
    marks = ["✓" if right else "✗" for right in score_answers([a.text for a in answers], items)]
    long = sum(it.max_tokens is not None for it in items)
    print(f"\n{len(items)} held-out questions ({PER_SOURCE} per short-answer source"
          + (f", {long} worked-reasoning and code requests with their own instructions and budgets" if long else "")
          + "), never seen by the calibration:\n")
    print(answers_table([it.prompt or it.messages[-1]["content"] for it in items], answers, marks,
                        [_reference(it) for it in items], [_shown(a, it) for a, it in zip(answers, items)]))
    largest = _cost(cascade, runs[f"{cascade.tiers[-1].name} alone"][0])
    rows = [["", "accuracy", "answered past tier 0", "cost vs largest (tokens)", "wall s", "engine busy s"]]
    for label, (result, wall, busy) in runs.items():
        right = sum(score_answers([a.text for a in result], items))
        escalated = sum(a.escalated for a in result) if label == "cascade" else 0
        rows.append([label, f"{right}/{len(items)}", f"{escalated / len(items):.0%}" if label == "cascade" else "-",
                     f"{_cost(cascade, result) / largest:.2f}", f"{wall:.1f}", f"{busy:.1f}"])
    print()
    print(table(rows))
    return 0


def register_demo(sub) -> None:
    p = add_cascade_options(sub.add_parser("demo", help="the cascade on held-out questions, marked right or wrong"))
    p.set_defaults(func=cmd_demo)
