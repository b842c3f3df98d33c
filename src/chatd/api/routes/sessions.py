"""/v1 sessions as resources: create, list, get, update, delete, reset, export, import, usage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, Body, Query

from chatd.api.auth import Principal
from chatd.api.deps import (
    CurrentUser,
    PrincipalDep,
    RuntimeDep,
    SessionPath,
    StoreDep,
    resolve_model,
)
from chatd.api.routing import CheckedRoute
from chatd.api.schemas import (
    ErrorOut,
    ResetV1Out,
    SessionCreate,
    SessionOut,
    SessionPage,
    SessionUpdate,
    UsageReportOut,
)
from chatd.api.views import (
    checked_range,
    default_since,
    instant,
    session_out,
    strip_controls,
    usage_report_out,
)
from chatd.engine import check_max_tokens, check_session_id
from chatd.errors import AlreadyExists, Forbidden, NotFound
from chatd.runtime import Runtime
from chatd.transfer import export_doc, parse_doc, restore
from chatd.types import GenerationParams, SessionOrder, UsageGrouping, UsageQuery

router = APIRouter(prefix="/v1", tags=["sessions"], route_class=CheckedRoute)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


def _params(body: SessionUpdate, model: str | None, runtime: Runtime) -> GenerationParams:
    check_max_tokens(body.max_tokens, runtime.settings.max_tokens_ceiling)
    tools = None if body.tools is None else tuple(body.tools)
    runtime.service.tools.specs(tools or ())  # an unknown tool is a 400 now, not at a send
    context = body.context
    return GenerationParams(
        model=model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        stop=None if body.stop is None else tuple(body.stop),
        tools=tools,
        context_policy=None if context is None else context.policy,
        context_limit=None if context is None else context.limit,
    )


def _prompt(text: str | None) -> str | None:
    return None if text is None else strip_controls(text)


@router.post("/sessions", status_code=201, responses=_errors(400, 409, 413, 422))
async def create_session(body: SessionCreate, runtime: RuntimeDep, user: CurrentUser) -> SessionOut:
    """Create a session with its title, system prompt, model and generation settings."""
    provider, model = resolve_model(runtime, body.model, body.provider)
    session_id = body.id or uuid4().hex
    store = runtime.store
    if await store.get_session(user, session_id) is not None:
        raise AlreadyExists(f"session {session_id!r} already exists")
    info = await store.ensure_session(
        user,
        session_id,
        system_prompt=_prompt(body.system_prompt),
        params=_params(body, model, runtime),
        provider=provider,
        title=body.title,
    )
    return session_out(info)


@router.get("/sessions", responses=_errors(422))
async def list_sessions(
    store: StoreDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="next_cursor of a page listed in the same order"),
    ] = None,
    order: Annotated[
        SessionOrder,
        Query(
            description="created: oldest first (by created_at, then id); recent: most recently"
            " active first (by updated_at, then id, both descending)"
        ),
    ] = "created",
) -> SessionPage:
    """List the caller's sessions a page at a time, oldest first or most recently active first.

    order=created (the default) lists by creation, oldest first; order=recent by updated_at,
    which moves when a turn starts or finishes and when the session is updated, newest first.
    A cursor pages on in the order it was made for: given with the other order it is a 422.
    Paging order=recent follows a moving key: a session that becomes active while the pages are
    read jumps to the front, so later pages skip it if it was not yet listed (a new first page
    shows it).
    """
    page, next_cursor = await store.page_sessions(user, limit=limit, after=cursor, order=order)
    return SessionPage(data=[session_out(s) for s in page], next_cursor=next_cursor)


@router.get("/sessions/{session_id}", responses=_errors(404, 422))
async def get_session(session_id: SessionPath, store: StoreDep, user: CurrentUser) -> SessionOut:
    """Return one session."""
    info = await store.get_session(user, session_id)
    if info is None:
        raise NotFound(f"no session {session_id!r}")
    return session_out(info)


@router.patch("/sessions/{session_id}", responses=_errors(400, 404, 413, 422))
async def update_session(
    session_id: SessionPath, body: SessionUpdate, runtime: RuntimeDep, user: CurrentUser
) -> SessionOut:
    """Change the given settings; fields left out stay as they are (a title "" clears it)."""
    provider, model = resolve_model(runtime, body.model, body.provider)
    info = await runtime.store.update_session(
        user,
        session_id,
        system_prompt=_prompt(body.system_prompt),
        params=_params(body, model, runtime),
        provider=provider,
        title=body.title,
    )
    return session_out(info)


@router.delete("/sessions/{session_id}", status_code=204, responses=_errors(404, 422))
async def delete_session(session_id: SessionPath, runtime: RuntimeDep, user: CurrentUser) -> None:
    """Delete the session and all its turns; a reply streaming on it ends with an error event."""
    if not await runtime.service.delete_session(user, session_id):
        raise NotFound(f"no session {session_id!r}")


@router.post("/sessions/{session_id}/reset", responses=_errors(404, 422))
async def reset_session(
    session_id: SessionPath, runtime: RuntimeDep, user: CurrentUser
) -> ResetV1Out:
    """Delete every turn but keep the session and its settings; a reply streaming on it ends."""
    store = runtime.store
    info = await store.get_session(user, session_id)
    if info is None or await runtime.service.reset_session(user, session_id) is None:
        raise NotFound(f"no session {session_id!r}")
    return ResetV1Out(session_id=session_id, previous_turns=info.turn_count)


@router.get("/sessions/{session_id}/export", responses=_errors(404, 422))
async def export_session(
    session_id: SessionPath, store: StoreDep, user: CurrentUser
) -> dict[str, Any]:
    """Return the session and every turn as a portable document (format chatd.session/1)."""
    info = await store.get_session(user, session_id)
    if info is None:
        raise NotFound(f"no session {session_id!r}")
    return export_doc(info, await store.list_turns(user, session_id))


@router.post("/sessions/import", status_code=201, responses=_errors(400, 409, 413, 422))
async def import_session(
    document: Annotated[
        dict[str, Any],
        Body(description="a document from GET /v1/sessions/{id}/export"),
    ],
    store: StoreDep,
    user: CurrentUser,
) -> SessionOut:
    """Create a session from an exported document; 409 if its id is taken."""
    doc = parse_doc(document)
    check_session_id(doc.session_id)
    info = await restore(store, user, doc)
    return session_out(info)


Instant = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="ISO date (a whole UTC day) or datetime (UTC unless it has an offset)",
        examples=["2026-12-01"],
    ),
]


@router.get("/usage", tags=["usage"], responses=_errors(403, 422))
async def usage(
    store: StoreDep,
    principal: PrincipalDep,
    since: Instant = None,
    until: Instant = None,
    by: Annotated[UsageGrouping, Query(description="how the calls are grouped")] = "day",
    user: Annotated[
        str | None, Query(min_length=1, max_length=255, description="admins: whose usage")
    ] = None,
) -> UsageReportOut:
    """Return tokens and cost over a time range (the last 30 days by default), grouped.

    Every turn counts (failed and interrupted ones were charged too, and those of deleted or
    reset sessions stay counted), and so does every stateless completion. Admins may ask for
    another user's, or every user's with by=user.
    """
    start = default_since(datetime.now(UTC)) if since is None else instant(since, "since")
    end = None if until is None else instant(until, "until", end=True)
    checked_range(start, end)
    query = UsageQuery(start, end, _whose(principal, user, by), by)
    return usage_report_out(query, await store.usage_report(query))


def _whose(principal: Principal, user: str | None, by: UsageGrouping) -> str | None:
    """Return whose usage a caller may see (None: everyone's); Forbidden for others'."""
    # As for /metrics: with auth off the caller is the local user, who runs the server.
    operator = principal.key_id is None or principal.admin
    if not operator and (by == "user" or user not in (None, principal.user_id)):
        raise Forbidden("only an admin key may see other users' usage")
    if user is not None:
        return user
    return None if by == "user" else principal.user_id
