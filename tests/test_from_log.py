"""Recalibration from served traffic, without engines: the decision log's format and
rotation (engine.decision_log), and the items ``calibrate --from-log`` makes of a log and
its feedback (calibration.from_log): labels, left-out requests, torn and foreign lines."""

import json

import pytest

from vcascade.calibration import from_log
from vcascade.calibration.datasets import load_dataset
from vcascade.engine.config import ConfigError, parse_config
from vcascade.engine.decision_log import (DecisionLog, cascade_fingerprint, read_log, request_from_record,
                                          request_record)
from vcascade.engine.types import Request

CONFIG = parse_config({"tiers": [{"name": "small", "model": "/m/small", "threshold": 0.0,
                                  "sampling": {"max_tokens": 16}},
                                 {"name": "large", "model": "/m/large", "sampling": {"max_tokens": 16}}]})
FINGERPRINT = cascade_fingerprint([("small", "/m/small"), ("large", "/m/large")])


def decision(i, tier_index, text, request=None, **extra):
    request = request or request_record(Request(messages=({"role": "user", "content": f"q{i}?"},)))
    return {"id": f"chatcmpl-{i}", "tier_index": tier_index, "log_version": 1, "cascade": FINGERPRINT,
            "request": request, "text": text, **extra}


def test_request_records_round_trip_and_the_log_rotates(tmp_path):
    request = Request(messages=({"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}),
                      max_tokens=5, stop=("\n",), group="g")
    assert request_from_record(json.loads(json.dumps(request_record(request))), "id1") == \
        Request(**{**request.__dict__, "id": "id1"})
    with pytest.raises(ValueError, match="unknown fields"):
        request_from_record({"prompt": "x", "file": "/etc/passwd"})
    log = DecisionLog(tmp_path / "d.jsonl", max_bytes=300, backups=2)
    for i in range(12):
        log.write_entry({"id": i, "pad": "x" * 50})
    assert log.rotations == 2 and (tmp_path / "d.jsonl.1").exists() and (tmp_path / "d.jsonl.2").exists()
    assert not (tmp_path / "d.jsonl.3").exists()
    assert log.bounded({"a": "x" * 10}) is not None and DecisionLog(tmp_path / "e.jsonl", max_record_bytes=10) \
        .bounded({"a": "x" * 10}) is None


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_items_from_a_log_with_feedback_agreement_and_left_out_requests(tmp_path, monkeypatch, capsys):
    generated = []

    def last_answers(config, items, batch_size):
        generated.extend(item.id for item in items)
        return {item.id: "Paris" for item in items}

    monkeypatch.setattr(from_log, "last_tier_answers", last_answers)
    raw = request_record(Request(prompt="Paris is", raw=True))
    hot = request_record(Request(messages=({"role": "user", "content": "x"},), temperature=0.9))
    own_system = request_record(Request(messages=({"role": "system", "content": "Answer in French."},
                                                  {"role": "user", "content": "q4?"}), group="fr"))
    log = write(tmp_path / "decisions.jsonl", [
        decision(0, 1, "Canberra"),                      # the last tier answered: its answer is the label
        decision(1, 0, "Lyon"),                          # kept, no feedback: the last tier's answer is generated
        decision(2, 0, "Rome"),                          # kept, audited: the audit's answer is the label
        {"type": "audit", "id": "chatcmpl-2", "audit_text": "Milan", "disagree": True},
        decision(3, 0, "Bern"),                          # feedback with a reference
        decision(4, 0, "Paris", request=own_system),     # its own system prompt is kept; feedback: correct
        decision(5, 0, "x", request=raw),                # raw completion: left out
        decision(6, 0, "x", request=hot),                # own decoding: left out
        {**decision(7, 0, "Nice"), "request": None},     # too large to log: left out
        decision(8, 0, "Paris"),                         # feedback wrong, but agrees with the last tier: left out
        '{"id": "chatcmpl-9", "tier_in',                 # torn
    ])
    feedback = write(tmp_path / "decisions.feedback.jsonl", [
        {"id": "chatcmpl-3", "correct": True, "reference": ["Bern", "Berne"], "kind": "exact"},
        {"id": "chatcmpl-4", "correct": True, "reference": None},
        {"id": "chatcmpl-8", "correct": False, "reference": None},
        "not json",
    ])
    out, info = from_log.dataset_from_log([log], [feedback], CONFIG, tmp_path / "items.jsonl")
    err = capsys.readouterr().err
    assert f"{log}:11: not JSON" in err and f"{feedback}:4: not JSON" in err
    items = {item.id: item for item in load_dataset(str(out))}
    assert sorted(items) == [f"chatcmpl-{i}" for i in range(5)]
    assert items["chatcmpl-0"].answers == ("Canberra",) and items["chatcmpl-2"].answers == ("Milan",)
    assert items["chatcmpl-1"].answers == ("Paris",) and sorted(generated) == ["chatcmpl-1", "chatcmpl-8"]
    assert items["chatcmpl-3"].answers == ("Bern", "Berne") and items["chatcmpl-4"].answers == ("Paris",)
    assert items["chatcmpl-4"].messages[0] == {"role": "system", "content": "Answer in French."}
    assert items["chatcmpl-4"].group == "fr"
    assert info["by_feedback"] == 2 and info["by_agreement_with_last_tier"] == 3 and info["n_torn_lines"] == 1
    assert info["skipped"] == {"raw completion": 1, "own decoding (temperature, top_p, seed)": 1,
                               "request not logged (too large, or a log of an older vcascade)": 1,
                               "feedback 'wrong' contradicts the agreement label": 1}
    assert "3 by agreement with large's answer" in info["statement"] and "not about correctness" in info["statement"]


def test_a_log_of_another_cascade_is_refused_by_file_and_line(tmp_path):
    log = write(tmp_path / "d.jsonl", [decision(0, 1, "a"), {**decision(1, 1, "b"), "cascade": "0123456789abcdef"},
                                       {"id": "x", "hello": "world"}])
    with pytest.raises(ConfigError, match=rf"2 line\(s\).*{log}:2: written by another cascade.*{log}:3: not a "):
        from_log.dataset_from_log([log], [], CONFIG, tmp_path / "items.jsonl")
    contents = read_log([log])  # without a fingerprint, other cascades' decisions are read
    assert len(contents.decisions) == 2 and len(contents.foreign) == 1


def test_calibrate_needs_a_dataset_or_a_log(tmp_path, capsys):
    from vcascade.engine import cli

    code = cli.main(["calibrate", "--target", "quality-loss", "--alpha", "0.1", "--out", str(tmp_path / "a.json")])
    assert code == 2 and "--dataset (labelled items) or --from-log" in capsys.readouterr().err
    log = write(tmp_path / "d.jsonl", [{**decision(0, 1, "a"), "cascade": "0123456789abcdef"}])
    code = cli.main(["calibrate", "--from-log", str(log), "--target", "quality-loss", "--alpha", "0.1",
                     "--out", str(tmp_path / "a.json")])
    assert code == 2 and f"{log}:1: written by another cascade" in capsys.readouterr().err
