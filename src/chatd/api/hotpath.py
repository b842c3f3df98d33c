"""The hot routes, served ahead of the framework when the request is well-formed.

Each route the route table marks `hot` (the sends and the completion: what a client calls per
turn) has a runner here. A request to one whose path, headers and JSON body are all well-formed
is validated with the route's own model and patterns, and run by the same function the route
calls; the framework's routing, dependencies and response checks cost more than the rest of the
request's own Python (benchmarks/HISTORY.md). Anything else (a bad id, another content type, a
body that does not validate) goes on to FastAPI with its body replayed, so every refusal still
comes from one place and reads the same.
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
from chatd.api.routes import compat, messages
from chatd.api.schemas import (
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_KEY_PATTERN,
    SESSION_ID_PATTERN,
    ChatIn,
    MessageIn,
    SendIn,
)
from chatd.api.state import state
from chatd.api.table import HOT_ROUTES, Route, path_pattern
from chatd.errors import ChatdError
from chatd.runtime import Runtime

_SESSION_ID = SESSION_ID_PATTERN.strip("^$")
# As `deps.IdempotencyKey` and `openai.routes.SessionHeader` declare them.
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
class Runner:
    """The model a hot route's body must fit, and what runs it."""

    body: type[BaseModel]
    run: Run


@dataclass(frozen=True, slots=True)
class HotRoute:
    """A hot route's methods, its path (each `{name}` a session id), and its runner."""

    methods: frozenset[str]
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


async def _chat(
    runtime: Runtime, caller: Caller, _: re.Match[str], body: ChatIn, headers: Headers
) -> Any:
    return await compat.reply(runtime, caller, body, headers.idempotency_key)


async def _chat_stream(
    runtime: Runtime, caller: Caller, _: re.Match[str], body: ChatIn, __: Headers
) -> Any:
    return await compat.stream_text(runtime, caller, body)


async def _chat_session(
    runtime: Runtime, caller: Caller, match: re.Match[str], body: MessageIn, _: Headers
) -> Any:
    return await compat.stream_ndjson(runtime, caller, match[1], body)


RUNNERS = {
    "/chat": Runner(ChatIn, _chat),
    "/chat-stream": Runner(ChatIn, _chat_stream),
    "/chat/{session_id}": Runner(MessageIn, _chat_session),
    "/v1/sessions/{session_id}/messages": Runner(SendIn, _send),
    "/v1/chat/completions": Runner(CompletionRequest, _complete),
}
assert set(RUNNERS) == {r.path for r in HOT_ROUTES}, "every hot route of the table has a runner"


def _hot(route: Route) -> HotRoute:
    runner = RUNNERS[route.path]
    path = re.compile(path_pattern(route.path, _SESSION_ID))
    return HotRoute(route.methods, path, runner.body, runner.run)


# Static paths by a dict lookup; those with a session id in them by their pattern.
_STATIC = {r.path: _hot(r) for r in HOT_ROUTES if "{" not in r.path}
_PATTERNED = tuple(_hot(r) for r in HOT_ROUTES if "{" in r.path)


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
    if scope["type"] != "http":
        return None
    path: str = scope["path"]
    route = _STATIC.get(path)
    if route is not None:
        match = route.path.fullmatch(path) if scope["method"] in route.methods else None
        return None if match is None else (route, match)
    for route in _PATTERNED:
        match = route.path.fullmatch(path)
        if match is not None:
            return (route, match) if scope["method"] in route.methods else None
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
