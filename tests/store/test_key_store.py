"""The KeyStore port on every backend: create, find by hash, list, revoke, touch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chatd.engine.ports import KeyStore, Store
from chatd.errors import InputError, NotFound
from chatd.keys import KeyLimits, hash_key, looks_like_key, new_key
from chatd.store import SqlKeyStore, SqlStore
from chatd.testing.memory_keys import MemoryKeyStore
from chatd.testing.turns import begin_turn
from chatd.types import Message, StopReason, TurnPlan, TurnState, Usage

PLAN = TurnPlan("m", "p")


@pytest.fixture
async def keys(store: Store) -> KeyStore:
    """Return a key store on the same backend (and database) as `store`."""
    return SqlKeyStore(store.db) if isinstance(store, SqlStore) else MemoryKeyStore()


def test_keys_are_random_prefixed_and_hashed() -> None:
    key, digest, prefix = new_key()
    other, _, _ = new_key()
    assert key != other
    assert looks_like_key(key)
    assert not looks_like_key(key[:-1])
    assert key.startswith(prefix)
    assert prefix.startswith("chatd_")
    assert len(prefix) == 14
    assert digest == hash_key(key)
    assert key not in digest


async def test_create_find_list(keys: KeyStore) -> None:
    key, digest, prefix = new_key()
    limits = KeyLimits(rpm=5, tpm=100, tokens_per_day=1000, budget_usd_per_day=1.5)
    until = datetime.now(UTC) + timedelta(days=30)
    made = await keys.create_key("ann", digest, prefix, admin=True, limits=limits, expires_at=until)
    found = await keys.find_key(digest)
    assert found == made
    assert (found.user_id, found.admin, found.limits, found.prefix) == ("ann", True, limits, prefix)
    assert found.expires_at == until
    assert await keys.find_key(hash_key(key + "x")) is None
    _, digest2, prefix2 = new_key()
    await keys.create_key("bob", digest2, prefix2)
    assert [k.user_id for k in await keys.list_keys()] == ["ann", "bob"]
    assert [k.prefix for k in await keys.list_keys("bob")] == [prefix2]
    bob = (await keys.list_keys("bob"))[0]
    assert (bob.admin, bob.limits, bob.expires_at, bob.revoked_at) == (
        False,
        KeyLimits(),
        None,
        None,
    )


async def test_revoke_by_id_or_prefix(keys: KeyStore) -> None:
    _, digest, prefix = new_key()
    made = await keys.create_key("ann", digest, prefix)
    now = datetime.now(UTC)
    assert made.usable(now)
    revoked = await keys.revoke_key(prefix)
    assert revoked.revoked_at is not None
    assert not revoked.usable(now)
    stored = await keys.find_key(digest)
    assert stored is not None
    assert stored.revoked_at is not None
    assert not stored.usable(now)
    # Revoking again changes nothing; by id works too.
    assert (await keys.revoke_key(made.id)).revoked_at == stored.revoked_at
    with pytest.raises(NotFound):
        await keys.revoke_key("chatd_nothing")


async def test_revoke_refuses_an_ambiguous_prefix(keys: KeyStore) -> None:
    _, d1, _ = new_key()
    _, d2, _ = new_key()
    await keys.create_key("ann", d1, "chatd_same")
    await keys.create_key("bob", d2, "chatd_same")
    with pytest.raises(InputError):
        await keys.revoke_key("chatd_same")


async def test_expired_keys_are_not_usable(keys: KeyStore) -> None:
    _, digest, prefix = new_key()
    past = datetime.now(UTC) - timedelta(seconds=1)
    await keys.create_key("ann", digest, prefix, expires_at=past)
    found = await keys.find_key(digest)
    assert found is not None
    assert not found.usable(datetime.now(UTC))


async def test_touch_records_last_use(keys: KeyStore) -> None:
    _, digest, prefix = new_key()
    made = await keys.create_key("ann", digest, prefix)
    assert made.last_used_at is None
    when = datetime.now(UTC)
    await keys.touch_key(made.id, when)
    found = await keys.find_key(digest)
    assert found is not None
    assert found.last_used_at == when


async def test_session_stats_per_user_and_overall(store: Store) -> None:
    for user, sid in (("ann", "a1"), ("ann", "a2"), ("bob", "b1")):
        await store.ensure_session(user, sid)
    turn = (await begin_turn(store, "ann", "a1", Message.user("hi"), PLAN)).record
    await store.finish_turn(
        turn.id,
        state=TurnState.COMPLETE,
        messages=[Message.assistant("yo")],
        stop_reason=StopReason.END_TURN,
        usage=Usage(1, 1),
        latency_ms=1.0,
        ttft_ms=1.0,
    )
    assert await store.session_stats("ann") == (2, 1)
    assert await store.session_stats("bob") == (1, 0)
    assert await store.session_stats("nobody") == (0, 0)
    assert await store.session_stats(None) == (3, 1)
