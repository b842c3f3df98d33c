"""What every `chatd` subcommand shares: settings, one-line errors and the help's look."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from typer.core import TyperCommand, TyperGroup

from chatd.bounds import MAX_KEY_DAYS
from chatd.config import Settings
from chatd.errors import ChatdError, InputError

if TYPE_CHECKING:
    from chatd.store import SqlStore


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one plain line to stderr and exit."""
    typer.echo(f"chatd: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def plain_errors() -> Iterator[None]:
    """Turn chatd's own errors and bad settings into one line and a non-zero exit."""
    try:
        yield
    except ChatdError as exc:
        fail(exc.message)
    except ValidationError as exc:
        problems = "; ".join(
            f"CHATD_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        fail(f"bad configuration: {problems}")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with command-line flags on top."""
    base = Settings()
    given = {k: v for k, v in overrides.items() if v is not None}
    return base.model_validate({**base.model_dump(), **given}) if given else base


def describe_database(database_url: str) -> str:
    """Say where the database lives: the SQLite file's full path, or the URL without secrets."""
    from chatd.store import parse_database_url

    url = parse_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            return "SQLite in memory"
        if database.startswith("file:"):
            return f"SQLite at {database}"
        return f"SQLite at {Path(database).resolve()}"
    # asyncpg also reads a password from the query string.
    secret = [k for k in url.query if "pass" in k.lower()]
    shown = url.difference_update_query(secret).render_as_string(hide_password=True)
    if secret:
        shown += ("&" if "?" in shown else "?") + "&".join(f"{k}=***" for k in secret)
    return f"PostgreSQL at {shown}"


def _plain_flags(params: list[Any]) -> list[Any]:
    # Typer shows a `<bool>` placeholder after flags, which take no value: show nothing.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose flags show no value placeholder in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        """Return the parameters, flags without a placeholder."""
        return _plain_flags(super().get_params(ctx))


class Group(TyperGroup):
    """A command group whose flags show no value placeholder in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        """Return the parameters, flags without a placeholder."""
        return _plain_flags(super().get_params(ctx))


def new_app(summary: str) -> typer.Typer:
    """Make a command group that shows its help when run without a command."""
    return typer.Typer(
        help=summary,
        cls=Group,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )


T = TypeVar("T")
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
            from chatd.store import open_store

            store = await open_store(settings.database_url)
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(run())
    raise AssertionError("unreachable")  # plain_errors exits on error
