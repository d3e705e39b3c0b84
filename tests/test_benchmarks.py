"""The benchmarks run end to end on tiny models, so they cannot rot."""

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import tiny_tier_dict

pytestmark = pytest.mark.engine


def tiny_config(tmp_path, tiny_models):
    tiers = [tiny_tier_dict(n, p, max_model_len=1024) for n, p in tiny_models.items()]
    tiers[0]["threshold"] = -1.0
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    return path


def test_serving_benchmark_quick_mode(tiny_models, tmp_path):
    out = tmp_path / "serving"
    proc = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--quick", "--config",
                           str(tiny_config(tmp_path, tiny_models)), "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"always-large", "always-small", "cascade"}
    for system, runs in summary["results"].items():
        [run] = runs.values()
        assert run["completed"] == 8 and run["failed"] == 0, (system, run)
        assert run["request_throughput"] > 0 and run["median_ttft_ms"] > 0 and 0 <= run["accuracy"] <= 1
    cascade = summary["results"]["cascade"]["rate 2"]["cascade"]
    assert cascade["requests"] == 8 and 0 <= cascade["escalated"] <= 1
    assert 0 < cascade["overhead_share_of_generation"] < 1 and set(cascade["latency_by_tier"]) == {"tiny-a", "tiny-b"}
    ratios = summary["ratios"]["rate 2"]
    assert ratios["vs always-large"]["request_throughput"] > 0 and "vs always-small" in ratios
    for name in ("summary.md", "latency_cdf.png", "throughput.png", "ttft_p99.png"):
        assert (out / name).stat().st_size > 100


def test_deferral_benchmark_on_a_small_slice(tiny_models, tmp_path):
    out = tmp_path / "deferral"
    proc = subprocess.run([sys.executable, "benchmarks/deferral.py", "--config", str(tiny_config(tmp_path, tiny_models)),
                           "--limit", "96", "--n-calibration", "48", "--timing-items", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "VCASCADE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    mixed = summary["table"]["mixed"]["rules"]
    assert summary["n_held_out"] == 48 and {"random", "oracle", "min_logprob", "vsr:margin"} <= set(mixed)
    apgr = mixed["random"]["apgr"]  # nan when both tiers score the same (no gap to recover)
    assert math.isnan(apgr) or apgr == pytest.approx(0.5)
    assert set(summary["timing"]) == {"tiny-a", "tiny-b"} and "previous default (min_logprob)" in summary["calibrated"]
    assert summary["refused"]  # 24 training items: every learned rule is reported as untrainable
    assert (out / "deferral_curves.png").stat().st_size > 1000 and "gain share" in (out / "summary.md").read_text()


@pytest.mark.parametrize("shift", [0.0, 0.02])
def test_prompt_features_summary_pairs_seeds_and_counts_groups_above_alpha(shift):
    sys.path.insert(0, "benchmarks")
    import prompt_features

    def run(cost, long_loss):
        return {"loss": 0.03, "cost": cost, "long_loss": long_loss, "long_cost": 0.9, "short_loss": 0.04,
                "short_cost": 0.8}

    runs = {"minilm": {s: run(0.9 + 0.01 * s, 0.02) for s in range(4)},
            "static": {s: run(0.9 + 0.01 * s + shift, 0.06 if s == 2 else 0.02) for s in range(4)},
            "hashed": {s: run(0.95, 0.02) for s in range(3)}}  # a missing seed: only common seeds count
    summary = prompt_features.summarize(runs, alpha=0.05)
    assert summary["seeds"] == [0, 1, 2]
    static = summary["options"]["static"]
    assert static["cost_minus_minilm"]["mean"] == pytest.approx(shift) and static["cost_minus_minilm"]["stderr"] == 0
    assert (static["groups_above_alpha"], static["group_draws"]) == (1, 6)
    assert summary["options"]["minilm"]["groups_above_alpha"] == 0 and "cost_minus_minilm" not in summary["options"]["minilm"]
    assert summary["options"]["hashed"]["cost_minus_minilm"]["per_seed"] == pytest.approx([0.05, 0.04, 0.03])
