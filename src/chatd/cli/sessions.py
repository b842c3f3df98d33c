"""`chatd sessions …`: list, export, import, delete and prune stored conversations."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from chatd.cli.common import (
    Command,
    fail,
    new_app,
    parse_duration,
    plain_errors,
    with_store,
)
from chatd.engine import check_session_id
from chatd.errors import InputError, NotFound
from chatd.store import SqlStore
from chatd.transfer import export_doc, parse_doc, restore
from chatd.types import DEFAULT_USER

app = new_app("Stored conversations.")
User = Annotated[str, typer.Option(help="Owner of the sessions.")]


@app.command("list", cls=Command)
def list_sessions(user: User = DEFAULT_USER) -> None:
    """List a user's sessions: a table, or tab-separated lines when piped."""
    sessions = with_store(lambda store: store.list_sessions(user))
    if not sys.stdout.isatty():
        # Scripts feed these ids to export and delete: whole, and no table to pick apart.
        for s in sessions:
            fields = [s.id, str(s.turn_count), s.created_at.isoformat(), s.updated_at.isoformat()]
            typer.echo("\t".join(fields))
        return
    # Imported here, not at the top: `chatd serve` imports this module and never prints a table.
    from rich.console import Console
    from rich.table import Column, Table
    from rich.text import Text

    # An id is what export and delete take: on a narrow terminal it folds, never cut to "…".
    session = Column("session", overflow="fold")
    title = Column("title", overflow="fold")
    table = Table(session, title, "turns", "created", "last active")
    for s in sessions:
        table.add_row(
            s.id,
            # A user's text: shown as it is, never read as Rich markup.
            Text(s.title or ""),
            str(s.turn_count),
            f"{s.created_at:%Y-%m-%d %H:%M}",
            f"{s.updated_at:%Y-%m-%d %H:%M}",
        )
    Console().print(table)


@app.command("export", cls=Command)
def export_session(
    session_id: str,
    out: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
    user: User = DEFAULT_USER,
) -> None:
    """Write a session, every turn with its state and usage, as JSON."""

    async def run(store: SqlStore) -> dict[str, object]:
        info = await store.get_session(user, session_id)
        if info is None:
            raise NotFound(f"no session {session_id!r}")
        return export_doc(info, await store.list_turns(user, session_id))

    data = orjson.dumps(with_store(run), option=orjson.OPT_INDENT_2)
    if out is None:
        sys.stdout.buffer.write(data + b"\n")
    else:
        out.write_bytes(data)
        typer.echo(f"exported {session_id} to {out}", err=True)


@app.command("import", cls=Command)
def import_session(
    file: Path,
    session: Annotated[str | None, typer.Option(help="Store under this id instead.")] = None,
    user: User = DEFAULT_USER,
) -> None:
    """Import a session written by `export`; a malformed file changes nothing."""
    with plain_errors():
        try:
            saved = parse_doc(orjson.loads(file.read_bytes()))
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not a valid chatd session file: {exc}") from None
        target = check_session_id(session or saved.session_id)

    async def run(store: SqlStore) -> None:
        await restore(store, user, saved, target)

    with_store(run)
    typer.echo(f"imported {len(saved.turns)} turns into session {target}", err=True)


@app.command("delete", cls=Command)
def delete_session(session_id: str, user: User = DEFAULT_USER) -> None:
    """Delete a session and all its messages for good."""
    if not with_store(lambda store: store.delete_session(user, session_id)):
        fail(f"no session {session_id!r}", code=1)
    typer.echo(f"deleted {session_id}", err=True)


@app.command("prune", cls=Command)
def prune(
    older_than: Annotated[str, typer.Option(help="Idle time, e.g. 30d, 12h.")] = "30d",
) -> None:
    """Delete every session idle for longer than --older-than."""
    with plain_errors():
        age = parse_duration(older_than)
    removed = with_store(lambda store: store.prune_sessions(age))
    typer.echo(f"pruned {removed} sessions idle for more than {older_than}", err=True)
