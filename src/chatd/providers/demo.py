"""An offline, deterministic provider that visibly uses the conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from chatd.providers.base import ProviderOptions, ProviderPlugin
from chatd.tokens import estimate_request_tokens
from chatd.types import (
    ChatRequest,
    Role,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    Usage,
    UsageEvent,
)

DEMO_MODEL = "demo-1"
QUOTE_LIMIT = 80


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"


def demo_reply(request: ChatRequest) -> str:
    """Compose the reply: it quotes the latest message and recalls the earliest one."""
    said = [m.text for m in request.messages if m.role is Role.USER and m.text]
    if not said:
        # Admitted, if odd: a conversation of tool results or replies only, or of nothing.
        parts = ["(demo) I see nothing you said in this conversation yet."]
    elif len(said) == 1:
        parts = [
            f'(demo) You said: "{_quote(said[0])}".',
            "That is the first thing you have told me in this conversation.",
        ]
    else:
        parts = [
            f'(demo) You said: "{_quote(said[-1])}".',
            f'That is message {len(said)} of yours I can see; the first was: "{_quote(said[0])}".',
        ]
    if request.system:
        parts.append(f'My instructions: "{_quote(request.system)}".')
    parts.append(
        "I am chatd's offline demo; set ANTHROPIC_API_KEY or OPENAI_API_KEY for a real model."
    )
    return " ".join(parts)


def _chunks(text: str, size: int = 3) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + size]) + (" " if i + size < len(words) else "")
        for i in range(0, len(words), size)
    ]


class DemoProvider:
    """Streams `demo_reply` in chunks of a few words, honouring max_tokens and stop sequences."""

    def __init__(self, options: ProviderOptions) -> None:
        self.name = options.name
        self.default_model = options.model or DEMO_MODEL
        self._delay_s = options.demo_delay_ms / 1000

    async def aclose(self) -> None:
        """Release nothing: the demo holds no connections."""

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """Return None: the demo has no tokenizer, only the estimate its usage reports."""
        return None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply a few words at a time, then usage and the stop reason."""
        text = demo_reply(request)
        reason = StopReason.END_TURN
        for stop in request.stop:
            if stop and stop in text:
                text, reason = text[: text.index(stop)], StopReason.STOP_SEQUENCE
        words = text.split(" ")
        # One word counts as one token here, so max_tokens truncation is easy to see.
        if len(words) > request.max_tokens:
            text, reason = " ".join(words[: request.max_tokens]), StopReason.MAX_TOKENS
        for chunk in _chunks(text):
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield TextDelta(chunk)
        yield UsageEvent(
            Usage(input_tokens=estimate_request_tokens(request), output_tokens=len(text.split()))
        )
        yield StopEvent(reason)


def _resolve(
    name: str, env: Mapping[str, str], base_url: str | None, model: str | None, timeout_s: float
) -> ProviderOptions:
    delay = env.get("CHATD_DEMO_DELAY_MS", "15")
    return ProviderOptions(
        name=name,
        api_key=None,
        base_url=None,
        model=model,
        timeout_s=timeout_s,
        demo_delay_ms=int(delay) if delay.isdigit() else 15,
    )


plugin = ProviderPlugin(
    names=("demo",),
    create=DemoProvider,
    resolve=_resolve,
    configured=lambda _name, _env: False,
)
