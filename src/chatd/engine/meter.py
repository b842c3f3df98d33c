"""TokenMeter: prompt sizes before a call, from what providers reported after earlier ones.

A message whose size a provider reported is counted as reported. Anything else (the new
message, the system prompt, tools, a summary) is chatd's estimate, scaled by how far the
estimates of earlier prompts to that model were from what the provider counted, with a margin
on top: a prompt that would not fit is cut before it is sent, not after the provider refuses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatd.tokens import estimate_message_tokens, estimate_prompt_tokens
from chatd.types import ChatRequest, Message

# Estimated parts are counted this much larger: what a calibrated estimate may still be off by.
MARGIN = 0.10
# Calibration moves this far toward each new observation (an exponential moving average).
SMOOTHING = 0.3
# The model's reply needs room too: at least this share of the window is kept for it.
MIN_REPLY_SHARE = 0.05

# Context windows of well-known model families, by name prefix (longest prefix wins); a model
# not listed has none known until its provider says so in a context-length error.
KNOWN_WINDOWS: dict[str, int] = {
    "claude-": 200_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4-turbo": 128_000,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}

_Key = tuple[str, str]
# Provider counts of whole requests kept (each under a digest), oldest dropped first.
COUNTS_KEPT = 4096


def _request_key(request: ChatRequest) -> str:
    # Everything a count depends on; repr because tool inputs are dicts, not hashable.
    what = (request.model, request.system, request.summary, request.tools, request.messages)
    return hashlib.sha256(repr(what).encode("utf-8", "surrogatepass")).hexdigest()


def _known_window(model: str) -> int | None:
    best = max((p for p in KNOWN_WINDOWS if model.startswith(p)), key=len, default=None)
    return None if best is None else KNOWN_WINDOWS[best]


@dataclass
class TokenMeter:
    """Calibrated prompt estimates and known context windows, per provider and model."""

    # CHATD_CONTEXT_WINDOW: the window of every model, where the operator knows it.
    configured_window: int | None = None
    _ratio: dict[_Key, float] = field(default_factory=dict)
    _windows: dict[_Key, int] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    # The latest call's prompt and its reported size, per model, not yet weighed.
    _seen: dict[_Key, tuple[ChatRequest, int]] = field(default_factory=dict)

    def window(self, provider: str, model: str) -> int | None:
        """Return the model's context window: learned, configured, or well known."""
        learned = self._windows.get((provider, model))
        if learned is not None:
            return learned
        return self.configured_window or _known_window(model)

    def learn_window(self, provider: str, model: str, limit: int) -> None:
        """Remember the window a provider's context-length error stated."""
        self._windows[(provider, model)] = limit

    def budget(self, provider: str, model: str, max_tokens: int) -> int | None:
        """Return the most a prompt may hold so the reply fits in the window (None: unknown)."""
        window = self.window(provider, model)
        if window is None:
            return None
        reply = max(min(max_tokens, window // 2), int(window * MIN_REPLY_SHARE))
        return window - reply

    def estimate(self, provider: str, model: str, tokens: int) -> int:
        """Scale chatd's estimate as this model's prompts were off, plus the margin."""
        return int(tokens * self._calibrated((provider, model)) * (1 + MARGIN)) + 1

    def _calibrated(self, key: _Key) -> float:
        seen = self._seen.pop(key, None)
        old = self._ratio.get(key)
        if seen is not None:
            request, reported = seen
            guess = estimate_prompt_tokens(request)
            if guess > 0 and reported > 0:
                ratio = reported / guess
                old = ratio if old is None else old + SMOOTHING * (ratio - old)
                self._ratio[key] = old
        return 1.0 if old is None else old

    def sizes(
        self, provider: str, model: str, known: Sequence[int | None], messages: Sequence[Message]
    ) -> list[int]:
        """Return each message's tokens: as reported (`known`, by index), else estimated."""
        sizes: list[int] = []
        for i, m in enumerate(messages):
            reported = known[i] if i < len(known) else None
            if reported is None:
                reported = self.estimate(provider, model, estimate_message_tokens(m))
            sizes.append(reported)
        return sizes

    def counted(self, request: ChatRequest) -> int | None:
        """Return what a provider counted for this very request before, if it did."""
        return self._counts.get(_request_key(request))

    def remember_count(self, request: ChatRequest, tokens: int) -> None:
        """Keep a provider's count of a request, so the same messages are never counted twice."""
        if len(self._counts) >= COUNTS_KEPT:
            del self._counts[next(iter(self._counts))]
        self._counts[_request_key(request)] = tokens

    def observe(self, provider: str, model: str, request: ChatRequest, reported: int) -> None:
        """Calibrate from a prompt's reported size (input, cache reads and writes together)."""
        # Kept, and weighed only when an estimate is next needed: most turns need none, and
        # estimating a whole prompt after every call would cost each of them.
        self._seen[(provider, model)] = (request, reported)


def derive_tokens(
    prompts: Sequence[int | None], outputs: Sequence[int | None], before: int | None
) -> tuple[int | None, list[int | None], int | None]:
    """Split a turn's calls' reported sizes into its messages' tokens.

    `prompts[j]` and `outputs[j]` are call j's prompt (input, cache reads and writes) and
    output tokens, None where not reported; `before` is the context's size after the previous
    turn (None: not known, or the view moved). Each call's reply costs its output tokens; the
    user-side message between two calls (this turn's message, tool results) costs the growth
    of the prompt beyond that. Returns the user message's tokens, the reply messages' (one
    per call's reply and per tool-result message, in order: reply, results, reply, ...), and
    the context's size after the turn.
    """
    user: int | None = None
    if before is not None and prompts and prompts[0] is not None:
        user = prompts[0] - before if prompts[0] > before else None
    reply: list[int | None] = []
    for j, out in enumerate(outputs):
        reply.append(out)
        if j + 1 < len(prompts):
            nxt, now = prompts[j + 1], prompts[j]
            grown = None if nxt is None or now is None or out is None else nxt - now - out
            reply.append(grown if grown is not None and grown > 0 else None)
    context: int | None = None
    if prompts and prompts[-1] is not None and outputs[-1] is not None:
        context = prompts[-1] + outputs[-1]
    return user, reply, context
