"""Opaque page cursors shared by every store, so a cursor means the same on each backend."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson

from chatd.errors import InputError
from chatd.types import SessionInfo


def session_cursor(info: SessionInfo) -> str:
    """Return the cursor that continues a session listing after this session."""
    raw = orjson.dumps([info.created_at.isoformat(), info.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_session_cursor(cursor: str) -> tuple[datetime, str]:
    """Return (created_at, session_id) from a cursor; InputError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, session_id = orjson.loads(raw)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(session_id, str):
            raise ValueError("not a session cursor")
        # In UTC now, as the stores compare it: an offset can push a date past year 1 or 9999.
        when = when.astimezone(UTC)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"bad cursor {cursor[:40]!r}: {exc}") from None
    return when, session_id
