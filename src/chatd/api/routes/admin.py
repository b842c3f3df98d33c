"""/v1/admin: users and their API keys, for admin keys only (others get 403)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from chatd.api.deps import StoreDep, admin_principal
from chatd.api.key_cache import KeyCache
from chatd.api.routing import CheckedRoute
from chatd.api.schemas import ErrorOut
from chatd.api.state import state
from chatd.bounds import MAX_BUDGET_USD, MAX_KEY_DAYS, MAX_KEY_LIMIT
from chatd.keys import ApiKey, KeyLimits, new_key, user_name

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(admin_principal)],
    route_class=CheckedRoute,
)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 422)
}
UserName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")]


class KeyCreate(BaseModel):
    """A new key: its owner, whether it is an admin's, its limits and lifetime."""

    model_config = ConfigDict(extra="forbid")

    user: UserName
    admin: bool = False
    rpm: int | None = Field(default=None, ge=1, le=MAX_KEY_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_KEY_LIMIT)
    tokens_per_day: int | None = Field(default=None, ge=1, le=MAX_KEY_LIMIT)
    budget_usd_per_day: float | None = Field(default=None, gt=0, le=MAX_BUDGET_USD)
    expires_in_days: float | None = Field(
        default=None, gt=0, le=MAX_KEY_DAYS, description="none: never"
    )


class KeyOut(BaseModel):
    """A key as anyone may see it: its prefix, never the key."""

    id: str
    prefix: str
    user: str
    admin: bool
    rpm: int | None
    tpm: int | None
    tokens_per_day: int | None
    budget_usd_per_day: float | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    """A new key, with the key itself: shown this once and never again."""

    key: str


class KeyList(BaseModel):
    """Keys, oldest first."""

    data: list[KeyOut]


class UserOut(BaseModel):
    """A user: everyone who has a key."""

    user: str
    keys: int
    active_keys: int
    sessions: int


class UserList(BaseModel):
    """Users, by name."""

    data: list[UserOut]


def key_out(key: ApiKey) -> dict[str, Any]:
    """Return a key's public fields."""
    limits = key.limits
    return {
        "id": key.id,
        "prefix": key.prefix,
        "user": key.user_id,
        "admin": key.admin,
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "tokens_per_day": limits.tokens_per_day,
        "budget_usd_per_day": limits.budget_usd_per_day,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


def _cache(request: Request) -> KeyCache:
    return state(request).key_cache


@router.post("/keys", status_code=201, responses=ERRORS)
async def create_key(body: KeyCreate, request: Request) -> KeyCreated:
    """Create a key; the response holds the key itself, the only time it is shown."""
    key, digest, prefix = new_key()
    expires = None
    if body.expires_in_days is not None:
        expires = datetime.now(UTC) + timedelta(days=body.expires_in_days)
    limits = KeyLimits(body.rpm, body.tpm, body.tokens_per_day, body.budget_usd_per_day)
    made = await _cache(request).store.create_key(
        user_name(body.user), digest, prefix, admin=body.admin, limits=limits, expires_at=expires
    )
    return KeyCreated(key=key, **key_out(made))


@router.get("/keys", responses=ERRORS)
async def list_keys(
    request: Request,
    user: Annotated[str | None, Query(max_length=255, description="only this user's")] = None,
) -> KeyList:
    """List keys (revoked and expired ones too), oldest first."""
    keys = await _cache(request).store.list_keys(user)
    return KeyList(data=[KeyOut(**key_out(k)) for k in keys])


@router.delete("/keys/{key_id}", responses=ERRORS)
async def revoke_key(
    key_id: Annotated[str, Path(min_length=1, max_length=64, description="id or prefix")],
    request: Request,
) -> KeyOut:
    """Revoke a key at once: here on the next request, in other processes within a second."""
    cache = _cache(request)
    revoked = await cache.store.revoke_key(key_id)
    cache.forget()
    return KeyOut(**key_out(revoked))


@router.get("/users", responses=ERRORS)
async def list_users(request: Request, store: StoreDep) -> UserList:
    """List everyone who has a key, with how many keys and sessions they have."""
    now = datetime.now(UTC)
    by_user: dict[str, list[ApiKey]] = {}
    for key in await _cache(request).store.list_keys():
        by_user.setdefault(key.user_id, []).append(key)
    users = []
    for user, keys in sorted(by_user.items()):
        sessions, _ = await store.session_stats(user)
        active = sum(1 for k in keys if k.usable(now))
        users.append(UserOut(user=user, keys=len(keys), active_keys=active, sessions=sessions))
    return UserList(data=users)
