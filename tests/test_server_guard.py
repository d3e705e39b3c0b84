"""The guarantee monitor through the real server (uvicorn on loopback) over scripted tiers
(tests/fakes.py: the real Tier and Cascade, answers and logprobs chosen by the test): state
in /metrics, /health and /v1/monitor, the log line when it flips, audits, feedback."""

import json
import logging

import httpx
import numpy as np
import pytest

from vcascade.engine.cascade import Cascade
from vcascade.engine.monitoring import monitor_section, route
from vcascade.engine.policy import Policy
from vcascade.engine.scope import Scope
from vcascade.server.app import Settings, create_app
from vcascade.server.monitoring import GuardSettings, LiveArtifact
from tests.fakes import scripted_tier
from tests.servers import serve_app

THRESHOLD = -1.0
N_CAL = 400


def mean_logprobs(rng, n, low, high):
    return rng.uniform(low, high, size=n)


def script_for(rng):
    """Prompts ``in{i}`` whose small-tier mean logprob is drawn as the calibration's
    (uniform on [-2, 0]); ``shift{i}`` drawn from [-0.3, 0] (the small tier suddenly confident)."""
    small, large = {}, {}
    for prefix, (low, high) in (("in", (-2.0, 0.0)), ("shift", (-0.3, 0.0))):
        for i, lp in enumerate(mean_logprobs(rng, 300, low, high)):
            text = f"{prefix}{i}"
            small[text] = (f"answer {i % 3}", [float(lp)] * 2)
            large[text] = (f"answer {i % 3}" if i % 4 else "something else", [-0.1, -0.1])
    return small, large


def artifact(rng, alpha=0.2):
    scores = mean_logprobs(rng, N_CAL, -2.0, 0.0)[:, None]
    tier, skipped = route(scores, None, [THRESHOLD], None)
    disagree = (rng.random(N_CAL) < 0.25)[:, None]
    data = {"target": "accept-error", "alpha": alpha, "created": "2026-12-01T00:00:00+00:00",
            "monitor": monitor_section(scores, None, tier, skipped, disagree)}
    return LiveArtifact(data, None, "f" * 64, data["created"])


@pytest.fixture
def guarded(tmp_path):
    rng = np.random.default_rng(0)
    small, large = script_for(rng)
    tiers = [scripted_tier("small", small), scripted_tier("large", large)]
    cascade = Cascade(tiers, Policy.from_signal("mean_logprob", (THRESHOLD,)), Scope(max_tokens=(8, 8)))
    log = tmp_path / "decisions.jsonl"

    def start(**monitor):
        settings = Settings(decision_log=log, artifact=artifact(rng), monitor=GuardSettings(seed=1, **monitor))
        return serve_app(create_app(cascade, settings))

    return start, log


def ask(url, prompt, **extra):
    r = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                   json={"model": "vcascade", "messages": [{"role": "user", "content": prompt}], **extra})
    assert r.status_code == 200, r.text
    return r.json()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_in_scope_traffic_keeps_the_state_and_shifted_traffic_flips_it(guarded, caplog):
    start, log = guarded
    with start() as url, caplog.at_level(logging.WARNING, logger="vcascade.server"):
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.json() == {"status": "ok", "guarantee_state": "in_scope"}
        for i in range(80):
            ask(url, f"in{i}")
        metrics = httpx.get(f"{url}/metrics").text
        assert metric(metrics, "vcascade:guarantee_state") == 1.0
        assert 'vcascade:monitor_statistic{test="score:small"}' in metrics
        assert 'vcascade:monitor_rate{bound="lower",rate="acceptance_rate"}' in metrics
        assert 'vcascade:artifact_info{created="2026-12-01T00:00:00+00:00",sha256="' + "f" * 64 in metrics
        ask(url, "in1", temperature=0.7)  # out of scope: counted, not tested
        snap = httpx.get(f"{url}/v1/monitor").json()
        assert snap["state"] == "in_scope" and snap["observed"] == 80 and snap["out_of_scope"] == 1
        assert snap["artifact"]["sha256"] == "f" * 64 and set(snap["tests"]) == {
            "score:small", "acceptance_rate", "served_risk"}
        flipped = None
        for i in range(300):
            ask(url, f"shift{i}")
            if httpx.get(f"{url}/health").json()["guarantee_state"] == "drift_detected":
                flipped = i + 1
                break
        assert flipped is not None and flipped < 150, flipped
        metrics = httpx.get(f"{url}/metrics").text
        assert metric(metrics, "vcascade:guarantee_state") == 0.0
        snap = httpx.get(f"{url}/v1/monitor").json()
        assert snap["alarms"][0]["test"] in ("score:small", "acceptance_rate")
        assert any("guarantee state: in_scope -> drift_detected" in r.getMessage() for r in caplog.records)
        assert httpx.get(f"{url}/health").headers["x-vcascade-guarantee-state"] == "drift_detected"


def test_audits_answer_kept_requests_again_and_bound_the_loss(guarded):
    start, log = guarded
    with start(audit_share=1.0) as url:
        kept = [ask(url, f"in{i}") for i in range(60)]
        n_kept = sum(r["cascade"]["tier"] == "small" for r in kept)
        import time

        for _ in range(100):
            snap = httpx.get(f"{url}/v1/monitor").json()
            if snap["audits"]["started"] == n_kept and snap["audits"]["running"] == 0:
                break
            time.sleep(0.05)
        assert snap["audits"]["agreed"] + snap["audits"]["disagreed"] == n_kept > 0
        bound = snap["quality_loss_bound"]
        assert bound["requests"] == 60 and bound["audited"] == n_kept and 0 <= bound["upper"] <= 1
        assert bound["upper"] == pytest.approx(bound["audited_disagree"] / 60)  # p = 1: exact
        metrics = httpx.get(f"{url}/metrics").text
        assert 'vcascade:audits_total{outcome="disagreed"}' in metrics
        assert 'vcascade:quality_loss_bound{bound="upper"}' in metrics
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    audits = [e for e in lines if e.get("type") == "audit"]
    assert len(audits) == n_kept and all(a["kept_tier"] == "small" and a["audit_tier"] == "large" for a in audits)
    assert {a["disagree"] for a in audits} == {True, False} and audits[0]["equivalence"] == "normalized"


def test_feedback_moves_the_served_risk_bound_and_bad_feedback_is_refused(guarded, tmp_path):
    start, log = guarded
    with start() as url:
        post = lambda body: httpx.post(f"{url}/v1/feedback", json=body, timeout=10)  # noqa: E731
        unknown = post({"id": "chatcmpl-nobody", "correct": True})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "id"
        answers = [ask(url, f"in{i}") for i in range(100)]
        kept = [a for a in answers if a["cascade"]["tier"] == "small"]
        assert post({"id": kept[0]["id"]}).status_code == 400  # no label
        assert post({"id": kept[0]["id"], "correct": "maybe"}).status_code == 400
        both = post({"id": kept[0]["id"], "correct": True, "reference": "x"})
        assert both.status_code == 400 and both.json()["error"]["type"] == "BadRequestError"
        assert post({"id": kept[0]["id"], "reference": "answer 0", "kind": "weird"}).status_code == 400
        first = post({"id": kept[0]["id"], "reference": ["answer 9"], "kind": "exact"})
        assert first.status_code == 200 and first.json()["correct"] is False and first.json()["counted"]
        assert post({"id": kept[0]["id"], "correct": True}).status_code == 409
        lowers = []
        for a in kept[1:]:
            body = post({"id": a["id"], "correct": False}).json()
            lowers.append(body["served_risk"]["lower"])
        assert lowers[-1] > lowers[0] and lowers[-1] > 0.2  # every kept answer wrong: risk far above α = 0.2
        snap = httpx.get(f"{url}/v1/monitor").json()
        assert snap["state"] == "drift_detected" and snap["alarms"][0]["test"] == "served_risk"
        assert 'vcascade:served_risk{bound="lower"}' in httpx.get(f"{url}/metrics").text
    stored = [json.loads(line) for line in (tmp_path / "decisions.feedback.jsonl").read_text().splitlines()]
    assert len(stored) == len(kept) and stored[0]["reference"] == ["answer 9"] and stored[0]["kept_by_smaller"]


def test_without_a_monitor_health_stays_empty_and_routes_say_why(tmp_path):
    tiers = [scripted_tier("small", {"q": ("a", [-0.1])}), scripted_tier("large", {"q": ("a", [-0.1])})]
    cascade = Cascade(tiers, Policy.from_signal("mean_logprob", (THRESHOLD,)))
    with serve_app(create_app(cascade, Settings(monitor=GuardSettings()))) as url:  # no artifact: no monitor
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.content == b""
        assert httpx.get(f"{url}/v1/monitor").status_code == 404
        assert httpx.post(f"{url}/v1/feedback", json={"id": "x", "correct": True}).status_code == 404
        assert "vcascade:guarantee_state" not in httpx.get(f"{url}/metrics").text


# ---------------------------------------------------------------- hot swap

def write_artifact(path, config, threshold, rng, model_hash=None):
    from vcascade.engine.artifact import tier_identity

    tiers = [tier_identity(t, config) for t in config.tiers]
    if model_hash:
        tiers[1] = {**tiers[1], "model_hash": model_hash}
    scores = mean_logprobs(rng, N_CAL, -2.0, 0.0)[:, None]
    tier, skipped = route(scores, None, [threshold], None)
    data = {"schema_version": 2, "created": f"2026-12-01T00:00:0{int(-threshold * 3) % 10}+00:00",
            "target": "accept-error", "alpha": 0.2, "delta": None, "guarantee": {"statement": f"test {threshold}"},
            "scope": {"instructions": "cascade", "groups": []}, "tiers": tiers, "fit": {},
            "policy": {"rules": [{"kind": "signal", "name": "mean_logprob"}], "thresholds": [threshold],
                       "skip": None, "skip_threshold": None},
            "monitor": monitor_section(scores, None, tier, skipped, (rng.random(N_CAL) < 0.2)[:, None])}
    path.write_text(json.dumps(data))
    return path


def test_a_reload_swaps_between_requests_and_a_wrong_artifact_is_refused(tmp_path):
    import concurrent.futures
    import time

    from vcascade.engine.config import parse_config
    from vcascade.engine.runtime import runtime
    from vcascade.engine.factory import cascade_for_artifact
    from vcascade.server.reload import Reloader

    rng = np.random.default_rng(5)
    small, large = script_for(rng)
    tiers = [scripted_tier("small", small, delay=0.5), scripted_tier("large", large)]
    path = tmp_path / "art.json"
    config = parse_config({"signal": "mean_logprob", "tiers": [
        {"name": "small", "model": "test/small", "sampling": {"max_tokens": 8}, "threshold": -1.0},
        {"name": "large", "model": "test/large", "sampling": {"max_tokens": 8}}]}).with_artifact(str(path))
    write_artifact(path, config, -1.0, rng)
    first = LiveArtifact.read(path)
    cascade = cascade_for_artifact(config, first.data, tiers)
    app = create_app(cascade, Settings(artifact=first, monitor=GuardSettings(seed=2)))
    reloader = Reloader(app.state.service, config, runtime())
    with serve_app(app) as url:
        for i in range(5):
            ask(url, f"in{i}")
        tiers[0].backend.delay = 3.0
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            running = [pool.submit(ask, url, f"in{10 + i}") for i in range(16)]
            deadline = time.monotonic() + 20
            while app.state.service.in_flight < 16 and time.monotonic() < deadline:
                time.sleep(0.01)  # until all 16 are admitted (each at the small tier for 3 s)
            assert app.state.service.in_flight == 16, app.state.service.in_flight
            write_artifact(path, config, -1.7, rng)
            assert reloader.reload()
            answers = [f.result() for f in running]
        tiers[0].backend.delay = 0.0
        assert all(a["cascade"]["trace"][0]["threshold"] == -1.0 for a in answers)  # started before: old policy
        after = ask(url, "in40")
        assert after["cascade"]["trace"][0]["threshold"] == -1.7
        second = LiveArtifact.read(path)
        card = httpx.get(f"{url}/v1/models").json()["data"][0]["cascade"]
        assert card["artifact"]["sha256"] == second.sha256 != first.sha256 and card["guarantee"] == "test -1.7"
        snap = httpx.get(f"{url}/v1/monitor").json()
        assert snap["artifact"]["sha256"] == second.sha256 and snap["observed"] == 1  # restarted, fed the new policy
        # a wrong artifact: another model for the last tier, or not JSON at all: refused, the old one serves
        write_artifact(path, config, -0.5, rng, model_hash="sha256:" + "0" * 64)
        assert not reloader.reload()
        path.write_text('{"schema_version": 2, "tiers": [')
        assert not reloader.reload()
        assert ask(url, "in41")["cascade"]["trace"][0]["threshold"] == -1.7
        metrics = httpx.get(f"{url}/metrics").text
        assert f'sha256="{second.sha256}"' in metrics and f'sha256="{first.sha256}"' not in metrics
        assert 'vcascade:artifact_reloads_total{outcome="refused"} 2.0' in metrics
        assert 'vcascade:artifact_reloads_total{outcome="swapped"} 1.0' in metrics
