"""Token estimates, and what one upstream call used (reported, or estimated when never seen)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from chatd.types import (
    ChatRequest,
    Message,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    Usage,
    UsageEvent,
)

# Framing each message costs a few tokens on every provider.
MESSAGE_OVERHEAD = 4


def estimate_text_tokens(text: str) -> int:
    """Estimate tokens in text: about four characters a token."""
    return (len(text) + 3) // 4


def estimate_message_tokens(message: Message) -> int:
    """Estimate the tokens a message costs in a request."""
    total = MESSAGE_OVERHEAD
    for part in message.parts:
        if isinstance(part, TextPart):
            total += estimate_text_tokens(part.text)
        elif isinstance(part, ToolCallPart):
            total += estimate_text_tokens(part.name + json.dumps(dict(part.input)))
        else:
            total += estimate_text_tokens(part.content)
    return total


def estimate_request_tokens(request: ChatRequest) -> int:
    """Estimate the input tokens of a whole request."""
    system = estimate_text_tokens(request.system) if request.system else 0
    return system + sum(estimate_message_tokens(m) for m in request.messages)


def estimate_fixed_tokens(request: ChatRequest) -> int:
    """Estimate the prompt's tokens outside its messages: system, summary and tools."""
    total = estimate_text_tokens(request.system) if request.system else 0
    if request.summary:
        total += estimate_text_tokens(request.summary)
    for tool in request.tools:
        total += estimate_text_tokens(
            tool.name + tool.description + json.dumps(dict(tool.input_schema))
        )
    return total


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Estimate everything a request's prompt holds: messages, system, summary and tools."""
    return estimate_fixed_tokens(request) + sum(
        estimate_message_tokens(m) for m in request.messages
    )


def estimate_usage(request: ChatRequest, output_chars: int) -> Usage:
    """Estimate a call's usage, marked so: its whole prompt in, output_chars out."""
    return Usage(
        input_tokens=estimate_prompt_tokens(request),
        output_tokens=(output_chars + 3) // 4,
        estimated=True,
    )


@dataclass
class CallUsage:
    """One upstream call's usage: what its provider reported, else an estimate of it."""

    request: ChatRequest
    reported: Usage | None = None
    output_chars: int = 0

    def see(self, event: StreamEvent) -> None:
        """Count what one of the call's events tells of its usage."""
        if isinstance(event, TextDelta):
            self.output_chars += len(event.text)
        elif isinstance(event, ToolCallEvent):
            self.output_chars += len(event.call.name) + len(json.dumps(dict(event.call.input)))
        elif isinstance(event, UsageEvent):
            self.reported = event.usage if self.reported is None else self.reported + event.usage

    def total(self, *, worked: bool) -> Usage:
        """Return the reported usage, else an estimate if output came or the upstream worked."""
        # `worked`: the call ran to its end or chatd stopped it, so the upstream read the
        # request; one that failed before any output is not charged, as providers bill none.
        if self.reported is not None:
            return self.reported
        if self.output_chars or worked:
            return estimate_usage(self.request, self.output_chars)
        return Usage()
