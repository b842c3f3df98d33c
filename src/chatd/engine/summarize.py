"""The running summary: older turns folded into text a model writes, standing in for them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from chatd.providers.base import Provider
from chatd.providers.retry import RetryPolicy, RetryTally, stream_with_retries
from chatd.tokens import CallUsage
from chatd.types import ChatRequest, Message, Role, TextDelta, TextPart

SUMMARY_PROMPT = (
    "Write a summary of the conversation so far, including what the earlier summary (if any) "
    "says, for your own use later in this conversation: who the user is and what they want, "
    "facts, names, numbers and decisions, what was tried and what came of it, open questions, "
    "and anything you promised. Be concise; write only the summary."
)


@dataclass(frozen=True, slots=True)
class SummaryConfig:
    """How summaries are written: by which model (None: the session's), how long, asked how."""

    model: str | None = None
    max_tokens: int = 1024
    prompt: str = SUMMARY_PROMPT


def summary_request(
    base: ChatRequest,
    messages: Sequence[Message],
    old: str | None,
    config: SummaryConfig,
    kept: int = 0,
) -> ChatRequest:
    """Build the call that folds `messages` but their last `kept` (and the old summary) into one.

    With the session's model the call is the conversation's own prompt as the last turn sent
    it, its reply and the instruction: the provider's prompt cache already holds nearly all
    of it, so the messages kept verbatim cost a tenth of their size rather than a cache
    write of the folded ones.
    """
    prompt = config.prompt
    if kept:
        prompt += (
            f"\n\nThe last {kept} messages above stay in view as they are: summarise only "
            "what comes before them."
        )
    instruction = Message(Role.USER, (TextPart(prompt),))
    messages = (*messages, instruction)
    same_model = config.model is None or config.model == base.model
    return replace(
        base,
        model=base.model if same_model else config.model or base.model,
        messages=messages,
        summary=old,
        max_tokens=config.max_tokens,
        stop=(),
        # Offered only to keep the cached prefix the same; a call to one is not run.
        tools=base.tools if same_model else (),
    )


async def write_summary(
    provider: Provider,
    request: ChatRequest,
    retry: RetryPolicy,
    call: CallUsage,
    tally: RetryTally | None = None,
) -> str:
    """Run the summary call and return its text (empty if the model wrote none)."""
    parts: list[str] = []
    async for event in stream_with_retries(provider, request, retry, tally=tally):
        call.see(event)
        if isinstance(event, TextDelta):
            parts.append(event.text)
    return "".join(parts).strip()
