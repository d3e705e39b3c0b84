"""The guarantee in production on real tiny engines: the artifact keeps what the calibration
split saw; a server monitoring it flips its state on shifted traffic; its decision log
recalibrates the cascade (``calibrate --from-log``) into an artifact the server loads."""

import json

import httpx
import pytest
import yaml

from vcascade.engine.artifact import load_artifact_policy, read_artifact
from vcascade.engine.cascade import Cascade
from vcascade.engine.config import load_config
from vcascade.engine.scope import Scope
from vcascade.server.app import Settings, create_app
from vcascade.server.monitoring import GuardSettings, LiveArtifact
from tests.conftest import tiny_tier_dict
from tests.servers import serve_app
from tests.test_calibration_job import WORDS

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def calibrated(tiny_models, tiny_tiers, tmp_path_factory):
    """(root, config path, artifact path): the tiny cascade calibrated on 96 items (fixed signal)."""
    root = tmp_path_factory.mktemp("monitored")
    tiers = [tiny_tier_dict(n, p) for n, p in tiny_models.items()]
    tiers[0]["threshold"] = -1.0
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    data = root / "qa.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"Question {i}: say {w}.", "answers": [w], "kind": "exact"}
             for i, w in enumerate(WORDS * 8)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    by_name = {t.name: t for t in tiny_tiers}

    async def build(config, only=None, **kw):
        return [by_name[only[0]]]

    async def keep(tiers):
        return None

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VCASCADE_CACHE", str(root / "vc"))
        mp.setattr("vcascade.engine.tiers.build_tiers", build)
        mp.setattr("vcascade.engine.tiers.shutdown_tiers", keep)
        from vcascade.engine import cli

        out = root / "art.json"
        assert cli.main(["calibrate", "--config", str(config), "--dataset", str(data), "--n", "80", "--target",
                         "accept-error", "--alpha", "0.5", "--delta", "none", "--signal", "mean_logprob",
                         "--out", str(out)]) == 0
        yield root, config, out, mp, build, keep


def cascade_for(tiny_tiers, config, artifact):
    return Cascade(tiny_tiers, load_artifact_policy(artifact, load_config(config)),
                   Scope.from_artifact(read_artifact(artifact)))


def test_calibrate_keeps_what_the_calibration_split_saw(calibrated):
    _, _, out, *_ = calibrated
    monitor = read_artifact(out)["monitor"]
    assert monitor["n"] == 80 and monitor["n_stored"] == 80 and len(monitor["scores"]) == 1
    assert len(monitor["scores"][0]) == 80 and monitor["skip_scores"] is None
    assert 0 <= monitor["acceptance_rate"] <= 1 and monitor["equivalence"] == "normalized"
    assert len(monitor["disagree"][0]) == 80
    counts = monitor["counts"]
    assert counts["answered_by_tier"][0] == round(monitor["acceptance_rate"] * 80)
    if counts["kept_by_smaller"]:
        assert monitor["disagreement_rate"] == counts["kept_disagree"] / counts["kept_by_smaller"]


def chat(url, content, **extra):
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                   json={"model": "vcascade", "messages": [{"role": "user", "content": content}], **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_shifted_traffic_flips_the_state_and_the_log_recalibrates(calibrated, tiny_tiers, tmp_path):
    root, config, artifact, *_ = calibrated
    log = tmp_path / "decisions.jsonl"
    settings = Settings(decision_log=log, artifact=LiveArtifact.read(artifact), monitor=GuardSettings(seed=3))
    app = create_app(cascade_for(tiny_tiers, config, artifact), settings)
    with serve_app(app) as url:
        for i in range(40):  # the calibration's kind of request (its held-out items and more like them)
            chat(url, f"Question {100 + i}: say {WORDS[i % len(WORDS)]}.")
        assert httpx.get(f"{url}/health").json()["guarantee_state"] == "in_scope"
        feedback = httpx.post(f"{url}/v1/feedback", json={"id": chat(url, "Question 7: say cat.")["id"],
                                                          "reference": "cat"})
        assert feedback.status_code == 200 and feedback.json()["counted"] is True
        flipped = None
        for i in range(150):  # another kind of request: long, unlike any calibration item
            chat(url, " ".join(["zq" + "x" * (i % 7)] * 40) + f" {i}")
            if httpx.get(f"{url}/health").json()["guarantee_state"] == "drift_detected":
                flipped = i + 1
                break
        snap = httpx.get(f"{url}/v1/monitor").json()
        assert flipped is not None, snap["tests"]
        assert "vcascade:guarantee_state 0.0" in httpx.get(f"{url}/metrics").text
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(e["request"]["messages"] and e["cascade"] for e in entries if e.get("type") != "audit")
    # recalibrate from the log: the in-scope requests become items, labelled by agreement with tiny-b
    new = tmp_path / "from-log.json"
    from vcascade.engine import cli

    assert cli.main(["calibrate", "--config", str(config), "--from-log", str(log), "--feedback",
                     str(tmp_path / "decisions.feedback.jsonl"), "--target", "accept-error", "--alpha", "0.5",
                     "--delta", "none", "--signal", "mean_logprob", "--out", str(new)]) == 0
    data = read_artifact(new)
    assert data["labels"]["by_feedback"] == 1 and data["labels"]["by_agreement_with_last_tier"] >= 40
    assert "agreement with tiny-b" in data["guarantee"]["statement"]
    app = create_app(cascade_for(tiny_tiers, config, new), Settings(artifact=LiveArtifact.read(new),
                                                                    monitor=GuardSettings()))
    with serve_app(app) as url:
        assert chat(url, "Question 3: say cat.")["cascade"]["in_scope"] is True
        assert httpx.get(f"{url}/v1/monitor").json()["artifact"]["sha256"] == LiveArtifact.read(new).sha256


def test_sighup_swaps_the_artifact_under_load_and_refuses_a_wrong_one(calibrated, tmp_path):
    import concurrent.futures
    import signal
    import subprocess
    import sys
    import time

    from tests.servers import free_port, wait_for

    _, config, artifact, *_ = calibrated
    live = tmp_path / "live.json"
    original = json.loads(artifact.read_text())
    live.write_text(json.dumps(original))
    cfg = tmp_path / "serve.yaml"
    served = yaml.safe_load(config.read_text())
    for tier in served["tiers"]:
        tier.pop("threshold", None)  # the thresholds come from the artifact
    cfg.write_text(yaml.safe_dump({**served, "artifact": str(live)}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vcascade.engine.cli", "serve", "--config", str(cfg), "--port",
                             str(port), "--warmup-batch", "1"], stdout=out, stderr=subprocess.STDOUT)

    def sha():
        return httpx.get(f"{url}/v1/models").json()["data"][0]["cascade"]["artifact"]["sha256"]

    def eventually(check, seconds=60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.2)
        return False

    try:
        wait_for(f"{url}/health", 300, proc)
        first = sha()
        old = original["policy"]["thresholds"][0]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            running = [pool.submit(chat, url, f"Question {200 + i}: say {WORDS[i % len(WORDS)]}.", max_tokens=12)
                       for i in range(16)]
            time.sleep(0.3)
            live.write_text(json.dumps({**original, "created": "2026-12-02T00:00:00+00:00",
                                        "policy": {**original["policy"], "thresholds": [-100.0]}}))
            proc.send_signal(signal.SIGHUP)
            answers = [f.result(timeout=120) for f in running]  # none lost
        assert len(answers) == 16 and all(a["choices"][0]["message"]["content"] is not None for a in answers)
        assert all(a["cascade"]["trace"][0]["threshold"] in (old, -100.0) for a in answers)
        assert eventually(lambda: sha() != first)
        assert chat(url, "Question 1: say no.")["cascade"]["trace"][0]["threshold"] == -100.0
        card = httpx.get(f"{url}/v1/models").json()["data"][0]["cascade"]
        assert card["artifact"]["created"] == "2026-12-02T00:00:00+00:00"
        swapped = sha()
        wrong = json.loads(live.read_text())
        wrong["tiers"][1]["model_hash"] = "sha256:" + "0" * 64
        live.write_text(json.dumps(wrong))
        proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: "artifact reload refused" in (tmp_path / "serve.log").read_text())
        assert sha() == swapped and chat(url, "Question 2: say yes.")["cascade"]["trace"][0]["threshold"] == -100.0
        assert 'vcascade:artifact_reloads_total{outcome="refused"} 1.0' in httpx.get(f"{url}/metrics").text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
