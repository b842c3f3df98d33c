"""Schema migrations: the Alembic revisions shipped in the package, applied at open."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect

from chatd.errors import ConfigError
from chatd.store.database import Database

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration shipped; tests/store keeps it equal to the migrations folder's head.
SCHEMA_HEAD = "0009"


# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent upgrades.
_PG_MIGRATION_LOCK = 7_245_301


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


async def schema_is_current(db: Database) -> bool:
    """Tell whether every shipped migration is applied; StoreUnavailable if unreachable."""
    return await applied_revisions(db) == {SCHEMA_HEAD}
