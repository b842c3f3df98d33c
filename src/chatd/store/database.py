"""Database: run each store call as one synchronous function on a connection, off the event loop.

SQLite runs on the stdlib driver in threads of its own: writes on one writer thread (SQLite has
one writer at a time, so they queue there in order instead of polling the file lock), reads on a
few reader threads (WAL lets them run beside the writer). A store call is one hop to a thread and
back, however many statements it runs. PostgreSQL runs on asyncpg through SQLAlchemy's
`run_sync`, which drives the same function without threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, exc
from sqlalchemy.engine import URL

from chatd.errors import StoreUnavailable

if TYPE_CHECKING:
    # The asyncio extension loads the ORM (7 MB); only PostgreSQL needs it, at run time.
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("chatd.store")

T = TypeVar("T")
Work = Callable[[Connection], T]

# Reads are short (one session's rows); a few threads keep one long export from queueing them.
SQLITE_READERS = 4
# Writes between two WAL checkpoints. SQLite's own (wal_autocheckpoint, off on chatd's
# connections) runs inside the commit that crosses the threshold, so that request waits for
# its fsyncs: p99 6 ms where p50 is 0.9 (store only). Run mostly off the writer: p99 3.8 ms.
CHECKPOINT_EVERY = 100


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


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn a dead or unreachable database into StoreUnavailable with a one-line message."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, OSError) as e:
        raise StoreUnavailable(f"database unavailable: {_one_line(e)}") from None
    except exc.DBAPIError as e:
        if not e.connection_invalidated:
            raise
        raise StoreUnavailable(f"database unavailable: {_one_line(e)}") from None


def _one_line(error: BaseException) -> str:
    # The driver's own message says what went wrong; SQLAlchemy's wrapper adds SQL and links.
    cause = error.orig if isinstance(error, exc.DBAPIError) and error.orig else error
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


class SqliteDatabase:
    """SQLite on the stdlib driver: one writer thread, a few reader threads."""

    def __init__(self, engine: Engine, *, in_memory: bool = False) -> None:
        self.engine = engine
        self.url = engine.url
        self._closed = False
        self._writes = 0
        self._checkpoint: Future[None] | None = None
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="chatd-sqlite-checkpoint")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chatd-sqlite-write")
        # An in-memory database lives in its one connection, so everything runs on the writer.
        self._readers = (
            self._writer
            if in_memory
            else ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="chatd-sqlite-read")
        )

    @property
    def sync_engine(self) -> Engine:
        """Return the engine itself."""
        return self.engine

    async def read(self, work: Work[T]) -> T:
        """Run work on a pooled connection in a reader thread."""
        return await self._run(self._readers, self._read, work)

    async def write(self, work: Work[T]) -> T:
        """Run work in an immediate transaction on the writer thread."""
        result: T = await self._run(self._writer, self._write, work)
        self._writes += 1
        idle = self._checkpoint is None or self._checkpoint.done()
        if self._writes % CHECKPOINT_EVERY == 0 and idle and not self._closed:
            self._checkpoint = self._checkpointer.submit(self._wal_checkpoint)
        return result

    async def dispose(self) -> None:
        """Close the pooled connections, then stop the threads; a no-op when closed."""
        if self._closed:
            return
        await self._run(self._writer, lambda _: self.engine.dispose(), None)
        self._closed = True
        self._checkpointer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)

    async def _run(self, pool: ThreadPoolExecutor, how: Callable[[Any], T], work: Any) -> T:
        if self._closed:
            raise StoreUnavailable("database unavailable: the store was closed")
        with store_errors():
            return await asyncio.get_running_loop().run_in_executor(pool, how, work)

    def _read(self, work: Work[T]) -> T:
        with self.engine.connect() as conn:
            return work(conn)

    def _wal_checkpoint(self) -> None:
        # The bulk of the work (copying pages, fsync) here, beside the writer: PASSIVE never
        # waits for or blocks anyone. But writes go on meanwhile, so it never quite reaches
        # the end of the WAL, and SQLite starts the WAL over only from a checkpoint that did:
        # a second, short one on the writer thread, between two writes, finishes the job.
        self._checkpoint_passive()
        with contextlib.suppress(RuntimeError):  # the writer has shut down: nothing to finish
            self._writer.submit(self._checkpoint_passive)

    def _checkpoint_passive(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except exc.SQLAlchemyError as e:
            # Nobody waits on a checkpoint: a failed one only leaves the WAL longer.
            log.warning("WAL checkpoint failed: %s", _one_line(e))

    def _write(self, work: Work[T]) -> T:
        with self.engine.connect() as conn:
            # Take the write lock up front: a deferred transaction that reads and then writes
            # fails at once (SQLITE_BUSY_SNAPSHOT) when another process's writer got in between.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result


class AsyncDatabase:
    """An async engine (asyncpg) driving each sync function through `run_sync`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.url = engine.url

    @property
    def sync_engine(self) -> Engine:
        """Return the sync facade of the async engine."""
        return self.engine.sync_engine

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
