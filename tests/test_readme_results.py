"""The README's Results section is generated from the committed result files."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_results  # noqa: E402


def test_results_section_quotes_the_result_files():
    text = readme_results.render(ROOT)
    deferral = json.loads((ROOT / "results/deferral/summary.json").read_text())
    chosen = deferral["table"][deferral["dataset"]]["rules"][deferral["chosen_rule"]]
    assert f"`{deferral['chosen_rule']}` (" in text and f") | {chosen['gain_share']:.2f} |" in text
    serving = json.loads((ROOT / "results/serving/summary.json").read_text())
    for run in serving["runs"]:
        ratio = serving["ratios"][run]["vs always-large"]["request_throughput"]
        assert f"| {run} | {ratio:.2f} |" in text
    assert f"{serving['machine']['cores']} CPU cores" in text and serving["created"] in text
    test = json.loads((ROOT / "results/calibration/default_mixed_long-test.json").read_text())
    assert f"| cascade | {test['accuracy']:.3f} | {test['quality_loss']:.4f} |" in text
    features = json.loads((ROOT / "results/prompt-features/summary.json").read_text())
    static = features["options"]["static"]
    assert f"| `static` | {static['mean']['loss']:.3f} | {static['mean']['cost']:.3f} |" in text
    long = json.loads((ROOT / "results/deferral-long/summary.json").read_text())
    deployed = next(c for label, c in long["calibrated"].items() if label.startswith("artifact as deployed"))
    row = deployed["groups"]["long-form"]
    assert (f"| **long-form** | {row['n']} | {row['small_accuracy']:.2f} / {row['large_accuracy']:.2f} / "
            f"{row['accuracy']:.2f} | {row['quality_loss']:.3f} |") in text
    serving_long = json.loads((ROOT / "results/serving-long/summary.json").read_text())
    for run in serving_long["runs"]:
        ratio = serving_long["ratios"][run]["vs always-large"]
        assert f"| {run} | always-large | {ratio['request_throughput']:.2f} | {ratio['median_ttft_ms']:.2f} |" in text
    assert "no results yet" not in text


def test_missing_results_name_the_command_that_makes_them(tmp_path):
    text = readme_results.render(tmp_path)
    for command in ("make calibrate", "make bench-deferral", "make bench-serve", "remote_parity.py"):
        assert f"no results yet: run `{command}" in text or f"no results yet: run `python benchmarks/{command}" in text


def test_update_keeps_the_rest_of_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n{readme_results.START}\nold\n{readme_results.END}\n## after\n")
    readme_results.update_readme(readme)
    text = readme.read_text()
    assert text.startswith("# top\n") and text.endswith("## after\n") and "old" not in text and "## Results" in text
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        readme_results.update_readme(readme)
