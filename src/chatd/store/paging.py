"""Opaque page cursors shared by every store, so a cursor means the same on each backend.

A session cursor carries the order it was made for: an order=created cursor is
[created_at, id] (its form from before there were orders, so those cursors stay valid), an
order=recent one ["recent", updated_at, id]. Given with the other order it is an InputError.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson

from chatd.errors import InputError
from chatd.types import SessionInfo, SessionOrder

# The tag of an order=recent cursor (order=created cursors have none).
_RECENT = "recent"


def session_cursor(info: SessionInfo, order: SessionOrder = "created") -> str:
    """Return the cursor that continues a session listing in this order after this session."""
    if order == "created":
        raw = orjson.dumps([info.created_at.isoformat(), info.id])
    else:
        raw = orjson.dumps([_RECENT, info.updated_at.isoformat(), info.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_session_cursor(cursor: str, order: SessionOrder = "created") -> tuple[datetime, str]:
    """Return (the order's time, session_id) from a cursor made for this order.

    InputError if it is not one of ours, or was made for the other order.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        fields = orjson.loads(raw)
        if not isinstance(fields, list):
            raise ValueError("not a session cursor")
        made: SessionOrder = "created"
        if len(fields) == 3 and fields[0] == _RECENT:
            made, fields = "recent", fields[1:]
        at, session_id = fields
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not isinstance(session_id, str):
            raise ValueError("not a session cursor")
        # In UTC now, as the stores compare it: an offset can push a date past year 1 or 9999.
        when = when.astimezone(UTC)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"bad cursor {cursor[:40]!r}: {exc}") from None
    if made != order:
        raise InputError(
            f"this cursor is for order={made}, not order={order}: "
            f"page on with order={made}, or start again without a cursor"
        )
    return when, session_id
