"""`chatd sessions …`: list, export, import, delete and prune stored conversations."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer

from chatd.bounds import MAX_KEY_DAYS
from chatd.cli_common import Command, fail, load_settings, new_app, plain_errors
from chatd.engine import check_session_id
from chatd.errors import InputError, NotFound
from chatd.store import SqlStore, open_store
from chatd.transfer import export_doc, parse_doc, restore
from chatd.types import DEFAULT_USER

T = TypeVar("T")
app = new_app("Stored conversations.")
User = Annotated[str, typer.Option(help="Owner of the sessions.")]
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> timedelta:
    """Parse 90s, 15m, 12h, 30d or 2w; InputError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InputError(f"cannot read duration {text!r}: use a number and s, m, h, d or w")
    number, unit = int(match.group(1)), match.group(2)
    # Refused before timedelta or date arithmetic could overflow on it.
    if number * _SECONDS[unit] > MAX_KEY_DAYS * _SECONDS["d"]:
        raise InputError(f"duration {text!r} is too long: at most {MAX_KEY_DAYS} days")
    return timedelta(**{_UNITS[unit]: number})


def with_store(action: Callable[[SqlStore], Awaitable[T]]) -> T:
    """Open the configured database, run one action, close it."""
    with plain_errors():
        settings = load_settings()

        async def run() -> T:
            store = await open_store(settings.database_url)
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(run())
    raise AssertionError("unreachable")  # plain_errors exits on error


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

    # An id is what export and delete take: on a narrow terminal it folds, never cut to "…".
    session = Column("session", overflow="fold")
    table = Table(session, "turns", "created", "last active")
    for s in sessions:
        table.add_row(
            s.id,
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
