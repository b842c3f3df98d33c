"""The `chatd` command: one module per command group, thin Typer adapters over the library."""

from __future__ import annotations

from typing import Annotated

import typer

from chatd.cli import chat, db, keys, serve, sessions, usage
from chatd.cli.common import Command, new_app

app = new_app("chatd: a chatbot server with memory, streaming, tools and limits.")
app.command("serve", cls=Command)(serve.serve)
app.command("chat", cls=Command)(chat.chat)
app.add_typer(db.app, name="db")
app.add_typer(sessions.app, name="sessions")
app.add_typer(keys.app, name="keys")
app.command("usage", cls=Command)(usage.usage)
app.command("fake-upstream", cls=Command)(serve.fake_upstream)


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


def main() -> None:
    """Entry point of the `chatd` script."""
    app()
