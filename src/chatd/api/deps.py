"""Route dependencies as Annotated aliases: the runtime's parts, the caller, validated inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request

from chatd.api.auth import Principal, local_principal, principal_of
from chatd.api.limits import charge_of
from chatd.api.requests import request_id_of
from chatd.api.schemas import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN, SESSION_ID_PATTERN
from chatd.api.state import state
from chatd.config import Settings
from chatd.engine import ChatService, UsageSink, check_model
from chatd.engine.ports import SessionStore
from chatd.errors import Forbidden
from chatd.keys import KeyLimits
from chatd.runtime import Runtime

# Dependencies are async on purpose: FastAPI runs plain functions in a thread pool.


async def get_runtime(request: Request) -> Runtime:
    """Return the runtime the lifespan opened."""
    return state(request).runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_service(runtime: RuntimeDep) -> ChatService:
    """Return the engine."""
    return runtime.service


async def get_store(runtime: RuntimeDep) -> SessionStore:
    """Return the store."""
    return runtime.store


async def get_settings(runtime: RuntimeDep) -> Settings:
    """Return the settings the app was built with."""
    return runtime.settings


_NOBODY = local_principal(KeyLimits())


async def current_principal(request: Request) -> Principal:
    """Return who is calling, as the auth middleware found (the local user without it)."""
    return principal_of(request.scope) or _NOBODY


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def current_user(principal: PrincipalDep) -> str:
    """Return who is calling; every read and write is scoped to this id."""
    return principal.user_id


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a turn, and where its usage is charged (None when the key has no quotas)."""

    user_id: str
    meter: UsageSink | None
    # The request's id (X-Request-ID), for the turn's report and log line.
    request_id: str | None = None


def caller_of(scope: Mapping[str, Any]) -> Caller:
    """Return who sends, as the auth and limit middleware found (the local user without auth)."""
    user = (principal_of(scope) or _NOBODY).user_id
    return Caller(user, charge_of(scope), request_id_of(scope))


async def current_caller(request: Request) -> Caller:
    """Return the caller of a metered route: one dependency for what the route needs."""
    return caller_of(request.scope)


async def admin_principal(principal: PrincipalDep) -> Principal:
    """Return the caller if their key is an admin's; Forbidden (403) otherwise."""
    if principal.key_id is None:
        raise Forbidden("admin routes need auth on (CHATD_AUTH=on) and an admin key")
    if not principal.admin:
        raise Forbidden(
            "this route needs an admin key (create one with `chatd keys create --admin`)"
        )
    return principal


Service = Annotated[ChatService, Depends(get_service)]
StoreDep = Annotated[SessionStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CurrentUser = Annotated[str, Depends(current_user)]
Admin = Annotated[Principal, Depends(admin_principal)]
CallerDep = Annotated[Caller, Depends(current_caller)]

SessionPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=SESSION_ID_PATTERN,
        description="1-128 characters of letters, digits and . _ : -",
        examples=["support-42"],
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="a retried send with the same key returns the first result, not a new turn",
    ),
]


def resolve_model(
    runtime: Runtime, model: str | None, provider: str | None
) -> tuple[str | None, str | None]:
    """Return (provider, model) for a request; ConfigError (400) if either cannot work.

    A model may be written "provider/model"; a prefix that is no provider's name is part of
    a bare model name, which goes to the default provider (or the one named alongside).
    """
    if model is not None and provider is None:
        head, slash, rest = model.partition("/")
        if slash and rest and head in runtime.providers.registry.names():
            provider, model = head, rest
    name = runtime.providers.get(provider).name
    # Only what is named is checked here, to refuse a bad session setting at once; the engine
    # checks the model each call finally runs with (a provider's default, a stored one).
    if model is not None:
        check_model(runtime.settings.models, name, model)
    return provider, model
