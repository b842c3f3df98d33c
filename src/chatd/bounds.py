"""The range of every number a caller may give chatd to store, count or sum.

Each fits the column it is stored in (INTEGER is 32-bit on PostgreSQL, 64-bit on SQLite), and
sums of them cannot overflow: a user's token totals add one INTEGER per turn, and 2**32 turns of
at most 2**31 - 1 tokens each stay below 2**63, the limit of both databases' sums.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

INT32_MAX = 2**31 - 1
# Per request: far above any model's output window.
MAX_TOKENS = 1_000_000
# A session's context budget (messages or tokens).
MAX_CONTEXT_LIMIT = 10_000_000
# One turn's token counts, each stored in an INTEGER column.
MAX_TURN_TOKENS = INT32_MAX
# Latencies in milliseconds: about 31 years.
MAX_LATENCY_MS = 1e12
# A key's request and token limits (rpm is an INTEGER column, the others BIGINT).
MAX_KEY_LIMIT = INT32_MAX
MAX_BUDGET_USD = 1e9
# A key's lifetime: expiry dates stay far from year 9999.
MAX_KEY_DAYS = 36_500
# A session's title, in characters once trimmed.
MAX_TITLE_CHARS = 200

_INT64 = range(-(2**63), 2**63)


def beyond_int64_at(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Return where in decoded JSON the first integer outside 64 bits is; None if nowhere.

    Free-form JSON (a tool's parameter schema) is passed on as it came, and the JSON encoders
    on the way to the provider refuse such integers.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value in _INT64 else path
    if isinstance(value, dict):
        items: Iterable[tuple[str | int, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = beyond_int64_at(item, (*path, key))
        if found is not None:
            return found
    return None
