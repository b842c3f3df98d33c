"""The hot route, `POST /v1/sessions/{id}/messages`, served ahead of the framework when it can be.

FastAPI's own work for a send (matching it against the routes, solving its dependencies,
decoding the body with the standard library, checking the reply against its response model)
was about 1 M of a turn's 7.8 M instructions (benchmarks/README.md). A send whose session id,
headers and JSON body are all well-formed is validated here, with the same model and the same
patterns, and run by the same `routes.messages.send`. Anything else (a bad id, another content
type, a body that does not validate) goes on to FastAPI with its body replayed, so every refusal
still comes from one place and reads the same.
"""

from __future__ import annotations

import re
from collections import deque

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.deps import caller_of
from chatd.api.errors import chatd_error_response
from chatd.api.routes import messages
from chatd.api.schemas import SESSION_ID_PATTERN, SendIn
from chatd.api.sse import EventStream
from chatd.errors import ChatdError

SEND_PATH = re.compile("/v1/sessions/(" + SESSION_ID_PATTERN.strip("^$") + ")/messages")
# As `deps.IdempotencyKey` declares it: 1-255 printable ASCII characters, no spaces.
IDEMPOTENCY_KEY = re.compile(rb"[\x21-\x7e]{1,255}")


class HotPath:
    """Serve well-formed sends directly; pass everything else on unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run a well-formed send here, or hand the request on."""
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = SEND_PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        body = await _read_body(receive, read)
        request = None if body is None else _parse(scope, body)
        if request is None:
            await self.app(scope, _replay(read, receive), send)
            return
        payload, idempotency_key, accept = request
        response: Response
        try:
            result = await messages.send(
                scope["app"].state.runtime,
                caller_of(scope),
                match[1],
                payload,
                idempotency_key,
                accept,
            )
        except ChatdError as exc:
            response = chatd_error_response(scope["path"], exc)
        else:
            if isinstance(result, EventStream):
                response = result
            else:
                response = Response(result.model_dump_json(), media_type="application/json")
        await response(scope, receive, send)


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


def _parse(scope: Scope, body: bytes) -> tuple[SendIn, str | None, str] | None:
    """Return the send's body, Idempotency-Key and Accept, or None if FastAPI should answer."""
    content_type = key = accept = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"idempotency-key":
            if key is not None or not IDEMPOTENCY_KEY.fullmatch(value):
                return None
            key = value
        elif name == b"accept" and accept is None:
            accept = value
    # Exactly what FastAPI decodes as JSON and nothing it treats otherwise (+json, no type).
    if content_type is None or content_type.split(b";")[0].strip().lower() != b"application/json":
        return None
    try:
        payload = SendIn.model_validate_json(body)
    except ValidationError:
        return None
    return (
        payload,
        None if key is None else key.decode(),
        "" if accept is None else accept.decode("latin-1"),
    )


def _replay(read: list[Message], receive: Receive) -> Receive:
    """Receive the messages already read again, then go on receiving."""
    pending = deque(read)

    async def replay() -> Message:
        return pending.popleft() if pending else await receive()

    return replay
