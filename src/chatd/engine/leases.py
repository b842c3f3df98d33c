"""LeaseKeeper: one task renews the leases of every turn this process is running."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from chatd.engine.ports import LeaseStore
from chatd.errors import StoreUnavailable

log = logging.getLogger("chatd.engine")

# Why a held turn's lease was not renewed: "stopped", a stop was asked for (by any process);
# "gone", it went with its session (deleted or reset); "taken", another process's sweep
# marked it interrupted (or why could not be read).
Lost = Literal["stopped", "gone", "taken"]
# Called for a turn whose lease was not renewed, with why.
OnLost = Callable[[Lost], None]


class LeaseKeeper:
    """Renew held turns' leases every lease/3, in one statement; tell a turn it lost its lease.

    A turn missing from the renewal was asked to stop, interrupted by another process's sweep
    or deleted with its session (by any process): a read or two, only then, tells which.
    """

    def __init__(self, store: LeaseStore, lease_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self._held: dict[str, OnLost] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, turn_id: str, on_lost: OnLost) -> None:
        """Keep this turn's lease until released."""
        self._held[turn_id] = on_lost
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._renew(), name="chatd-lease-keeper")

    def release(self, turn_id: str) -> None:
        """Stop renewing this turn's lease."""
        self._held.pop(turn_id, None)

    async def aclose(self) -> None:
        """Stop the renewing task."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _renew(self) -> None:
        # Renew well before expiry. The task ends when nothing is held, so an idle process
        # (or a library user who never closes the service) keeps no timer running.
        while self._held:
            await asyncio.sleep(self.lease_s / 3)
            held = list(self._held)
            if not held:
                return
            try:
                kept = await self.store.renew_leases(held, self.lease_s)
            except StoreUnavailable as exc:
                log.warning("could not renew the leases of %d turn(s): %s", len(held), exc)
                continue
            missing = [t for t in held if t not in kept and t in self._held]
            if not missing:
                continue
            why: dict[str, Lost] = {}
            try:
                stopped = await self.store.stop_requested(missing)
                why = dict.fromkeys(stopped, "stopped")
                rest = [t for t in missing if t not in stopped]
                if rest:
                    kept_rows = await self.store.existing_turns(rest)
                    why |= {t: "gone" for t in rest if t not in kept_rows}
            except StoreUnavailable:
                # Lost either way; only the reason given to the reader is less precise.
                pass
            for turn_id in missing:
                on_lost = self._held.pop(turn_id, None)
                if on_lost is not None:
                    # Stop spending tokens on a turn that is no longer this process's to run.
                    on_lost(why.get(turn_id, "taken"))
