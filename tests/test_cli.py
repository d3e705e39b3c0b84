"""The vcascade CLI: clear errors for bad input, and run/ask over real engines."""

import json
import subprocess
import sys

import pytest
import yaml

from vcascade.engine import cli
from vcascade.engine.cascade import Cascade
from vcascade.engine.policy import Policy
from tests.conftest import tiny_tier_dict


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path, tiers, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    return path


def test_missing_model_path_is_a_clear_error(tmp_path, capsys):
    config = write_config(tmp_path, [{"name": "s", "model": str(tmp_path / "nowhere")}])
    code, _, err = run_cli(capsys, "ask", "--config", str(config), "hi")
    assert code == 2
    assert f"vcascade: error: {config}: tier 's': model path" in err and "does not exist" in err


def test_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("tiers: [\n")
    code, _, err = run_cli(capsys, "ask", "--config", str(path), "hi")
    assert code == 2 and f"{path}: malformed YAML" in err


def test_threshold_of_wrong_type(tmp_path, capsys):
    config = write_config(tmp_path, [{"name": "a", "model": "x", "threshold": "0.5"}, {"name": "b", "model": "y"}])
    code, _, err = run_cli(capsys, "ask", "--config", str(config), "hi")
    assert code == 2 and f"{config}: tiers[0].threshold: Input should be a valid number (got str '0.5')" in err


def test_empty_input_file(tmp_path, capsys):
    empty = tmp_path / "in.jsonl"
    empty.write_text("")
    code, _, err = run_cli(capsys, "run", "--input", str(empty), "--output", str(tmp_path / "o.jsonl"))
    assert code == 2 and f"{empty}: no requests" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_malformed_jsonl_line_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": oops}\n')
    code, _, err = run_cli(capsys, "run", "--input", str(path), "--output", str(tmp_path / "o.jsonl"))
    assert code == 2 and f"{path}:3: not valid JSON" in err


def test_unknown_tier_name(tmp_path, capsys):
    config = write_config(tmp_path, [{"name": "only", "model": str(tmp_path)}])
    code, _, err = run_cli(capsys, "ask", "--config", str(config), "--tier", "big", "hi")
    assert code == 2 and "no tier named 'big'; tiers: only" in err


class CountingCascade(Cascade):
    def __init__(self, tiers, policy):
        super().__init__(tiers, policy)
        self.seen: list[str] = []

    async def answer(self, request, first=0, last=None):
        self.seen.append(request.id)
        return await super().answer(request, first, last)


def test_verbose_flag_is_accepted_anywhere_and_bad_artifact_is_refused(tmp_path, capsys):
    bad = tmp_path / "a.json"
    bad.write_text("{not json")
    code, _, err = run_cli(capsys, "--verbose", "ask", "--artifact", str(bad), "hi")
    assert code == 2 and f"{bad}: not valid JSON" in err


@pytest.mark.engine
def test_run_resumes_without_regenerating(tiny_tiers, tmp_path, capsys, monkeypatch):
    cascade = CountingCascade(tiny_tiers, Policy.from_signal("mean_logprob", (-0.5,)))
    monkeypatch.setattr(cli, "open_cascade", lambda args: cascade)
    lines = [json.dumps({"id": f"q{i}", "prompt": f"Question number {i}?"}) for i in range(5)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(lines[:3]) + "\n")
    assert run_cli(capsys, "run", "--input", str(inp), "--output", str(out), "--batch-size", "2")[0] == 0
    with open(out, "a") as fh:  # simulate an interrupted write
        fh.write('{"id": "q3", "text": "tor')
    inp.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "run", "--input", str(inp), "--output", str(out))
    assert code == 0 and "resuming: 3 of 5" in err
    assert sorted(cascade.seen) == ["q0", "q1", "q2", "q3", "q4"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]
    for row in rows:
        assert row["tier"] in ("tiny-a", "tiny-b") and row["trace"][0]["tier"] == "tiny-a"
        assert (row["tier"] == "tiny-b") == (row["trace"][0]["decision"] == "escalate")


@pytest.mark.engine
def test_ask_prints_answer_and_trace(tiny_tiers, capsys, monkeypatch):
    monkeypatch.setattr(cli, "open_cascade", lambda args: Cascade(tiny_tiers, Policy.from_signal("mean_logprob", (0.0,))))
    code, out, _ = run_cli(capsys, "ask", "--json", "Hello?")
    answer = json.loads(out)
    assert code == 0 and answer["tier"] == "tiny-b"  # mean logprob < 0 always escalates
    assert [s["decision"] for s in answer["trace"]] == ["escalate", "final"]


@pytest.mark.engine
def test_run_command_end_to_end_in_a_fresh_process(tiny_models, tmp_path):
    tiers = [tiny_tier_dict(n, p, sampling={"max_tokens": 8}) for n, p in tiny_models.items()]
    tiers[0]["threshold"] = -1.0
    config = write_config(tmp_path, tiers)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": f"Tell me about {w}."}) + "\n"
                           for i, w in enumerate(["cats", "rivers", "stars", "bread"])))
    proc = subprocess.run([sys.executable, "-m", "vcascade.engine.cli", "run", "--config", str(config), "--input",
                           str(inp), "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["text"] and r["trace"][0]["threshold"] == -1.0 for r in rows)
    assert "4 requests" in proc.stderr and "tiny-a" in proc.stderr
    assert "Loading safetensors" not in proc.stderr and "WARNING" not in proc.stderr  # load logs only with --verbose
