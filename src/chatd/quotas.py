"""Per-key rate limits and quotas, framework-free: admit a request, then charge what it used.

Four limits per key, each a fixed window counted by the `limits` library's storage (in process
memory, or Redis shared by every process): requests per minute, tokens per minute, tokens per
day, and cost per day (micro-dollars from the price table). Windows are aligned to the clock,
minutes to the minute and days to UTC midnight, so when one resets is known without asking
the storage.

Admission is atomic: each counter is incremented first and compared after, so of N
concurrent requests against a limit of L at most L get in. Token and cost quotas cannot
know a call's usage before it runs, so admission reserves one unit of each (a request is
refused once nothing is left) and the call's reported usage is charged when it ends: a
burst can overshoot a quota by at most what the requests already in flight use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.errors import StorageError

from chatd.errors import ChatdError
from chatd.keys import KeyLimits
from chatd.prices import MICRO, PriceTable
from chatd.types import Usage

log = logging.getLogger("chatd.quotas")

MINUTE, DAY = 60, 86400


class LimiterUnavailable(ChatdError):
    """The shared limit store (Redis) cannot be reached: refuse rather than run unmetered."""

    status = 503


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of limit: its name for clients, window length and what it counts."""

    name: str
    period: int
    unit: str


RPM = Kind("requests_per_minute", MINUTE, "requests")
TPM = Kind("tokens_per_minute", MINUTE, "tokens")
TPD = Kind("tokens_per_day", DAY, "tokens")
COST = Kind("budget_usd_per_day", DAY, "micro-USD")


@dataclass(frozen=True, slots=True)
class Status:
    """Where one limit stands after a request: for the RateLimit headers and 429 bodies."""

    kind: Kind
    limit: int
    remaining: int
    reset_s: float
    exceeded: bool

    def describe(self) -> str:
        """Say in one line which limit was reached and when it resets."""
        per = "minute" if self.kind.period == MINUTE else "day"
        if self.kind is COST:
            amount = f"${self.limit / MICRO:.2f} per day"
        else:
            amount = f"{self.limit} {self.kind.unit} per {per}"
        when = "UTC midnight" if self.kind.period == DAY else "the next minute"
        return (
            f"rate limit reached: {amount} ({self.kind.name}) for this key; "
            f"it resets in {math.ceil(self.reset_s)} s, at {when}"
        )


@dataclass(frozen=True, slots=True)
class _Counter:
    kind: Kind
    limit: int
    key: str
    expiry: int
    reset_s: float


def counted_tokens(usage: Usage) -> int:
    """Return the tokens a call counts against token quotas.

    Cache reads are left out: they are cheap (their cost still counts) and providers leave
    them out of their own rate limits too.
    """
    return usage.input_tokens + usage.output_tokens + usage.cache_write_tokens


class Limiter:
    """Checks and charges the limits of keys against one storage."""

    def __init__(self, storage: Storage, prices: PriceTable) -> None:
        self._errors = _storage_errors(storage)
        self.storage = storage
        self.prices = prices
        self._bridge = _pipelinable(storage)

    def _counters(self, key_id: str, limits: KeyLimits, metered: bool) -> list[_Counter]:
        now = time.time()
        wanted: list[tuple[Kind, int | None]] = [(RPM, limits.rpm)]
        if metered:
            budget = limits.budget_usd_per_day
            cost = None if budget is None else math.floor(budget * MICRO)
            wanted += [(TPM, limits.tpm), (TPD, limits.tokens_per_day), (COST, cost)]
        counters = []
        for kind, limit in wanted:
            if limit is None:
                continue
            window = int(now // kind.period)
            item: RateLimitItem = (
                RateLimitItemPerMinute(limit)
                if kind.period == MINUTE
                else RateLimitItemPerDay(limit)
            )
            # The window's number in the key: a new window starts a new counter at once.
            key = item.key_for("chatd", key_id, kind.name, str(window))
            reset = (window + 1) * kind.period - now
            counters.append(_Counter(kind, limit, key, item.get_expiry(), reset))
        return counters

    async def admit(
        self, key_id: str, limits: KeyLimits, *, metered: bool
    ) -> tuple[list[Status], Charge | None]:
        """Count a request against its key's limits; return every limit's status, and a charge.

        A request over any limit gets back statuses with `exceeded` set and no charge (and its
        reservations are given back). A metered request (one that calls the model) that gets
        in gets the Charge its usage is settled through; others get None.
        """
        counters = self._counters(key_id, limits, metered)
        if not counters:
            return [], None
        counts = await self._incr([(c.key, c.expiry, 1) for c in counters])
        statuses = [
            Status(c.kind, c.limit, max(0, c.limit - n), c.reset_s, n > c.limit)
            for c, n in zip(counters, counts, strict=True)
        ]
        held = [c for c in counters if c.kind is not RPM]
        if any(s.exceeded for s in statuses):
            # A refused request uses no tokens; a request attempt still counts per minute.
            if held:
                await self._incr([(c.key, c.expiry, -1) for c in held])
            return statuses, None
        if not metered or not held:
            return statuses, None
        return statuses, Charge(self, key_id, limits, held)

    async def _incr(self, changes: Sequence[tuple[str, int, int]]) -> list[int]:
        try:
            if self._bridge is not None and len(changes) > 1:
                return await _pipelined(self._bridge, changes)
            calls: list[Awaitable[int]] = [self.storage.incr(k, e, amount=a) for k, e, a in changes]
            return list(await asyncio.gather(*calls))
        except self._errors as exc:
            raise LimiterUnavailable(f"the rate limit store is unavailable: {exc}") from None

    async def ping(self) -> bool:
        """Tell whether the storage answers (always, in memory)."""
        try:
            return bool(await self.storage.check())
        except self._errors:
            return False

    async def aclose(self) -> None:
        """Release the storage's connections and timers."""
        if isinstance(self.storage, MemoryStorage):
            if self.storage.timer is not None:
                self.storage.timer.cancel()
        elif isinstance(self.storage, RedisStorage):
            # The limits API has no close; its redis-py bridge keeps the client here.
            client = getattr(self.storage.bridge, "storage", None)
            if client is not None:
                await client.aclose()


def _storage_errors(storage: Storage) -> tuple[type[Exception], ...]:
    """Return what a failing storage raises; redis-py's errors only when it is Redis."""
    if not isinstance(storage, RedisStorage):
        return (StorageError, OSError)
    # Imported only for Redis: redis-py is about 6 MB of every process that does not use it.
    from redis.exceptions import RedisError

    return (StorageError, RedisError, OSError)


def _pipelinable(storage: Storage) -> Any:
    """Return the redis-py bridge of a RedisStorage whose increments can be pipelined, or None.

    `limits` has no call that counts several keys at once, and one call per counter costs a
    round trip (and a pooled connection) each. Its redis-py bridge exposes the very script its
    `incr` runs, so the counters of a request go in one pipeline: one round trip, each
    increment still atomic. Should a later `limits` move these, counting falls back to `incr`.
    """
    bridge = getattr(storage, "bridge", None)
    needed = ("lua_incr_expire", "prefixed_key", "get_connection")
    if isinstance(storage, RedisStorage) and all(hasattr(bridge, n) for n in needed):
        return bridge
    return None


async def _pipelined(bridge: Any, changes: Sequence[tuple[str, int, int]]) -> list[int]:
    pipe = bridge.get_connection().pipeline(transaction=False)
    for key, expiry, amount in changes:
        await bridge.lua_incr_expire([bridge.prefixed_key(key)], [expiry, amount], client=pipe)
    return [int(n) for n in await pipe.execute()]


@dataclass
class Charge:
    """A metered request's reservation, settled with the usage the provider reported."""

    limiter: Limiter
    key_id: str
    limits: KeyLimits
    held: list[_Counter]
    settled: bool = field(default=False)

    async def __call__(self, usage: Usage, model: str) -> None:
        """Charge a finished call's usage (the engine's usage sink); log, never raise."""
        tokens = counted_tokens(usage)
        cost = self.limiter.prices.micro_usd(model, usage) if self.limits.budget_usd_per_day else 0
        now_counters = self.limiter._counters(self.key_id, self.limits, metered=True)
        changes: dict[str, tuple[int, int]] = {}
        for c in now_counters:
            if c.kind is RPM:
                continue
            amount = cost if c.kind is COST else tokens
            changes[c.key] = (c.expiry, amount)
        if not self.settled:
            self.settled = True
            for c in self.held:
                expiry, amount = changes.get(c.key, (c.expiry, 0))
                changes[c.key] = (expiry, amount - 1)
        await self._apply(changes)

    async def release(self) -> None:
        """Give the reservation back if no usage was charged (the request never ran a turn)."""
        if self.settled:
            return
        self.settled = True
        await self._apply({c.key: (c.expiry, -1) for c in self.held})

    async def _apply(self, changes: dict[str, tuple[int, int]]) -> None:
        todo = [(k, e, a) for k, (e, a) in changes.items() if a]
        if not todo:
            return
        try:
            await self.limiter._incr(todo)
        except LimiterUnavailable as exc:
            log.warning("could not charge usage to key %s: %s", self.key_id, exc.message)


def open_limiter(redis_url: str | None, prices: PriceTable) -> Limiter:
    """Return a limiter on Redis when a URL is given, else on this process's memory."""
    if not redis_url:
        return Limiter(MemoryStorage(wrap_exceptions=True), prices)
    uri = redis_url if redis_url.startswith("async+") else f"async+{redis_url}"
    storage = RedisStorage(
        uri,
        wrap_exceptions=True,
        implementation="redispy",
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    return Limiter(storage, prices)
