"""Tools that ship with chatd; enabled per session or with CHATD_TOOLS."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chatd.tools.registry import Tool, tool

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
# Bounds on the work itself, not only on its time: a big-int operation holds the GIL until it
# ends, so a timed-out calculation would go on in its thread and stall the event loop too.
_MAX_CHARS = 1000
_MAX_NODES = 400
_MAX_EXPONENT = 1000
# Every number, literal or intermediate; two operands this size multiply in microseconds.
_MAX_RESULT_BITS = 4096


def current_time(timezone: str = "UTC") -> str:
    """Return the current date and time in an IANA time zone, e.g. Europe/Paris."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    return datetime.now(UTC).astimezone(zone).isoformat(timespec="seconds")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses."""
    if len(expression) > _MAX_CHARS:
        raise ValueError(f"expression too long: the limit is {_MAX_CHARS} characters")
    tree = ast.parse(expression, mode="eval")
    # Counted before anything is evaluated; it also bounds how deep _eval recurses.
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise ValueError(f"expression too complex: the limit is {_MAX_NODES} syntax nodes")
    return repr(_eval(tree.body))


def _eval(node: ast.expr) -> float:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        # Only a power can cost far more than its operands' size; refuse it before computing.
        if isinstance(node.op, ast.Pow) and _too_big(left, right):
            raise ValueError("result too large")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except OverflowError:
            raise ValueError("result too large") from None
    raise ValueError("only numbers and + - * / // % ** are allowed")


def _bounded(value: float) -> float:
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    if isinstance(value, int):
        if value.bit_length() > _MAX_RESULT_BITS:
            raise ValueError("result too large")
    elif not math.isfinite(value):
        raise ValueError("result too large")
    return value


def _too_big(base: float, exponent: float) -> bool:
    # Bound the result's size, not just the exponent: (2**999)**999 must not run for hours.
    if abs(exponent) > _MAX_EXPONENT:
        return abs(base) not in (0, 1)
    return abs(base) > 1 and abs(exponent) * math.log2(abs(base)) > _MAX_RESULT_BITS


def builtin_tools() -> list[Tool]:
    """Return the built-in tools."""
    return [tool(current_time), tool(calculate)]
