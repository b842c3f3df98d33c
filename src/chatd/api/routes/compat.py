"""The compatibility surface (docs/http.md): exact paths, bodies and shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse

from chatd.api.deps import (
    Caller,
    CallerDep,
    CurrentUser,
    IdempotencyKey,
    PrincipalDep,
    RuntimeDep,
    Service,
    SessionPath,
    StoreDep,
)
from chatd.api.encoders import (
    encode,
    ndjson_chunk,
    ndjson_failure,
    started,
    text_chunk,
    text_failure,
)
from chatd.api.responses import EventStream
from chatd.api.routing import CheckedRoute
from chatd.api.schemas import (
    ChatIn,
    ChatOut,
    HistoryOut,
    MessageIn,
    ResetOut,
    ServiceStatus,
    SessionsOut,
    SessionSummary,
    StatsOut,
    StatusOut,
)
from chatd.api.views import history, strip_controls
from chatd.api.web import page_url, wants_page
from chatd.engine import TurnOptions
from chatd.runtime import Runtime

router = APIRouter(tags=["compatibility"], route_class=CheckedRoute)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not valid UTF-8 JSON"},
    404: {"description": "no such session"},
    409: {"description": "a turn is already in flight on this session"},
    413: {"description": "message or body over its cap"},
    422: {"description": "empty message, bad session id, malformed body"},
    429: {"description": "the provider rate limited us (Retry-After says when to retry)"},
    502: {"description": "the provider failed"},
    503: {"description": "the provider or the database is unavailable (Retry-After)"},
}
STREAM_ERRORS: dict[int | str, dict[str, Any]] = {k: v for k, v in ERRORS.items() if int(k) < 429}


@router.get(
    "/",
    response_model=ServiceStatus,
    responses={307: {"description": "a browser (Accept: text/html) is sent to the chat page"}},
)
async def root(request: Request) -> ServiceStatus | RedirectResponse:
    """Answer that the service is up; send a browser to the chat page at /ui/."""
    if wants_page(request):
        return RedirectResponse(page_url(request), status_code=307)
    return ServiceStatus(status="ok", service="chatd")


def _options(caller: Caller, body: ChatIn, key: str | None = None) -> TurnOptions:
    prompt = None if body.system_prompt is None else strip_controls(body.system_prompt)
    # The prompt given with a message applies to the session from now on, written with the
    # turn itself: a refused turn (busy, bad input, quota, provider) leaves it as it was.
    return TurnOptions(
        user_id=caller.user_id,
        system_prompt=prompt,
        idempotency_key=key,
        usage_sink=caller.meter,
        request_id=caller.request_id,
        session_prompt=prompt,
    )


@router.post("/chat", responses=ERRORS)
async def chat(
    body: ChatIn,
    runtime: RuntimeDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> ChatOut:
    """Send a message and get the whole reply; the session is created on first use."""
    return await reply(runtime, caller, body, idempotency_key)


async def reply(
    runtime: Runtime, caller: Caller, body: ChatIn, idempotency_key: str | None
) -> ChatOut:
    """Run one validated /chat: the whole reply."""
    session_id = body.session_id or uuid4().hex
    options = _options(caller, body, idempotency_key)
    end = await runtime.service.reply(session_id, body.message, options)
    info = await runtime.store.get_session(caller.user_id, session_id)
    return ChatOut(
        response=end.text,
        session_id=session_id,
        timestamp=datetime.now(UTC),
        turn_count=info.turn_count if info else 0,
    )


@router.post(
    "/chat-stream",
    response_class=EventStream,
    responses={200: {"content": {"text/plain": {}}}, **STREAM_ERRORS},
)
async def chat_stream(body: ChatIn, runtime: RuntimeDep, caller: CallerDep) -> EventStream:
    """Stream the reply's text as plain-text chunks; a failure ends it with an [error] line."""
    return await stream_text(runtime, caller, body)


async def stream_text(runtime: Runtime, caller: Caller, body: ChatIn) -> EventStream:
    """Run one validated /chat-stream: its text as it comes."""
    options = _options(caller, body)
    events = runtime.service.turn(body.session_id or uuid4().hex, body.message, options)
    first = await started(events)
    return EventStream(
        encode(first, events, text_chunk, text_failure), media_type="text/plain; charset=utf-8"
    )


@router.post(
    "/chat/{session_id}",
    response_class=EventStream,
    responses={200: {"content": {"application/x-ndjson": {}}}, **STREAM_ERRORS},
)
async def chat_session(
    session_id: SessionPath, body: MessageIn, runtime: RuntimeDep, caller: CallerDep
) -> EventStream:
    """Stream the reply as NDJSON {"delta": ...} lines; a failure ends it with {"error": ...}."""
    return await stream_ndjson(runtime, caller, session_id, body)


async def stream_ndjson(
    runtime: Runtime, caller: Caller, session_id: str, body: MessageIn
) -> EventStream:
    """Run one validated /chat/{session_id}: its reply as NDJSON lines."""
    options = TurnOptions(
        user_id=caller.user_id, usage_sink=caller.meter, request_id=caller.request_id
    )
    events = runtime.service.turn(session_id, body.message, options)
    first = await started(events)
    return EventStream(
        encode(first, events, ndjson_chunk, ndjson_failure), media_type="application/x-ndjson"
    )


@router.get("/history/{session_id}", responses={404: ERRORS[404]})
async def get_history(session_id: SessionPath, store: StoreDep, user: CurrentUser) -> HistoryOut:
    """Return the session's complete exchanges; 404 if there is no such session."""
    info = await store.get_session(user, session_id)
    if info is None:
        raise HTTPException(404, f"no session {session_id!r}")
    messages = await store.context_messages(user, session_id)
    return HistoryOut(session_id=session_id, messages=history(messages), turn_count=info.turn_count)


@router.delete("/history/{session_id}")
async def delete_history(session_id: SessionPath, service: Service, user: CurrentUser) -> StatusOut:
    """Delete the session and its history; a reply streaming on it ends with an error."""
    gone = await service.delete_session(user, session_id)
    return StatusOut(status="cleared" if gone else "not_found", session_id=session_id)


@router.get("/sessions")
async def sessions(store: StoreDep, user: CurrentUser) -> SessionsOut:
    """List the caller's sessions, oldest first."""
    found = await store.list_sessions(user)
    return SessionsOut(
        sessions=[
            SessionSummary(session_id=s.id, turns=s.turn_count, created_at=s.created_at)
            for s in found
        ]
    )


@router.post("/reset/{session_id}")
async def reset(
    session_id: SessionPath, service: Service, store: StoreDep, user: CurrentUser
) -> ResetOut:
    """Empty the session's history; the session itself stays; a reply streaming on it ends."""
    info = await store.get_session(user, session_id)
    if info is None or await service.reset_session(user, session_id) is None:
        return ResetOut(status="not_found", session_id=session_id)
    return ResetOut(status="reset", session_id=session_id, previous_turns=info.turn_count)


@router.get("/stats")
async def stats(store: StoreDep, principal: PrincipalDep) -> StatsOut:
    """Count sessions and the messages of their complete exchanges: an admin's key sees all."""
    count, turns = await store.session_stats(None if principal.admin else principal.user_id)
    messages = 2 * turns
    average = round(messages / count, 2) if count else 0.0
    return StatsOut(total_sessions=count, total_messages=messages, avg_messages_per_session=average)
