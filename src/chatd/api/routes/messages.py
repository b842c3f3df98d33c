"""/v1 messages of a session: list every turn with its state; send one (JSON or SSE); stop one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from chatd.api.deps import (
    Caller,
    CallerDep,
    CurrentUser,
    IdempotencyKey,
    RuntimeDep,
    SessionPath,
    StoreDep,
    resolve_model,
)
from chatd.api.encoders import encode, sse_chunk, sse_failure, started
from chatd.api.responses import SSE_HEADERS, EventStream, event_schema
from chatd.api.routing import CheckedRoute
from chatd.api.schemas import ContinueIn, ErrorOut, ReplyOut, SendIn, StopOut, TurnPage
from chatd.api.views import reply_out, turn_out
from chatd.engine import TurnOptions
from chatd.errors import ChatdError
from chatd.runtime import Runtime
from chatd.types import (
    GenerationParams,
    ToolCallEvent,
    ToolCallPart,
    TurnEnded,
    TurnEvent,
    TurnState,
)

router = APIRouter(prefix="/v1", tags=["messages"], route_class=CheckedRoute)

EVENTS = ["message_start", "delta", "tool_call", "tool_result", "usage", "message_end", "error"]
SSE_DOC = """Server-sent events, each `event: NAME` with a JSON `data:` line:
`message_start` {session_id, turn_id}, `delta` {text}, `tool_call` {id, name, input},
`tool_result` {tool_call_id, content, is_error}, `usage` {input_tokens, output_tokens, ...},
then exactly one of `message_end` {turn_id, state, stop_reason, usage, truncated, cost_usd} or
`error` {type, message, retry_after?}. Lines starting with `:` are keep-alive pings."""
SEND_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": event_schema(EVENTS)}},
        "description": SSE_DOC,
    },
    **{
        code: {"model": ErrorOut, "description": text}
        for code, text in {
            400: "unknown or unconfigured model, provider or tool",
            409: "a turn is already in flight on this session",
            413: "message over the configured cap",
            422: "empty message, bad id, unknown field",
            429: "rate limited upstream; Retry-After says when to retry",
            502: "the provider failed",
            503: "the provider or the database is unavailable; Retry-After",
        }.items()
    },
}


CONTINUE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **SEND_RESPONSES,
    404: {"model": ErrorOut, "description": "no such session"},
    409: {
        "model": ErrorOut,
        "description": "a turn is in flight, or the last reply is not truncated "
        "(`nothing_to_continue`)",
    },
    413: {"model": ErrorOut, "description": "body over the configured cap"},
    422: {"model": ErrorOut, "description": "bad id, max_tokens over the ceiling, unknown field"},
}


@router.get("/sessions/{session_id}/messages", responses={404: {"model": ErrorOut}})
async def list_messages(
    session_id: SessionPath,
    store: StoreDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,12}$", description="next_cursor of a page")
    ] = None,
) -> TurnPage:
    """List every turn, failed ones included, with its state, usage and messages."""
    after = int(cursor) if cursor else 0
    page, next_seq = await store.page_turns(user, session_id, limit=limit, after_seq=after)
    info = await store.get_session(user, session_id)
    first = 0 if info is None else info.fold.first_turn
    return TurnPage(
        data=[turn_out(t, first) for t in page],
        next_cursor=None if next_seq is None else str(next_seq),
    )


@router.post("/sessions/{session_id}/messages", response_model=ReplyOut, responses=SEND_RESPONSES)
async def send_message(
    session_id: SessionPath,
    body: SendIn,
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> ReplyOut | EventStream:
    """Send a message; the reply is JSON, or SSE with `stream` or Accept: text/event-stream.

    The session is created with default settings if it does not exist yet.
    """
    accept = request.headers.get("accept", "")
    return await send(runtime, caller, session_id, body, idempotency_key, accept)


async def send(
    runtime: Runtime,
    caller: Caller,
    session_id: str,
    body: SendIn,
    idempotency_key: str | None,
    accept: str,
) -> ReplyOut | EventStream:
    """Run one turn for a validated send: its reply, or the stream of its events."""
    provider, model = resolve_model(runtime, body.model, body.provider)
    options = TurnOptions(
        user_id=caller.user_id,
        params=GenerationParams(
            model,
            body.max_tokens,
            body.temperature,
            None if body.stop is None else tuple(body.stop),
        ),
        provider=provider,
        tools=None if body.tools is None else tuple(body.tools),
        idempotency_key=idempotency_key,
        usage_sink=caller.meter,
        request_id=caller.request_id,
    )
    events = runtime.service.turn(session_id, body.content, options)
    return await answer(runtime, session_id, events, body.stream or "text/event-stream" in accept)


@router.post(
    "/sessions/{session_id}/continue", response_model=ReplyOut, responses=CONTINUE_RESPONSES
)
async def continue_reply(
    session_id: SessionPath,
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    body: Annotated[ContinueIn | None, Body()] = None,
) -> ReplyOut | EventStream:
    """Continue the session's last reply, cut short by max_tokens; JSON, or SSE with `stream`.

    The rest is added to that same turn, so the reply stays one: `text` is all of it, `usage`
    the turn's, both parts (only the continuation's is charged), and the message list shows
    the turn with every part. It may end truncated again and be continued again. One that
    fails answers its error and leaves the reply truncated as it was, still in context.
    """
    asked = body or ContinueIn()
    options = TurnOptions(
        user_id=caller.user_id,
        params=GenerationParams(max_tokens=asked.max_tokens, temperature=asked.temperature),
        usage_sink=caller.meter,
        request_id=caller.request_id,
    )
    events = runtime.service.continue_turn(session_id, options)
    stream = asked.stream or "text/event-stream" in request.headers.get("accept", "")
    return await answer(runtime, session_id, events, stream)


STOP_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        404: "no such session",
        409: "no turn is in flight on the session, or it just ended (`nothing_to_stop`)",
        422: "bad session id",
        503: "the turn was stopped but its end could not be stored; Retry-After",
    }.items()
}


@router.post("/sessions/{session_id}/stop", responses=STOP_RESPONSES)
async def stop_turn(session_id: SessionPath, runtime: RuntimeDep, user: CurrentUser) -> StopOut:
    """Stop the session's turn in flight, wherever it runs; answer once its end is stored.

    Its model call ends; the turn is stored interrupted with what it said so far (outside the
    model's context) and its usage is charged. A stream reading it ends with one `error`
    event of type `turn_stopped_on_request` (a send waiting for JSON gets that error, 409).
    The session takes the next send as soon as this answers. A turn another instance runs
    stops at that instance's next lease renewal (every third of `CHATD_TURN_LEASE_S`), and
    this answers then. A client that merely disconnects does not stop a turn: this does.
    """
    stopped = await runtime.service.stop_turn(user, session_id)
    truncated = stopped.state is TurnState.TRUNCATED
    return StopOut(
        session_id=stopped.session_id,
        turn_id=stopped.turn_id,
        state="truncated" if truncated else "interrupted",
    )


async def answer(
    runtime: Runtime, session_id: str, events: AsyncIterator[TurnEvent], stream: bool
) -> ReplyOut | EventStream:
    """Return a turn's reply as JSON once it ends, or its events as they come, as SSE."""
    if stream:
        first = await started(events)
        return EventStream(
            encode(first, events, sse_chunk, sse_failure),
            media_type="text/event-stream",
            ping_s=runtime.settings.sse_ping_s,
            headers=SSE_HEADERS,
        )
    calls: list[ToolCallPart] = []
    async for event in events:
        if isinstance(event, ToolCallEvent):
            calls.append(event.call)
        elif isinstance(event, TurnEnded):
            return reply_out(session_id, event, calls)
    raise ChatdError("the turn ended without a final event")
