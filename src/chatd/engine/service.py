"""ChatService: one turn from the user's text to a stored reply; framework-free."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, replace
from typing import NamedTuple

from chatd.engine.config import EngineConfig
from chatd.engine.context import ContextPolicy, policy_for
from chatd.engine.leases import LeaseKeeper
from chatd.engine.meter import TokenMeter
from chatd.engine.options import (
    CompletionOptions,
    ProviderSource,
    TurnOptions,
    check_max_tokens,
    check_model,
    check_session_id,
    clean_message,
)
from chatd.engine.ports import PendingTurn, Store
from chatd.engine.run import STATE_FOR_STOP, STOPPED, TurnRun, TurnWrapper, tell
from chatd.engine.view import TurnView
from chatd.errors import (
    ChatdError,
    InputError,
    NotFound,
    NothingToStop,
    StoreUnavailable,
    TurnDiscarded,
)
from chatd.prices import MICRO
from chatd.providers.base import Provider
from chatd.providers.retry import RetryTally, stream_with_retries
from chatd.tokens import CallUsage
from chatd.tools import ToolRegistry
from chatd.types import (
    CallReport,
    ChatRequest,
    History,
    Message,
    ReportSink,
    Role,
    SessionSettings,
    StopEvent,
    StopReason,
    StreamEvent,
    TextDelta,
    TurnEnded,
    TurnEvent,
    TurnPlan,
    TurnRecord,
    TurnStarted,
    TurnState,
    Usage,
)

log = logging.getLogger("chatd.engine")


class ChatService:
    """Runs turns: load history, call the provider, run tools, store the outcome."""

    def __init__(
        self,
        store: Store,
        providers: ProviderSource,
        config: EngineConfig | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.config = config or EngineConfig()
        self.tools = tools or ToolRegistry()
        self._running: set[asyncio.Task[None]] = set()
        # The turn streaming on each (user, session) in this process: what a delete stops.
        self._live: dict[tuple[str, str], tuple[TurnRun, asyncio.Task[None]]] = {}
        self.leases = LeaseKeeper(store, self.config.lease_s)
        # Told what every turn and stateless call did as it ends: logs, metrics, usage records.
        self.observers: list[ReportSink] = []
        # Wraps each turn's task (tracing puts it in a span); None: nothing in between.
        self.turn_wrapper: TurnWrapper | None = None
        # What this process learned of prompt sizes and context windows, shared by its turns.
        self.meter = TokenMeter(self.config.context_window)

    async def turn(
        self, session_id: str, text: str, options: TurnOptions | None = None
    ) -> AsyncIterator[TurnEvent]:
        """Run one turn, yielding its events; the last is TurnEnded, after it is stored."""
        opts = options or TurnOptions()
        cfg = self.config
        check_session_id(session_id)
        text = clean_message(text, cfg.max_message_chars)
        check_max_tokens(opts.params.max_tokens, cfg.max_tokens_ceiling)
        # 1. Open: the read (the session's settings and head, the idempotency key, the history).
        message = Message.user(text)
        opened = await self.store.open_turn(
            opts.user_id,
            session_id,
            message,
            create=SessionSettings(system_prompt=opts.system_prompt, provider=opts.provider),
            idempotency_key=opts.idempotency_key,
            system_prompt=opts.session_prompt,
            # Most sessions use the server's default policy: their history comes in this read.
            history_until=cfg.policy.history_cut(),
        )
        if isinstance(opened, TurnRecord):
            for event in (TurnStarted(session_id, opened.id), *_replay(opened)):
                yield event
            return
        async with aclosing(self._ask(session_id, opened, message, opts)) as events:
            async for event in events:
                yield event

    async def _ask(
        self, session_id: str, pending: PendingTurn, message: Message, opts: TurnOptions
    ) -> AsyncGenerator[TurnEvent]:
        """Ask the model `message` after the pending turn's history: steps 2 to 5 of a turn."""
        try:
            # 2. Plan from the session's settings: what this refuses leaves nothing stored.
            provider, base, policy = self._prepare(pending.settings, opts)
            same = policy == self.config.policy
            history = await pending.context(policy.history_cut(), same_as_hint=same)
            run = self._run(pending.turn_id, provider, base, policy, history, opts)
            run.session_id = session_id
            run.messages = [*history.messages, message]
            # 3. Launch, and 4. commit: the write; a stale read or a race is SessionBusy.
            record, runner = await self._launch(run, pending, TurnPlan(base.model, provider.name))
        except BaseException:
            pending.abandon()
            raise
        # 5. Stream what the run posts, to its end (stored before TurnEnded is posted).
        async with aclosing(self._stream(session_id, opts, run, runner, record)) as events:
            async for event in events:
                yield event

    async def continue_turn(
        self, session_id: str, options: TurnOptions | None = None
    ) -> AsyncIterator[TurnEvent]:
        """Continue the session's truncated last reply, yielding the events a turn yields.

        The continuation extends that turn: it streams again and the model goes on from where
        the reply stopped (Anthropic continues the reply as a prefill; OpenAI-compatible
        providers are asked for the rest in a message sent with this call only). What comes
        back is appended to the turn, so the user gets one reply; it ends complete, truncated
        again, or in any other final state, but one that fails or is stopped leaves the turn
        truncated as it was (with what the continuation said so far), so its first part stays
        in the model's context. TurnEnded carries the whole reply's text and the turn's usage,
        both parts; only the continuation's usage is charged. NothingToContinue (409) unless
        the session's newest turn is truncated; SessionBusy while a turn is in flight.
        """
        opts = options or TurnOptions()
        cfg = self.config
        check_session_id(session_id)
        check_max_tokens(opts.params.max_tokens, cfg.max_tokens_ceiling)
        pending = await self.store.open_continuation(
            opts.user_id, session_id, history_until=cfg.policy.history_cut()
        )
        cut = pending.turn
        try:
            # The same model goes on with its own words, unless the caller names another.
            params = replace(opts.params, model=opts.params.model or cut.model)
            asked = replace(opts, params=params, provider=opts.provider or cut.provider)
            provider, base, policy = self._prepare(pending.settings, asked)
            base = replace(base, continuation=True)
            history = await pending.context(policy.history_cut(), same_as_hint=policy == cfg.policy)
            run = self._run(pending.turn_id, provider, base, policy, history, opts)
            run.session_id = session_id
            # The history ends with the truncated turn itself: the reply to go on from.
            run.messages = list(history.messages)
            run.continuing = cut
            record, runner = await self._launch(run, pending, TurnPlan(base.model, provider.name))
        except BaseException:
            pending.abandon()
            raise
        async with aclosing(self._stream(session_id, opts, run, runner, record)) as events:
            async for event in events:
                yield event

    async def regenerate(
        self, session_id: str, options: TurnOptions | None = None
    ) -> AsyncIterator[TurnEvent]:
        """Run the session's last turn again in its place, yielding the events a turn yields.

        The new turn asks the model again with the last turn's user message (whatever that
        turn's state) and the history before it, with the session's settings and these options
        as a send's. Its commit replaces the last turn in the same transaction that stores it:
        the old turn leaves the message list and the model's context, its usage stays counted
        (moved to the usage records). What is refused before that (SessionBusy, NotFound,
        NothingToRegenerate when the session has no turn, a bad model...) changes nothing.
        """
        opts = options or TurnOptions()
        cfg = self.config
        check_session_id(session_id)
        check_max_tokens(opts.params.max_tokens, cfg.max_tokens_ceiling)
        pending = await self.store.open_regeneration(
            opts.user_id, session_id, history_until=cfg.policy.history_cut()
        )
        message = pending.turn.messages[0]
        async with aclosing(self._ask(session_id, pending, message, opts)) as events:
            async for event in events:
                yield event

    def _run(
        self,
        turn_id: str,
        provider: Provider,
        base: ChatRequest,
        policy: ContextPolicy,
        history: History,
        opts: TurnOptions,
    ) -> TurnRun:
        """Build the run of a turn from its plan and the history it sees."""
        cfg = self.config
        view = TurnView(policy, self.meter, history, cfg.summaries)
        run = TurnRun(turn_id, self.store, provider, self.tools, cfg, base, view, self.leases)
        run.usage_sink = opts.usage_sink
        run.observers, run.user_id, run.request_id = self.observers, opts.user_id, opts.request_id
        run.wrapper = self.turn_wrapper
        return run

    async def _launch(
        self, run: TurnRun, pending: PendingTurn, plan: TurnPlan
    ) -> tuple[TurnRecord, asyncio.Task[None]]:
        """Start the model call, then commit the turn while it goes; cancel it if that fails."""
        # The model call overlaps the write and its commit.
        task = run.start()
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            # Two passes of the loop let the task send the model's request before the store
            # writes the turn (on SQLite, in this thread without a pause): in the first the SDK
            # builds the request, in the second aiohttp's writer task puts it on a connection.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return await pending.commit(plan, self.config.lease_s), task
        except BaseException:
            # Not stored: the model call it started must not go on (or be kept).
            task.cancel()
            await asyncio.wait({task})
            raise

    async def _stream(
        self,
        session_id: str,
        opts: TurnOptions,
        run: TurnRun,
        runner: asyncio.Task[None],
        record: TurnRecord,
    ) -> AsyncGenerator[TurnEvent, None]:
        """Yield what a committed turn's run posts, from TurnStarted to TurnEnded."""
        run.committed(record.seq)
        live = (opts.user_id, session_id)
        self._live[live] = (run, runner)
        runner.add_done_callback(lambda _: self._forget(live, runner))
        # Whatever ends the task, its reader is told: a turn's stream never waits forever.
        runner.add_done_callback(run.outbox.end_with)
        ended = False
        try:
            yield TurnStarted(session_id, run.turn_id)
            while True:
                outcome = await run.outbox.get()
                if isinstance(outcome, BaseException):
                    ended = True
                    raise outcome
                yield outcome
                if isinstance(outcome, TurnEnded):
                    ended = True
                    return
        finally:
            if not ended and (opts.on_disconnect or self.config.on_disconnect) == "abort":
                runner.cancel()
                await asyncio.wait({runner})

    def _prepare(self, session: SessionSettings, opts: TurnOptions) -> _Prepared:
        """Resolve the turn's provider, request and context policy from its session."""
        cfg = self.config
        provider = self.providers.get(opts.provider or session.provider)
        asked = opts.params if opts.tools is None else replace(opts.params, tools=opts.tools)
        params = asked.over(session.params).over(cfg.defaults)
        # A session's stored max_tokens may predate a lower ceiling.
        check_max_tokens(params.max_tokens, cfg.max_tokens_ceiling)
        base = ChatRequest(
            model=self.model_for(provider, params.model),
            messages=(),
            max_tokens=params.max_tokens or 1024,
            system=session.system_prompt,
            temperature=params.temperature,
            stop=params.stop or (),
            tools=self.tools.specs(params.tools or ()),
        )
        policy = policy_for(params.context_policy, params.context_limit, cfg.policy)
        return _Prepared(provider, base, policy)

    def model_for(self, provider: Provider, model: str | None) -> str:
        """Return the model a call to provider runs with; ConfigError if CHATD_MODELS forbids it."""
        # Checked here, where every path (send, session, import, completions) ends up, so a
        # model reached through a provider's default or a stored session is checked too.
        chosen = model or provider.default_model
        check_model(self.config.models, provider.name, chosen)
        return chosen

    async def delete_session(self, user_id: str, session_id: str) -> bool:
        """Delete the session; a reply streaming on it here stops now, and is not kept."""
        why = _discarded("deleted")
        with self._dooming(user_id, session_id, why):
            existed = await self.store.delete_session(user_id, session_id)
        await self._discard(user_id, session_id, why)
        return existed

    async def reset_session(self, user_id: str, session_id: str) -> int | None:
        """Empty the session; a reply streaming on it here stops now, and is not kept."""
        why = _discarded("reset")
        with self._dooming(user_id, session_id, why):
            removed = await self.store.reset_session(user_id, session_id)
        await self._discard(user_id, session_id, why)
        return removed

    async def stop_turn(self, user_id: str, session_id: str) -> TurnStopResult:
        """Stop the session's turn in flight, wherever it runs, and return how it was stored.

        Returns once the turn's end is stored (interrupted, with what it said so far; a
        stopped continuation leaves its turn truncated), so the session takes the next send
        at once. In this process the model call is cancelled now; a turn another process runs
        is marked in the store, and that process stops it at its next lease renewal (within a
        third of a lease; if it died, its lease runs out first). NotFound without the session
        (or not the caller's); NothingToStop when no turn is in flight, or it was already
        ending on its own.
        """
        check_session_id(session_id)
        found = self._live.get((user_id, session_id))
        if found is not None:
            run, task = found
            stopping = run.stop()
            # Stopped or ending on its own, its end is stored when its task is done.
            await asyncio.wait({task})
            if stopping:
                return self._stopped(session_id, run.turn_id, run.stored_state)
        # Not here (or it just ended here): ask whichever process runs a turn on it.
        turn_id = await self.store.request_stop(user_id, session_id, STOPPED)
        if turn_id is None:
            raise NothingToStop(f"no turn is in flight on session {session_id!r}")
        return self._stopped(session_id, turn_id, await self._stored_end(turn_id))

    def _stopped(self, session_id: str, turn_id: str, state: TurnState | None) -> TurnStopResult:
        if state is None:
            raise StoreUnavailable(
                "the turn was stopped but its end could not be stored; "
                "it is marked interrupted once its lease runs out"
            )
        if state not in STOPPED_STATES:
            raise NothingToStop(
                f"the turn on session {session_id!r} had just ended ({state.value})"
            )
        return TurnStopResult(session_id, turn_id, state)

    async def _stored_end(self, turn_id: str) -> TurnState | None:
        """Wait for a turn asked to stop to be stored ended by the process running it."""
        lease = self.config.lease_s
        # That process learns at its next renewal (every lease/3); one that died never does,
        # and its lease, no longer renewed, runs out within a lease.
        deadline = time.monotonic() + lease * 1.25 + 1
        pause = min(max(lease / 30, 0.02), 0.25)
        while True:
            state = await self.store.turn_state(turn_id)
            if state is None:
                raise NotFound("the turn is gone: its session was deleted or reset meanwhile")
            if state is not TurnState.STREAMING:
                return state
            if time.monotonic() > deadline:
                # Its process is gone (its lease ran out): mark it as the sweep would.
                await self.store.expire_leases()
                state = await self.store.turn_state(turn_id)
                return None if state is TurnState.STREAMING else state
            await asyncio.sleep(pause)

    @contextmanager
    def _dooming(self, user_id: str, session_id: str, why: TurnDiscarded) -> Iterator[None]:
        # A turn finishing while its rows are being deleted must say why they are gone.
        found = self._live.get((user_id, session_id))
        if found is not None:
            found[0].doomed = why
        try:
            yield
        except BaseException:
            if found is not None:
                found[0].doomed = None
            raise

    def _forget(self, live: tuple[str, str], task: asyncio.Task[None]) -> None:
        # Only its own entry: a discarded turn may end after the next turn on its session began.
        if live in self._live and self._live[live][1] is task:
            del self._live[live]

    async def _discard(self, user_id: str, session_id: str, why: TurnDiscarded) -> None:
        # After the store's change, so that a turn beginning meanwhile is refused by its claim
        # rather than missed here. Other processes' turns learn it at their next lease renewal.
        found = self._live.get((user_id, session_id))
        if found is None:
            return
        run, task = found
        run.discard(why)
        # Its cleanup (charging what the model produced) is done when the caller hears back.
        await asyncio.wait({task})

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait for turns in flight to be stored; return whether all were."""
        if not self._running:
            return True
        _, pending = await asyncio.wait(set(self._running), timeout=timeout_s)
        return not pending

    async def aclose(self, grace_s: float = 30.0) -> None:
        """Let turns in flight finish for up to grace_s, then stop them (stored interrupted)."""
        if not await self.wait_idle(grace_s):
            for task in list(self._running):
                task.cancel()
            await self.wait_idle()
        await self.leases.aclose()

    async def complete(
        self, messages: Sequence[Message], options: CompletionOptions | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run one model call on the caller's messages; nothing is loaded or stored."""
        opts = options or CompletionOptions()
        if not messages:
            raise InputError("messages must not be empty")
        provider = self.providers.get(opts.provider)
        params = opts.params.over(self.config.defaults)
        check_max_tokens(params.max_tokens, self.config.max_tokens_ceiling)
        request = ChatRequest(
            model=self.model_for(provider, params.model),
            messages=tuple(messages),
            max_tokens=params.max_tokens or 1024,
            system=opts.system,
            temperature=params.temperature,
            stop=params.stop or (),
            tools=opts.tools,
        )
        call, tally = CallUsage(request), RetryTally()
        worked, started, ttft, state, error = False, time.monotonic(), None, "failed", None
        stop = StopReason.UNKNOWN
        # The reply's text, kept only for the logs (CHATD_LOG_CONTENT).
        said: list[str] | None = [] if self.config.log_content else None
        try:
            retries = stream_with_retries(provider, request, self.config.retry, tally=tally)
            async for event in retries:
                call.see(event)
                if ttft is None and isinstance(event, TextDelta):
                    ttft = (time.monotonic() - started) * 1000
                elif isinstance(event, StopEvent):
                    stop = event.reason
                if said is not None and isinstance(event, TextDelta):
                    said.append(event.text)
                yield event
            worked, state = True, STATE_FOR_STOP.get(stop, TurnState.COMPLETE).value
        except (GeneratorExit, asyncio.CancelledError):
            # The caller left while the upstream worked on the request: that is charged too.
            worked, state = True, "interrupted"
            raise
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            total = call.total(worked=worked)
            if self.observers:
                prices = self.config.prices
                cost = None if prices is None else prices.priced(request.model, total)
                report = CallReport(
                    kind="completion",
                    user_id=opts.user_id,
                    provider=provider.name,
                    model=request.model,
                    state=state,
                    usage=total,
                    cost_usd=None if cost is None else cost / MICRO,
                    latency_ms=(time.monotonic() - started) * 1000,
                    ttft_ms=ttft,
                    retries=tally.retries,
                    upstream_errors=tuple(tally.errors),
                    session_id=opts.session_id,
                    request_id=opts.request_id,
                    error=error,
                )
                if said is not None:
                    report = replace(report, prompt=_last_user_text(messages), reply="".join(said))
                tell(self.observers, report)
            if opts.usage_sink is not None and total != Usage():
                await opts.usage_sink(total, request.model)

    async def reply(
        self, session_id: str, text: str, options: TurnOptions | None = None
    ) -> TurnEnded:
        """Run one turn to the end and return how it ended."""
        async for event in self.turn(session_id, text, options):
            if isinstance(event, TurnEnded):
                return event
        raise ChatdError("the turn ended without a final event")  # unreachable by construction


def _last_user_text(messages: Sequence[Message]) -> str | None:
    """Return the text of the newest user message that has any."""
    return next((m.text for m in reversed(messages) if m.role is Role.USER and m.text), None)


def _discarded(how: str) -> TurnDiscarded:
    return TurnDiscarded(
        f"the session was {how} while the reply was streaming, so the reply was not kept"
    )


# How a stopped turn is stored: interrupted, or truncated as it was for a continuation.
STOPPED_STATES = (TurnState.INTERRUPTED, TurnState.TRUNCATED)


@dataclass(frozen=True, slots=True)
class TurnStopResult:
    """A turn stopped at a user's request, and the state its end was stored in."""

    session_id: str
    turn_id: str
    state: TurnState


class _Prepared(NamedTuple):
    """What a turn runs with, resolved from its session's settings."""

    provider: Provider
    base: ChatRequest
    policy: ContextPolicy


def _replay(record: TurnRecord) -> list[TurnEvent]:
    """Replay a stored turn as the events it produced: its text, then its end."""
    text = "".join(m.text for m in record.messages[1:] if m.role is Role.ASSISTANT)
    end = TurnEnded(
        record.id,
        record.state,
        record.stop_reason or StopReason.UNKNOWN,
        record.usage,
        text,
        cost_micro_usd=record.cost_micro_usd,
    )
    return [TextDelta(text), end] if text else [end]
