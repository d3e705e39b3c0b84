"""The guarantee in production on real tiny engines: the artifact keeps what the calibration
split saw, the server's monitor is fed by every decision and shows its state in /metrics,
/health and /v1/monitor."""

import json
import math

import httpx
import pytest

from vcascade.engine.artifact import read_artifact
from tests.test_calibration_job import WORDS, counted_tiers, dataset, run_cli, tiny_config  # noqa: F401 (fixtures)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def calibrated(tiny_models, tiny_tiers, tmp_path_factory):
    """An artifact calibrated on the tiny engines (fixed signal), with its monitor section."""
    import yaml
    from tests.conftest import tiny_tier_dict

    root = tmp_path_factory.mktemp("monitored")
    tiers = [tiny_tier_dict(n, p) for n, p in tiny_models.items()]
    tiers[0]["threshold"] = -1.0
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    data = root / "qa.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"Question {i}: say {w}.", "answers": [w], "kind": "exact"}
             for i, w in enumerate(WORDS * 4)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, config, data


def test_calibrate_keeps_what_the_calibration_split_saw(calibrated, counted_tiers, capsys, monkeypatch):
    root, config, data = calibrated
    monkeypatch.setenv("VCASCADE_CACHE", str(root / "vc"))
    out = root / "art.json"
    code, _, err = run_cli(capsys, "calibrate", "--config", str(config), "--dataset", str(data), "--n", "40",
                           "--target", "accept-error", "--alpha", "0.5", "--delta", "none", "--signal",
                           "mean_logprob", "--out", str(out))
    assert code == 0, err
    monitor = read_artifact(out)["monitor"]
    assert monitor["n"] == 40 and monitor["n_stored"] == 40 and len(monitor["scores"]) == 1
    assert len(monitor["scores"][0]) == 40 and monitor["skip_scores"] is None
    assert 0 <= monitor["acceptance_rate"] <= 1 and monitor["equivalence"] == "normalized"
    assert len(monitor["disagree"][0]) == 40
    counts = monitor["counts"]
    assert counts["answered_by_tier"][0] == round(monitor["acceptance_rate"] * 40)
    if counts["kept_by_smaller"]:
        assert monitor["disagreement_rate"] == counts["kept_disagree"] / counts["kept_by_smaller"]
