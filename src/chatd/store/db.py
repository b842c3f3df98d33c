"""Opening the database, schema migrations, and opening a ready SqlStore."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, create_engine, event, exc, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from chatd.errors import ConfigError, StoreUnavailable
from chatd.store.database import AsyncDatabase, Database, SqliteDatabase
from chatd.store.repo import SqlStore

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration shipped; tests/store keeps it equal to the migrations folder's head.
SCHEMA_HEAD = "0005"

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

# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent upgrades.
_PG_MIGRATION_LOCK = 7_245_301


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


async def applied_revisions(db: Database) -> frozenset[str]:
    """Return the migrations applied to the database (none for a new one)."""
    return await db.read(_applied)


def _applied(connection: Connection) -> frozenset[str]:
    if not inspect(connection).has_table("alembic_version"):
        return frozenset()
    rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
    return frozenset(str(r[0]) for r in rows)


async def upgrade(db: Database) -> None:
    """Migrate the schema to the newest revision; a no-op when it is already there."""
    if await applied_revisions(db) == {SCHEMA_HEAD}:
        return  # the common start: alembic (10 MB) is not even imported
    from alembic.util import CommandError

    try:
        await db.write(_upgrade_sync)
    except CommandError as e:
        # Typically a schema newer than this chatd: its revision is unknown here.
        raise ConfigError(f"cannot migrate the database: {e}") from None


async def open_store(database_url: str) -> SqlStore:
    """Open the database, migrate, and return the store."""
    db = create_database(database_url)
    try:
        await upgrade(db)
    except BaseException:
        await db.dispose()
        raise
    return SqlStore(db)


def alembic_config(connection: Connection | None = None) -> Config:
    """Build the Alembic config in code, pointing at the migrations shipped in the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade_sync(connection: Connection) -> None:
    # Hold a database-wide lock for the whole upgrade so that workers starting together
    # migrate one after another: the later ones find the schema current and do nothing.
    # (SQLite's writes already hold its lock: BEGIN IMMEDIATE.)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


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
