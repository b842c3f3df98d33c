"""Alembic environment: run on the connection chatd.store.db.upgrade hands over."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from chatd.store.connect import create_database
from chatd.store.tables import metadata

config = context.config
target_metadata = metadata


def run_on(connection: Connection) -> None:
    """Run the migrations on an open connection, in one transaction."""
    if not connection.in_transaction():
        # SQLite's write lock is taken on the driver (store.database), unseen by SQLAlchemy:
        # Alembic, finding no transaction, would commit after each migration (SQLite's DDL
        # is not transactional to it) and let the lock go, for another worker to migrate too.
        connection.begin()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url(url: str) -> None:
    """Open the database at sqlalchemy.url (the alembic CLI path) and run the migrations."""
    db = create_database(url)
    try:
        await db.write(run_on)
    finally:
        await db.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    run_on(given)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or migrate with chatd.store.db.upgrade")
    asyncio.run(run_from_url(url))
