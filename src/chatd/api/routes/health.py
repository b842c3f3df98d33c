"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from chatd.api.deps import PrincipalDep, RuntimeDep
from chatd.api.schemas import HealthOut, ReadyOut
from chatd.api.state import state
from chatd.errors import ChatdError, Forbidden
from chatd.store import schema_is_current

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> HealthOut:
    """Answer that the process is alive."""
    return HealthOut()


@router.get("/readyz", responses={503: {"model": ReadyOut}})
async def readyz(runtime: RuntimeDep, request: Request, response: Response) -> ReadyOut:
    """Check the database, its schema, the provider, and Redis when limits are shared there."""
    checks: dict[str, str] = {}
    try:
        await runtime.store.ping()
        checks["database"] = "ok"
        current = await schema_is_current(runtime.store.db)
        checks["migrations"] = "ok" if current else "not applied: run `chatd db upgrade`"
    except ChatdError as exc:
        checks["database"] = exc.message
    try:
        checks["provider"] = f"ok: {runtime.providers.get().name}"
    except ChatdError as exc:
        checks["provider"] = exc.message
    if runtime.settings.redis_url:
        reachable = await state(request).limiter.ping()
        checks["limits"] = "ok: redis" if reachable else "redis unreachable: CHATD_REDIS_URL"
    ready = all(v.startswith("ok") for v in checks.values()) and "migrations" in checks
    if not ready:
        response.status_code = 503
    return ReadyOut(status="ready" if ready else "not_ready", checks=checks)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        401: {"description": "auth is on and no valid key was sent"},
        403: {"description": "auth is on and the key is not an admin's"},
    },
)
async def metrics(request: Request, principal: PrincipalDep) -> Response:
    """Return the server's metrics in the Prometheus text format (OpenMetrics if asked for)."""
    # Traffic by status is the operator's to read. With auth off the caller is the local user,
    # who has no key: the server is theirs.
    if principal.key_id is not None and not principal.admin:
        raise Forbidden("/metrics needs an admin key (create one with `chatd keys create --admin`)")
    body, content_type = await state(request).metrics.scrape(request.headers.get("accept"))
    return Response(body, media_type=content_type)
