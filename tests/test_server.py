"""The OpenAI-compatible server: a real uvicorn server on loopback over real vLLM engines
(tiny models), driven by the official ``openai`` client; errors by status code and body."""

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import yaml
from hypothesis import HealthCheck, settings

from vcascade.engine.cascade import Cascade
from vcascade.engine.policy import Policy
from vcascade.engine.runtime import run
from vcascade.engine.types import Request
from vcascade.server.app import Settings, create_app
from tests.conftest import tiny_tier_dict
from tests.fakes import scripted_tier
from tests.servers import free_port, serve_app, wait_for

KEY = "test-key-123"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_cascade(tiny_tiers):
    return Cascade(tiny_tiers, Policy.from_signal("mean_logprob", (-1.0,)))


@pytest.fixture(scope="module")
def server(tiny_cascade):
    with serve_app(create_app(tiny_cascade, Settings(api_key=KEY, max_body_bytes=20_000))) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def auth():
    return {"Authorization": f"Bearer {KEY}"}


pytestmark = pytest.mark.engine


def test_chat_completion_carries_the_decision_in_body_and_headers(client, tiny_cascade):
    raw = client.chat.completions.with_raw_response.create(model="vcascade", messages=QUESTION, logprobs=True,
                                                           top_logprobs=2)
    response = raw.parse()
    cascade = response.model_extra["cascade"]
    assert response.object == "chat.completion" and response.choices[0].message.content
    assert raw.headers["x-vcascade-tier"] == cascade["tier"] and cascade["tier"] in ("tiny-a", "tiny-b")
    assert raw.headers["x-vcascade-escalated"] == ("true" if cascade["escalated"] else "false")
    first = cascade["trace"][0]
    assert first["tier"] == "tiny-a" and first["threshold"] == -1.0
    assert float(raw.headers["x-vcascade-score"]) == pytest.approx(first["score"], rel=1e-5)
    assert first["decision"] == ("escalate" if first["score"] < -1.0 else "accept")
    assert cascade["out_of_scope"] == ["uncalibrated"] and cascade["model"].endswith(cascade["tier"])
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == response.choices[0].message.content
    # the same request through the engine controller gives the same answer
    direct = run(tiny_cascade.answer(Request(messages=tuple(QUESTION))))
    assert direct.text == response.choices[0].message.content and direct.tier == cascade["tier"]


def test_streamed_chat_matches_the_non_streamed_answer(client):
    full = client.chat.completions.create(model="vcascade", messages=QUESTION)
    chunks = list(client.chat.completions.create(model="vcascade", messages=QUESTION, stream=True,
                                                  stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and chunks[-2] is finish[0]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens and not chunks[-1].choices
    assert chunks[0].choices[0].delta.role == "assistant"
    # the final chunk carries the decision (README): with include_usage, the usage chunk
    assert [c for c in chunks if "cascade" in (c.model_extra or {})] == [chunks[-1]]
    assert chunks[-1].model_extra["cascade"]["tier"] == full.model_extra["cascade"]["tier"]
    plain = list(client.chat.completions.create(model="vcascade", messages=QUESTION, stream=True))
    assert [c for c in plain if "cascade" in (c.model_extra or {})] == [plain[-1]]
    assert plain[-1].choices[0].finish_reason


def test_completions_streamed_and_not_with_logprobs(client):
    full = client.completions.create(model="vcascade", prompt="The capital of France is", max_tokens=6, logprobs=2)
    lp = full.choices[0].logprobs
    assert full.object == "text_completion" and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert lp.text_offset[0] == 0 and all(len(t) <= 2 for t in lp.top_logprobs)
    streamed = list(client.completions.create(model="vcascade", prompt="The capital of France is", max_tokens=6,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == full.choices[0].text
    assert streamed[-1].model_extra["cascade"]["trace"]


def test_pinning_a_tier_and_forbidding_escalation(client):
    pinned = client.chat.completions.create(model="tiny-b", messages=QUESTION)
    assert [s["tier"] for s in pinned.model_extra["cascade"]["trace"]] == ["tiny-b"]
    capped = client.chat.completions.create(model="vcascade", messages=QUESTION, extra_body={"cascade": {"max_tier": 0}})
    info = capped.model_extra["cascade"]
    assert info["tier"] == "tiny-a" and [s["decision"] for s in info["trace"]] == ["final"] and not info["escalated"]


def test_models_health_version_and_metrics(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["vcascade", "tiny-a", "tiny-b"]
    health = httpx.get(f"{server}/health")  # open without the key, like vllm serve
    assert health.status_code == 200 and health.content == b""
    assert httpx.get(f"{server}/version").json()["version"]

    def counter(text, name, **labels):
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = httpx.get(f"{server}/metrics").text
    client.chat.completions.create(model="vcascade", messages=QUESTION)
    client.chat.completions.create(model="tiny-b", messages=QUESTION)
    after = httpx.get(f"{server}/metrics").text
    assert counter(after, "vcascade:requests_total", model_name="vcascade") == \
        counter(before, "vcascade:requests_total", model_name="vcascade") + 1
    answered = sum(counter(after, "vcascade:answers_total", tier=t) - counter(before, "vcascade:answers_total", tier=t)
                   for t in ("tiny-a", "tiny-b"))
    assert answered == 2
    assert counter(after, "vcascade:e2e_request_latency_seconds_count", model_name="tiny-b") >= 1
    assert counter(after, "vcascade:generation_tokens_total", tier="tiny-b") > 0
    assert "vcascade:num_requests_running{" in after and "vcascade:kv_cache_usage_perc{" in after
    assert counter(after, "vcascade:controller_overhead_seconds_count", part="scoring") > 0


def test_64_concurrent_requests_all_complete_with_correct_bodies(client, tiny_cascade):
    prompts = [f"Question {i}: name a thing that is {c}." for i, c in enumerate(["red", "blue", "big", "old"] * 16)]
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(
            lambda p: client.chat.completions.create(model="vcascade", messages=[{"role": "user", "content": p}]),
            prompts))
    assert len({r.id for r in responses}) == 64
    expected = run(tiny_cascade.answer_all([Request(prompt=p) for p in prompts]))
    same = sum(r.choices[0].message.content == e.text and r.model_extra["cascade"]["tier"] == e.tier
               for r, e in zip(responses, expected))
    assert same >= 62, same  # identical but for rare bf16 batch-composition ties
    for r in responses:
        info = r.model_extra["cascade"]
        assert r.usage.completion_tokens > 0 and info["trace"][-1]["tier"] == info["tier"]


def test_a_burst_beyond_max_queued_gets_503_at_once_while_admitted_requests_complete(tiny_cascade):
    with serve_app(create_app(tiny_cascade, Settings(max_queued=4))) as url:
        def post(i):
            started = time.perf_counter()
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                           json={"model": "tiny-b", "max_tokens": 300,
                                 "messages": [{"role": "user", "content": f"Tell a long story {i}."}]})
            return r, time.perf_counter() - started

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(post, range(12)))
    ok = [(r, t) for r, t in results if r.status_code == 200]
    busy = [(r, t) for r, t in results if r.status_code == 503]
    assert len(ok) >= 4 and len(busy) >= 4 and len(ok) + len(busy) == 12
    for r, t in busy:
        assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "ServiceUnavailableError"
        assert t < min(t_ok for _, t_ok in ok)  # refused at once, never queued behind the others
    assert all(r.json()["usage"]["completion_tokens"] > 0 for r, _ in ok)


@pytest.mark.parametrize("body, status, param, words", [
    (b"{not json", 400, None, "malformed JSON"),
    ({"model": "vcascade"}, 400, "messages", "Field required"),
    ({"model": "vcascade", "messages": []}, 400, "messages", "at least 1"),
    ({"model": "gpt-9", "messages": QUESTION}, 404, "model", "does not exist"),
    ({"model": "/etc/passwd", "messages": QUESTION}, 404, "model", "does not exist"),
    ({"model": "vcascade", "messages": [{"role": "user", "content": "word " * 700}]}, 400, "input_tokens",
     "maximum context length"),
    ({"model": "vcascade", "messages": QUESTION, "max_tokens": 600}, 400, "max_tokens", "you requested"),
    ({"model": "vcascade", "messages": QUESTION, "n": 2}, 400, "n", "less than or equal to 1"),
    ({"model": "vcascade", "messages": QUESTION, "logprobs": True, "top_logprobs": 7}, 400, "top_logprobs", "<= 5"),
    ({"model": "vcascade", "messages": QUESTION, "temperature": -1}, 400, "temperature", "greater than or equal"),
    ({"model": "vcascade", "messages": QUESTION, "cascade": {"max_tier": 9}}, 400, "cascade.max_tier", "[0, 1]"),
    ({"model": "vcascade", "messages": QUESTION, "cascade": {"config": "/tmp/x.yaml"}}, 400, "cascade.config",
     "Extra inputs"),
])
def test_errors_are_openai_style(server, body, status, param, words):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server}/v1/chat/completions", headers={**auth(), "content-type": "application/json"}, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert error["param"] == param and words in error["message"]


def test_api_key_body_limit_and_open_routes(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(f"{server}/v1/chat/completions", json={"model": "vcascade", "messages": QUESTION},
                       headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/openapi.json").status_code == 401
    for path in ("/health", "/version", "/metrics"):
        assert httpx.get(f"{server}{path}").status_code == 200
    big = {"model": "vcascade", "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = httpx.post(f"{server}/v1/chat/completions", json=big, headers=auth())
    assert r.status_code == 413 and r.json()["error"]["code"] == 413

    def chunks():  # a chunked upload without Content-Length cannot slip past the limit
        for _ in range(30):
            yield b"x" * 1000

    r = httpx.post(f"{server}/v1/chat/completions", content=chunks(), headers=auth())
    assert r.status_code == 413


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.contextmanager
def recorded_logs(*names: str):
    """Every log record of the server's loggers (and asyncio's and uvicorn's) while inside."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("vcascade", "uvicorn", "asyncio", *names)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger("vcascade").setLevel(logging.INFO)
    try:
        yield records
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def open_request(server: str, body: dict) -> socket.socket:
    """POST ``body`` to the chat endpoint on a raw socket (so the test decides when the client goes away)."""
    host, port = server.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=120)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def eventually(condition, seconds: float = 120.0) -> bool:
    """Poll ``condition`` until it holds (a generous deadline: only a hang fails)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_client_that_disconnects_aborts_its_generation(server, tiny_tiers):
    """Streamed or not, a client that goes away while its request is unfinished aborts it in
    vLLM (AsyncLLM.abort is called for it, the engine's unfinished count returns to 0), the
    stream is closed by the task that ran it (no error or traceback logged, one line at most)
    and the disconnect is counted. The engine's outputs are held back (after the first, for
    the streamed request) so both requests are unfinished when their clients go, however
    fast or slow the machine is."""
    engine = tiny_tiers[1].backend.engine
    generate, abort = engine.generate, engine.abort
    started: list[str] = []
    aborted: list[str] = []
    passed = {"count": 0}

    async def holding_generate(prompt, params, request_id, **kwargs):
        started.append(request_id)
        async with contextlib.aclosing(generate(prompt, params, request_id=request_id, **kwargs)) as outputs:
            sent = 0
            async for out in outputs:
                if sent >= passed["count"]:
                    await asyncio.sleep(3600)  # the client goes away meanwhile
                sent += 1
                yield out

    async def recording_abort(request_id, *args, **kwargs):
        aborted.append(request_id)
        return await abort(request_id, *args, **kwargs)

    def all_aborted(count: int) -> bool:  # vLLM may suffix the id it aborts
        return (len(started) == count and engine.get_num_unfinished_requests() == 0
                and all(any(a.startswith(s) for a in aborted) for s in started))

    body = {"model": "tiny-b", "max_tokens": 400, "messages": [{"role": "user", "content": "Tell a long story."}]}
    before = httpx.get(f"{server}/metrics").text
    assert eventually(lambda: engine.get_num_unfinished_requests() == 0)
    engine.generate, engine.abort = holding_generate, recording_abort
    try:
        with recorded_logs() as logs:
            # not streamed: the client leaves once the engine has the request
            sock = open_request(server, body)
            assert eventually(lambda: len(started) == 1)
            sock.close()
            assert eventually(lambda: all_aborted(1)), (started, aborted, engine.get_num_unfinished_requests())
            # streamed: the client leaves after the first chunk
            passed["count"] = 1
            sock = open_request(server, {**body, "stream": True})
            received = b""
            while b"\ndata: " not in received:
                received += sock.recv(65536) or b"EOF"
                assert not received.endswith(b"EOF"), received
            assert received.startswith(b"HTTP/1.1 200"), received
            sock.close()
            assert eventually(lambda: all_aborted(2)), (started, aborted, engine.get_num_unfinished_requests())
            after = ""

            def counted() -> bool:
                nonlocal after
                after = httpx.get(f"{server}/metrics").text
                return metric(after, "vcascade:num_requests_in_flight") == 0 and metric(
                    after, "vcascade:request_failures_total", model_name="tiny-b", reason="disconnected") == metric(
                    before, "vcascade:request_failures_total", model_name="tiny-b", reason="disconnected") + 2

            assert eventually(counted), after
    finally:
        del engine.generate, engine.abort  # back to the class's methods
    assert len(aborted) == 2, aborted
    assert not [r for r in logs if r.levelno >= logging.WARNING or r.exc_info], [r.getMessage() for r in logs]
    assert len(logs) <= 2, [r.getMessage() for r in logs]  # one line per disconnect at most


def test_an_answer_pinned_to_the_last_tier_is_not_escalated(server):
    """Pinning a tier is no escalation: not in the headers (streamed or not), not in ``cascade``."""
    body = {"model": "tiny-b", "messages": QUESTION, "max_tokens": 4}
    full = httpx.post(f"{server}/v1/chat/completions", json=body, headers=auth())
    assert full.headers["x-vcascade-escalated"] == "false" and full.json()["cascade"]["escalated"] is False
    with httpx.stream("POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, headers=auth()) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    assert r.headers["x-vcascade-tier"] == "tiny-b" and r.headers["x-vcascade-escalated"] == "false"
    assert json.loads(lines[-1][6:])["cascade"]["escalated"] is False


def test_docs_are_served_without_a_cdn_behind_the_key_and_can_be_switched_off(server, tiny_cascade):
    assert httpx.get(f"{server}/docs").status_code == 401  # the API key guards the docs too
    page = httpx.get(f"{server}/docs", headers=auth())
    assert page.status_code == 200 and "swagger-ui" in page.text.lower()
    assets = [a for a in re.findall(r"""(?:src|href)=["']([^"']+)""", page.text) if a]
    assert assets and not [a for a in assets if "//" in a], assets  # nothing loaded from another host
    for asset in assets:
        assert httpx.get(f"{server}{asset}", headers=auth()).status_code == 200, asset
    with serve_app(create_app(tiny_cascade, Settings(docs=False))) as url:
        for path in ("/docs", "/openapi.json", "/redoc"):
            r = httpx.get(f"{url}{path}")
            assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError", (path, r.text)
    from vcascade.engine.cli import build_parser

    assert build_parser().parse_args(["serve", "--no-docs"]).docs is False
    assert build_parser().parse_args(["serve"]).docs is True


def test_a_killed_engine_core_takes_its_workers_along_and_the_server_leaves_no_process(tiny_models, tmp_path):
    """The engine core of a served tier is killed while its worker is frozen (as a worker deep
    in a native step, which runs no signal handler and reads no death pipe): the server says
    503 (requests and /health), the worker is stopped without waiting for the server's exit,
    and after the server exits no process it started is left."""
    import psutil

    def alive(processes):  # running, not a zombie (exited, waiting to be reaped)
        out = []
        for p in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({"tiers": [tiny_tier_dict("tiny-a", tiny_models["tiny-a"])]}))
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vcascade.engine.cli", "serve", "--config", str(config), "--port",
                             str(port), "--warmup-batch", "1"], stdout=log, stderr=subprocess.STDOUT)
    spawned: list[psutil.Process] = []
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 300, proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        cores = [p for p in children if "EngineCor" in p.name()]
        assert len(cores) == 1, [(p.pid, p.name()) for p in children]
        workers = cores[0].children(recursive=True)
        spawned = cores + workers  # the engine's processes (not multiprocessing's resource tracker)
        for worker in workers:
            worker.suspend()  # SIGSTOP: it cannot notice its core's death by itself
        cores[0].kill()
        assert eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 503, 60)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "tiny-a", "messages": QUESTION})
        assert r.status_code == 503 and r.json()["error"]["type"] == "ServiceUnavailableError", r.text
        assert eventually(lambda: not alive(workers), 60), [(p.pid, p.name()) for p in alive(workers)]
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 503  # the server keeps answering
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        assert not alive(spawned), [(p.pid, p.name(), p.status()) for p in alive(spawned)]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        for p in alive(spawned):  # on a failure, leave nothing behind for the next tests
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()
                p.kill()


def test_dead_engine_and_failing_remote_tier_are_503_and_502():
    from vcascade.engine.errors import EngineDeadError

    small = scripted_tier("small", {"hi": ("Hello", [-2.0])})
    large = scripted_tier("large", {}, fail=True)
    cascade = Cascade([small, large], Policy.from_signal("mean_logprob", (-1.0,)))
    with serve_app(create_app(cascade)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "vcascade",
                                                           "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502 and "large is down" in r.json()["error"]["message"]

        def dead():
            raise EngineDeadError("tier small: the vLLM engine is dead")

        small.backend.check_health = dead
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and "dead" in health.json()["error"]["message"]


def test_schemathesis_finds_no_server_errors(server):
    """Property-based requests generated from the server's own OpenAPI document: no 5xx."""
    import schemathesis
    from hypothesis import given
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", headers=auth())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /v1/chat/completions",
                                                                       "POST /v1/completions", "GET /v1/models"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            if isinstance(case.body, dict):
                case.body["max_tokens"] = 4  # keep generations short; every other field stays generated
            case.call_and_validate(base_url=server, headers=auth(), checks=[not_a_server_error], timeout=60)

        check()


def test_serve_command_drains_requests_in_flight_on_sigterm(tiny_models, tmp_path):
    tiers = [tiny_tier_dict(n, p) for n, p in tiny_models.items()]
    tiers[0]["threshold"] = -1.0
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    port = free_port()
    log = tmp_path / "decisions.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "vcascade.engine.cli", "serve", "--config", str(config), "--port",
                             str(port), "--warmup-batch", "1", "--decision-log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 240, proc)
        lines = []
        body = {"model": "tiny-b", "max_tokens": 300, "stream": True,
                "messages": [{"role": "user", "content": "Tell a long story."}]}

        def stream():
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
                lines.extend(line for line in r.iter_lines() if line)

        reader = threading.Thread(target=stream)
        reader.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert lines[-1] == "data: [DONE]" and len(lines) > 20  # the request in flight finished
        assert proc.wait(60) == 0
        _, err = proc.communicate()
        assert "draining" in err and "Traceback" not in err
        entry = json.loads(log.read_text().splitlines()[-1])
        assert entry["tier"] == "tiny-b" and entry["e2e_seconds"] > 0 and entry["overhead_seconds"] >= 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_binds_loopback_by_default():
    from vcascade.engine.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.max_queued is None and args.api_key is None
