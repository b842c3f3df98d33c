"""Connecting: a database URL to a running Database (SQLite or PostgreSQL), then a ready store."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from chatd.errors import ConfigError, StoreUnavailable
from chatd.store.database import AsyncDatabase, Database, SqliteDatabase
from chatd.store.migrate import upgrade
from chatd.store.sessions import SqlStore

if TYPE_CHECKING:
    pass


SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    # Checkpoints run off the request path: chatd.store.database.SqliteDatabase.
    "PRAGMA wal_autocheckpoint=0",
)

# Dialect names people write, mapped to the driver chatd runs on. SQLite runs on the stdlib
# driver (see chatd.store.database); `sqlite+aiosqlite` is still read, as earlier chatd wrote it.
_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

# How long a call that found the database locked by another process waits (on a thread).
SQLITE_BUSY_TIMEOUT_MS = 5000


def parse_database_url(database_url: str) -> URL:
    """Parse and normalise a URL to the driver chatd uses; ConfigError if it cannot work."""
    try:
        url = make_url(database_url)
    except (exc.ArgumentError, ValueError) as e:
        # Not echoed: an unparseable URL may still hold a password.
        raise ConfigError(f"bad database URL: {e}") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        shown = url.render_as_string(hide_password=True)
        raise ConfigError(
            f"unsupported database URL {shown!r}: use sqlite:///PATH "
            "or postgresql+asyncpg://USER@HOST/DB"
        )
    url = url.set(drivername=driver)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database.startswith("~"):
        # A shell would have expanded it; in a URL nobody wants a folder named "~".
        url = url.set(database=os.path.expanduser(database))
    return url


def create_database(database_url: str) -> Database:
    """Open the database: SQLite (WAL) with its directory made, or PostgreSQL."""
    url = parse_database_url(database_url)
    options: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": _loads}
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite(url, options)
        options["pool_pre_ping"] = True
        # Fail in seconds rather than asyncpg's default minute when the server is unreachable,
        # and bound every statement (the pool's pre-ping too) so a frozen server or a dead
        # network path ends in StoreUnavailable, not a hang.
        options["connect_args"] = {"timeout": 5, "command_timeout": 15}
        from sqlalchemy.ext.asyncio import create_async_engine  # 7 MB that SQLite does not need

        return AsyncDatabase(create_async_engine(url, **options))
    except (exc.ArgumentError, exc.NoSuchModuleError, exc.InvalidRequestError) as e:
        raise ConfigError(f"bad database URL: {e}") from None


def _sqlite(url: URL, options: dict[str, Any]) -> SqliteDatabase:
    in_memory = _check_sqlite_file(url)
    if in_memory:
        # One connection holds the whole database: every call and thread must share it.
        options["poolclass"] = StaticPool
        options["connect_args"] = {"check_same_thread": False}
    engine = create_engine(url, **options)
    event.listen(engine, "connect", _sqlite_pragmas(0))
    if in_memory:
        return SqliteDatabase(engine, engine, in_memory=True)
    # A second pool on the one file: calls run in the event loop on connections that never
    # wait for a lock, and go to a thread, on connections that do, only when they must.
    waiting = create_engine(url, **options)
    event.listen(waiting, "connect", _sqlite_pragmas(SQLITE_BUSY_TIMEOUT_MS))
    return SqliteDatabase(engine, waiting)


async def open_store(database_url: str) -> SqlStore:
    """Open the database, migrate, and return the store."""
    db = create_database(database_url)
    try:
        await upgrade(db)
    except BaseException:
        await db.dispose()
        raise
    return SqlStore(db)


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    """Return a connect hook setting chatd's pragmas and this busy timeout."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in (*SQLITE_PRAGMAS, f"PRAGMA busy_timeout={busy_timeout_ms}"):
                cursor.execute(pragma)
        finally:
            cursor.close()

    return on_connect


def _check_sqlite_file(url: URL) -> bool:
    """Make the file's directory and check it opens; return whether the database is in memory."""
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    if database.startswith("file:"):
        return "mode=memory" in database
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Open it once here: the plain error reads better than SQLAlchemy's at first use.
        sqlite3.connect(path).close()
    except OSError as e:
        raise StoreUnavailable(
            f"cannot create the directory of {path}: {e.strerror or e}"
        ) from None
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open the SQLite database {path}: {e}") from None
    return False


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # orjson refuses integers over 64 bits, non-str keys and lone surrogates; the stdlib
        # takes them all (escaping surrogates to ASCII), so no acknowledged message is lost.
        return json.dumps(value)


def _loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # What _dumps wrote through the stdlib may hold escapes orjson will not read back.
        return json.loads(data)
