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
