"""The fake upstream's deterministic tokenizer: every token count the fake reports comes from here.

The rules are documented in `chatd.testing.fake_upstream`; tests call `count_tokens` (or
`count_text`) to predict the exact numbers the fake reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "MESSAGE_OVERHEAD",
    "TOKEN_RE",
    "count_text",
    "count_tokens",
    "count_value",
    "prompt_tokens",
]

# A token is a run of word characters or one other non-space character.
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 3
# Structure, not content: a real tokenizer sees these as part of the message framing.
UNCOUNTED_KEYS = frozenset(("type", "role", "cache_control"))

# Long texts recur in every turn of a conversation (system prompt, history); counting them once
# keeps the per-request cost near that of a dict lookup. Short texts are cheaper to scan again.
_MEMO_MIN_CHARS = 24
_MEMO_MAX = 16_384
_memo: dict[str, int] = {}


def count_text(text: str) -> int:
    """Count the tokens of one string: words and single punctuation marks."""
    if len(text) < _MEMO_MIN_CHARS:
        return len(TOKEN_RE.findall(text))
    count = _memo.get(text)
    if count is None:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        count = _memo[text] = len(TOKEN_RE.findall(text))
    return count


def count_value(value: Any) -> int:
    """Count the tokens of every string in a JSON value, skipping type, role and cache_control."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += count_text(item)
        elif isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k not in UNCOUNTED_KEYS)
        elif isinstance(item, list):
            stack.extend(item)
    return total


def count_tokens(body: dict[str, Any]) -> int:
    """Count a Messages or Chat Completions request's input tokens the way the fake charges them."""
    total = count_value(body.get("tools")) + count_value(body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        total += sum(MESSAGE_OVERHEAD + count_value(message) for message in messages)
    return total


def _walk(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from TOKEN_RE.findall(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in UNCOUNTED_KEYS:
                yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def prompt_tokens(body: dict[str, Any]) -> list[str]:
    """List a request's tokens in prompt order (tools, system, messages); len is count_tokens."""
    tokens = [*_walk(body.get("tools")), *_walk(body.get("system"))]
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        role = message.get("role") if isinstance(message, dict) else None
        # The overhead tokens carry the role, so the same text from another role differs.
        tokens.extend(("<|start|>", str(role), "<|sep|>"))
        tokens.extend(_walk(message))
    return tokens
