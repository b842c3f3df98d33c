"""Prompt caching for the fake upstream: Anthropic's breakpoints and OpenAI's automatic prefixes.

The behaviour is documented in `chatd.testing.fake_upstream`. The cache holds prefix digests and
expiry times only, never content, keyed by API key + model + the exact prefix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from chatd.testing.fake_directives import WireError
from chatd.testing.fake_tokens import MESSAGE_OVERHEAD, count_value, prompt_tokens

__all__ = [
    "ANTHROPIC_CACHE_MIN",
    "ANTHROPIC_LOOKBACK",
    "MAX_BREAKPOINTS",
    "OPENAI_CACHE_INCREMENT",
    "OPENAI_CACHE_MIN",
    "OPENAI_CACHE_TTL",
    "CacheSplit",
    "PromptCache",
    "Segment",
    "anthropic_segments",
    "has_breakpoints",
]

ANTHROPIC_CACHE_MIN = 1024
MAX_BREAKPOINTS = 4
# Anthropic checks for hits at the breakpoint and this many block boundaries before it.
ANTHROPIC_LOOKBACK = 20
_TTLS = {"5m": 300.0, "1h": 3600.0}
OPENAI_CACHE_MIN = 1024
OPENAI_CACHE_INCREMENT = 128
OPENAI_CACHE_TTL = 300.0
# Expired entries are swept when the table reaches this size, so memory stays bounded.
_SWEEP_AT = 50_000


@dataclass(frozen=True, slots=True)
class Segment:
    """One cacheable unit in prompt order: a tool, a system block or a message content block."""

    tokens: int
    value: Any
    ttl: float | None


@dataclass(frozen=True, slots=True)
class CacheSplit:
    """How a prompt's input tokens divide into fresh, read from cache and written to it."""

    input_tokens: int
    cache_read: int = 0
    cache_write: int = 0


def _breakpoint_ttl(block: Any, where: str) -> float | None:
    if not isinstance(block, dict):
        return None
    control = block.get("cache_control")
    if control is None:
        return None
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        raise WireError(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = control.get("ttl", "5m")
    if ttl not in _TTLS:
        raise WireError(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return _TTLS[ttl]


def has_breakpoints(body: dict[str, Any]) -> bool:
    """Say whether any tool, system block or message content block carries cache_control."""
    tools, system, messages = body.get("tools"), body.get("system"), body.get("messages")
    groups: list[Any] = [tools if isinstance(tools, list) else []]
    groups.append(system if isinstance(system, list) else [])
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            groups.append(content)
    return any(isinstance(b, dict) and "cache_control" in b for group in groups for b in group)


def _without_control(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def anthropic_segments(body: dict[str, Any]) -> list[Segment]:
    """Cut a Messages request into segments (tools, system, messages) whose tokens sum to its count.

    Raises WireError for a malformed cache_control or more than MAX_BREAKPOINTS of them.
    """
    segments: list[Segment] = []
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        ttl = _breakpoint_ttl(tool, f"tools.{index}")
        segments.append(Segment(count_value(tool), ("tool", _without_control(tool)), ttl))
    system = body.get("system")
    if isinstance(system, list):
        for index, block in enumerate(system):
            ttl = _breakpoint_ttl(block, f"system.{index}")
            segments.append(Segment(count_value(block), ("system", _without_control(block)), ttl))
    elif system is not None:
        segments.append(Segment(count_value(system), ("system", system), None))
    messages = body.get("messages")
    for m_index, message in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(message, dict):
            segments.append(Segment(MESSAGE_OVERHEAD + count_value(message), message, None))
            continue
        content = message.get("content")
        rest = {k: v for k, v in message.items() if k != "content"}
        # The message's framing (overhead, role, other fields) belongs to its first block.
        head, head_tokens = ("message", rest), MESSAGE_OVERHEAD + count_value(rest)
        if not isinstance(content, list) or not content:
            tokens = head_tokens + count_value(content)
            segments.append(Segment(tokens, (head, content), None))
            continue
        for b_index, block in enumerate(content):
            ttl = _breakpoint_ttl(block, f"messages.{m_index}.content.{b_index}")
            tokens = count_value(block) + (head_tokens if b_index == 0 else 0)
            value = (head if b_index == 0 else None, _without_control(block))
            segments.append(Segment(tokens, value, ttl))
    found = sum(segment.ttl is not None for segment in segments)
    if found > MAX_BREAKPOINTS:
        raise WireError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {found}."
        )
    return segments


class PromptCache:
    """Prefix digests with their expiry times, per API key and model."""

    def __init__(self) -> None:
        # digest -> (expires at, lifetime it is refreshed by)
        self._entries: dict[bytes, tuple[float, float]] = {}

    def clear(self) -> None:
        """Forget every cached prefix."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: bytes, now: float) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry[0] <= now:
            del self._entries[key]
            return False
        return True

    def _put(self, key: bytes, now: float, ttl: float) -> None:
        if len(self._entries) >= _SWEEP_AT:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
        old = self._entries.get(key)
        if old is not None and old[0] > now:
            # A 5-minute write does not shorten an entry a 1-hour breakpoint made.
            ttl = max(ttl, old[1])
        self._entries[key] = (now + ttl, ttl)

    def anthropic(
        self, scope: bytes, segments: list[Segment], now: float, minimum: int
    ) -> CacheSplit:
        """Read and write the cache for a request's segments as Anthropic does."""
        total = sum(segment.tokens for segment in segments)
        marks = [i for i, segment in enumerate(segments) if segment.ttl is not None]
        if not marks:
            return CacheSplit(total)
        ends: list[int] = []
        digests: list[bytes] = []
        running, digest = 0, hashlib.sha256(scope).digest()
        for segment in segments[: marks[-1] + 1]:
            running += segment.tokens
            encoded = orjson.dumps(segment.value, option=orjson.OPT_SORT_KEYS)
            digest = hashlib.sha256(digest + encoded).digest()
            ends.append(running)
            digests.append(digest)
        candidates = sorted(
            {j for mark in marks for j in range(max(0, mark - ANTHROPIC_LOOKBACK), mark + 1)},
            reverse=True,
        )
        read = 0
        for j in candidates:
            if self._live(digests[j], now):
                read = ends[j]
                entry = self._entries[digests[j]]
                self._entries[digests[j]] = (now + entry[1], entry[1])
                break
        written_to = 0
        for mark in marks:
            ttl = segments[mark].ttl
            if ends[mark] >= minimum and ttl is not None:
                self._put(digests[mark], now, ttl)
                written_to = ends[mark]
        write = max(0, written_to - read)
        return CacheSplit(total - read - write, read, write)

    def openai(
        self, scope: bytes, body: dict[str, Any], total: int, now: float, minimum: int
    ) -> int:
        """Return the cached tokens of a prompt of `total` tokens, and remember its prefixes."""
        if total < minimum:
            return 0
        tokens = prompt_tokens(body)
        hasher = hashlib.sha256(scope)
        boundaries: list[tuple[int, bytes]] = []
        done = 0
        for end in range(minimum, len(tokens) + 1, OPENAI_CACHE_INCREMENT):
            hasher.update("\x1f".join(tokens[done:end]).encode() + b"\x1e")
            boundaries.append((end, hasher.copy().digest()))
            done = end
        cached = next((end for end, key in reversed(boundaries) if self._live(key, now)), 0)
        for _, key in boundaries:
            self._put(key, now, OPENAI_CACHE_TTL)
        return cached
