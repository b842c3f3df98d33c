"""Tools from typed functions: schema derivation, validated runs, error results, builtins."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.errors import ConfigError
from chatd.tools import Tool, ToolRegistry, tool
from chatd.tools.builtins import builtin_tools, calculate, current_time
from chatd.types import ToolCallPart

TIMEOUT = 5.0


def call(name: str, call_id: str = "call_1", **kwargs: Any) -> ToolCallPart:
    return ToolCallPart(call_id, name, kwargs)


def recording_add(calls: list[tuple[int, int]]) -> Tool:
    def add(a: int, b: int = 1) -> int:
        """Add two integers.

        The rest of the docstring is not part of the description.
        """
        calls.append((a, b))
        return a + b

    return tool(add)


# --- schema from the signature ------------------------------------------------------------------


def test_tool_derives_required_and_optional_params_from_the_signature() -> None:
    def search(query: str, limit: int = 10, exact: bool = False) -> list[str]:
        """Search the notes."""
        return []

    schema = tool(search).spec.input_schema

    assert schema["type"] == "object"
    assert schema["required"] == ["query"]
    assert schema["properties"]["query"]["type"] == "string"
    assert schema["properties"]["limit"] == {"default": 10, "title": "Limit", "type": "integer"}
    assert schema["properties"]["exact"]["type"] == "boolean"
    assert schema["properties"]["exact"]["default"] is False
    assert schema["additionalProperties"] is False


def test_tool_description_is_the_first_docstring_line() -> None:
    spec = recording_add([]).spec

    assert spec.name == "add"
    assert spec.description == "Add two integers."


def test_tool_without_docstring_is_described_by_its_name() -> None:
    def ping() -> str:
        return "pong"

    spec = tool(ping).spec

    assert spec.description == "ping"
    assert spec.input_schema.get("required", []) == []
    assert spec.input_schema["properties"] == {}


def test_tool_name_can_be_overridden() -> None:
    assert tool(calculate, name="calc").spec.name == "calc"


def test_tool_resolves_string_annotations_from_postponed_evaluation() -> None:
    # This module uses `from __future__ import annotations`, so `Literal[...]` is a string here.
    def pick(mode: Literal["fast", "slow"], n: int = 2) -> str:
        """Pick a mode."""
        return mode

    schema = tool(pick).spec.input_schema

    assert schema["properties"]["mode"]["enum"] == ["fast", "slow"]
    assert schema["required"] == ["mode"]


def test_tool_rejects_an_untyped_parameter() -> None:
    def untyped(x) -> str:  # type: ignore[no-untyped-def]
        return str(x)

    with pytest.raises(ConfigError, match="'x' needs a type"):
        tool(untyped)


# --- running: validation before the call --------------------------------------------------------


async def test_run_returns_the_result_of_a_valid_call() -> None:
    calls: list[tuple[int, int]] = []
    registry = ToolRegistry([recording_add(calls)])

    result = await registry.run(call("add", "c7", a=2, b=3), TIMEOUT)

    assert result.tool_call_id == "c7"
    assert result.content == "5"
    assert result.is_error is False
    assert calls == [(2, 3)]


async def test_run_fills_in_defaults() -> None:
    calls: list[tuple[int, int]] = []
    registry = ToolRegistry([recording_add(calls)])

    result = await registry.run(call("add", a=41), TIMEOUT)

    assert result.content == "42"
    assert calls == [(41, 1)]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"a": "not a number"}, r"a: Input should be a valid integer"),
        ({"a": 1, "b": [2]}, r"b: Input should be a valid integer"),
        ({"b": 2}, r"a: Field required"),
        ({}, r"a: Field required"),
        ({"a": 1, "c": 3}, r"c: Extra inputs are not permitted"),
    ],
    ids=["wrong-type", "wrong-type-optional", "missing-field", "empty-input", "extra-field"],
)
async def test_run_rejects_invalid_input_without_calling_the_tool(
    arguments: dict[str, Any], problem: str
) -> None:
    calls: list[tuple[int, int]] = []
    registry = ToolRegistry([recording_add(calls)])

    result = await registry.run(ToolCallPart("c1", "add", arguments), TIMEOUT)

    assert result.is_error is True
    assert result.tool_call_id == "c1"
    assert result.content.startswith("invalid input for add: ")
    assert re.search(problem, result.content)
    assert calls == []


async def test_run_reports_an_unknown_tool_as_an_error_result() -> None:
    registry = ToolRegistry(builtin_tools())

    result = await registry.run(call("rm_rf", "c9"), TIMEOUT)

    assert result.is_error is True
    assert result.tool_call_id == "c9"
    assert result.content == "no tool named 'rm_rf'"


async def test_run_turns_a_raising_tool_into_an_error_result() -> None:
    def explode(reason: str) -> str:
        """Always fail."""
        raise RuntimeError(reason)

    async def explode_async(reason: str) -> str:
        """Always fail, asynchronously."""
        raise KeyError(reason)

    registry = ToolRegistry([tool(explode), tool(explode_async)])

    sync_result = await registry.run(call("explode", reason="kaput"), TIMEOUT)
    async_result = await registry.run(call("explode_async", reason="gone"), TIMEOUT)

    assert sync_result.is_error is True
    assert sync_result.content == "explode failed: RuntimeError: kaput"
    assert async_result.is_error is True
    assert async_result.content.startswith("explode_async failed: KeyError")


async def test_run_times_out_a_slow_async_tool() -> None:
    finished: list[bool] = []

    async def slow() -> str:
        """Take forever."""
        await asyncio.sleep(30)
        finished.append(True)
        return "done"

    registry = ToolRegistry([tool(slow)])
    started = time.monotonic()

    result = await registry.run(call("slow"), 0.05)

    assert time.monotonic() - started < 2
    assert result.is_error is True
    assert "timed out" in result.content
    assert result.content == "slow timed out after 0.05s"
    assert finished == []


async def test_run_times_out_a_slow_sync_tool() -> None:
    def sleepy() -> str:
        """Block for a while."""
        time.sleep(0.3)
        return "done"

    registry = ToolRegistry([tool(sleepy)])

    result = await registry.run(call("sleepy"), 0.05)

    assert result.is_error is True
    assert "timed out" in result.content


async def test_blocking_sync_tool_runs_in_a_thread_and_the_loop_stays_responsive() -> None:
    release = threading.Event()
    tool_threads: list[int] = []

    def wait_for_release() -> str:
        """Block the calling thread until released."""
        tool_threads.append(threading.get_ident())
        return "released" if release.wait(timeout=3) else "never released"

    registry = ToolRegistry([tool(wait_for_release)])
    task = asyncio.create_task(registry.run(call("wait_for_release"), TIMEOUT))

    ticks = 0
    while not tool_threads or ticks < 3:
        await asyncio.sleep(0.01)  # would never resume if the tool blocked the loop
        ticks += 1
    assert not task.done()
    release.set()
    result = await task

    assert result.content == "released"
    assert tool_threads != [threading.get_ident()]


async def test_run_renders_non_string_results_as_json() -> None:
    def info() -> dict[str, Any]:
        """Return structured data."""
        return {"a": 1, "when": datetime(2024, 1, 2, tzinfo=UTC)}

    result = await ToolRegistry([tool(info)]).run(call("info"), TIMEOUT)

    assert result.content == '{"a": 1, "when": "2024-01-02 00:00:00+00:00"}'


async def test_calls_run_concurrently() -> None:
    async def nap(seconds: float) -> str:
        """Sleep a little."""
        await asyncio.sleep(seconds)
        return "ok"

    registry = ToolRegistry([tool(nap)])
    started = time.monotonic()

    results = await asyncio.gather(
        *(registry.run(call("nap", f"c{i}", seconds=0.2), TIMEOUT) for i in range(5))
    )

    assert [r.tool_call_id for r in results] == [f"c{i}" for i in range(5)]
    assert time.monotonic() - started < 0.9


# --- registry bookkeeping -----------------------------------------------------------------------


def test_specs_returns_the_named_tools_in_order() -> None:
    registry = ToolRegistry(builtin_tools())

    specs = registry.specs(["calculate", "current_time"])

    assert [s.name for s in specs] == ["calculate", "current_time"]
    assert registry.specs([]) == ()
    assert registry.names() == ["calculate", "current_time"]


def test_specs_of_an_unknown_tool_raise_config_error() -> None:
    registry = ToolRegistry(builtin_tools())

    with pytest.raises(ConfigError, match=r"unknown tool 'nope'; known tools: calculate"):
        registry.specs(["nope"])


def test_registering_a_tool_twice_replaces_it() -> None:
    registry = ToolRegistry([tool(calculate)])
    registry.register(tool(current_time, name="calculate"))

    assert registry.names() == ["calculate"]
    assert registry.specs(["calculate"])[0].description.startswith("Return the current date")


# --- builtins: calculate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2*(3+4)", "14"),
        ("7/2", "3.5"),
        ("1/4", "0.25"),
        ("7//2", "3"),
        ("7 % 3", "1"),
        ("-3 + +1", "-2"),
        ("2**10", "1024"),
        ("2**-1", "0.5"),
        ("1.5 * 4", "6.0"),
    ],
)
def test_calculate_evaluates_arithmetic(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@settings(max_examples=200, deadline=None)
@given(a=st.integers(-(10**6), 10**6), b=st.integers(-(10**6), 10**6))
def test_calculate_agrees_with_python_integer_arithmetic(a: int, b: int) -> None:
    assert calculate(f"({a}) + ({b}) * 3 - ({a})") == str(a + b * 3 - a)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "x + 1",
        "abs(-1)",
        "(1).real",
        "'a' * 3",
        "[1, 2]",
        "1 if 1 else 2",
        "1 < 2",
        "~1",
    ],
)
def test_calculate_rejects_anything_but_numbers_and_operators(expression: str) -> None:
    with pytest.raises(ValueError, match="only numbers"):
        calculate(expression)


@pytest.mark.parametrize(
    "expression",
    ["2**100000", "10**1001", "2**-5000", "2**2**20", "((2**999)**999)**999", "(10**300)**300"],
)
def test_calculate_rejects_results_too_large_to_compute(expression: str) -> None:
    with pytest.raises(ValueError, match="result too large"):
        calculate(expression)


def test_calculate_still_handles_big_but_bounded_powers() -> None:
    assert calculate("2**1000") == str(2**1000)
    assert calculate("1**100000") == "1"


async def test_calculate_errors_come_back_as_error_results() -> None:
    registry = ToolRegistry(builtin_tools())

    bad_name = await registry.run(call("calculate", expression="__import__('os')"), TIMEOUT)
    zero = await registry.run(call("calculate", expression="1/0"), TIMEOUT)
    syntax = await registry.run(call("calculate", expression="2*("), TIMEOUT)
    not_a_string = await registry.run(call("calculate", expression=5), TIMEOUT)

    assert bad_name.is_error
    assert "ValueError: only numbers" in bad_name.content
    assert zero.is_error
    assert "ZeroDivisionError" in zero.content
    assert syntax.is_error
    assert "SyntaxError" in syntax.content
    assert not_a_string.is_error
    assert "expression: Input should be a valid string" in not_a_string.content


async def test_calculate_runs_through_the_registry() -> None:
    result = await ToolRegistry(builtin_tools()).run(
        call("calculate", expression="2*(3+4)"), TIMEOUT
    )

    assert result.is_error is False
    assert result.content == "14"


# --- builtins: current_time ---------------------------------------------------------------------

ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def test_current_time_in_paris_is_an_iso_timestamp_with_its_offset() -> None:
    stamp = current_time("Europe/Paris")

    assert ISO_WITH_OFFSET.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=1)


def test_current_time_defaults_to_utc() -> None:
    stamp = current_time()

    assert ISO_WITH_OFFSET.match(stamp), stamp
    assert stamp.endswith("+00:00")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "", "/etc/localtime"])
async def test_current_time_in_an_unknown_zone_is_an_error_result(zone: str) -> None:
    registry = ToolRegistry(builtin_tools())

    result = await registry.run(call("current_time", timezone=zone), TIMEOUT)

    assert result.is_error is True
    assert "unknown time zone" in result.content


async def test_current_time_runs_through_the_registry() -> None:
    registry = ToolRegistry(builtin_tools())

    result = await registry.run(call("current_time", timezone="Asia/Tokyo"), TIMEOUT)

    assert result.is_error is False
    assert result.content.endswith("+09:00")


def _product_tree(depth: int) -> str:
    return (
        "16**1000" if depth == 0 else f"({_product_tree(depth - 1)})*({_product_tree(depth - 1)})"
    )


HOSTILE = [
    "9**9**9",
    "(2**4000)*(2**4000)",
    "*".join(["(16**1000)"] * 60),
    "*".join(["16**1000"] * 1000),
    _product_tree(14),
    "(" * 150 + "9**999" + ")" * 150 + "**999",
    "(" * 300 + "1" + ")" * 300,
    "-" * 999 + "1",
    "1e400 * 1",
    "9.0 ** 999 * 9.0 ** 999",
    "1" * 5000,
]


@pytest.mark.parametrize("expression", HOSTILE, ids=lambda e: f"{e[:20]}..{len(e)}")
def test_calculate_refuses_hostile_expressions_before_doing_the_work(expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises((ValueError, SyntaxError)):
        calculate(expression)
    assert time.perf_counter() - started < 0.1


def test_calculate_bounds_every_intermediate_result_not_only_powers() -> None:
    with pytest.raises(ValueError, match="result too large"):
        calculate("(16**1000)*(16**1000)")
    with pytest.raises(ValueError, match="too long"):
        calculate("1+" * 600 + "1")
    with pytest.raises(ValueError, match="too complex"):
        calculate("+".join(["1"] * 300))
    assert calculate("(16**1000)*(2**90)") == str(16**1000 * 2**90)


async def test_the_event_loop_keeps_beating_while_hostile_calculations_run() -> None:
    registry = ToolRegistry(builtin_tools())
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            registry.run(call("calculate", f"c{n}", expression=e), 2.0)
            for n, e in enumerate(HOSTILE)
        )
    )
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.02)
    beat.cancel()
    assert max(gaps) < 0.2
    assert elapsed < 0.5
    assert all(r.is_error for r in results)
