"""The `chatd` command: thin Typer adapters over the library."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
from typing import Annotated

import typer

from chatd.cli_common import Command, describe_database, fail, load_settings, new_app, plain_errors
from chatd.cli_keys import app as keys_app
from chatd.cli_sessions import app as sessions_app
from chatd.server import become_server, setup_logging

app = new_app("chatd: a chatbot server with memory, streaming, tools and limits.")
db_app = new_app("Database maintenance.")
app.add_typer(db_app, name="db")
app.add_typer(sessions_app, name="sessions")
app.add_typer(keys_app, name="keys")


def _print_version(wanted: bool) -> None:
    if not wanted:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"chatd {version('chatd')}")
    except PackageNotFoundError:
        # Run from a source tree that was never installed: there is no version to read.
        typer.echo("chatd (version unknown: not installed)")
    raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Handle the options given before the command."""


def is_loopback(host: str) -> bool:
    """Tell whether host is a loopback address or name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_auth(mode: str, host: str) -> str:
    """Return "on" or "off": auto is off on a loopback address and on anywhere else."""
    if mode == "auto":
        return "off" if is_loopback(host) else "on"
    return mode


@app.command(cls=Command)
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run the HTTP server."""
    setup_logging()
    with plain_errors():
        settings = load_settings()
        database = describe_database(settings.database_url)
    auth = resolve_auth(settings.auth, host)
    if auth == "off" and not is_loopback(host):
        # Promise 3: without keys, anyone who can reach the port would be the local user.
        fail(
            f"refusing to listen on {host} with auth off (CHATD_AUTH=off): anyone who can "
            "reach it could read and spend everything. Bind a loopback address "
            "(127.0.0.1, ::1, localhost), or turn auth on (CHATD_AUTH=on or auto) and "
            "create keys with `chatd keys create`"
        )
    typer.echo(f"chatd: auth is {auth} (CHATD_AUTH={settings.auth}, host {host})", err=True)
    typer.echo(f"chatd: database is {database} (CHATD_DATABASE_URL)", err=True)
    # The server process builds the app from the environment: hand it the resolved mode.
    os.environ["CHATD_AUTH"] = auth
    become_server(host, port, workers)


@app.command(cls=Command)
def chat(
    session: Annotated[str, typer.Option(help="Conversation to continue.")] = "default",
    system: Annotated[str | None, typer.Option(help="System prompt for this session.")] = None,
    provider: Annotated[str | None, typer.Option(help="Provider name, or auto.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name.")] = None,
) -> None:
    """Chat in the terminal, with memory kept in the database."""
    from chatd.engine import check_session_id
    from chatd.repl import run_repl
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


@db_app.command("upgrade", cls=Command)
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


@app.command("fake-upstream", cls=Command)
def fake_upstream(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8900,
) -> None:
    """Run the fake LLM upstream (Anthropic and OpenAI wire formats) for tests and load."""
    from chatd.testing.fake_upstream import run

    run(host, port)


def main() -> None:
    """Entry point of the `chatd` script."""
    app()
