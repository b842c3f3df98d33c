"""Exception handlers: chatd errors to their status, in the error shape of the route's family.

/v1 answers `{"error": {"type", "message"}}`; the OpenAI-compatible routes add OpenAI's
`param` and `code` (and say 400 where FastAPI would say 422, as OpenAI does); the
compatibility routes keep FastAPI's `{"detail": ...}`.
"""

from __future__ import annotations

import logging
import math
import re

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from chatd.api.table import family
from chatd.errors import ChatdError, UpstreamBadRequest, UpstreamError
from chatd.textcheck import jsonable

log = logging.getLogger("chatd.api")

# Said when the upstream gave no hint: soon enough to retry, long enough not to hammer.
DEFAULT_RETRY_AFTER_S = 2
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "input_too_large",
    415: "unsupported_media_type",
}


# What FastAPI raises (as a 400) when it cannot decode a JSON body at all.
_UNPARSEABLE_BODY = "There was an error parsing the body"


def error_type(exc: BaseException) -> str:
    """Name an error for clients: InputTooLarge → input_too_large; the unforeseen → internal."""
    if not isinstance(exc, ChatdError) or type(exc) is ChatdError:
        return "internal_error"
    return _CAMEL.sub("_", type(exc).__name__).lower()


def retry_after(exc: BaseException) -> int | None:
    """Return the whole seconds a client should wait, for errors worth retrying later."""
    if not isinstance(exc, ChatdError) or exc.status not in (429, 503):
        return None
    hint = exc.retry_after if isinstance(exc, UpstreamError) else None
    return max(1, math.ceil(hint)) if hint is not None else DEFAULT_RETRY_AFTER_S


def error_response(
    path: str, status: int, kind: str, message: str, *, retry_s: int | None = None
) -> Response:
    """Build the error response for a path's family."""
    shape = family(path)
    if shape == "openai":
        if status == 422:
            status = 400
        body: object = {
            "error": {
                "message": message,
                "type": _openai_type(status, kind),
                "param": None,
                "code": kind,
            }
        }
    elif shape == "v1":
        body = {"error": {"type": kind, "message": message}}
    else:
        body = {"detail": message}
    headers = {"retry-after": str(retry_s)} if retry_s is not None else None
    try:
        content = orjson.dumps(body)
    except TypeError:
        # The message quotes input that cannot be encoded (a lone surrogate): escape it.
        content = orjson.dumps(jsonable(body))
    return Response(content, status, headers, "application/json")


def _openai_type(status: int, kind: str) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "server_error" if status != 502 else "upstream_error"
    return "invalid_request_error"


async def chatd_error(request: Request, exc: Exception) -> Response:
    """Answer a chatd error with its status."""
    assert isinstance(exc, ChatdError)
    return chatd_error_response(request.url.path, exc)


def chatd_error_response(path: str, exc: ChatdError) -> Response:
    """Build the response to a chatd error on a path: its status, in the path's error shape."""
    status = exc.status
    if isinstance(exc, UpstreamBadRequest) and exc.upstream_status == 404:
        # The provider knows no such model (or endpoint): a setting to fix, not an outage.
        status = 400
    if status >= 500 and not isinstance(exc, UpstreamError) and status != 503:
        log.error("request failed: %s", exc.message)
    return error_response(path, status, error_type(exc), exc.message, retry_s=retry_after(exc))


async def validation_error(request: Request, exc: Exception) -> Response:
    """Answer a request that does not fit its schema: 422 (400 on the OpenAI routes)."""
    assert isinstance(exc, RequestValidationError)
    if family(request.url.path) == "compat":
        # FastAPI's own answer, but its echo of the input may hold what JSON cannot encode.
        detail = jsonable(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": detail}, 422)
    return error_response(request.url.path, 422, "invalid_request", describe(exc))


def describe(exc: RequestValidationError) -> str:
    """Summarise validation errors in one line: where, then what."""
    parts = []
    for error in exc.errors()[:5]:
        if error.get("type") == "json_invalid":
            # loc is ("body", character offset); ctx says what the decoder choked on.
            why = (error.get("ctx") or {}).get("error", "JSON decode error")
            offset = error.get("loc", ("body", 0))[-1]
            return f"the request body is not valid JSON: {why} (at character {offset})"
        where = ".".join(str(x) for x in error.get("loc", ()) if x != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


async def http_error(request: Request, exc: Exception) -> Response:
    """Answer Starlette's HTTP errors (404 route, 405, bad body) in the family's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSEABLE_BODY:
        # FastAPI's answer to a body that is not even text (bad UTF-8): the same 422 as for
        # any other body that is not JSON, with a message that says what is wrong.
        message = "the request body is not valid JSON: it is not UTF-8 text"
        return error_response(request.url.path, 422, "invalid_request", message)
    kind = _HTTP_TYPES.get(exc.status_code, "http_error")
    response = error_response(request.url.path, exc.status_code, kind, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Answer a bug with a plain 500 in the family's shape; the traceback goes to the log."""
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal_error", "internal server error")


def install(app: FastAPI) -> None:
    """Register every handler on the app."""
    app.add_exception_handler(ChatdError, chatd_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
