"""`chatd chat`: the terminal chat, on the engine directly (the REPL is in `repl`)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from chatd.cli.common import describe_database, load_settings, plain_errors
from chatd.server import setup_logging


def chat(
    session: Annotated[str, typer.Option(help="Conversation to continue.")] = "default",
    system: Annotated[str | None, typer.Option(help="System prompt for this session.")] = None,
    provider: Annotated[str | None, typer.Option(help="Provider name, or auto.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name.")] = None,
) -> None:
    """Chat in the terminal, with memory kept in the database."""
    from chatd.cli.repl import run_repl
    from chatd.engine import check_session_id
    from chatd.runtime import open_runtime

    setup_logging()
    with plain_errors():
        check_session_id(session)
        settings = load_settings(provider=provider, model=model)
        database = describe_database(settings.database_url)
    typer.echo(f"chatd: database is {database} (CHATD_DATABASE_URL)", err=True)
    with asyncio.Runner() as runner, plain_errors():
        runtime = runner.run(open_runtime(settings))
        try:
            ok = run_repl(runtime.service, runner, session, system_prompt=system)
        finally:
            runner.run(runtime.aclose())
    raise typer.Exit(0 if ok or sys.stdin.isatty() else 1)
