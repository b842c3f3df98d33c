"""What the arms are sent: the seeded history, the user's messages, and each arm's request."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks.client import Conn, Kind

# Messages of history behind a measured turn on a chatd arm: 10 turns (docs/performance.md).
MAIN_HISTORY = 20

# The user's message of a measured turn; directives ask the fake for a stream shape.
PLAIN = "How did the last answer hold up against the notes? Reply briefly."


def streaming_text(chunks: int, delay_ms: int) -> str:
    """A message whose reply the fake streams as `chunks` deltas, `delay_ms` apart.

    `words` pads the reply so that it has at least one word per chunk: the fake cannot cut a
    reply into more pieces than it has characters.
    """
    return f"{PLAIN} [fake: chunks={chunks} delay_ms={delay_ms} words={chunks}]"


def _user_text(k: int) -> str:
    return f"Question {k}: summarise what we said about the deployment plan, step {k}, briefly."


def _assistant_text(k: int) -> str:
    return (
        f"Step {k} of the plan: roll the new build to one canary host, watch error rates and "
        "latency for fifteen minutes, then widen to a quarter of the fleet, then to everyone. "
        "Keep the previous build ready to restore, and write down what was checked at each "
        "stage so the next person can pick it up without asking."
    )


def session_doc(session_id: str, turns: int) -> bytes:
    """A chatd.session/1 document with `turns` complete exchanges (2 messages each)."""
    doc = {
        "format": "chatd.session/1",
        "session_id": session_id,
        "turns": [
            {
                "state": "complete",
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 30 + 120 * k, "output_tokens": 70},
                "messages": [
                    {"role": "user", "parts": [{"type": "text", "text": _user_text(k)}]},
                    {"role": "assistant", "parts": [{"type": "text", "text": _assistant_text(k)}]},
                ],
            }
            for k in range(1, turns + 1)
        ],
    }
    return orjson.dumps(doc)


@dataclass
class SessionPool:
    """Sessions seeded on a chatd arm, by history size in messages; each handed out once."""

    prefix: str
    fresh: dict[int, list[str]] = field(default_factory=dict)
    seeded: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def seed(
        self,
        conns: list[Conn],
        messages: int,
        count: int,
        headers: list[tuple[str, str]],
    ) -> None:
        """Import `count` sessions with `messages` messages of history each."""
        turns = messages // 2
        ids = [f"{self.prefix}-h{messages}-{next(self._ids)}" for _ in range(count)]
        todo = iter(ids)

        async def worker(conn: Conn) -> None:
            for sid in todo:
                result = await conn.request(
                    "POST", "/v1/sessions/import", session_doc(sid, turns), headers
                )
                if result.status != 201:
                    raise RuntimeError(
                        f"seeding {sid} failed: HTTP {result.status} {result.body[:200]!r}"
                    )
                self.fresh.setdefault(messages, []).append(sid)

        await asyncio.gather(*(worker(c) for c in conns))
        self.seeded += count

    def take(self, messages: int) -> str:
        """Return a session with this much history that no request used yet."""
        left = self.fresh.get(messages)
        if not left:
            raise RuntimeError(f"no fresh {messages}-message session left in {self.prefix}")
        return left.pop()

    def left(self, messages: int) -> int:
        """How many fresh sessions of this size are left."""
        return len(self.fresh.get(messages, ()))


@dataclass(frozen=True)
class Req:
    """One request as bytes."""

    method: str
    path: str
    body: bytes
    headers: list[tuple[str, str]]
    kind: Kind


def openai_body(captured: dict[str, Any], text: str, *, stream: bool) -> bytes:
    """The upstream body chatd sent, with the last user message replaced, streamed or not."""
    body = dict(captured)
    messages = list(body["messages"])
    messages[-1] = {**messages[-1], "content": text}
    body["messages"] = messages
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return orjson.dumps(body)


def chatd_send(session_id: str, text: str, *, stream: bool, headers: list[tuple[str, str]]) -> Req:
    """chatd's /v1 send of one message on a session, as JSON or SSE."""
    body: dict[str, Any] = {"content": text}
    if stream:
        body["stream"] = True
    return Req(
        "POST",
        f"/v1/sessions/{session_id}/messages",
        orjson.dumps(body),
        headers,
        "sse-chatd" if stream else "json",
    )


def synthetic_body(size: int) -> dict[str, Any]:
    """Build an OpenAI request body carrying `size` messages of history, then the plain prompt."""
    messages: list[dict[str, Any]] = []
    for k in range(1, size // 2 + 1):
        messages.append({"role": "user", "content": _user_text(k)})
        messages.append({"role": "assistant", "content": _assistant_text(k)})
    messages.append({"role": "user", "content": PLAIN})
    return {
        "model": "gpt-4o-mini",
        "messages": messages,
        "max_tokens": 1024,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def history_reuse(size: int) -> int:
    """How many turns one seeded session serves at this history size (growth stays <= 2 %)."""
    return 1 if size <= 20 else 3 if size <= 100 else 10
