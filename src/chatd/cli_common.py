"""What every `chatd` subcommand shares: settings, one-line errors and the help's look."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from typer.core import TyperCommand, TyperGroup

from chatd.config import Settings
from chatd.errors import ChatdError


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
