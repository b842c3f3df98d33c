"""What every `chatd` subcommand shares: settings and one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from pydantic import ValidationError

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
