"""OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models`.

Stateless by default, like OpenAI: the client sends the whole conversation. With the
`X-Chatd-Session` header chatd keeps the conversation server-side: the client sends only the
new user message (earlier messages in the request are ignored) and chatd's own tools run.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, Header

from chatd.api.deps import Caller, CallerDep, IdempotencyKey, RuntimeDep, resolve_model
from chatd.api.encoders import started
from chatd.api.openai.decode import check_messages, content_text, to_chatd, tool_specs
from chatd.api.openai.encode import Reply, collect, stream
from chatd.api.openai.schemas import Completion, CompletionRequest, Model, ModelList, OpenAIError
from chatd.api.responses import SSE_HEADERS, EventStream, event_schema
from chatd.api.routing import CheckedRoute
from chatd.api.schemas import SESSION_ID_PATTERN
from chatd.engine import CompletionOptions, TurnOptions
from chatd.errors import ConfigError, InputError
from chatd.runtime import Runtime
from chatd.types import GenerationParams, TurnStarted

router = APIRouter(prefix="/v1", tags=["openai"], route_class=CheckedRoute)

SessionHeader = Annotated[
    str | None,
    Header(
        alias="X-Chatd-Session",
        min_length=1,
        max_length=128,
        pattern=SESSION_ID_PATTERN,
        description="keep this conversation server-side under this session id",
    ),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": event_schema()}},
        "description": "the completion; with `stream`, SSE chunks ending `data: [DONE]`",
    },
    **{code: {"model": OpenAIError} for code in (400, 409, 413, 429, 502, 503)},
}


@router.post("/chat/completions", response_model=Completion, responses=ERRORS)
async def chat_completions(
    body: CompletionRequest,
    runtime: RuntimeDep,
    caller: CallerDep,
    session_id: SessionHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> Completion | EventStream:
    """Create a chat completion, streamed as SSE chunks with `stream: true`."""
    return await complete(runtime, caller, body, session_id, idempotency_key)


async def complete(
    runtime: Runtime,
    caller: Caller,
    body: CompletionRequest,
    session_id: str | None,
    idempotency_key: str | None,
) -> Completion | EventStream:
    """Run one validated completion: stateless, or a turn of the session named."""
    check_messages(body.messages)
    provider, model = resolve_model(runtime, body.model, None)
    stop = (body.stop,) if isinstance(body.stop, str) else body.stop
    params = GenerationParams(
        model,
        body.max_completion_tokens or body.max_tokens,
        body.temperature,
        None if stop is None else tuple(stop),
    )
    service = runtime.service
    if session_id is None:
        system, messages = to_chatd(body.messages)
        tools = tool_specs(body.tools, body.tool_choice)
        options = CompletionOptions(
            params,
            system,
            provider,
            tools,
            usage_sink=caller.meter,
            user_id=caller.user_id,
            request_id=caller.request_id,
        )
        events: Any = service.complete(messages, options)
        reply = Reply(f"chatcmpl-{uuid4().hex}", body.model, stateless=True)
    else:
        last = body.messages[-1]
        if last.role != "user":
            raise InputError("with X-Chatd-Session, the last message must be the user's new one")
        if body.tools:
            raise ConfigError("with X-Chatd-Session the server's own tools run; drop `tools`")
        system = "\n\n".join(
            content_text(m.content) for m in body.messages if m.role in ("system", "developer")
        )
        turn_options = TurnOptions(
            caller.user_id,
            params,
            system or None,
            provider,
            idempotency_key=idempotency_key,
            usage_sink=caller.meter,
            request_id=caller.request_id,
        )
        events = service.turn(session_id, content_text(last.content), turn_options)
        reply = Reply("", body.model, stateless=False)
    first = await started(events)
    if isinstance(first, TurnStarted):
        reply.id = f"chatcmpl-{first.turn_id}"
        # Fail with a status while nothing went out yet, as OpenAI does.
        first = await started(events)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStream(
            stream(reply, first, events, include_usage),
            media_type="text/event-stream",
            ping_s=runtime.settings.sse_ping_s,
            headers=SSE_HEADERS,
        )
    return await collect(reply, first, events)


@router.get("/models", responses={503: {"model": OpenAIError}})
async def models(runtime: RuntimeDep) -> ModelList:
    """List the models a request may name: the allow-list, or the default provider's model."""
    default = runtime.providers.get()
    names = runtime.settings.models or [f"{default.name}/{default.default_model}"]
    return ModelList(
        data=[
            Model(id=n, owned_by=n.partition("/")[0] if "/" in n else default.name) for n in names
        ]
    )
