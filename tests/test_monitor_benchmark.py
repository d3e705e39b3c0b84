"""benchmarks/monitor.py end to end on its synthetic workload (a few runs; seconds)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import monitor as bench  # noqa: E402


def test_monitor_benchmark_writes_its_figures(tmp_path):
    assert bench.main(["--synthetic", "--runs", "4", "--shift-steps", "300", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs"] == 4 and 0 <= summary["false_alarm_share"] <= 1
    assert summary["audit_coverage_in_distribution"] == 1.0
    assert set(summary["tests"]) >= {"skip_score", "score:t0", "acceptance_rate", "skip_rate", "audit_disagreement"}
    assert len(summary["shifts"]) == 16 and all(row["runs"] == 4 for row in summary["shifts"].values())
    assert "only source0" in (tmp_path / "summary.md").read_text()
