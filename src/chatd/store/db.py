"""Engine creation, schema migrations, and opening a ready SqlStore."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, event, exc, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chatd.errors import ConfigError, StoreUnavailable
from chatd.store.repo import SqlStore, store_errors

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration shipped; tests/store keeps it equal to the migrations folder's head.
SCHEMA_HEAD = "0004"

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)

# Bare dialect names people write, mapped to the async driver chatd runs on.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent upgrades.
_PG_MIGRATION_LOCK = 7_245_301


def parse_database_url(database_url: str) -> URL:
    """Parse and normalise a URL to an async driver; ConfigError if it cannot work."""
    try:
        url = make_url(database_url)
    except (exc.ArgumentError, ValueError) as e:
        # Not echoed: an unparseable URL may still hold a password.
        raise ConfigError(f"bad database URL: {e}") from None
    driver = _ASYNC_DRIVERS.get(url.drivername)
    if driver is None:
        shown = url.render_as_string(hide_password=True)
        raise ConfigError(
            f"unsupported database URL {shown!r}: use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://USER@HOST/DB"
        )
    return url.set(drivername=driver)


def create_engine(database_url: str) -> AsyncEngine:
    """Build the async engine: SQLite in WAL mode with its directory made, or PostgreSQL."""
    url = parse_database_url(database_url)
    options: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": _loads}
    if url.get_backend_name() == "sqlite":
        _check_sqlite_file(url)
    else:
        options["pool_pre_ping"] = True
        # Fail in seconds rather than asyncpg's default minute when the server is unreachable,
        # and bound every statement (the pool's pre-ping too) so a frozen server or a dead
        # network path ends in StoreUnavailable, not a hang.
        options["connect_args"] = {"timeout": 5, "command_timeout": 15}
    try:
        engine = create_async_engine(url, **options)
    except (exc.ArgumentError, exc.NoSuchModuleError, exc.InvalidRequestError) as e:
        raise ConfigError(f"bad database URL: {e}") from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


async def applied_revisions(engine: AsyncEngine) -> frozenset[str]:
    """Return the migrations applied to the database (none for a new one)."""
    async with store_errors(), engine.connect() as conn:
        return await conn.run_sync(_applied)


def _applied(connection: Connection) -> frozenset[str]:
    if not inspect(connection).has_table("alembic_version"):
        return frozenset()
    rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
    return frozenset(str(r[0]) for r in rows)


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the schema to the newest revision; a no-op when it is already there."""
    if await applied_revisions(engine) == {SCHEMA_HEAD}:
        return  # the common start: alembic (10 MB) is not even imported
    from alembic.util import CommandError

    try:
        async with store_errors(), engine.begin() as conn:
            await conn.run_sync(_upgrade_sync)
    except CommandError as e:
        # Typically a schema newer than this chatd: its revision is unknown here.
        raise ConfigError(f"cannot migrate the database: {e}") from None


async def open_store(database_url: str) -> SqlStore:
    """Create the engine, migrate, and return the store."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    return SqlStore(engine)


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
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _check_sqlite_file(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Open it once here: a failed aiosqlite connect leaves its worker thread calling back
        # into the event loop later, and the plain error reads better too.
        sqlite3.connect(path).close()
    except OSError as e:
        raise StoreUnavailable(
            f"cannot create the directory of {path}: {e.strerror or e}"
        ) from None
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open the SQLite database {path}: {e}") from None


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
