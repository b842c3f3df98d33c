"""TurnRun: one turn's model calls and tool rounds, run as a task of its own until stored."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from chatd.engine.config import EngineConfig
from chatd.engine.leases import LeaseKeeper, Lost
from chatd.engine.ports import TurnStore
from chatd.engine.summarize import summary_request, write_summary
from chatd.engine.view import TurnView
from chatd.errors import (
    ChatdError,
    ContextOverflow,
    NotFound,
    StoreUnavailable,
    ToolRoundsExceeded,
    TurnDiscarded,
    TurnStopped,
    TurnStoppedOnRequest,
    UpstreamError,
)
from chatd.prices import MICRO
from chatd.providers.base import Provider, count_request_tokens
from chatd.providers.retry import RetryTally, stream_with_retries
from chatd.tokens import CallUsage
from chatd.types import (
    DEFAULT_USER,
    CallReport,
    ChatRequest,
    ContextChanged,
    Message,
    Part,
    ReportSink,
    Role,
    StopEvent,
    StopReason,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    ToolResultEvent,
    ToolResultPart,
    TurnEnded,
    TurnEvent,
    TurnRecord,
    TurnState,
    Usage,
)

if TYPE_CHECKING:
    from chatd.tools import ToolRegistry

log = logging.getLogger("chatd.engine")

# What the run hands its consumer: events, then either TurnEnded or the error that ended it.
Outcome = TurnEvent | BaseException

# Why a turn whose session went away under it ends; in this process the route says which.
SESSION_GONE = (
    "the session was deleted or reset while the reply was streaming, so the reply was not kept"
)
LEASE_LOST = (
    "this turn's lease ran out (the database was unreachable for too long), "
    "so it was recorded as interrupted"
)
# Why a turn stopped by a user's request ends (its stored error, and what its reader is told).
STOPPED = "the reply was stopped on request"


# Wraps a turn's run, the coroutine its task runs (e.g. in a tracing span); None: run as is.
TurnWrapper = Callable[[Coroutine[Any, Any, None]], Coroutine[Any, Any, None]]


class UsageSink(Protocol):
    """Told a turn's (or a call's) total usage once it ends: how quotas are charged."""

    async def __call__(self, usage: Usage, model: str) -> None:
        """Record the usage the provider reported for this model."""
        ...


STATE_FOR_STOP = {
    StopReason.MAX_TOKENS: TurnState.TRUNCATED,
    StopReason.CONTEXT_WINDOW_EXCEEDED: TurnState.TRUNCATED,
    StopReason.REFUSAL: TurnState.REFUSED,
}


class Outbox:
    """Hand a turn's outcomes to the one reader of its events, in order.

    What asyncio.Queue does for this one producer and one consumer, in a deque and one
    future: a queue is four deques and an event (3 KiB), held by every open stream.
    """

    __slots__ = ("_ended", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Outcome] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def put(self, item: Outcome) -> None:
        """Add an outcome and wake the reader."""
        self._ended = self._ended or isinstance(item, TurnEnded | BaseException)
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def end_with(self, task: asyncio.Task[None]) -> None:
        """End the stream when the turn's task is done, if the task did not end it itself."""
        if self._ended:
            return
        if task.cancelled():
            self.put(TurnStopped("the reply was stopped before it finished"))
            return
        error = task.exception()
        log.error("turn task ended without an outcome", exc_info=error)
        self.put(ChatdError("internal error: the turn stopped unexpectedly"))

    async def get(self) -> Outcome:
        """Return the next outcome, waiting for it."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


@dataclass
class Progress:
    """What a turn has produced so far, so a failure can store the partial reply."""

    started: float = field(default_factory=time.monotonic)
    # The reply's messages (assistant messages, tool results): what finish_turn stores.
    messages: list[Message] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    calls: list[ToolCallPart] = field(default_factory=list)
    # The usage of the calls that ended; the one in flight is `call`, added when it ends.
    usage: Usage = field(default_factory=Usage)
    call: CallUsage | None = None
    stop: StopReason | None = None
    ttft: float | None = None
    # For the turn's report: upstream retries and errors, tool rounds run, view moves.
    tally: RetryTally = field(default_factory=RetryTally)
    tool_rounds: int = 0
    moves: int = 0
    summarized: bool = False
    # How the turn ended (a TurnState value), once it did, and the class of its error.
    ended: str | None = None
    error: str | None = None
    # What this run's calls cost in micro-dollars (None: no price), once its finish priced them.
    cost: int | None = None

    def end_call(self, *, worked: bool) -> None:
        """Add the usage of the call in flight: as reported, else estimated (see CallUsage)."""
        if self.call is not None:
            self.usage = self.usage + self.call.total(worked=worked)
            self.call = None

    def add_text(self, text: str) -> None:
        """Keep a streamed piece of text."""
        self.text.append(text)
        # One str per chunk costs ~55 bytes of overhead each; joined now and then, an open
        # stream's reply takes about what its characters do.
        if len(self.text) >= 64:
            self.text = ["".join(self.text)]

    def flush(self) -> Message | None:
        """Close the assistant message being streamed and keep it."""
        parts: list[Part] = [TextPart("".join(self.text))] if self.text else []
        parts.extend(self.calls)
        self.text, self.calls = [], []
        if not parts:
            return None
        message = Message(Role.ASSISTANT, tuple(parts))
        self.messages.append(message)
        return message

    def ms_since_start(self) -> float:
        """Return milliseconds since the turn started."""
        return (time.monotonic() - self.started) * 1000


@dataclass
class TurnRun:
    """Everything one in-flight turn needs; `run` drives it to a stored final state."""

    turn_id: str
    store: TurnStore
    provider: Provider
    tools: ToolRegistry
    config: EngineConfig
    base: ChatRequest
    view: TurnView
    leases: LeaseKeeper
    # What the model sees (through the policy): the history, this turn's message, its rounds.
    messages: list[Message] = field(default_factory=list)
    outbox: Outbox = field(default_factory=Outbox)
    progress: Progress = field(default_factory=Progress)
    lost_lease: bool = False
    # Set when the turn's session was deleted or reset under it: what its reader is told.
    discarded: TurnDiscarded | None = None
    # Set while its session is being deleted or reset: a finish that finds its row gone says so.
    doomed: TurnDiscarded | None = None
    # Set when a user asked to stop it (`stop`): it ends interrupted, with what it said so far.
    stopped: bool = False
    # Set once the run is past its rounds, storing how it ended: too late to stop it.
    ending: bool = False
    # The state its end was stored in, once it was (None: not stored, or not yet).
    stored_state: TurnState | None = None
    usage_sink: UsageSink | None = None
    # The truncated turn this run continues (its messages, usage, stop reason), if it does.
    continuing: TurnRecord | None = None
    # Told what the turn did once it ends (logs, metrics), with who asked.
    observers: Sequence[ReportSink] = ()
    user_id: str = DEFAULT_USER
    session_id: str | None = None
    request_id: str | None = None
    # What the task runs the turn in (ChatService.turn_wrapper: a tracing span), if anything.
    wrapper: TurnWrapper | None = None
    # The run starts before its turn is stored (the model call overlaps the store's write):
    # it keeps nothing, and runs no tool, until `committed` says the turn's row is stored.
    is_stored: bool = False
    _stored: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    _runner: asyncio.Task[None] | None = None
    # The turn's seq, known once it is stored.
    seq: int = 0

    def start(self) -> asyncio.Task[None]:
        """Start `run` as a task of its own, so a reader that goes away does not cancel it."""
        work = self.run() if self.wrapper is None else self.wrapper(self.run())
        self._runner = asyncio.create_task(work, name=f"turn-{self.turn_id}")
        return self._runner

    def committed(self, seq: int) -> None:
        """Note that the turn is stored: hold its lease, and let the run keep its outcome."""
        self.seq = seq
        runner = self._runner

        def lost(why: Lost) -> None:
            if why == "gone":
                self.discard(TurnDiscarded(SESSION_GONE))
                return
            if why == "stopped":
                # Asked in another process (or this one's store): stopped as if asked here.
                self.stop()
                return
            self.lost_lease = True
            if runner is not None:
                runner.cancel()

        self.leases.hold(self.turn_id, lost)
        self.is_stored = True
        self._stored.set_result(None)

    def discard(self, error: TurnDiscarded) -> None:
        """Stop the turn whose rows went with its session: the model call ends, nothing is kept."""
        if self.discarded is not None:
            return
        self.discarded = error
        # Told now, not by the run's cleanup: cancelled mid-finish, the run would post nothing.
        self.outbox.put(error)
        if self._runner is not None:
            self._runner.cancel()

    def stop(self) -> bool:
        """Stop the turn at a user's request: the model call ends, it is stored interrupted.

        What it said so far is kept and its usage charged; its reader gets TurnStoppedOnRequest.
        False when it is too late: the run is already storing its end (or was discarded).
        """
        if self.stopped:
            return True
        if self.ending or self.discarded is not None or self._runner is None:
            return False
        self.stopped = True
        self._runner.cancel()
        return True

    async def run(self) -> None:
        """Call the model (and tools) to the end, store the turn, then post TurnEnded.

        Cancelled before `committed` is called, it ends with nothing recorded: the turn never was.
        """
        try:
            try:
                async for event in self._rounds():
                    if not self.is_stored:
                        await self._stored
                    self.outbox.put(event)
                await self._stored
            finally:
                # Before the turn is stored: a renewal that misses it then is no lost lease.
                if self.is_stored:
                    self.leases.release(self.turn_id)
        except asyncio.CancelledError:
            self.ending = True
            if not self.is_stored:
                raise
            if self.discarded is not None:
                # Its rows are gone with the session: nothing to store, but the tokens were spent.
                self.progress.end_call(worked=True)
                await self._report_usage()
                raise
            ended: ChatdError
            if self.lost_lease:
                ended = StoreUnavailable(LEASE_LOST)
            elif self.stopped:
                ended = TurnStoppedOnRequest(STOPPED)
            else:
                ended = TurnStopped("the reply was stopped before it finished")
            self.progress.end_call(worked=True)
            await self._finish_quietly(TurnState.INTERRUPTED, ended.message)
            await self._report_usage()
            # Whoever still listens learns why the reply ends here.
            self.outbox.put(ended)
            raise
        except Exception as exc:
            self.ending = True
            if not self.is_stored:
                await self._stored
                self.leases.release(self.turn_id)
            self.progress.end_call(worked=False)
            self.progress.error = type(exc).__name__
            await self._finish_quietly(TurnState.FAILED, _describe(exc))
            await self._report_usage()
            self.outbox.put(exc)
            return
        self.ending = True
        stop = self.progress.stop or StopReason.UNKNOWN
        try:
            end = await self._finish(STATE_FOR_STOP.get(stop, TurnState.COMPLETE))
        except Exception as exc:
            if not isinstance(exc, ChatdError):
                await self._finish_quietly(TurnState.FAILED, _describe(exc))
            await self._report_usage()
            self.outbox.put(exc)
            return
        # Charged before the end goes out, so the caller's next request sees this usage.
        await self._report_usage()
        self.outbox.put(end)

    async def _report_usage(self) -> None:
        # Whatever the provider reported (or the estimate for a call whose report never came)
        # counts, however the turn ended; never fails the turn.
        self._report()
        if self.usage_sink is None:
            return
        try:
            await self.usage_sink(self.progress.usage, self.base.model)
        except Exception:
            log.exception("could not report the usage of turn %s", self.turn_id)

    def _report(self) -> None:
        """Tell the observers (logs, metrics) what the turn did."""
        if not self.observers:
            return
        progress, base = self.progress, self.base
        # Priced once: a turn that reached its finish was priced there.
        cost = (
            progress.cost if progress.ended else _micro_usd(self.config, base.model, progress.usage)
        )
        state = "discarded" if self.discarded is not None else progress.ended or "failed"
        report = CallReport(
            kind="turn" if self.continuing is None else "continuation",
            user_id=self.user_id,
            provider=self.provider.name,
            model=base.model,
            state=state,
            usage=progress.usage,
            cost_usd=None if cost is None else cost / MICRO,
            latency_ms=progress.ms_since_start(),
            ttft_ms=progress.ttft,
            retries=progress.tally.retries,
            upstream_errors=tuple(progress.tally.errors),
            session_id=self.session_id,
            turn_id=self.turn_id,
            context_moves=progress.moves,
            summarized=progress.summarized,
            tool_rounds=progress.tool_rounds,
            request_id=self.request_id,
            error=progress.error,
        )
        if self.config.log_content:
            report = replace(report, prompt=self._prompt(), reply=self._reply())
        tell(self.observers, report)

    def _prompt(self) -> str | None:
        """Return the user's message of this turn (a continuation has none)."""
        if self.continuing is not None:
            return None
        # The newest user message with text: tool results, sent as user messages, have none.
        return next(
            (m.text for m in reversed(self.messages) if m.role is Role.USER and m.text), None
        )

    def _reply(self) -> str:
        """Return the reply's text so far, stored or still streaming."""
        progress = self.progress
        said = "".join(m.text for m in progress.messages if m.role is Role.ASSISTANT)
        return said + "".join(progress.text)

    async def _rounds(self) -> AsyncIterator[TurnEvent]:
        cfg, base, progress, view = self.config, self.base, self.progress, self.view
        changed = await self._open_view()
        if changed is not None:
            yield changed
        round_no, overflowed = 0, False
        while True:
            request = replace(
                base, messages=tuple(self.messages[view.start :]), summary=view.summary
            )
            call = progress.call = CallUsage(request)
            try:
                retries = stream_with_retries(
                    self.provider, request, cfg.retry, tally=progress.tally
                )
                async for event in retries:
                    call.see(event)
                    if isinstance(event, TextDelta):
                        if progress.ttft is None:
                            progress.ttft = progress.ms_since_start()
                        progress.add_text(event.text)
                    elif isinstance(event, ToolCallEvent):
                        progress.calls.append(event.call)
                    elif isinstance(event, StopEvent):
                        progress.stop = event.reason
                        continue
                    yield event
            except ContextOverflow as exc:
                # Refused before any output (nothing to charge): cut the view and try once more.
                if overflowed or call.output_chars:
                    raise
                progress.call, overflowed = None, True
                changed = await self._shrink_view(exc, request)
                yield changed
                continue
            progress.end_call(worked=True)
            view.tally(self.provider.name, call)
            assistant = progress.flush()
            if assistant is None or not assistant.tool_calls:
                return
            self.messages.append(assistant)
            round_no += 1
            progress.tool_rounds = round_no
            if round_no > cfg.max_tool_rounds:
                raise ToolRoundsExceeded(
                    f"the model asked for more than {cfg.max_tool_rounds} rounds of tool calls"
                )
            results = await asyncio.gather(*(self._run_tool(c) for c in assistant.tool_calls))
            for result in results:
                yield ToolResultEvent(result)
            tool_message = Message(Role.USER, tuple(results))
            progress.messages.append(tool_message)
            self.messages.append(tool_message)

    async def _open_view(self) -> ContextChanged | None:
        """Move the view where the policy says, writing the summary that stands in first."""
        view, base = self.view, self.base
        plan = view.plan(self.provider.name, base, self.messages)
        if not plan.moved or (plan.for_window and await self._fits_counted()):
            return None
        summary, model = view.summary, None
        if plan.summarize:
            request = self._summary_request(plan.start)
            text = await self._summarize(request)
            if text:
                summary, model = text, request.model
        first = await self._first_turn(plan.start)
        self.progress.moves += 1
        self.progress.summarized = model is not None
        return view.move(plan.start, first, "limit", summary, model, len(self.messages))

    async def _fits_counted(self) -> bool:
        """Tell whether the provider's own count says the prompt fits after all (if it counts)."""
        # Only where configured, and only for a prompt an estimate put past the window: the
        # count is a call of its own, so most turns never make it.
        if not self.config.count_tokens:
            return False
        view, name = self.view, self.provider.name
        request = replace(
            self.base, messages=tuple(self.messages[view.start :]), summary=view.summary
        )
        budget = view.meter.budget(name, request.model, request.max_tokens)
        tokens = view.meter.counted(request)
        if tokens is None:
            try:
                tokens = await count_request_tokens(self.provider, request)
            except UpstreamError as exc:
                log.warning("could not count the prompt of turn %s: %s", self.turn_id, exc.message)
                return False
            if tokens is None:
                return False
            view.meter.remember_count(request, tokens)
        return budget is not None and tokens <= budget

    def _summary_request(self, start: int) -> ChatRequest:
        view, base, name = self.view, self.base, self.provider.name
        # What the last turn sent and its reply (this turn's message is last, not in it; a
        # continuation's last message is the reply being continued, in it).
        sent = self.messages[view.start :] if self.continuing else self.messages[view.start : -1]
        folded = self.messages[view.start : start]
        config = view.summaries
        if config.model in (None, base.model) and view.fits(name, base, sent):
            return summary_request(base, sent, view.summary, config, len(sent) - len(folded))
        # Another model (no cache to share), or too long for the window: the folded part alone.
        rest = folded[view.to_fold(name, base, folded) :]
        return summary_request(base, rest, view.summary, config)

    async def _summarize(self, request: ChatRequest) -> str:
        # Charged with the turn's usage; if it fails, the turns are dropped unsummarised.
        call = self.progress.call = CallUsage(request)
        try:
            text = await write_summary(
                self.provider, request, self.config.retry, call, self.progress.tally
            )
        except UpstreamError as exc:
            log.warning("could not summarise for turn %s: %s", self.turn_id, exc.message)
            self.progress.end_call(worked=False)
            return ""
        self.progress.end_call(worked=True)
        return text

    async def _shrink_view(self, exc: ContextOverflow, request: ChatRequest) -> ContextChanged:
        """Cut the view to what the provider's refusal says fits, or give up with its error."""
        view = self.view
        start = view.shrink(self.provider.name, self.base, self.messages, exc)
        if start is None:
            raise exc
        first = await self._first_turn(start)
        self.progress.moves += 1
        return view.move(start, first, "overflow", view.summary, None, len(self.messages))

    async def _first_turn(self, start: int) -> int:
        first = self.view.first_turn(start)
        if first is None:
            # Only this turn's messages are kept: its seq is known once it is stored.
            await self._stored
            first = self.seq
        return first

    async def _run_tool(self, call: ToolCallPart) -> ToolResultPart:
        # The model may name any registered tool; only those this turn offered may run.
        if call.name not in {spec.name for spec in self.base.tools}:
            return ToolResultPart(call.id, f"tool {call.name!r} was not offered", is_error=True)
        return await self.tools.run(call, self.config.tool_timeout_s)

    async def _finish(self, state: TurnState, error: str | None = None) -> TurnEnded:
        progress, earlier = self.progress, self.continuing
        progress.flush()
        progress.ended = state.value
        messages, stop, usage = progress.messages, progress.stop, progress.usage
        latency, ttft, tokens = progress.ms_since_start(), progress.ttft, self.view.tokens()
        cost = progress.cost = _micro_usd(self.config, self.base.model, usage)
        if earlier is not None:
            # The stored turn is the whole reply: its totals cover both parts.
            state, error, messages, stop = _continued(earlier, state, error, messages, stop)
            usage, latency = earlier.usage + usage, latency + (earlier.latency_ms or 0.0)
            ttft = earlier.ttft_ms if earlier.ttft_ms is not None else ttft
            # The prompt's growth since the first part is no user message of this turn's.
            tokens = replace(tokens, user=None)
            first = earlier.cost_micro_usd
            if first is None and earlier.model is not None:
                # Finished before costs were kept: priced now, at today's rates.
                first = _micro_usd(self.config, earlier.model, earlier.usage)
            cost = None if cost is None or first is None else cost + first
        try:
            await self.store.finish_turn(
                self.turn_id,
                state=state,
                messages=messages,
                stop_reason=stop,
                usage=usage,
                latency_ms=latency,
                ttft_ms=ttft,
                error=error,
                tokens=tokens,
                # A turn outside the context leaves the view as it was, summary and all.
                fold=self.view.fold if state.in_context else None,
                cost_micro_usd=cost,
            )
        except NotFound:
            if self.doomed is not None:
                # Its row went with its session: reported as discarded, so that the usage
                # records keep what it spent.
                self.discarded = self.doomed
                raise self.doomed from None
            raise StoreUnavailable(
                "the turn's lease ran out before its reply could be stored"
            ) from None
        self.stored_state = state
        reply = messages if earlier is None else (*earlier.messages, *messages)
        text = "".join(m.text for m in reply if m.role is Role.ASSISTANT)
        end = stop or StopReason.UNKNOWN
        return TurnEnded(self.turn_id, state, end, usage, text, cost_micro_usd=cost)

    async def _finish_quietly(self, state: TurnState, error: str) -> None:
        # The turn is already ending badly; a store failure here leaves it to the lease sweep.
        try:
            await self._finish(state, error)
        except ChatdError as exc:
            log.warning("could not store the end of turn %s: %s", self.turn_id, exc.message)
        except Exception:
            log.exception("could not store the end of turn %s", self.turn_id)


def _continued(
    earlier: TurnRecord,
    state: TurnState,
    error: str | None,
    messages: list[Message],
    stop: StopReason | None,
) -> tuple[TurnState, str | None, list[Message], StopReason | None]:
    """Return how a continuation is stored: one that failed or stopped leaves it truncated.

    Its first part must not leave the model's context with it: the turn stays truncated (and
    can be continued again), with what the continuation said that the context can hold, and
    the error noted. Any other end is stored as any turn's.
    """
    if state not in (TurnState.FAILED, TurnState.INTERRUPTED):
        return state, error, messages, stop
    how = "failed" if state is TurnState.FAILED else "was stopped"
    last = messages[-1] if messages else None
    if last is not None and last.role is Role.ASSISTANT and last.tool_calls:
        # Calls whose results never came would leave the context with a call unanswered.
        said = tuple(p for p in last.parts if not isinstance(p, ToolCallPart))
        messages = [*messages[:-1], *([Message(Role.ASSISTANT, said)] if said else [])]
    note = f"the continuation {how}: {error}" if error else f"the continuation {how}"
    return TurnState.TRUNCATED, note, messages, earlier.stop_reason or StopReason.MAX_TOKENS


def _micro_usd(config: EngineConfig, model: str, usage: Usage) -> int | None:
    """Return what usage of this model costs in micro-dollars; None when it has no price."""
    return None if config.prices is None else config.prices.priced(model, usage)


def tell(observers: Sequence[ReportSink], report: CallReport) -> None:
    """Hand a report to every observer; one that fails is logged, not passed on."""
    for observe in observers:
        try:
            observe(report)
        except Exception:
            log.exception("a report observer failed (%s %s)", report.kind, report.turn_id or "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ChatdError):
        return exc.message
    log.exception("turn failed unexpectedly", exc_info=exc)
    return f"internal error: {type(exc).__name__}"
