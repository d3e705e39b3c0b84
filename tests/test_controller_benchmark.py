"""The controller benchmark (instant tiers, no engine) runs end to end in its quick mode."""

import json
import subprocess
import sys

from vcascade.engine import model_store


def test_controller_benchmark_quick_mode(tmp_path):
    assert model_store.is_fetched("qwen2.5-coder-0.5b-instruct"), "run `make setup` (the default models' tokenizers)"
    out = tmp_path / "controller"
    proc = subprocess.run([sys.executable, "benchmarks/controller.py", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"floor", "default", "minilm"}
    for policy, rows in summary["results"].items():
        assert set(rows) == {"1", "8"}
        for row in rows.values():
            assert row["failed"] == 0 and row["completed"] > 0 and row["decisions_per_s"] > 0, (policy, row)
            assert row["p99_ms"] >= row["p50_ms"] > 0 and row["server_cpu_ms"] > 0
    assert "rendering" in summary["results"]["floor"]["1"]["parts_cpu_ms"]
    assert {"embedding", "scoring"} <= set(summary["results"]["default"]["8"]["parts_cpu_ms"])
    assert set(summary["added"]) == {"default", "minilm"} and summary["machine"]["cores"] >= 1
    assert (out / "controller.png").stat().st_size > 1000 and "decisions/s" in (out / "summary.md").read_text()
