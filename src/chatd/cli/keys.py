"""`chatd keys …`: create, list and revoke API keys in the configured database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer

from chatd.bounds import MAX_BUDGET_USD, MAX_KEY_LIMIT
from chatd.cli.common import Command, new_app, parse_duration, plain_errors, with_store
from chatd.errors import InputError
from chatd.keys import ApiKey, KeyLimits, new_key, user_name
from chatd.store import SqlKeyStore

app = new_app("API keys (used when auth is on).")


@app.command("create", cls=Command)
def create(
    user: Annotated[str, typer.Option(metavar="NAME", help="Who the key belongs to.")],
    admin: Annotated[
        bool, typer.Option("--admin", help="May manage users and keys over /v1/admin.")
    ] = False,
    rpm: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Requests per minute.")
    ] = None,
    tpm: Annotated[int | None, typer.Option(min=1, metavar="N", help="Tokens per minute.")] = None,
    tokens_per_day: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Tokens per day.")
    ] = None,
    # Checked below rather than with min=: Typer would show the bound as [x>=1e-06].
    budget_usd_per_day: Annotated[
        float | None, typer.Option(metavar="USD", help="Cost per day, in USD.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(metavar="AGE", help="Lifetime, e.g. 30d, 12h, 2w.")
    ] = None,
) -> None:
    """Create a key and print it (alone, on stdout): it is shown this once only."""
    with plain_errors():
        if budget_usd_per_day is not None and not budget_usd_per_day > 0:
            raise InputError("--budget-usd-per-day must be more than 0")
        if budget_usd_per_day is not None and not budget_usd_per_day <= MAX_BUDGET_USD:
            raise InputError(f"--budget-usd-per-day must be at most {MAX_BUDGET_USD:.0f}")
        for option, value in (("rpm", rpm), ("tpm", tpm), ("tokens-per-day", tokens_per_day)):
            if value is not None and value > MAX_KEY_LIMIT:
                raise InputError(f"--{option} must be at most {MAX_KEY_LIMIT}")
        owner = user_name(user)
        until = None if expires is None else datetime.now(UTC) + parse_duration(expires)
    limits = KeyLimits(rpm, tpm, tokens_per_day, budget_usd_per_day)
    key, digest, prefix = new_key()
    made = with_store(
        lambda store: SqlKeyStore(store.db).create_key(
            owner, digest, prefix, admin=admin, limits=limits, expires_at=until
        )
    )
    typer.echo(key)
    kind = "admin key" if admin else "key"
    typer.echo(
        f"created {kind} {made.prefix}… (id {made.id}) for {owner}; "
        "store it now: it cannot be shown again",
        err=True,
    )


@app.command("list", cls=Command)
def list_keys(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
) -> None:
    """List keys: prefix, user, admin, limits, created, last used, expiry, revoked."""
    # Imported here, not at the top: `chatd serve` imports this module and never prints a table.
    from rich.console import Console
    from rich.table import Table

    keys: Sequence[ApiKey] = with_store(lambda store: SqlKeyStore(store.db).list_keys(user))
    table = Table(
        "prefix", "id", "user", "admin", "limits", "created", "last used", "expires", "revoked"
    )
    for k in keys:
        table.add_row(
            k.prefix,
            k.id,
            k.user_id,
            "yes" if k.admin else "",
            _limits(k.limits),
            _when(k.created_at),
            _when(k.last_used_at),
            _when(k.expires_at),
            _when(k.revoked_at),
        )
    Console(width=200).print(table)


@app.command("revoke", cls=Command)
def revoke(ref: Annotated[str, typer.Argument(help="The key's prefix or id.")]) -> None:
    """Revoke a key: every server stops accepting it within a second."""
    revoked = with_store(lambda store: SqlKeyStore(store.db).revoke_key(ref))
    typer.echo(f"revoked {revoked.prefix}… (id {revoked.id}) of {revoked.user_id}", err=True)


def _limits(limits: KeyLimits) -> str:
    parts = [
        f"{limits.rpm} rpm" if limits.rpm else "",
        f"{limits.tpm} tpm" if limits.tpm else "",
        f"{limits.tokens_per_day} tokens/day" if limits.tokens_per_day else "",
        f"${limits.budget_usd_per_day:g}/day" if limits.budget_usd_per_day else "",
    ]
    return ", ".join(p for p in parts if p) or "-"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"
