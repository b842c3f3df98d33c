"""Text that cannot be encoded: lone surrogates, found where they hide and made printable.

Raw UTF-8 cannot carry a surrogate (it is refused as invalid UTF-8), but a JSON escape such as
"\\ud800" decodes to one; Python keeps it in a `str` that every encoder, driver and database
later refuses. Such text is refused at the door, naming where it was.
"""

from __future__ import annotations

import math
import re
from typing import Any

NOT_UNICODE = "must be valid Unicode text (no lone surrogates)"
NO_CONTROLS = "must not contain control characters (newlines and tabs included)"
# C0 and C1 control characters and DEL: what one line of text (a title) may not hold.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
# A JSON escape of a surrogate, paired or not: the only way one can reach a decoded body.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

Path = tuple[str | int, ...]


def may_hold_surrogates(raw: bytes) -> bool:
    """Tell whether a JSON text might decode to a lone surrogate (a cheap test on its bytes)."""
    return b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None


def has_controls(text: str) -> bool:
    """Tell whether text holds a control character, newline and tab included."""
    return _CONTROLS.search(text) is not None


def encodable(text: str) -> bool:
    """Tell whether text can be written as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def unencodable_at(value: Any, path: Path = ()) -> Path | None:
    """Return where in decoded JSON the first unencodable key or string is; None if nowhere."""
    if isinstance(value, str):
        return None if encodable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not encodable(key):
                return (*path, printable(key))
            found = unencodable_at(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = unencodable_at(item, (*path, n))
            if found is not None:
                return found
    return None


def where(path: Path) -> str:
    """Name a place in a document the way error messages do: turns.0.messages."""
    return ".".join(str(x) for x in path) or "document"


def printable(text: str) -> str:
    """Return text with anything UTF-8 cannot hold written as a backslash escape."""
    if encodable(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def jsonable(value: Any) -> Any:
    """Return decoded JSON made safe to encode again: escaped surrogates, no NaN or infinity."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {printable(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
