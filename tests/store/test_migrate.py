"""Opening and migrating a database (store/db.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import cast

from sqlalchemy import Connection

from chatd.store import create_database, upgrade


async def test_a_sqlite_migration_is_one_transaction_under_the_write_lock(tmp_path: Path) -> None:
    # Workers starting together on a new database migrate one after another only if the
    # lock is held from the first migration to the last: one BEGIN IMMEDIATE, one COMMIT.
    db = create_database(f"sqlite:///{tmp_path / 'new.db'}")
    seen: list[str] = []

    def trace(conn: Connection) -> None:
        driver = cast(sqlite3.Connection, conn.connection.driver_connection)
        driver.set_trace_callback(seen.append)

    try:
        await db.read(trace)
        await upgrade(db)
    finally:
        await db.dispose()
    ends = [sql.strip().upper() for sql in seen]
    ends = [sql for sql in ends if sql.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    assert ends == ["BEGIN IMMEDIATE", "COMMIT"]
