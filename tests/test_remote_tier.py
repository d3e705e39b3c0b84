"""Remote tiers: a real ``vllm serve`` subprocess on loopback (tiny model) as a cascade tier,
faults injected by a proxy in front of it."""

import json

import numpy as np
import openai
import pytest

from vcascade.calibration import job
from vcascade.calibration.datasets import load_dataset
from vcascade.engine.artifact import ArtifactError, load_artifact_policy
from vcascade.engine.cascade import Cascade
from vcascade.engine.config import parse_config
from vcascade.engine.errors import TierUnavailableError
from vcascade.engine.factory import build_cascade
from vcascade.engine.policy import Policy
from vcascade.engine.runtime import run
from vcascade.engine.tiers import build_tiers
from vcascade.engine.tiers.remote import RemoteTierError
from vcascade.engine.types import Request
from vcascade.engine.uncertainty.signals import get_signal
from vcascade.server.app import create_app
from tests.conftest import tiny_tier_dict
from tests.servers import FaultProxy, free_port, serve_app, vllm_serve

pytestmark = pytest.mark.engine
PROMPTS = ["What is the capital of France?", "Name a colour.", "Count to three.", "Tell me about rivers."]


@pytest.fixture(scope="module")
def remote(tiny_models):
    with vllm_serve(tiny_models["tiny-b"], "tiny-remote", max_logprobs=5) as (url, _):
        yield url


@pytest.fixture(scope="module")
def proxy(remote):
    return FaultProxy(remote)


def remote_tier_dict(endpoint: str, **extra) -> dict:
    return {"name": "remote-b", "model": "tiny-remote", "endpoint": f"{endpoint}/v1", "timeout_s": 30, "max_retries": 2,
            "sampling": {"max_tokens": 12, "logprobs": 5}, **extra}


def remote_config(tiny_models, endpoint: str, **extra):
    tiers = [tiny_tier_dict("tiny-a", tiny_models["tiny-a"], threshold=-1.0), remote_tier_dict(endpoint, **extra)]
    return parse_config({"signal": "mean_logprob", "tiers": tiers})


def start_remote(tiny_models, endpoint: str, **extra):
    return run(build_tiers(remote_config(tiny_models, endpoint, **extra), only=["remote-b"], warmup_batch=0))[0]


@pytest.fixture(scope="module")
def remote_tier(tiny_models, remote):
    return start_remote(tiny_models, remote)


def test_a_remote_tier_gives_what_the_same_model_gives_in_process(remote_tier, tiny_tiers):
    requests = [Request(prompt=p) for p in PROMPTS]
    far = run(remote_tier.generate_many(requests))
    near = run(tiny_tiers[1].generate_many(requests))  # tiny-b, in-process
    assert remote_tier.max_model_len == 512
    for a, b in zip(far, near):
        assert a.text == b.text and a.completion_tokens == b.completion_tokens
        assert len(a.top_logprobs) == len(b.top_logprobs) and all(len(t) == 5 for t in a.top_logprobs)
        diff = np.abs(np.array(a.token_logprobs) - np.array(b.token_logprobs))
        assert diff.max() < 0.05, diff  # both bf16, separate processes and batches
        for name in ("mean_logprob", "min_logprob", "neg_topk_entropy"):
            assert get_signal(name)(a) == pytest.approx(get_signal(name)(b), abs=0.05)
        assert a.prompt_tokens == b.prompt_tokens and a.tokens == b.tokens


def test_a_cascade_whose_last_tier_is_remote(remote_tier, tiny_tiers):
    cascade = Cascade([tiny_tiers[0], remote_tier], Policy.from_signal("mean_logprob", (0.0,)))  # always escalates
    answers = run(cascade.answer_all([Request(prompt=p) for p in PROMPTS]))
    for a in answers:
        assert a.tier == "remote-b" and [s.decision for s in a.trace] == ["escalate", "final"]
        assert a.trace[1].completion_tokens > 0 and a.text


def test_remote_samples_for_semantic_entropy(tiny_models, remote):
    tier = start_remote(tiny_models, remote, samples={"n": 4, "temperature": 1.0, "max_tokens": 6})
    result = run(tier.generate(Request(prompt=PROMPTS[3])))
    assert len(result.samples) == 4 and len(result.clusters) == 4
    assert all(s.token_logprobs and s.cumulative_logprob < 0 for s in result.samples)


def test_calibration_against_a_remote_tier_and_refusal_when_the_remote_model_changes(
        tiny_models, remote, remote_tier, tiny_tiers, tmp_path, monkeypatch, capsys):
    from vcascade.engine import cli

    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": p, "answers": ["Paris"]}) + "\n"
                            for i, p in enumerate(PROMPTS * 3)))
    config = remote_config(tiny_models, remote, model_revision="rev-1")
    records = job.collect(config, load_dataset(str(data)), tiers=[tiny_tiers[0], remote_tier], progress=False)
    assert len(records[1]) == 12 and all(r["result"]["completion_tokens"] > 0 for r in records[1].values())
    path = tmp_path / "c.yaml"
    import yaml

    raw = {"signal": "mean_logprob", "tiers": [tiny_tier_dict("tiny-a", tiny_models["tiny-a"]),
                                               remote_tier_dict(remote, model_revision="rev-1")]}
    raw["tiers"][0]["threshold"] = -1.0
    path.write_text(yaml.safe_dump(raw))

    async def injected(config, only=None, **kw):
        return [tiny_tiers[0] if name == "tiny-a" else remote_tier for name in only]

    async def keep(tiers):
        return None

    monkeypatch.setattr("vcascade.engine.tiers.build_tiers", injected)
    monkeypatch.setattr("vcascade.engine.tiers.shutdown_tiers", keep)
    out = tmp_path / "art.json"
    code = cli.main(["calibrate", "--config", str(path), "--dataset", str(data), "--n", "8", "--target",
                     "quality-loss", "--alpha", "0.3", "--signal", "mean_logprob", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    artifact = json.loads(out.read_text())
    remote_identity = artifact["tiers"][1]
    assert remote_identity["model_hash"] == "remote:tiny-remote@rev-1" and remote_identity["served"]["max_model_len"] == 512
    assert load_artifact_policy(out, parse_config(raw, str(path))).thresholds
    raw["tiers"][1]["model_revision"] = "rev-2"  # the operator says the served weights changed
    with pytest.raises(ArtifactError, match="calibrated for model 'tiny-remote'"):
        load_artifact_policy(out, parse_config(raw, str(path)))
    raw["tiers"][1]["model_revision"] = "rev-1"
    artifact["tiers"][1]["served"]["max_model_len"] = 1024  # calibrated against a differently configured server
    out.write_text(json.dumps(artifact))
    raw["artifact"] = str(out)
    del raw["tiers"][0]["threshold"]
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match="max_model_len 1024, this one has 512"):
        run(build_cascade(parse_config(raw, str(path)), warmup_batch=0))


def test_5xx_and_429_are_retried_then_succeed(tiny_models, proxy):
    tier = start_remote(tiny_models, proxy.url)
    before = proxy.attempts.get("/v1/chat/completions", 0)
    proxy.fail_next(500, 2)
    result = run(tier.generate(Request(prompt=PROMPTS[0])))
    assert result.text and proxy.attempts["/v1/chat/completions"] - before == 3
    proxy.fail_next(429, 1)
    assert run(tier.generate(Request(prompt=PROMPTS[0]))).text == result.text


def test_a_remote_that_keeps_failing_is_a_clear_error_or_falls_back(tiny_models, proxy, tiny_tiers):
    tier = start_remote(tiny_models, proxy.url)
    before = proxy.attempts.get("/v1/chat/completions", 0)
    proxy.fail_next(503, 3)
    with pytest.raises(TierUnavailableError, match=rf"tier remote-b \({proxy.url}/v1\) failed after 2 retries") as err:
        run(tier.generate(Request(prompt=PROMPTS[0])))
    assert err.value.status == 502 and proxy.attempts["/v1/chat/completions"] - before == 3
    tolerant = start_remote(tiny_models, proxy.url, on_error="previous_answer")
    cascade = Cascade([tiny_tiers[0], tolerant], Policy.from_signal("mean_logprob", (0.0,)))
    proxy.fail_next(500, 3)
    answer = run(cascade.answer(Request(prompt=PROMPTS[1])))
    assert answer.tier == "tiny-a" and [s.decision for s in answer.trace] == ["escalate", "error"]
    assert "failed after 2 retries" in answer.trace[1].detail


def test_timeouts_and_refused_connections(tiny_models, proxy):
    tier = start_remote(tiny_models, proxy.url, timeout_s=1, max_retries=1)
    proxy.delay_next(3, 2)
    with pytest.raises(TierUnavailableError, match="timed out") as err:
        run(tier.generate(Request(prompt=PROMPTS[0])))
    assert err.value.status == 503
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteTierError, match="cannot list models at .*Connection error"):
        start_remote(tiny_models, nowhere)
    tier.backend.client = tier.backend.client.with_options(base_url=f"{nowhere}/v1", max_retries=1)
    with pytest.raises(TierUnavailableError, match="Connection error") as err:
        run(tier.generate(Request(prompt=PROMPTS[0])))
    assert err.value.status == 503


def test_start_up_refuses_a_remote_without_logprobs(tiny_models, remote, proxy):
    proxy.strip_logprobs = True
    try:
        with pytest.raises(RemoteTierError, match="returns no token logprobs"):
            start_remote(tiny_models, proxy.url)
    finally:
        proxy.strip_logprobs = False
    with pytest.raises(RemoteTierError, match="refuses logprobs with top_logprobs=6.*--max-logprobs >= 6"):
        start_remote(tiny_models, remote, sampling={"max_tokens": 4, "logprobs": 6})
    with pytest.raises(RemoteTierError, match="does not serve model 'other'; it serves tiny-remote"):
        run(build_tiers(parse_config({"tiers": [{**remote_tier_dict(remote), "model": "other"}]}), warmup_batch=0))


def test_vcascade_serve_with_a_remote_last_tier_answers_the_openai_client(remote_tier, tiny_tiers, proxy):
    cascade = Cascade([tiny_tiers[0], remote_tier], Policy.from_signal("mean_logprob", (0.0,)))
    with serve_app(create_app(cascade)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        response = client.chat.completions.create(model="vcascade", messages=[{"role": "user", "content": PROMPTS[0]}])
        info = response.model_extra["cascade"]
        assert info["tier"] == "remote-b" and info["model"] == "tiny-remote" and response.choices[0].message.content
        streamed = list(client.chat.completions.create(model="remote-b", stream=True,
                                                       messages=[{"role": "user", "content": PROMPTS[0]}]))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
            response.choices[0].message.content


def test_several_front_ends_over_the_same_engine_servers_decide_alike(tiny_models, remote):
    """The README's scale-out recipe: every tier remote (one engine server per model), N
    ``vcascade serve`` front ends over them, each deciding on its own with the same policy:
    the same requests get the same answers and decisions from every front end, and the
    engine server batches for all of them."""
    config = parse_config({"signal": "mean_logprob", "tiers": [
        remote_tier_dict(remote, name="small", threshold=-1.0), remote_tier_dict(remote, name="large")]})
    fronts = [Cascade(run(build_tiers(config, warmup_batch=0)), Policy.from_signal("mean_logprob", (-1.0,)))
              for _ in range(2)]
    with serve_app(create_app(fronts[0])) as first, serve_app(create_app(fronts[1])) as second:
        replies = []
        for url in (first, second):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            replies.append([client.chat.completions.create(model="vcascade", messages=[{"role": "user", "content": p}])
                            for p in PROMPTS])
    for a, b in zip(*replies):
        assert a.choices[0].message.content == b.choices[0].message.content
        assert [s["decision"] for s in a.model_extra["cascade"]["trace"]] == \
            [s["decision"] for s in b.model_extra["cascade"]["trace"]]
    assert {r.model_extra["cascade"]["model"] for r in replies[0]} == {"tiny-remote"}
