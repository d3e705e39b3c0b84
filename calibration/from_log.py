"""Calibration items from served traffic: ``vcascade calibrate --from-log DECISIONS.jsonl
[--feedback FEEDBACK.jsonl]``.

Every logged chat request this cascade served (``engine.decision_log``) becomes a
calibration item with its own messages — system turns included — and group. Its label:

* **feedback** where a label was given (``POST /v1/feedback``): a reference answer is the
  item's reference (scored as its ``kind``); ``correct: true`` makes the served answer the
  reference; ``correct: false`` says only that the served answer is wrong, so the item is
  labelled by agreement (below) unless that contradicts it (the served answer agrees with
  the last tier's, or the last tier served it): then it is left out;
* otherwise **agreement with the last tier**: the last tier's answer to the request (from
  the log when it answered or an audit did, else generated now, cached like every
  generation) is the reference. That is agreement with the large model, not correctness:
  the artifact and report say so, and say how many items are labelled each way.

Requests a calibration of this config could not reproduce are left out and counted by
reason: raw completions, decoding overrides that differ from the tiers' (temperature,
top_p, stop, seed, max_tokens), requests too large to have been logged. A torn line (an
interrupted write) is skipped and named by file and line; a line from another cascade or
of an unknown log version refuses the whole log, naming it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from vcascade.engine.config import CascadeConfig, ConfigError
from vcascade.engine.decision_log import LogProblem, cascade_fingerprint, read_log, request_from_record
from vcascade.engine.uncertainty.answers import normalize

from .datasets import Item

SHOWN = 10


def _decoding_problem(request, config: CascadeConfig) -> str | None:
    if request.raw:
        return "raw completion"
    for name in ("temperature", "top_p", "seed"):
        value = getattr(request, name)
        if value is not None and any(value != getattr(t.sampling, name) for t in config.tiers):
            return "own decoding (temperature, top_p, seed)"
    if request.stop:
        return "own decoding (stop)"
    if request.max_tokens is not None and any(request.max_tokens != t.sampling.max_tokens for t in config.tiers):
        return "own max_tokens"
    return None


def read_feedback(paths: Sequence[str | Path]) -> tuple[dict[str, dict], list[LogProblem]]:
    """Labels by response id (the first for an id) and the lines that could not be read."""
    labels: dict[str, dict] = {}
    problems = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as err:
                    problems.append(LogProblem(f"{path}:{number}", f"not JSON ({err.msg}): a torn or foreign line"))
                    continue
                if not isinstance(entry, dict) or "id" not in entry or "correct" not in entry:
                    problems.append(LogProblem(f"{path}:{number}", "not a vcascade feedback record"))
                    continue
                labels.setdefault(str(entry["id"]), entry)
    return labels, problems


def _report(problems: list[LogProblem], what: str) -> None:
    for problem in problems[:SHOWN]:
        print(f"warning: {problem}; {what}", file=sys.stderr)
    if len(problems) > SHOWN:
        print(f"warning: {len(problems) - SHOWN} more such lines", file=sys.stderr)


def last_tier_answers(config: CascadeConfig, items: list[Item], batch_size: int) -> dict[str, str]:
    """The last tier's answer to each item (generated where the cache lacks it)."""
    from .job import collect

    only_last = config.model_copy(update={"tiers": (config.tiers[-1],)})
    records = collect(only_last, items, batch_size=batch_size)[0]
    return {item.id: records[item.id]["result"]["text"] for item in items}


def dataset_from_log(logs: Sequence[str | Path], feedback: Sequence[str | Path], config: CascadeConfig, out: Path,
                     batch_size: int = 64) -> tuple[Path, dict]:
    """Write the labelled items of served traffic to ``out`` (JSONL); returns it and what the
    artifact says about the labels (``"labels"``)."""
    fingerprint = cascade_fingerprint((t.name, t.model) for t in config.tiers)
    contents = read_log(logs, fingerprint)
    if contents.foreign:
        shown = "; ".join(str(p) for p in contents.foreign[:3])
        raise ConfigError(f"{len(contents.foreign)} line(s) of the log are not this cascade's decisions ({shown}"
                          f"{'; …' if len(contents.foreign) > 3 else ''}); refusing to calibrate {config.source} on "
                          "them: pass the decision logs of a server that ran this config")
    _report(contents.torn, "skipped")
    labels, feedback_problems = read_feedback(feedback)
    _report(feedback_problems, "skipped")
    last = len(config.tiers) - 1
    audited = {a["id"]: a["audit_text"] for a in contents.audits if a.get("audit_text") is not None}
    skipped: Counter = Counter()
    candidates = []
    seen = set()
    for entry in contents.decisions:
        if entry["id"] in seen:
            skipped["repeated id"] += 1
            continue
        seen.add(entry["id"])
        if entry.get("request") is None:
            skipped["request not logged (too large, or a log of an older vcascade)"] += 1
            continue
        try:
            request = request_from_record(entry["request"], entry["id"])
        except (TypeError, ValueError) as err:
            print(f"warning: {entry['where']}: malformed request ({err}); skipped", file=sys.stderr)
            skipped["malformed request"] += 1
            continue
        problem = _decoding_problem(request, config)
        if problem:
            skipped[problem] += 1
            continue
        candidates.append((entry, request))
    # the last tier's answers: logged (it answered, or an audit did), else generated now
    known = {e["id"]: e["text"] for e, _ in candidates if e.get("tier_index") == last and e.get("text") is not None}
    known.update({k: v for k, v in audited.items() if k not in known})
    missing = [Item(e["id"], r.prompt, ("-",), "exact", messages=r.messages) for e, r in candidates
               if e["id"] not in known and not _feedback_labels(labels.get(e["id"]), e)]
    if missing:
        print(f"generating the last tier's answer to {len(missing)} logged requests (agreement labels)",
              file=sys.stderr)
        known.update(last_tier_answers(config, missing, batch_size))
    lines, counts = [], Counter()
    for entry, request in candidates:
        label = labels.get(entry["id"])
        line = {"id": entry["id"], **({"messages": [dict(m) for m in request.messages]} if request.messages
                                      else {"prompt": request.prompt})}
        if request.group:
            line["group"] = request.group
        if _has_reference(label):
            line.update(answers=list(label["reference"]), kind=label.get("kind") or "exact", label="feedback")
        elif _feedback_labels(label, entry):
            line.update(answers=[entry["text"]], kind="exact", label="feedback")
        else:
            reference = known.get(entry["id"])
            if reference is None or not reference.strip():
                skipped["no last-tier answer to agree with (empty)"] += 1
                continue
            if label is not None and label.get("correct") is False and (
                    entry.get("tier_index") == last or normalize(entry.get("text") or "") == normalize(reference)):
                skipped["feedback 'wrong' contradicts the agreement label"] += 1
                continue
            line.update(answers=[reference], kind="exact", label="agreement")
        counts[line["label"]] += 1
        lines.append(line)
    if not lines:
        raise ConfigError(f"no usable calibration items in {', '.join(map(str, logs))} "
                          f"({dict(skipped) or 'no decisions'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    largest = config.tiers[-1].name
    statement = (f"labels: {counts['feedback']} of {len(lines)} items from feedback, {counts['agreement']} by "
                 f"agreement with {largest}'s answer — for those the guarantee is about disagreeing with "
                 f"{largest}, not about correctness")
    info = {"source": "served traffic (vcascade serve --decision-log)", "logs": [str(p) for p in logs],
            "feedback": [str(p) for p in feedback], "items": len(lines), "by_feedback": counts["feedback"],
            "by_agreement_with_last_tier": counts["agreement"], "skipped": dict(skipped),
            "torn_lines": [str(p) for p in contents.torn[:SHOWN]], "n_torn_lines": len(contents.torn),
            "statement": statement}
    print(f"{len(lines)} calibration items from {len(contents.decisions)} logged decisions; {statement}"
          + (f"; left out: {dict(skipped)}" if skipped else ""), file=sys.stderr)
    return out, info


def _has_reference(label: dict | None) -> bool:
    return bool(label) and bool(label.get("reference"))


def _feedback_labels(label: dict | None, entry: dict) -> bool:
    """Does the feedback alone label the item (a reference, or "correct" with the served text)?"""
    return _has_reference(label) or (label is not None and label.get("correct") is True
                                     and bool((entry.get("text") or "").strip()))
