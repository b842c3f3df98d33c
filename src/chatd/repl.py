"""The terminal chat: a line loop over ChatService, streaming replies as they arrive."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from chatd.engine import ChatService, TurnOptions
from chatd.errors import ChatdError, InputError
from chatd.store.codec import message_from_dict, message_to_dict
from chatd.types import (
    StopReason,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnEnded,
    TurnRecord,
    TurnState,
    Usage,
)

HELP = "commands: /quit /reset /history /save FILE /load FILE /system TEXT"
SAVE_FORMAT = "chatd.conversation/1"


class Repl:
    """Reads lines, runs a turn per line, handles the slash commands."""

    def __init__(
        self,
        service: ChatService,
        runner: asyncio.Runner,
        session_id: str,
        options: TurnOptions,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.service = service
        self.runner = runner
        self.session_id = session_id
        self.options = options
        self.out = out
        self.err = err
        self.failed = False
        self._mid_line = False

    def loop(self, stdin: TextIO = sys.stdin) -> None:
        """Run until /quit or end of input."""
        interactive = stdin.isatty()
        while True:
            try:
                line = input("you> ") if interactive else stdin.readline()
            except EOFError:
                return
            except KeyboardInterrupt:
                self.out.write("\n")
                continue
            if not interactive and not line:
                return
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            self.send(line)

    def send(self, text: str) -> None:
        """Run one turn, printing the reply as it streams; Ctrl-C stops just this reply."""
        try:
            self.runner.run(self._stream(text))
        except KeyboardInterrupt:
            self._end_line()
            self.say("[stopped: the partial reply is kept as an interrupted turn]")
        except ChatdError as exc:
            self.failed = True
            self._end_line()
            self.say(f"error: {exc.message}")

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self.out.flush()
            self._mid_line = False

    async def _stream(self, text: str) -> None:
        async for event in self.service.turn(self.session_id, text, self.options):
            if isinstance(event, TextDelta):
                self.out.write(event.text)
                self.out.flush()
                self._mid_line = True
            elif isinstance(event, ToolCallEvent):
                self.say(
                    f"[tool {event.call.name}({orjson.dumps(dict(event.call.input)).decode()})]"
                )
            elif isinstance(event, ToolResultEvent):
                self.say(f"[tool result: {event.result.content[:200]}]")
            elif isinstance(event, TurnEnded):
                self._end_line()
                if event.truncated:
                    self.say("[truncated: the reply hit max_tokens]")
                elif event.state is TurnState.REFUSED:
                    self.say("[the model refused]")
        self.out.flush()

    def say(self, line: str) -> None:
        """Print a status line to stderr, keeping stdout for the conversation."""
        self.err.write(line + "\n")
        self.err.flush()

    def command(self, line: str) -> bool:
        """Run a slash command; return False to quit."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if name in ("/quit", "/exit"):
                return False
            if name == "/reset":
                removed = self.runner.run(self._reset())
                self.say(f"[reset: {removed} turns removed]")
            elif name == "/history":
                self.runner.run(self._history())
            elif name == "/save" and arg:
                doc = self.runner.run(self._export())
                Path(arg).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
                count = len(doc["turns"])
                self.say(f"[saved {count} turns to {arg}]")
            elif name == "/load" and arg:
                count = self.runner.run(self._load(Path(arg).read_bytes()))
                self.say(f"[loaded {count} turns from {arg}]")
            elif name == "/system":
                self.runner.run(self._system(arg))
                self.say("[system prompt set]" if arg else "[system prompt cleared]")
            else:
                self.say(HELP)
        except ChatdError as exc:
            self.say(f"error: {exc.message}")
        except OSError as exc:
            self.say(f"error: {exc.strerror or exc}: {arg}")
        return True

    async def _ensure(self) -> None:
        await self.service.store.ensure_session(
            self.options.user_id,
            self.session_id,
            system_prompt=self.options.system_prompt,
            provider=self.options.provider,
        )

    async def _reset(self) -> int:
        return await self.service.store.reset_session(self.options.user_id, self.session_id) or 0

    async def _history(self) -> None:
        turns = await self.service.store.list_turns(self.options.user_id, self.session_id)
        if not turns:
            self.say("[no messages yet]")
        for turn in turns:
            note = "" if turn.state.in_context else f"  [{turn.state.value}: not in context]"
            for message in turn.messages:
                if message.text:
                    self.out.write(f"{message.role.value}: {message.text}{note}\n")
        self.out.flush()

    async def _system(self, text: str) -> None:
        await self._ensure()
        await self.service.store.update_session(
            self.options.user_id, self.session_id, system_prompt=text
        )

    async def _export(self) -> dict[str, Any]:
        session = await self.service.store.get_session(self.options.user_id, self.session_id)
        turns = await self.service.store.list_turns(self.options.user_id, self.session_id)
        doc = {
            "format": SAVE_FORMAT,
            "session_id": self.session_id,
            "system_prompt": session.system_prompt if session else None,
            "turns": [_turn_to_dict(t) for t in turns],
        }
        return doc

    async def _load(self, data: bytes) -> int:
        turns, system_prompt = parse_saved(data)
        store, user = self.service.store, self.options.user_id
        await self._ensure()
        await store.reset_session(user, self.session_id)
        await store.update_session(user, self.session_id, system_prompt=system_prompt or "")
        for t in turns:
            record = await store.begin_turn(
                user, self.session_id, t.messages[0], model=t.model or "", provider=t.provider or ""
            )
            await store.finish_turn(
                record.id,
                state=t.state,
                messages=t.messages[1:],
                stop_reason=t.stop_reason,
                usage=t.usage,
                latency_ms=t.latency_ms,
                ttft_ms=t.ttft_ms,
                error=t.error,
            )
        return len(turns)


def _turn_to_dict(t: TurnRecord) -> dict[str, Any]:
    return {
        "state": t.state.value,
        "stop_reason": t.stop_reason.value if t.stop_reason else None,
        "model": t.model,
        "provider": t.provider,
        "usage": {
            "input_tokens": t.usage.input_tokens,
            "output_tokens": t.usage.output_tokens,
            "cache_read_tokens": t.usage.cache_read_tokens,
            "cache_write_tokens": t.usage.cache_write_tokens,
        },
        "latency_ms": t.latency_ms,
        "ttft_ms": t.ttft_ms,
        "error": t.error,
        "messages": [message_to_dict(m) for m in t.messages],
    }


def parse_saved(data: bytes) -> tuple[list[TurnRecord], str | None]:
    """Parse a /save file, raising InputError with a plain reason if it is malformed."""
    from datetime import UTC, datetime

    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != SAVE_FORMAT:
            raise ValueError(f"not a {SAVE_FORMAT} file")
        turns = []
        for i, t in enumerate(doc["turns"]):
            messages = tuple(message_from_dict(m) for m in t["messages"])
            if not messages or messages[0].role.value != "user":
                raise ValueError(f"turn {i + 1} does not start with a user message")
            state = TurnState(t["state"])
            if state is TurnState.STREAMING:
                state = TurnState.INTERRUPTED
            turns.append(
                TurnRecord(
                    id="",
                    session_id="",
                    seq=i,
                    state=state,
                    messages=messages,
                    stop_reason=StopReason.parse(t.get("stop_reason"))
                    if t.get("stop_reason")
                    else None,
                    usage=Usage(**t.get("usage", {})),
                    model=t.get("model"),
                    provider=t.get("provider"),
                    created_at=datetime.now(UTC),
                    latency_ms=t.get("latency_ms"),
                    ttft_ms=t.get("ttft_ms"),
                    error=t.get("error"),
                )
            )
        system = doc.get("system_prompt")
        if system is not None and not isinstance(system, str):
            raise ValueError("system_prompt must be a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot load conversation: {exc}") from None
    return turns, system


def run_repl(
    service: ChatService,
    runner: asyncio.Runner,
    session_id: str,
    *,
    system_prompt: str | None,
) -> bool:
    """Run the terminal chat; return whether every turn succeeded."""
    options = TurnOptions(system_prompt=system_prompt)
    repl = Repl(service, runner, session_id, options)
    if system_prompt is not None:
        runner.run(repl._system(system_prompt))
    repl.say(f"[session {session_id}; {HELP}]")
    repl.loop()
    return not repl.failed
