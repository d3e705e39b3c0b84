"""Errors as ``vllm serve`` returns them: ``{"error": {"message", "type", "param", "code"}}``.

Schema errors and malformed JSON are 400 (vLLM overrides FastAPI's 422); a prompt over the
context is 400 with ``param: "input_tokens"``, ``max_tokens`` too large 400 with
``param: "max_tokens"``; an unknown model 404 ``NotFoundError`` with ``param: "model"``;
a wrong API key 401; a body over the limit 413; a full queue or a dead engine 503 (with
``Retry-After`` for the queue); a remote tier that failed 502/503; anything else 500.
FastAPI's and Starlette's own errors (a body that is not JSON, not UTF-8 or nested too
deeply; an unknown path, 404; a wrong method, 405) get the same body. ``param`` names the
field as a client spells it: ``messages[0].content``, ``cascade.max_tier``.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vcascade.engine.errors import EngineDeadError, RequestError, TierUnavailableError

from .schemas import ErrorInfo, ErrorResponse

log = logging.getLogger("vcascade.server")

ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 405: "MethodNotAllowedError",
               413: "RequestTooLargeError", 499: "ClientClosedRequest", 500: "InternalServerError",
               502: "BadGatewayError", 503: "ServiceUnavailableError"}

# pydantic-core's names for union branches and validator wrappers in an error's ``loc``
# (``messages.0.content.str``): not fields a client can name (as vLLM's clean_loc_for_param)
_INTERNAL_LOC = re.compile(r"[\[\](){}]|^(str|int|float|bool|list|dict|none|union|tagged-union|function-\w+|"
                           r"json-or-python|lax-or-strict|chain|default|nullable)$")


class APIError(Exception):
    """An error response with its status, message, offending parameter and headers."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def _printable(text: str | None) -> str | None:
    """``text`` as valid Unicode (a lone surrogate a client sent becomes U+FFFD), so that an
    error that quotes the request can always be encoded."""
    if text is None:
        return None
    return text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return ErrorResponse(error=ErrorInfo(message=_printable(message), type=kind, param=_printable(param),
                                         code=status)).model_dump()


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def _param(loc: tuple, kind: str = "") -> str | None:
    """A validation error's location as a client names the field: ``messages[0].content``."""
    if kind == "json_invalid":
        return None
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _INTERNAL_LOC.search(str(part)):
            out += f".{part}" if out else str(part)
    return out or None


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

    @app.exception_handler(HTTPException)  # Starlette's, so FastAPI's (a subclass) and the router's 404/405 too
    async def _http(request: Request, exc: HTTPException):
        return error_response(exc.status_code, _http_message(request, exc), headers=getattr(exc, "headers", None))

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


def _http_message(request: Request, exc: HTTPException) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the request body's JSON is nested too deeply"
    if exc.status_code == 400 and isinstance(cause, ValueError):  # e.g. an integer of more than 4300 digits
        return f"the request body is not valid JSON ({cause})"
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"no route {request.url.path}"
    if exc.status_code == 405 and exc.detail == "Method Not Allowed":
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        return f"method {request.method} is not allowed on {request.url.path}" + (f" (allowed: {allowed})"
                                                                                   if allowed else "")
    return str(exc.detail)
