"""`chatd usage`: tokens and cost over a time range, read from the database, for the operator."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any, cast, get_args

import orjson
import typer

from chatd.cli.common import parse_duration, plain_errors, with_store
from chatd.errors import InputError
from chatd.prices import MICRO
from chatd.types import UsageGrouping, UsageLine, UsageQuery

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

GROUPINGS: tuple[str, ...] = get_args(UsageGrouping)
_HEADERS = {"day": "day (UTC)", "model": "model", "session": "session", "user": "user"}
# The eighths of a bar cell, for a chart's partial last cell.
_EIGHTHS = " ▏▎▍▌▋▊▉"


def usage(
    user: Annotated[
        str | None, typer.Option(metavar="U", help="Only this user's (default: every user).")
    ] = None,
    since: Annotated[
        str,
        typer.Option(
            metavar="AGE|DATE",
            help="From: 7d (today and the 6 days before, UTC), 12h, or an ISO date or datetime.",
        ),
    ] = "30d",
    until: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="Up to this ISO date (included) or datetime."),
    ] = None,
    by: Annotated[
        str, typer.Option(metavar="GROUP", help="Group by day, model, session or user.")
    ] = "day",
    chart: Annotated[
        bool, typer.Option("--chart", help="A bar chart of spend per day instead of the table.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Show tokens and cost per day, model, session or user: turns and stateless calls."""
    with plain_errors():
        query = _query(user, since, until, by, datetime.now(UTC))
        if chart and query.by != "day":
            raise InputError("--chart shows spend per day: leave out --by")
    lines: Sequence[UsageLine] = with_store(lambda store: store.usage_report(query))
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report_json(query, lines), option=_JSON) + b"\n")
        return
    # Imported here, not at the top: `chatd serve` imports the CLI and never prints a table.
    from rich.console import Console

    console = Console()
    if chart:
        _chart(console, query, lines, datetime.now(UTC))
    else:
        _table(console, query, lines)


_JSON = orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z


def _query(user: str | None, since: str, until: str | None, by: str, now: datetime) -> UsageQuery:
    if by not in GROUPINGS:
        raise InputError(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    start = _since(since, now)
    end = None if until is None else _instant(until, "--until", end=True)
    if end is not None and end <= start:
        raise InputError(f"--until ({end:%Y-%m-%d %H:%M}) must be after --since")
    return UsageQuery(start, end, user, cast(UsageGrouping, by))


def _since(text: str, now: datetime) -> datetime:
    """Read --since: an age (whole days start at UTC midnight, today counting one) or an instant."""
    if text[:1].isdigit() and text[-1:] in "smhdw" and "-" not in text:
        age = parse_duration(text)
        if text.endswith(("d", "w")):
            today = datetime.combine(now.date(), time(), UTC)
            return today - (age - timedelta(days=1))
        return now - age
    return _instant(text, "--since")


def _instant(text: str, name: str, *, end: bool = False) -> datetime:
    """Read an ISO date (a whole UTC day; with `end`, up to its end) or datetime (UTC unless
    it says otherwise)."""
    try:
        if len(text) <= 10:
            day = datetime.combine(date.fromisoformat(text), time(), UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InputError(
            f"cannot read {name} {text[:40]!r}: use an age (7d, 12h) or an ISO date or datetime"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def money(micro: int) -> str:
    """Return micro-dollars as exact dollars: at least 2 decimals, at most 6."""
    whole, fraction = divmod(micro, MICRO)
    decimals = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"${whole:,}.{decimals}"


def _line_json(line: UsageLine, by: str) -> dict[str, Any]:
    u = line.usage
    found: dict[str, Any] = {"key": line.key}
    if by == "session":
        found["user"] = line.user_id
    return {
        **found,
        "turns": line.turns,
        "completions": line.completions,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "estimated": u.estimated,
        "cost_usd": line.cost_micro_usd / MICRO,
        "unpriced": line.unpriced,
    }


def report_json(query: UsageQuery, lines: Sequence[UsageLine]) -> dict[str, Any]:
    """Return the report as GET /v1/usage answers it: the totals, the range, then each group."""
    total = _line_json(UsageLine.total(lines), "day")
    del total["key"]
    return {
        **total,
        "user": query.user_id,
        "since": query.since,
        "until": query.until,
        "by": query.by,
        "data": [_line_json(line, query.by) for line in lines],
    }


def _tokens(n: int) -> str:
    return f"{n:,}"


def _table(console: Console, query: UsageQuery, lines: Sequence[UsageLine]) -> None:
    from rich import box
    from rich.table import Column, Table

    owners = query.by == "session" and query.user_id is None
    names = [Column(_HEADERS[query.by], overflow="fold")]
    if owners:
        names.append(Column("user", overflow="fold"))
    numbers = ("turns", "calls", "input", "output", "cache rd", "cache wr", "cost")
    heads = [*names, *(Column(h, justify="right", no_wrap=True) for h in numbers)]
    table = Table(*heads, title=_title(query), show_footer=True, box=box.SIMPLE_HEAD)
    rows = []
    for line in lines:
        key = line.key if line.key is not None else "(no session)"
        rows.append([key, *([line.user_id or ""] if owners else []), *_numbers(line)])
        table.add_row(*rows[-1])
    total = UsageLine.total(lines)
    footer = ["total", *([""] if owners else []), *_numbers(total)]
    for column, cell in zip(table.columns, footer, strict=True):
        column.footer = cell
    _fit(console, table, [len(r[0]) for r in rows] + [len(_HEADERS[query.by])], len(names))
    console.print(table)
    notes = []
    if total.usage.estimated:
        notes.append("~ some tokens are chatd's estimate: the provider never reported them")
    if total.unpriced:
        notes.append(f"{total.unpriced} turns or calls of models with no price count $0")
    for note in notes:
        console.print(note, highlight=False)


def _fit(console: Console, table: Table, key_widths: list[int], named: int) -> None:
    """Fold the names to fit the console; never cut a number (widen the console instead)."""
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    if natural <= console.width:
        return
    # What the numbers (and any user column) take, beside the first column at its widest.
    rest = natural - max(key_widths)
    if named == 1 and console.width - rest >= 12:
        table.columns[0].max_width = console.width - rest
    else:
        console.width = natural


def _numbers(line: UsageLine) -> list[str]:
    u = line.usage
    mark = "~" if u.estimated else ""
    return [
        _tokens(line.turns),
        _tokens(line.completions),
        mark + _tokens(u.input_tokens),
        mark + _tokens(u.output_tokens),
        _tokens(u.cache_read_tokens),
        _tokens(u.cache_write_tokens),
        money(line.cost_micro_usd),
    ]


def _title(query: UsageQuery) -> str:
    return f"Usage of {_scope(query)}"


def _scope(query: UsageQuery) -> str:
    whose = "every user" if query.user_id is None else query.user_id
    end = "now" if query.until is None else f"{query.until:%Y-%m-%d %H:%M} UTC"
    return f"{whose}, {query.since:%Y-%m-%d %H:%M} UTC to {end}"


def _chart(console: Console, query: UsageQuery, lines: Sequence[UsageLine], now: datetime) -> None:
    """Print spend per day as horizontal bars, every day of the range, in order."""
    from rich.table import Table

    spent = {line.key: line.cost_micro_usd for line in lines}
    last = (query.until - timedelta(microseconds=1)) if query.until is not None else now
    days = []
    day = query.since.date()
    while day <= last.date():
        days.append(day.isoformat())
        day += timedelta(days=1)
    most = max((spent.get(d, 0) for d in days), default=0)
    labels = {d: money(spent.get(d, 0)) for d in days}
    # What is left of the terminal for the bars, beside the day and amount columns.
    width = max(10, console.width - 10 - max(map(len, labels.values()), default=5) - 6)
    table = Table.grid(padding=(0, 1))
    table.add_column("day", no_wrap=True)
    table.add_column("bar", no_wrap=True)
    table.add_column("spend", justify="right", no_wrap=True)
    for d in days:
        table.add_row(d, "│" + _bar(spent.get(d, 0), most, width), labels[d])
    console.print(f"Spend per day (UTC) of {_scope(query)}", highlight=False)
    console.print(table)
    total = UsageLine.total(lines)
    console.print(f"total {money(total.cost_micro_usd)}", highlight=False)


def _bar(value: int, most: int, width: int) -> str:
    """Return a bar of value out of most over width cells, to an eighth of a cell."""
    if most <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value * width * 8 / most))
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")
