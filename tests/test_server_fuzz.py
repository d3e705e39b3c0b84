"""The server against hostile input: the malformed requests of issue 15 as named regression
tests, and a property-based fuzz (hypothesis) beyond the OpenAPI schema — unicode with lone
surrogates and control characters, numeric extremes, empty and huge strings, nested junk,
every field at its type's edges, and junk bodies — against a real uvicorn server over the
shared tiny vLLM engines. What must hold: no 5xx, an OpenAI-shaped body for every 4xx, a
well-formed answer for every 200, and a healthy server afterwards."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcascade.engine.cascade import Cascade
from vcascade.engine.policy import Policy
from vcascade.server.app import Settings, create_app
from tests.servers import serve_app

KEY = "fuzz-key"
HEADERS = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
BODY_LIMIT = 1 << 20

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tiny_tiers):
    cascade = Cascade(tiny_tiers, Policy.from_signal("mean_logprob", (-1.0,)))
    with serve_app(create_app(cascade, Settings(api_key=KEY, max_body_bytes=BODY_LIMIT))) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, headers=HEADERS, timeout=120) as client:
        yield client


def assert_openai_error(r: httpx.Response, status: int | None = None) -> dict:
    assert 400 <= r.status_code < 500 if status is None else r.status_code == status, (r.status_code, r.text[:500])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == r.status_code and isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and (error["param"] is None or isinstance(error["param"], str))
    return error


def assert_well_formed(r: httpx.Response, stream: bool) -> None:
    """A 200 is an OpenAI body (or SSE stream ending in [DONE], errors in it shaped too)."""
    if not stream:
        body = r.json()
        assert body["choices"] and "cascade" in body and body["usage"]["completion_tokens"] >= 0, body
        return
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", r.text[-500:]
    for event in map(json.loads, events[:-1]):
        if "error" in event:
            assert set(event["error"]) == {"message", "type", "param", "code"}, event
            assert 400 <= event["error"]["code"] < 600 and event["error"]["code"] != 500, event


def post(http: httpx.Client, path: str, body) -> httpx.Response:
    """``body`` as JSON (lone surrogates escaped as ``\\udcff``, as JSON allows) or raw bytes."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=content)


# -- issue 15's cases: each a named regression test ---------------------------------------------

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
SURROGATE = {"model": "vcascade", "messages": [{"role": "user", "content": "a\udcffb"}]}


@pytest.mark.parametrize("path, body, status, param", [
    pytest.param(CHAT, SURROGATE, 400, "messages[0].content", id="lone-surrogate-in-content"),
    pytest.param(CHAT, {**SURROGATE, "model": "tiny-b"}, 400, "messages[0].content", id="lone-surrogate-pinned-tier"),
    pytest.param(CHAT, {"model": "vcascade", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "ok"}, {"type": "text", "text": "\ud800"}]}]}, 400, "messages[0].content",
        id="lone-surrogate-in-content-part"),
    pytest.param(COMPLETIONS, {"model": "vcascade", "prompt": "x\udfff"}, 400, "prompt", id="lone-surrogate-in-prompt"),
    pytest.param(CHAT, {"model": "vcascade\udcff", "messages": QUESTION}, 400, "model", id="lone-surrogate-in-model"),
    pytest.param(CHAT, {"model": "vcascade", "messages": QUESTION, "stop": ["\udcff"]}, 400, "stop",
                 id="lone-surrogate-in-stop"),
    pytest.param(CHAT, {"model": "vcascade", "messages": QUESTION, "stop": [""]}, 400, "stop", id="empty-stop-in-list"),
    pytest.param(CHAT, {"model": "vcascade", "messages": QUESTION, "stop": ""}, 400, "stop", id="empty-stop-string"),
    pytest.param(COMPLETIONS, {"model": "vcascade", "prompt": "Hi", "stop": ["ok", ""]}, 400, "stop",
                 id="empty-stop-completions"),
    pytest.param(COMPLETIONS, {"model": "vcascade", "prompt": ""}, 400, "prompt", id="empty-prompt"),
    pytest.param(COMPLETIONS, {"model": "tiny-a", "prompt": [""]}, 400, "prompt", id="empty-prompt-in-list"),
    pytest.param(CHAT, {"model": "vcascade", "messages": QUESTION, "seed": 18446744073709551616, "temperature": 1},
                 400, "seed", id="seed-above-uint64"),
    pytest.param(CHAT, {"model": "vcascade", "messages": QUESTION, "seed": 9223372036854775808, "temperature": 1},
                 400, "seed", id="seed-above-int64"),
    pytest.param(CHAT, {"model": "vcascade", "messages": QUESTION, "seed": -9223372036854775809, "temperature": 1},
                 400, "seed", id="seed-below-int64"),
    pytest.param(CHAT, b'{"model": "vcascade", "messages": [{"role": "user", "content": "a\xff\xfeb"}]}', 400, None,
                 id="invalid-utf8-body"),
    pytest.param(CHAT, b"[" * 50_000 + b"]" * 50_000, 400, None, id="json-nested-50000-deep"),
    pytest.param(CHAT, b'{"model": "vcascade", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, None,
                 id="json-nested-50000-deep-in-field"),
    pytest.param(CHAT, b'{"model": "vcascade", "max_tokens": 1' + b"0" * 5000 + b"}", 400, None,
                 id="integer-of-5000-digits"),
])
def test_issue_15_malformed_inputs_get_an_openai_4xx_naming_the_field(http, path, body, status, param):
    error = assert_openai_error(post(http, path, body), status)
    assert error["param"] == param, error


def test_issue_15_extreme_int64_seeds_are_served(http):
    for seed in (2**63 - 1, -(2**63)):
        r = post(http, CHAT, {"model": "tiny-a", "messages": QUESTION, "seed": seed, "temperature": 1, "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert_well_formed(r, stream=False)


@pytest.mark.parametrize("method, path, status", [
    pytest.param("GET", "/no/such/path", 404, id="unknown-path"),
    pytest.param("POST", "/v1/models", 405, id="wrong-method-models"),
    pytest.param("GET", "/v1/chat/completions", 405, id="wrong-method-chat"),
    pytest.param("DELETE", "/v1/completions", 405, id="wrong-method-completions"),
])
def test_issue_15_routing_errors_are_openai_shaped(http, method, path, status):
    r = http.request(method, path)
    assert_openai_error(r, status)
    if status == 405:
        assert r.headers["allow"]


# -- the fuzz -------------------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
CONTROLS = st.characters(categories=["Cc", "Cf", "Zl", "Zp"])
CHARS = st.one_of(st.characters(), CONTROLS, st.sampled_from("<|>{}\\\"'\n\t\x00\ufeff\U0001f600"))
GOOD_TEXT = st.one_of(
    st.text(CHARS, min_size=1, max_size=30),
    st.sampled_from(["<|im_end|>", "<|endoftext|>", "{{ raise_exception('x') }}", "%s%n", "\r\n\r\n", " ", "\x00"]),
    st.builds(lambda piece, n: piece * n, st.sampled_from(["a", "word ", "é", "\x00", "\U0001f600"]),
              st.sampled_from([600, 5_000, 60_000])),
)
BAD_TEXT = st.builds(lambda a, s, b: a + s + b, st.text(CHARS, max_size=5), SURROGATES, st.text(CHARS, max_size=5))
TEXT = st.one_of(GOOD_TEXT, GOOD_TEXT, BAD_TEXT, st.just(""))
INTS = st.one_of(st.integers(-3, 3), st.sampled_from([2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63),
                                                      -(2**63) - 1, 2**64, 10**30, -(10**30)]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 0.5, 1.0, 1.0000001, 2.0, 2.0000001, 1e308]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(CHARS, max_size=8), inner, max_size=4)),
                    max_leaves=12)


def edges(*values, text: bool = False):
    """A field's hostile values: its type's edges, junk of any type (and bad text for strings)."""
    return st.one_of(st.sampled_from(values), JUNK, *([TEXT] if text else []))


PART = st.fixed_dictionaries({"type": st.just("text"), "text": GOOD_TEXT})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer"]),
                                 "content": st.one_of(GOOD_TEXT, st.lists(PART, max_size=3))})
BAD_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": edges("tool", "", "USER", None, text=True), "content": GOOD_TEXT}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(TEXT, JUNK)}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(
        st.fixed_dictionaries({"type": edges("text", "image_url", ""), "text": st.one_of(TEXT, JUNK)}), max_size=3)}),
    JUNK)
# Requests a server must serve ...
VALID = {
    "max_tokens": st.integers(1, 6),
    "temperature": st.one_of(st.sampled_from([0, 2]), st.floats(0, 2)),
    "top_p": st.floats(0, 1, exclude_min=True),
    "stop": st.one_of(st.none(), GOOD_TEXT, st.lists(GOOD_TEXT, max_size=4)),
    "seed": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    "n": st.just(1),
    "stream": st.booleans(),
    "stream_options": st.one_of(st.none(), st.fixed_dictionaries({"include_usage": st.booleans()})),
    "user": GOOD_TEXT,
    "cascade": st.fixed_dictionaries({}, optional={"max_tier": st.integers(0, 1)}),
    "frequency_penalty": FLOATS,  # not a field vcascade reads: ignored, as vllm serve ignores unknown ones
}
CHAT_VALID = {**VALID, "max_completion_tokens": st.integers(1, 6), "logprobs": st.booleans(),
              "top_logprobs": st.integers(0, 5)}
COMPLETION_VALID = {**VALID, "logprobs": st.one_of(st.none(), st.integers(0, 5)), "echo": st.just(False)}
MODEL = st.sampled_from(["vcascade", "tiny-a", "tiny-b"])
CHAT_OK = st.fixed_dictionaries({"model": MODEL, "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
                                optional=CHAT_VALID)
COMPLETION_OK = st.fixed_dictionaries({"model": MODEL, "prompt": st.one_of(GOOD_TEXT, st.lists(GOOD_TEXT, min_size=1,
                                                                                               max_size=1))},
                                      optional=COMPLETION_VALID)
# ... and each field at its type's edges, one or two at a time
EDGES = {
    "model": edges("", "gpt-4", "/etc/passwd", "vcascade\x00", "VCASCADE", text=True),
    "max_tokens": edges(0, -1, 511, 512, 600, 2**63, 10**30, 1.5, "4", True, None),
    "temperature": edges(-0.0, 1e-300, 5e-324, 2.0000001, -1, "0.5", True),
    "top_p": edges(0, 5e-324, 1e-300, 1.0000001, -1, True),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=5), JUNK),
    "seed": st.one_of(INTS, JUNK),
    "n": edges(0, 2, -1, 2**63, 1.0, True),
    "stream": edges("true", 1, 0, "yes", None),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": JUNK}), JUNK),
    "user": st.one_of(TEXT, JUNK),
    "cascade": st.one_of(st.fixed_dictionaries({}, optional={"max_tier": INTS, "group": st.one_of(TEXT, JUNK),
                                                             "config": TEXT}), JUNK),
    "logit_bias": JUNK,
}
CHAT_EDGES = {**EDGES, "messages": st.one_of(st.lists(st.one_of(MESSAGE, BAD_MESSAGE), min_size=0, max_size=3), JUNK),
              "max_completion_tokens": edges(0, -1, 600, 10**30, None), "logprobs": edges("yes", 2, None),
              "top_logprobs": edges(-1, 6, 20, 21, 2**63, None)}
COMPLETION_EDGES = {**EDGES, "prompt": st.one_of(TEXT, st.lists(TEXT, max_size=3), JUNK),
                    "logprobs": edges(-1, 6, 20, 21, True, 2**63), "echo": edges(True, "no"), "suffix": TEXT}


def hostile(valid, field_edges: dict):
    """A valid request with zero to two of its fields replaced by edge values."""
    names = st.lists(st.sampled_from(sorted(field_edges)), max_size=2, unique=True)
    changes = names.flatmap(lambda chosen: st.fixed_dictionaries({n: field_edges[n] for n in chosen}))
    return st.builds(lambda body, change: {**body, **change}, valid, changes)


CHAT_BODY = hostile(CHAT_OK, CHAT_EDGES)
COMPLETION_BODY = hostile(COMPLETION_OK, COMPLETION_EDGES)
JSON_TEXT = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 60_000)),
    st.builds(lambda n: b'{"a":' * n + b"1" + b"}" * n, st.integers(1, 60_000)),
    st.builds(lambda n: b'{"model": "vcascade", "messages": ' + b"[" * n + b"]" * n + b"}", st.integers(1, 60_000)),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'"x"', b"1e999999", b"NaN", b"-Infinity", b'{"model": "vcascade"',
                     b'{"model": "vcascade", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e999}',
                     b'{"model": "vcascade", "model": 1, "messages": []}', b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00",
                     b'{"model": "vcascade", "messages": [{"role": "user", "content": "\\ud800"}]}']),
    JUNK.map(lambda value: json.dumps(value).encode()),
)
# bounded: ~30 s in all on 2 cores (tiny models; most valid requests generate a few tokens)
FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))


STATUSES: dict[int, int] = {}


def check(http: httpx.Client, path: str, body) -> None:
    r = post(http, path, body)
    STATUSES[r.status_code] = STATUSES.get(r.status_code, 0) + 1
    assert r.status_code < 500, (r.status_code, r.text[:500], body if not isinstance(body, bytes) else body[:200])
    if r.status_code >= 400:
        assert_openai_error(r)
    else:
        assert_well_formed(r, stream=r.headers["content-type"].startswith("text/event-stream"))


def test_fuzz_chat_completions(http):
    @FUZZ
    @given(body=CHAT_BODY)
    def run(body):
        check(http, CHAT, body)

    run()


def test_fuzz_completions(http):
    @FUZZ
    @given(body=COMPLETION_BODY)
    def run(body):
        check(http, COMPLETIONS, body)

    run()


def test_fuzz_junk_bodies(http):
    @FUZZ
    @given(path=st.sampled_from([CHAT, COMPLETIONS]), body=JSON_TEXT)
    def run(path, body):
        check(http, path, body)

    run()


def test_the_server_is_healthy_after_the_fuzz(http, tiny_tiers):
    print("fuzz statuses:", dict(sorted(STATUSES.items())))
    assert http.get("/health").status_code == 200
    r = post(http, CHAT, {"model": "vcascade", "messages": QUESTION, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    assert all(t.backend.engine.get_num_unfinished_requests() == 0 for t in tiny_tiers)
    metrics = http.get("/metrics").text
    assert "vcascade:num_requests_in_flight 0.0" in metrics
