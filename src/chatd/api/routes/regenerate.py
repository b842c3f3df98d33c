"""/v1 regenerate: ask the model again for a session's last reply, which the new one replaces."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from chatd.api.deps import CallerDep, RuntimeDep, SessionPath, resolve_model
from chatd.api.responses import EventStream
from chatd.api.routes.messages import SEND_RESPONSES, answer
from chatd.api.routing import CheckedRoute
from chatd.api.schemas import ErrorOut, RegenerateIn, ReplyOut
from chatd.engine import TurnOptions
from chatd.types import GenerationParams

router = APIRouter(prefix="/v1", tags=["messages"], route_class=CheckedRoute)

REGENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **SEND_RESPONSES,
    404: {"model": ErrorOut, "description": "no such session"},
    409: {
        "model": ErrorOut,
        "description": "a turn is in flight, or the session has no turn yet "
        "(`nothing_to_regenerate`)",
    },
    413: {"model": ErrorOut, "description": "body over the configured cap"},
    422: {"model": ErrorOut, "description": "bad id, max_tokens over the ceiling, unknown field"},
}


@router.post(
    "/sessions/{session_id}/regenerate", response_model=ReplyOut, responses=REGENERATE_RESPONSES
)
async def regenerate_reply(
    session_id: SessionPath,
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    body: Annotated[RegenerateIn | None, Body()] = None,
) -> ReplyOut | EventStream:
    """Ask again for the last reply; JSON, or SSE with `stream` or Accept: text/event-stream.

    A new turn runs with the last turn's user message and the history before it, whatever
    state the last turn ended in, and answers as a send does. It takes the last turn's place
    (the same `seq`) as it starts: the old turn leaves the message list and the model's
    context, and its usage stays counted in GET /v1/usage. A refused regenerate changes
    nothing; one whose model call fails is stored failed, in the old turn's place.
    """
    asked = body or RegenerateIn()
    provider, model = resolve_model(runtime, asked.model, None)
    options = TurnOptions(
        user_id=caller.user_id,
        params=GenerationParams(model, asked.max_tokens, asked.temperature),
        provider=provider,
        usage_sink=caller.meter,
        request_id=caller.request_id,
    )
    events = runtime.service.regenerate(session_id, options)
    stream = asked.stream or "text/event-stream" in request.headers.get("accept", "")
    return await answer(runtime, session_id, events, stream)
