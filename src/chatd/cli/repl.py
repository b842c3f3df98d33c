"""The terminal chat: a line loop over ChatService, streaming replies as they arrive."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from itertools import groupby
from pathlib import Path
from typing import Any, TextIO

import orjson

from chatd.engine import ChatService, TurnOptions
from chatd.errors import ChatdError, InputError, NotFound, NothingToContinue, NothingToRegenerate
from chatd.transfer import export_doc, parse_doc, restore
from chatd.types import (
    ContextChanged,
    Role,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnEnded,
    TurnEvent,
    TurnState,
)

HELP = (
    "commands: /quit /reset /history /continue /regenerate /save FILE /load FILE /system TEXT /help"
)
# A first word of a slash and letters is a command (known or not); "/usr/bin/env …" is a message.
_COMMAND = re.compile(r"/[A-Za-z]+")
# What a terminal would act on rather than show: C0 and C1 controls but tab and newline (ESC
# starts CSI, OSC and DCS sequences: titles, OSC 52 clipboard writes; U+009B is a one-character
# CSI), DEL, the bidi embeddings, overrides and isolates that reorder what follows, and lone
# surrogates, which cannot be encoded at all.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0D:
        return ""  # a carriage return, mostly of a CRLF, would let text overwrite its line
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """Return text from the model or the store made safe to write to a terminal."""
    # Character by character, with no state: an escape sequence split across two streamed
    # deltas is made inert in each half.
    return _UNSAFE.sub(_visible, text)


def context_note(event: ContextChanged) -> str:
    """Say in one line what the model no longer sees verbatim, and why."""
    how = "summarised" if event.summarized else "left out"
    why = "the model's context window was full" if event.reason == "overflow" else "the limit"
    n = event.dropped_messages
    return (
        f"[context: {n} older message{'s' if n != 1 else ''} {how} ({why}); "
        f"the model sees the last {event.kept_messages}]"
    )


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
                # Ctrl-D: end the prompt's line, or the shell's prompt would follow "you> ".
                self.out.write("\n")
                self.out.flush()
                return
            except KeyboardInterrupt:
                self.out.write("\n")
                continue
            if not interactive and not line:
                return
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("/") and _COMMAND.fullmatch(line.split(maxsplit=1)[0]):
                if not self.command(line):
                    return
                continue
            self.send(line)

    def send(self, text: str) -> None:
        """Run one turn, printing the reply as it streams; Ctrl-C stops just this reply."""
        events = self.service.turn(self.session_id, text, self.options)
        self._show(events, "[stopped: the partial reply is kept as an interrupted turn]")

    def continue_reply(self) -> None:
        """Continue the last reply where max_tokens cut it, printing the rest as it streams."""
        events = self.service.continue_turn(self.session_id, self.options)
        self._show(events, "[stopped: the reply so far is kept, truncated; /continue goes on]")

    def regenerate_reply(self) -> None:
        """Ask again for the last reply, which the new one replaces, printing it as it streams."""
        events = self.service.regenerate(self.session_id, self.options)
        self._show(events, "[stopped: the partial reply is kept as an interrupted turn]")

    def _show(self, events: AsyncIterator[TurnEvent], stopped: str) -> None:
        try:
            self.runner.run(self._stream(events))
        except KeyboardInterrupt:
            self._end_line()
            self.say(stopped)
        except (NotFound, NothingToContinue, NothingToRegenerate) as exc:
            # Nothing was asked of the model: a command that does not apply, not a failed turn.
            self.say(f"error: {exc.message}")
        except ChatdError as exc:
            self.failed = True
            self._end_line()
            self.say(f"error: {exc.message}")

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self.out.flush()
            self._mid_line = False

    async def _stream(self, events: AsyncIterator[TurnEvent]) -> None:
        async for event in events:
            if isinstance(event, TextDelta):
                self.out.write(shown(event.text))
                self.out.flush()
                self._mid_line = True
            elif isinstance(event, ToolCallEvent):
                self.say(
                    f"[tool {event.call.name}({orjson.dumps(dict(event.call.input)).decode()})]"
                )
            elif isinstance(event, ToolResultEvent):
                self.say(f"[tool result: {event.result.content[:200]}]")
            elif isinstance(event, ContextChanged):
                self.say(context_note(event))
            elif isinstance(event, TurnEnded):
                self._end_line()
                if event.truncated:
                    self.say("[truncated: the reply was cut at max_tokens; /continue continues it]")
                elif event.state is TurnState.REFUSED:
                    self.say("[the model refused]")
        self.out.flush()

    def say(self, line: str) -> None:
        """Print a status line to stderr, keeping stdout for the conversation."""
        # Status lines quote tool calls, tool results and error messages: text from outside.
        self.err.write(shown(line) + "\n")
        self.err.flush()

    def command(self, line: str) -> bool:
        """Run a slash command; return False to quit."""
        name, arg = [*line.split(maxsplit=1), ""][:2]
        arg = arg.strip()
        try:
            if name in ("/quit", "/exit"):
                return False
            if name == "/reset":
                removed = self.runner.run(self._reset())
                self.say(f"[reset: {removed} turns removed]")
            elif name == "/history":
                self.runner.run(self._history())
            elif name == "/continue":
                self.continue_reply()
            elif name == "/regenerate":
                self.regenerate_reply()
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
            elif name in ("/save", "/load"):
                self.say(f"usage: {name} FILE")
            elif name == "/help":
                self.say(HELP)
            else:
                self.say(f"unknown command {name}; {HELP}")
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
            if turn.state is TurnState.TRUNCATED:
                note = "  [truncated]"
            # A continued reply's parts are consecutive assistant messages: shown as one.
            for role, group in groupby(turn.messages, key=lambda m: m.role):
                texts = [m.text for m in group if m.text]
                for text in ["".join(texts)] if role is Role.ASSISTANT else texts:
                    if text:
                        self.out.write(f"{role.value}: {shown(text)}{note}\n")
        self.out.flush()

    async def _system(self, text: str) -> None:
        await self._ensure()
        await self.service.store.update_session(
            self.options.user_id, self.session_id, system_prompt=text
        )

    async def _export(self) -> dict[str, Any]:
        store, user = self.service.store, self.options.user_id
        info = await store.get_session(user, self.session_id)
        if info is None:
            raise NotFound("nothing to save yet")
        return export_doc(info, await store.list_turns(user, self.session_id))

    async def _load(self, data: bytes) -> int:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not a valid chatd session file: {exc}") from None
        saved = parse_doc(doc)
        store, user = self.service.store, self.options.user_id
        await store.delete_session(user, self.session_id)
        await restore(store, user, saved, self.session_id)
        return len(saved.turns)


def run_repl(
    service: ChatService,
    runner: asyncio.Runner,
    session_id: str,
    *,
    system_prompt: str | None,
) -> bool:
    """Run the terminal chat; return whether every turn succeeded."""
    # Ctrl-C means "stop this reply", so the turn is aborted rather than left to finish.
    options = TurnOptions(system_prompt=system_prompt, on_disconnect="abort")
    repl = Repl(service, runner, session_id, options)
    if system_prompt is not None:
        runner.run(repl._system(system_prompt))
    repl.say(f"[session {session_id}; {HELP}]")
    repl.loop()
    return not repl.failed
