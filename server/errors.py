"""Errors as ``vllm serve`` returns them: ``{"error": {"message", "type", "param", "code"}}``.

Schema errors and malformed JSON are 400 (vLLM overrides FastAPI's 422); a prompt over the
context is 400 with ``param: "input_tokens"``, ``max_tokens`` too large 400 with
``param: "max_tokens"``; an unknown model 404 ``NotFoundError`` with ``param: "model"``;
a wrong API key 401; a body over the limit 413; a full queue or a dead engine 503 (with
``Retry-After`` for the queue); a remote tier that failed 502/503; anything else 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from vcascade.engine.errors import EngineDeadError, RequestError, TierUnavailableError

from .schemas import ErrorInfo, ErrorResponse

log = logging.getLogger("vcascade.server")

ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 413: "RequestTooLargeError",
               499: "ClientClosedRequest", 500: "InternalServerError", 502: "BadGatewayError",
               503: "ServiceUnavailableError"}


class APIError(Exception):
    """An error response with its status, message, offending parameter and headers."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=status)).model_dump()


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def _param(loc: tuple, kind: str = "") -> str | None:
    if kind == "json_invalid":
        return None
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def _validation_message(errors: list[dict]) -> str:
    lines = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            lines.append(f"malformed JSON body ({e.get('ctx', {}).get('error', e['msg'])})")
            continue
        where = _param(tuple(e.get("loc", ())))
        lines.append(f"{where}: {e['msg']}" if where else e["msg"])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"{len(errors)} validation error{'s' if len(errors) != 1 else ''}: " + "; ".join(lines) + more


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OpenAI-style error body."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        param = _param(tuple(errors[0].get("loc", ())), errors[0].get("type", "")) if errors else None
        return error_response(400, _validation_message(errors), param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def _request(request: Request, exc: RequestError):
        return error_response(400, str(exc), exc.param)

    @app.exception_handler(TierUnavailableError)
    async def _tier(request: Request, exc: TierUnavailableError):
        return error_response(exc.status, str(exc), headers={"Retry-After": "1"} if exc.status == 503 else None)

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError):
        return error_response(503, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")
