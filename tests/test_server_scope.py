"""The guarantee's scope through the real server: each out-of-scope reason in the ``cascade``
object, the decision log and ``/metrics``; ``/v1/models`` advertises a guarantee only when
it applies; per-group thresholds chosen by the request's group (body or header)."""

import json
import math

import httpx
import openai
import pytest

from vcascade.engine.cascade import Cascade
from vcascade.engine.policy import Policy
from vcascade.engine.scope import Scope
from vcascade.engine.uncertainty.rules import SignalRule
from vcascade.server.app import Settings, create_app
from tests.fakes import scripted_tier
from tests.servers import serve_app

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GUARANTEE = "with probability >= 90% ... (test)"
pytestmark = pytest.mark.engine


def grouped_policy():
    """Group "keep" accepts every tier-0 answer, group "escalate" none; unknown groups escalate."""
    return Policy((SignalRule("mean_logprob"),), (math.inf,), by_group={"keep": ((-math.inf,), None),
                                                                      "escalate": ((math.inf,), None)},
                  fallback_group="escalate")


@pytest.fixture(scope="module")
def scoped(tiny_tiers, tmp_path_factory):
    log = tmp_path_factory.mktemp("scope") / "decisions.jsonl"
    scope = Scope(system_prompt=None, max_tokens=(12, 12), groups=("keep", "escalate"))
    app = create_app(Cascade(tiny_tiers, grouped_policy(), scope), Settings(decision_log=log, guarantee=GUARANTEE))
    with serve_app(app) as url:
        yield url, log


def ask(url, **body):
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "vcascade", "messages": QUESTION, **body},
                          headers=body.pop("headers", None), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["cascade"]


def test_in_scope_and_each_reason_through_the_server(scoped):
    url, log = scoped
    assert ask(url, cascade={"group": "keep"})["out_of_scope"] == []
    cases = {
        "max_tokens": dict(max_tokens=5),
        "system_prompt": dict(messages=[{"role": "system", "content": "Be terse."}, *QUESTION]),
        "decoding": dict(temperature=0.9, seed=3),
        "tier_range": dict(model="tiny-b"),
        "group_unknown": dict(cascade={"group": "nobody"}),
    }
    for reason, body in cases.items():
        info = ask(url, **{"cascade": {"group": "keep"}, **body})
        assert info["in_scope"] is False and info["out_of_scope"] == [reason], (reason, info)
    capped = ask(url, cascade={"group": "keep", "max_tier": 0})
    assert capped["out_of_scope"] == ["tier_range"]
    completion = httpx.post(f"{url}/v1/completions", json={"model": "vcascade", "prompt": "Paris is", "max_tokens": 12,
                                                           "cascade": {"group": "keep"}}, timeout=60).json()
    assert completion["cascade"]["out_of_scope"] == ["endpoint"]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r for entry in logged for r in entry["out_of_scope"]} >= set(cases) | {"endpoint"}
    assert logged[0]["in_scope"] is True and logged[0]["group"] == "keep"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'vcascade:requests_in_scope_total{model_name="vcascade"}' in metrics
    for reason in [*cases, "endpoint"]:
        assert f'reason="{reason}"' in metrics


def test_the_group_chooses_the_thresholds_by_body_or_header(scoped):
    url, _ = scoped
    kept = ask(url, cascade={"group": "keep"})
    assert kept["tier"] == "tiny-a" and kept["group"] == "keep" and kept["trace"][0]["threshold"] is None
    escalated = ask(url, headers={"x-vcascade-group": "escalate"})
    assert escalated["tier"] == "tiny-b" and escalated["group"] == "escalate" and escalated["in_scope"]
    unknown = ask(url)
    assert unknown["tier"] == "tiny-b" and unknown["group"] == "escalate" and unknown["out_of_scope"] == [
        "group_unknown"]


def test_models_advertise_the_guarantee_only_when_it_applies(scoped, tiny_tiers):
    url, _ = scoped
    card = httpx.get(f"{url}/v1/models").json()["data"][0]["cascade"]
    assert card["guarantee"] == GUARANTEE and card["scope"]["groups"] == ["keep", "escalate"]
    forced = Cascade(tiny_tiers, Policy.from_signal("mean_logprob", (-1.0,)), Scope(forced=True, max_tokens=(12, 12)))
    with serve_app(create_app(forced, Settings(guarantee=GUARANTEE))) as forced_url:
        card = httpx.get(f"{forced_url}/v1/models").json()["data"][0]["cascade"]
        assert card["guarantee"] is None and card["scope"] is None
        info = openai.OpenAI(base_url=f"{forced_url}/v1", api_key="x").chat.completions.create(
            model="vcascade", messages=QUESTION).model_extra["cascade"]
        assert info["out_of_scope"] == ["forced_artifact"]
    uncalibrated = Cascade(tiny_tiers, Policy.from_signal("mean_logprob", (-1.0,)))
    with serve_app(create_app(uncalibrated, Settings())) as plain_url:
        info = httpx.post(f"{plain_url}/v1/chat/completions", json={"model": "vcascade", "messages": QUESTION},
                          timeout=60).json()["cascade"]
        assert info["out_of_scope"] == ["uncalibrated"]


def test_a_fallback_answer_is_out_of_scope_through_the_server(tiny_tiers):
    broken = scripted_tier("down", {}, fail=True, on_error="previous_answer")
    cascade = Cascade([tiny_tiers[0], broken], Policy.from_signal("mean_logprob", (math.inf,)),
                      Scope(max_tokens=(12, 8)))
    with serve_app(create_app(cascade, Settings())) as url:
        info = ask(url)
        assert info["tier"] == "tiny-a" and info["out_of_scope"] == ["fallback_answer"]
        streamed = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                              json={"model": "vcascade", "messages": QUESTION, "stream": True}).text
        final = [json.loads(line[6:]) for line in streamed.splitlines()
                 if line.startswith("data: {") and '"cascade"' in line]
        assert final and final[-1]["cascade"]["out_of_scope"] == ["fallback_answer"]
