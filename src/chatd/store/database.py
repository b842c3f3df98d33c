"""Database: run each store call as one synchronous function on one connection.

SQLite runs on the stdlib driver in the event loop's thread, and on a thread only when it
would have to wait for another process's lock (see SqliteDatabase). PostgreSQL runs on asyncpg
through SQLAlchemy's `run_sync`, which drives the same function over the network, async.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy import Connection, Engine, exc
from sqlalchemy.engine import URL
from sqlalchemy.pool import Pool, QueuePool

from chatd.errors import ChatdError, StoreUnavailable
from chatd.store.sqlite_fast import driver, driver_error

if TYPE_CHECKING:
    # The asyncio extension loads the ORM (7 MB); only PostgreSQL needs it, at run time.
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("chatd.store")

T = TypeVar("T")
Work = Callable[[Connection], T]

# Writes between two WAL checkpoints, run on a thread: SQLite's own (off on chatd's
# connections) would make the request whose commit crosses the threshold wait for its fsyncs.
CHECKPOINT_EVERY = 100


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A database's connections: how many its pools may keep, and how many are in use now."""

    size: int
    checked_out: int


def pool_stats(pool: Pool) -> PoolStats:
    """Read a pool's size and checked-out connections (a pool that does not count: one, idle)."""
    if isinstance(pool, QueuePool):  # the async engine's pool is a QueuePool too
        return PoolStats(pool.size(), pool.checkedout())
    # StaticPool (an in-memory SQLite database): one connection, shared, never checked out.
    return PoolStats(1, 0)


class Database(Protocol):
    """Where a store runs its work: `read` on any connection, `write` in one transaction."""

    url: URL

    @property
    def sync_engine(self) -> Engine:
        """Return the synchronous engine (for event hooks and pool checks)."""
        ...

    async def read(self, work: Work[T]) -> T:
        """Run work on a connection; StoreUnavailable if the database cannot be reached."""
        ...

    async def write(self, work: Work[T]) -> T:
        """Run work in one transaction, committed on return; StoreUnavailable if unreachable."""
        ...

    async def dispose(self) -> None:
        """Close every connection and stop the threads."""
        ...

    def pool_stats(self) -> PoolStats:
        """Return the pools' size and connections in use (cheap: read when metrics are scraped)."""
        ...


# SQLSTATEs that say the server is not there to answer: class 08 (connection exception), the
# server shutting down or starting (57P01-57P03), and no connection slot free (53300).
_GONE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn a dead or unreachable database into StoreUnavailable with a one-line message."""
    try:
        yield
    except ChatdError:
        raise
    except Exception as e:
        # Not only SQLAlchemy's classes: on SQLAlchemy 2.0 a failed connect raises asyncpg's own.
        if not database_gone(e):
            raise
        raise StoreUnavailable(f"database unavailable: {_one_line(e)}") from None


def database_gone(error: BaseException) -> bool:
    """Tell whether an error means the database cannot be reached, whatever wraps it.

    Decided by what the driver reported, not by SQLAlchemy's wrapper class: how an asyncpg
    error arrives differs between SQLAlchemy lines (2.1 wraps a server that is shutting down
    as a plain DBAPIError; 2.0 lets the driver's own error through when connecting).
    """
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(
            cause, exc.OperationalError | exc.InterfaceError | exc.TimeoutError | OSError
        ):
            return True
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str) and (state.startswith("08") or state in _GONE_STATES):
            return True
        # asyncpg's own errors for a connection that is closed or went away.
        name = type(cause).__name__
        if name == "ConnectionDoesNotExistError" or (
            name == "InterfaceError" and "closed" in str(cause)
        ):
            return True
        nxt = cause.orig if isinstance(cause, exc.DBAPIError) else None
        cause = nxt if isinstance(nxt, BaseException) else cause.__cause__
    return False


def _one_line(error: BaseException) -> str:
    # The driver's own message says what went wrong; SQLAlchemy's wrapper adds SQL and links.
    cause = error.orig if isinstance(error, exc.DBAPIError) and error.orig else error
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


class SqliteDatabase:
    """SQLite on the stdlib driver, run where it is awaited unless it would have to wait.

    A store call on SQLite is a fraction of a millisecond of CPU (WAL, no fsync at commit):
    less than handing it to a thread and back. So a call runs in the event loop's thread, on
    a connection that never waits for a lock (busy_timeout 0). Only when another process holds
    the lock (SQLITE_BUSY) does the call go to a thread of its own, on a connection that waits
    (busy_timeout 5 s): the loop never blocks on a lock. WAL checkpoints, with their fsyncs,
    run on threads too.
    """

    def __init__(self, engine: Engine, waiting: Engine, *, in_memory: bool = False) -> None:
        self.engine = engine
        self.url = engine.url
        self._waiting = waiting
        self._in_memory = in_memory
        self._closed = False
        # The event loop's calls never overlap (each runs to its end without yielding), so
        # they share one connection: a pool checkout and return cost as much as a statement.
        self._conn: Connection | None = None
        self._writes = 0
        self._checkpoint: Future[None] | None = None
        # One thread for calls that must wait, and the checkpoints that follow writes.
        self._patient = ThreadPoolExecutor(1, thread_name_prefix="chatd-sqlite-wait")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="chatd-sqlite-checkpoint")

    @property
    def sync_engine(self) -> Engine:
        """Return the engine of the calls that run in the event loop."""
        return self.engine

    def pool_stats(self) -> PoolStats:
        """Return the loop's one connection plus the waiting pool's, and those in use now."""
        if self._in_memory:
            return pool_stats(self.engine.pool)
        # The loop's connection is never in use between two awaits: its calls do not yield.
        waiting = pool_stats(self._waiting.pool)
        return PoolStats(1 + waiting.size, waiting.checked_out)

    async def read(self, work: Work[T]) -> T:
        """Run work on a connection, outside any transaction."""
        return await self._run(_read, work)

    async def write(self, work: Work[T]) -> T:
        """Run work in an immediate transaction (the write lock taken up front)."""
        result = await self._run(_write, work)
        self._writes += 1
        idle = self._checkpoint is None or self._checkpoint.done()
        if self._writes % CHECKPOINT_EVERY == 0 and idle and not self._in_memory:
            self._checkpoint = self._checkpointer.submit(self._wal_checkpoint)
        return result

    async def dispose(self) -> None:
        """Stop the threads, then close the pooled connections; a no-op when closed."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._checkpointer.shutdown)
        await loop.run_in_executor(None, self._patient.shutdown)
        if self._conn is not None:
            self._conn.close()
        self._waiting.dispose()
        self.engine.dispose()

    async def _run(self, how: Callable[[Connection, Work[T]], T], work: Work[T]) -> T:
        if self._closed:
            raise StoreUnavailable("database unavailable: the store was closed")
        with store_errors():
            try:
                return how(self._connection(), work)
            except exc.OperationalError as e:
                if not _is_busy(e):
                    raise
            # Another process holds the lock: wait for it on a thread, not in the loop.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._patient, _pooled, self._waiting, how, work)

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        return conn

    def _wal_checkpoint(self) -> None:
        # The bulk of the work (copying pages, fsync) here, beside the writes: PASSIVE never
        # waits for or blocks anyone. But writes go on meanwhile, so it never quite reaches
        # the end of the WAL, and SQLite starts the WAL over only from a checkpoint that did:
        # a second, short one between two writes finishes the job.
        self._checkpoint_passive()
        with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing to finish
            self._patient.submit(self._checkpoint_passive)

    def _checkpoint_passive(self) -> None:
        try:
            with self._waiting.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except exc.SQLAlchemyError as e:
            # Nobody waits on a checkpoint: a failed one only leaves the WAL longer.
            log.warning("WAL checkpoint failed: %s", _one_line(e))


def _pooled(engine: Engine, how: Callable[[Connection, Work[T]], T], work: Work[T]) -> T:
    with engine.connect() as conn:
        return how(conn, work)


def _read(conn: Connection, work: Work[T]) -> T:
    try:
        return work(conn)
    finally:
        # SQLAlchemy begins a transaction at a connection's first statement: end it. The
        # driver itself begins none for reads, so no snapshot outlives the call.
        conn.rollback()


def _write(conn: Connection, work: Work[T]) -> T:
    # Take the write lock up front: a deferred transaction that reads and then writes
    # fails at once (SQLITE_BUSY_SNAPSHOT) when another process's writer got in between.
    # On the driver's connection: through SQLAlchemy's execute, this BEGIN costs as much
    # as a statement of the turn's. Its errors are wrapped as SQLAlchemy's would be, so
    # a lock held elsewhere (SQLITE_BUSY) still sends the call to the waiting thread.
    sqlite = driver(conn)
    try:
        sqlite.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as e:
        raise driver_error("BEGIN IMMEDIATE", (), e) from e
    # Both ends, as the work may run statements through SQLAlchemy (whose transaction is
    # then begun) or only on the driver (chatd.store.direct), or both: the second is a
    # no-op once the first has ended the driver's transaction. Nothing may leave it open:
    # the connection is shared by the calls that follow.
    try:
        result = work(conn)
        conn.commit()
        sqlite.commit()
    except BaseException as e:
        conn.rollback()
        sqlite.rollback()
        if isinstance(e, sqlite3.Error):
            raise driver_error("COMMIT", (), e) from e
        raise
    return result


def _is_busy(error: exc.OperationalError) -> bool:
    # SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (the low byte is the primary).
    code = getattr(error.orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (5, 6)


class AsyncDatabase:
    """An async engine (asyncpg) driving each sync function through `run_sync`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.url = engine.url

    @property
    def sync_engine(self) -> Engine:
        """Return the sync facade of the async engine."""
        return self.engine.sync_engine

    def pool_stats(self) -> PoolStats:
        """Return the pool's size and connections checked out now."""
        return pool_stats(self.engine.sync_engine.pool)

    async def read(self, work: Work[T]) -> T:
        """Run work on a pooled connection."""
        async with self._errors(), self.engine.connect() as conn:
            return await conn.run_sync(work)

    async def write(self, work: Work[T]) -> T:
        """Run work in one transaction."""
        async with self._errors(), self.engine.begin() as conn:
            return await conn.run_sync(work)

    async def dispose(self) -> None:
        """Close the pooled connections."""
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        with store_errors():
            yield
