"""`chatd usage`, run as an operator would: a table, JSON for scripts, a chart of spend per day."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from chatd.prices import MICRO, Price
from chatd.store import open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.types import CallReport, Usage

Run = Callable[..., subprocess.CompletedProcess[str]]
RATES = {"input": 3.0, "output": 15.0, "cache_read": 1.0, "cache_write": 4.0}
PRICE = Price(**RATES)


def charged(fake: FakeUpstream) -> Usage:
    """Return the usage the fake reported over every model call it served."""
    total = Usage()
    for request in fake.requests:
        if request.usage:
            used = request.usage
            total = total + Usage(
                used["input_tokens"],
                used["output_tokens"],
                used.get("cache_read", 0),
                used.get("cache_write", 0),
            )
    return total


def record_calls(database_url: str, user: str, usages: list[Usage]) -> None:
    """Record stateless calls of a user in the database, as a server would."""

    async def run() -> None:
        store = await open_store(database_url)
        try:
            for usage in usages:
                cost = PRICE.micro_usd(usage) / MICRO
                store.record_call(
                    CallReport(
                        "completion", user, "openai", "gpt-x", "complete", usage, cost, 1.0, None
                    )
                )
        finally:
            await store.close()

    asyncio.run(run())


@pytest.fixture
def used(anthropic_env: dict[str, str], chatd: Run, fake_upstream: FakeUpstream) -> dict[str, str]:
    """Return the environment of a database with turns of `local` and calls of `ann`."""
    env = {**anthropic_env, "CHATD_PRICES": json.dumps({"test-model": RATES})}
    done = chatd(env, "chat", "--session", "first", stdin="hello\nhow are you?\n")
    assert done.returncode == 0, done.stderr
    assert chatd(env, "chat", "--session", "second", stdin="bye\n").returncode == 0
    record_calls(env["CHATD_DATABASE_URL"], "ann", [Usage(1000, 100), Usage(2000, 200)])
    return env


def test_json_totals_equal_what_the_upstream_charged_and_the_calls_recorded(
    used: dict[str, str], chatd: Run, fake_upstream: FakeUpstream
) -> None:
    shown = chatd(used, "usage", "--json", "--by", "user")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    turns = charged(fake_upstream)
    calls = Usage(3000, 300)
    assert report["input_tokens"] == turns.input_tokens + calls.input_tokens
    assert report["output_tokens"] == turns.output_tokens + calls.output_tokens
    assert (report["turns"], report["completions"], report["unpriced"]) == (3, 2, 0)
    assert report["user"] is None
    assert report["by"] == "user"
    expected = (
        PRICE.micro_usd(turns)
        + PRICE.micro_usd(Usage(1000, 100))
        + PRICE.micro_usd(Usage(2000, 200))
    )
    assert report["cost_usd"] == pytest.approx(expected / MICRO, abs=1e-9)
    by_user = {line["key"]: line for line in report["data"]}
    assert set(by_user) == {"local", "ann"}
    assert by_user["local"]["cost_usd"] == PRICE.micro_usd(turns) / MICRO
    assert by_user["ann"]["completions"] == 2
    # The same keys as GET /v1/usage, for scripts that read either.
    assert set(report) == {
        "turns", "completions", "input_tokens", "output_tokens", "cache_read_tokens",
        "cache_write_tokens", "estimated", "cost_usd", "unpriced", "user", "since", "until",
        "by", "data",
    }  # fmt: skip
    only = json.loads(chatd(used, "usage", "--json", "--user", "local", "--by", "session").stdout)
    assert only["user"] == "local"
    assert sorted((s["key"], s["turns"]) for s in only["data"]) == [("first", 2), ("second", 1)]
    assert all(s["user"] == "local" for s in only["data"])


def test_the_table_shows_each_group_and_the_totals(used: dict[str, str], chatd: Run) -> None:
    shown = chatd(used, "usage", "--by", "model")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    report = json.loads(chatd(used, "usage", "--json", "--by", "model").stdout)
    assert "Usage of every user" in out
    for header in ("model", "turns", "calls", "input", "output", "cache rd", "cache wr", "cost"):
        assert header in out
    assert "anthropic/test-model" in out
    assert "openai/gpt-x" in out
    total_line = next(line for line in out.splitlines() if "total" in line)
    assert f"{report['input_tokens']:,}" in total_line
    cost = round(report["cost_usd"] * MICRO)
    assert f"${cost // MICRO}.{f'{cost % MICRO:06d}'.rstrip('0').ljust(2, '0')}" in total_line


def test_the_chart_draws_spend_per_day(used: dict[str, str], chatd: Run) -> None:
    shown = chatd(used, "usage", "--chart", "--since", "3d")
    assert shown.returncode == 0, shown.stderr
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in (2, 1, 0)]
    rows = [line for line in shown.stdout.splitlines() if line[:10] in days]
    assert [row[:10] for row in rows] == days
    # Nothing spent the two days before; today the longest bar, and what it cost.
    assert "█" not in rows[0]
    assert "█" not in rows[1]
    assert rows[0].rstrip().endswith("$0.00")
    assert rows[2].count("█") > 20
    total = json.loads(chatd(used, "usage", "--json", "--since", "3d").stdout)["cost_usd"]
    assert total > 0
    assert shown.stdout.splitlines()[-1].startswith("total $")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--by", "week"], "--by must be one of day, model, session, user"),
        (["--chart", "--by", "model"], "--chart shows spend per day"),
        (["--since", "yesterday"], "cannot read --since"),
        (["--since", "2026-12-02", "--until", "2026-12-01"], "must be after --since"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    env: dict[str, str], chatd: Run, args: list[str], says: str
) -> None:
    shown = chatd(env, "usage", *args)
    assert shown.returncode == 2
    assert says in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1
