"""`chatd db …`: database maintenance."""

from __future__ import annotations

import asyncio

import typer

from chatd.cli.common import Command, describe_database, load_settings, new_app, plain_errors

app = new_app("Database maintenance.")


@app.command("upgrade", cls=Command)
def db_upgrade() -> None:
    """Apply database migrations up to the latest."""
    from chatd.store import create_database, upgrade

    with plain_errors():
        settings = load_settings()

        async def run() -> None:
            db = create_database(settings.database_url)
            try:
                await upgrade(db)
            finally:
                await db.dispose()

        asyncio.run(run())
        # Described rather than echoed: the URL may hold a password.
        database = describe_database(settings.database_url)
    typer.echo(f"database is up to date: {database}", err=True)
