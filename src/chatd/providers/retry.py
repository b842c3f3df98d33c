"""Bounded retries with exponential backoff and jitter, honouring retry-after."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from chatd.errors import UpstreamError, bounded_wait
from chatd.providers.base import Provider
from chatd.types import ChatRequest, StreamEvent, TextDelta, ToolCallEvent

log = logging.getLogger("chatd.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a failed call before giving up."""

    max_attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_total_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Return the wait before the attempt after `attempt` (1-based)."""
        hint = bounded_wait(retry_after)
        if hint is not None:
            return hint
        backoff: float = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        # Equal jitter: never less than half the backoff, so bursts still spread out.
        return backoff / 2 + random.uniform(0, backoff / 2)


@dataclass
class RetryTally:
    """The retries calls made, and the class of every upstream error they met."""

    retries: int = 0
    errors: list[str] = field(default_factory=list)


async def stream_with_retries(
    provider: Provider,
    request: ChatRequest,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    tally: RetryTally | None = None,
) -> AsyncIterator[StreamEvent]:
    """Stream one call, retrying retryable failures that happen before any reply output."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        emitted = False
        try:
            async for event in provider.stream(request):
                if isinstance(event, TextDelta | ToolCallEvent):
                    emitted = True
                yield event
            return
        except UpstreamError as exc:
            if tally is not None:
                tally.errors.append(type(exc).__name__)
            if emitted or not exc.retryable or attempt >= policy.max_attempts:
                raise
            wait = policy.delay(attempt, exc.retry_after)
            if time.monotonic() - started + wait > policy.max_total_s:
                raise
            if tally is not None:
                tally.retries += 1
            # INFO: the terminal chat shows only the final error (one line, as promised), while
            # the server's log (chatd.server) shows this logger's INFO lines too.
            log.info(
                "%s failed (%s); retry %d of %d in %.2fs",
                provider.name,
                exc.message,
                attempt,
                policy.max_attempts - 1,
                wait,
            )
            await sleep(wait)
