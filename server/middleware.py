"""Pure ASGI middleware: API-key check and request-body size limit.

* ``ApiKey`` — ``Authorization: Bearer <key>`` on every route except ``/health``,
  ``/version`` and ``/metrics``; keys are compared as SHA-256 digests with
  ``secrets.compare_digest`` (constant time, as ``vllm serve`` does); a miss is a 401 with
  the OpenAI error body.
* ``BodyLimit`` — a body larger than the limit gets a 413 before any handler runs, whether
  the client declared its length or streamed it in chunks.
"""

from __future__ import annotations

import hashlib
import json
import secrets

from .errors import error_body

OPEN_PATHS = frozenset({"/health", "/version", "/metrics"})


async def _send_error(send, status: int, message: str, param: str | None = None, headers: dict | None = None):
    body = json.dumps(error_body(status, message, param)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class ApiKey:
    def __init__(self, app, key: str):
        self.app = app
        self.digest = hashlib.sha256(key.encode()).digest()

    def _authorized(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        offered = hashlib.sha256(token.encode()).digest()
        return secrets.compare_digest(offered, self.digest) and scheme.lower() == "bearer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not self._authorized(scope):
            return await _send_error(send, 401, "invalid or missing API key (send Authorization: Bearer <key>)",
                                     headers={"www-authenticate": "Bearer"})
        return await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_error(send, 413, f"request body of {int(declared)} bytes is over the limit of "
                                                f"{self.max_bytes} bytes")
        chunks, size = [], 0
        while True:  # read the whole body first: a chunked upload cannot slip past the limit
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _send_error(send, 413, f"request body is over the limit of {self.max_bytes} bytes")
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await self.app(scope, _replay([body], receive), send)


def _replay(messages: list, receive):
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
