"""The hot routes, served ahead of the framework when the request is well-formed.

FastAPI's own work for a send (matching it against the routes, solving its dependencies,
decoding the body with the standard library, checking the reply against its response model)
was about 0.7 M of a turn's 7.8 M instructions (benchmarks/HISTORY.md). A send to
`POST /v1/sessions/{id}/messages` or `POST /v1/chat/completions` whose path, headers and JSON
body are all well-formed is validated here, with the same models and the same patterns, and run
by the same function the route calls. Anything else (a bad id, another content type, a body
that does not validate) goes on to FastAPI with its body replayed, so every refusal still comes
from one place and reads the same.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.deps import Caller, caller_of
from chatd.api.errors import chatd_error_response
from chatd.api.openai import routes as openai
from chatd.api.openai.schemas import CompletionRequest
from chatd.api.responses import EventStream
from chatd.api.routes import messages
from chatd.api.schemas import (
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_KEY_PATTERN,
    SESSION_ID_PATTERN,
    SendIn,
)
from chatd.api.state import state
from chatd.errors import ChatdError
from chatd.runtime import Runtime

_SESSION_ID = SESSION_ID_PATTERN.strip("^$")
# As `deps.IdempotencyKey` and `routes.openai.SessionHeader` declare them.
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.strip("^$").encode())
SESSION_HEADER = re.compile(_SESSION_ID.encode())


@dataclass(frozen=True, slots=True)
class Headers:
    """What the hot routes read from the headers, already checked."""

    idempotency_key: str | None
    session: str | None
    accept: str


Run = Callable[[Runtime, Caller, "re.Match[str]", Any, Headers], Awaitable[BaseModel | EventStream]]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """A path, the model its body must fit, and what runs it."""

    path: re.Pattern[str]
    body: type[BaseModel]
    run: Run


async def _send(
    runtime: Runtime, caller: Caller, match: re.Match[str], body: SendIn, headers: Headers
) -> Any:
    return await messages.send(
        runtime, caller, match[1], body, headers.idempotency_key, headers.accept
    )


async def _complete(
    runtime: Runtime, caller: Caller, _: re.Match[str], body: CompletionRequest, headers: Headers
) -> Any:
    return await openai.complete(runtime, caller, body, headers.session, headers.idempotency_key)


ROUTES = (
    HotRoute(re.compile(f"/v1/sessions/({_SESSION_ID})/messages"), SendIn, _send),
    HotRoute(re.compile("/v1/chat/completions"), CompletionRequest, _complete),
)


class HotPath:
    """Serve well-formed requests to the hot routes directly; pass everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run a well-formed hot request here, or hand the request on."""
        found = _route(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, match = found
        read: list[Message] = []
        body = await _read_body(receive, read)
        request = None if body is None else _parse(scope, body, route.body)
        if request is None:
            await self.app(scope, _replay(read, receive), send)
            return
        response: Response
        try:
            runtime = state(scope["app"]).runtime
            result = await route.run(runtime, caller_of(scope), match, *request)
        except ChatdError as exc:
            response = chatd_error_response(scope["path"], exc)
        else:
            if isinstance(result, EventStream):
                response = result
            else:
                response = Response(result.model_dump_json(), media_type="application/json")
        await response(scope, receive, send)


def _route(scope: Scope) -> tuple[HotRoute, re.Match[str]] | None:
    """Return the hot route a request is for, and its path's match."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    for route in ROUTES:
        match = route.path.fullmatch(scope["path"])
        if match is not None:
            return route, match
    return None


async def _read_body(receive: Receive, read: list[Message]) -> bytes | None:
    """Read the whole body, keeping each message; None if the client left (or was cut off)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse(scope: Scope, body: bytes, model: type[BaseModel]) -> tuple[Any, Headers] | None:
    """Return the validated body and headers, or None if FastAPI should answer."""
    content_type = key = session = accept = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"idempotency-key":
            if key is not None or len(value) > IDEMPOTENCY_KEY_MAX:
                return None
            if not IDEMPOTENCY_KEY.fullmatch(value):
                return None
            key = value
        elif name == b"x-chatd-session":
            if session is not None or not SESSION_HEADER.fullmatch(value):
                return None
            session = value
        elif name == b"accept" and accept is None:
            accept = value
    # Exactly what FastAPI decodes as JSON and nothing it treats otherwise (+json, no type).
    if content_type is None or content_type.split(b";")[0].strip().lower() != b"application/json":
        return None
    try:
        payload = model.model_validate_json(body)
    except ValidationError:
        return None
    headers = Headers(
        None if key is None else key.decode(),
        None if session is None else session.decode(),
        "" if accept is None else accept.decode("latin-1"),
    )
    return payload, headers


def _replay(read: list[Message], receive: Receive) -> Receive:
    """Receive the messages already read again, then go on receiving."""
    pending = deque(read)

    async def replay() -> Message:
        return pending.popleft() if pending else await receive()

    return replay
