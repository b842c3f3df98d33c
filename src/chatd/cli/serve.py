"""`chatd serve` and `chatd fake-upstream`: the server processes."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from chatd.cli.common import describe_database, fail, load_settings, plain_errors
from chatd.server import become_server, setup_logging


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
        if settings.otel:
            from chatd.tracing import require

            # Here, as one line, rather than as each worker's traceback.
            require()
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


def fake_upstream(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8900,
    context_limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Prompt tokens over which a request gets the provider's context-length 400 "
            "(default: 200,000 Anthropic, 128,000 OpenAI).",
        ),
    ] = None,
    cache_min: Annotated[
        int | None,
        typer.Option(
            min=1, help="Smallest prompt prefix, in tokens, that is cached (default: 1024)."
        ),
    ] = None,
) -> None:
    """Run the fake LLM upstream (Anthropic and OpenAI wire formats) for tests and load."""
    from chatd.testing.fake_upstream import run

    run(host, port, context_limit=context_limit, cache_min=cache_min)
