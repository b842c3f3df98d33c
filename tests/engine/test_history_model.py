"""A Hypothesis state machine: whatever happens to turns, stored history matches a model."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from chatd.config import Settings
from chatd.engine import ChatService, EngineConfig, TurnOptions
from chatd.errors import ChatdError
from chatd.providers.pool import ProviderPool
from chatd.providers.retry import RetryPolicy
from chatd.store import SqlStore, open_store
from chatd.testing.fake_upstream import FakeUpstream
from chatd.transfer import export_doc, parse_doc
from chatd.types import Role, TextDelta, TurnEnded

USER = "u"
SID = "s"
words = st.text(alphabet="abcdefghij ", min_size=1, max_size=12).filter(str.strip)


class HistoryMachine(RuleBasedStateMachine):
    """Drive one session through sends, failures, disconnects, resets, deletes, re-imports."""

    fake_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmp = tempfile.TemporaryDirectory()
        self.model: list[tuple[Role, str]] = []
        self.service: ChatService = self.runner.run(self._build())

    async def _build(self) -> ChatService:
        self.store: SqlStore = await open_store(f"sqlite:///{Path(self.tmp.name) / 'm.db'}")
        env = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": self.fake_url}
        s = Settings.model_validate({"provider": "anthropic", "model": "m"})
        self.pool = await ProviderPool.start(s, env=env)
        config = EngineConfig(retry=RetryPolicy(max_attempts=1))
        return ChatService(self.store, self.pool, config)

    def teardown(self) -> None:
        async def close() -> None:
            await self.service.aclose(5)
            await self.pool.aclose()
            await self.store.close()

        self.runner.run(close())
        self.runner.close()
        self.tmp.cleanup()

    async def _turn(self, text: str, **opts: object) -> TurnEnded:
        end = None
        async for event in self.service.turn(SID, text, TurnOptions(user_id=USER, **opts)):  # type: ignore[arg-type]
            if isinstance(event, TurnEnded):
                end = event
        assert end is not None
        return end

    @rule(text=words)
    def send(self, text: str) -> None:
        end = self.runner.run(self._turn(text))
        assert f"to {len(self.model) + 1} message" in end.text
        self.model += [(Role.USER, text), (Role.ASSISTANT, end.text)]

    @rule(text=words, fault=st.sampled_from(["status=400", "status=500", "chunks=3 drop_after=1"]))
    def fail(self, text: str, fault: str) -> None:
        try:
            self.runner.run(self._turn(f"{text} [fake: {fault}]"))
        except ChatdError:
            return
        raise AssertionError("the faulty turn did not fail")

    @rule(text=words, abort=st.booleans())
    def disconnect(self, text: str, abort: bool) -> None:
        async def leave() -> None:
            policy = "abort" if abort else "finish"
            opts = TurnOptions(user_id=USER, on_disconnect=policy)
            stream = self.service.turn(SID, f"{text} [fake: chunks=3 delay_ms=20]", opts)
            async for event in stream:
                if isinstance(event, TextDelta):
                    break
            await stream.aclose()  # type: ignore[attr-defined]
            await self.service.wait_idle(10)

        self.runner.run(leave())
        if not abort:
            turns = self.runner.run(self.store.list_turns(USER, SID))
            self.model += [
                (Role.USER, turns[-1].messages[0].text),
                (Role.ASSISTANT, turns[-1].messages[-1].text),
            ]

    @rule()
    def reset(self) -> None:
        self.runner.run(self.store.reset_session(USER, SID))
        self.model = []

    @rule()
    def delete(self) -> None:
        self.runner.run(self.store.delete_session(USER, SID))
        self.model = []

    @rule()
    def export_import(self) -> None:
        async def round_trip() -> None:
            info = await self.store.get_session(USER, SID)
            if info is None:
                return
            saved = parse_doc(export_doc(info, await self.store.list_turns(USER, SID)))
            await self.store.delete_session(USER, SID)
            await self.store.import_session(
                USER,
                SID,
                system_prompt=saved.system_prompt,
                params=saved.params,
                provider=saved.provider,
                turns=saved.turns,
            )

        self.runner.run(round_trip())

    @invariant()
    def stored_history_matches_the_model(self) -> None:
        async def read() -> list[tuple[Role, str]] | None:
            if await self.store.get_session(USER, SID) is None:
                return None
            return [(m.role, m.text) for m in await self.store.context_messages(USER, SID)]

        stored = self.runner.run(read())
        assert (stored or []) == self.model
        info = self.runner.run(self.store.get_session(USER, SID))
        if info is not None:
            assert info.turn_count == len(self.model) // 2


def test_stored_history_always_matches_the_model(fake_upstream: FakeUpstream) -> None:
    HistoryMachine.fake_url = fake_upstream.url
    run_state_machine_as_test(
        HistoryMachine,
        settings=settings(max_examples=12, stateful_step_count=10, deadline=None),
    )
