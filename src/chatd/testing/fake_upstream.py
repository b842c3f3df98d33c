"""A real HTTP server that speaks the Anthropic Messages and OpenAI Chat Completions wire formats.

Tests point the official SDKs at it over real sockets; benchmarks use it as a zero-latency model.

Start it in-process with ``with FakeUpstream() as fake:`` (or the ``fake_upstream`` pytest
fixture) or out of process with ``chatd fake-upstream --host H --port N`` (``--context-limit
M`` and ``--cache-min N`` set the defaults of ``context_limit`` and ``cache_min`` below).
``fake.url`` has no ``/v1``: give it as-is to ``anthropic.Anthropic(base_url=...)`` and as
``fake.url + "/v1"`` to ``openai.OpenAI(base_url=...)``.

Routes
    POST /v1/messages                Anthropic Messages (JSON or SSE with ``"stream": true``)
    POST /v1/messages/count_tokens   ``{"input_tokens": N}``: `count_tokens` of the body (all of
                                     the prompt, cached or not; no context limit)
    POST /v1/chat/completions        OpenAI Chat Completions (JSON or SSE ending ``data: [DONE]``)
    GET  /v1/models                  OpenAI model list; Anthropic's shape if ``anthropic-version``
                                     or ``x-api-key`` is sent
    GET / DELETE /_fake/requests     the recorded requests as JSON / forget them, the fail_times
                                     counters and the prompt cache (not recorded; ``run()`` keeps
                                     only the most recent 10,000 to 20,000)
    GET / POST /_fake/clock          the clock's offset / ``{"advance": S}`` moves the clock S
                                     seconds forward (not recorded), like ``fake.advance_clock(S)``

``fake.cut_short`` lists, in the order noticed, the streamed requests whose client went away
before the stream's end (noticed between paced deltas, so only with ``delay_ms``), each as
``(request body, text deltas sent)``: how a test sees that a model call was really called off.

Auth: Anthropic routes need a non-empty ``x-api-key`` or ``Authorization: Bearer <key>`` (the
anthropic 2.x SDK sends ``api_key`` as a Bearer token); OpenAI routes accept no Authorization
header at all (as local servers do) or ``Bearer <non-empty>``. The key ``bad-key`` always gets
401 on both, so "no retry on 401" can be tested.

Replies are deterministic functions of the request::

    Fake reply #<digest> to <N> messages. You said: "<last user text>".

``<digest>`` is 8 hex of sha256 over the body's sorted-key JSON without ``stream`` and
``stream_options`` (so streamed and non-streamed replies match, and different conversations
differ). ``<N>`` is len(messages) for Anthropic and the non-system/developer messages for OpenAI
("1 message" when singular). The quoted text is the text of the last user message that has text
(tool_result blocks are not text), with directives removed. When the last message carries a tool
result (Anthropic tool_result block, OpenAI "tool" messages) and no further call is due, the
reply says ``Tool said: "<result text>".`` instead and ends the turn.

A request ending in an assistant message is a prefill to continue (Anthropic's way of going on
with a reply cut at max_tokens); the reply is made as for any request. On /v1/messages, one
whose last text block ends in whitespace gets Anthropic's 400 invalid_request_error "messages:
final assistant content cannot end with trailing whitespace".

``max_tokens`` (Anthropic) / ``max_completion_tokens`` or ``max_tokens`` (OpenAI) below the
reply's word count truncates it to that many words with stop max_tokens / "length".
``stop_sequences`` / ``stop`` found in the reply cut it there with stop_sequence / "stop".
Output tokens = words of the text (+ ceil(len(tool name + arguments JSON) / 4) for a tool call).
Anthropic streams report input in message_start and output in message_delta. Stop mapping to
OpenAI: end_turn/stop_sequence -> stop, max_tokens -> length, refusal -> content_filter,
tool_use -> tool_calls.

Input tokens come from a deterministic tokenizer, `chatd.testing.fake_wire.count_tokens(body)`
(also in `chatd.testing.fake_tokens`, with `count_text` for one string), the same for both wire
formats, so tests can predict every number exactly:

- a token is a run of word characters (letters, digits, _) or one other non-space character:
  ``"Hello, world!"`` is 4 tokens;
- every string in ``tools``, ``system`` and ``messages`` is counted, at any depth (text, tool
  inputs and results, tool names, ids, descriptions, OpenAI ``arguments`` JSON, ``name``), except
  the values of the keys ``type``, ``role`` and ``cache_control``; keys, numbers, booleans and
  null count nothing;
- each message adds 3 (`fake_tokens.MESSAGE_OVERHEAD`), so an OpenAI system message costs 3 more
  than the same text as Anthropic's ``system``.

Context limit: a prompt of more than the limit's tokens is a 400 before any fault directive:
Anthropic ``invalid_request_error`` "prompt is too long: N tokens > M maximum"; OpenAI
``invalid_request_error``, param ``messages``, code ``context_length_exceeded``, "This model's
maximum context length is M tokens. However, your messages resulted in N tokens. Please reduce
the length of the messages." Only the prompt counts (not max_tokens). The limit is the
``context_limit`` directive, else ``FakeUpstream(context_limit=M)`` / ``fake.app.context_limit``
(settable at any time; None restores), else 200,000 for Anthropic and 128,000 for OpenAI
(`CONTEXT_LIMITS`), whatever the model.

Prompt caching, as the providers document it. The cache holds digests of prefixes, keyed by API
key (x-api-key, else the bearer token, else none) + model + the exact prefix, each with an expiry
on the fake's clock: monotonic time plus ``fake.advance_clock(seconds)`` (or ``POST
/_fake/clock``), so tests expire entries without sleeping. ``fake.clear()`` empties it. Only a
request that is served (no fault directive firing) reads or writes it. Directives ``usage_in``,
``cache_read`` and ``cache_write`` still replace the numbers reported, each on its own.

- Anthropic: only explicit breakpoints cache. ``cache_control: {"type": "ephemeral"}`` (optional
  ``"ttl": "5m"`` or ``"1h"``) may sit on a tool, a ``system`` block (a list of blocks) or a
  message content block; any other type or ttl is a 400, and more than 4 breakpoints in a request
  is a 400 "A maximum of 4 blocks with cache_control may be provided. Found N." The prompt is cut
  into blocks in the order tools, system, messages (a string ``system`` or message ``content``
  is one block; a message's 3 overhead tokens belong to its first block); a breakpoint's prefix
  is every block up to and including it. Reading: the longest live prefix among those ending at a
  breakpoint or at any of the 20 blocks before one (Anthropic's lookback) is
  ``cache_read_input_tokens``, and its entry's life restarts. Writing: each breakpoint prefix of
  at least the minimum (1024 tokens, `fake_cache.ANTHROPIC_CACHE_MIN`; the ``cache_min``
  directive or ``FakeUpstream(cache_min=N)`` for small tests) is stored or refreshed for its ttl
  (5 minutes by default), and ``cache_creation_input_tokens`` = the longest such prefix minus what
  was read (0 when that is all cached). ``input_tokens`` = the rest: the tokens after the last
  cached or written breakpoint. Shorter prefixes are not cached and raise no error. A request
  without any cache_control is never hashed and reports both cache numbers as 0.
- OpenAI: automatic for prompts of at least 1024 tokens (`fake_cache.OPENAI_CACHE_MIN`, or the
  same ``cache_min`` overrides). The prompt's tokens in order (tools, then each message as its 3
  overhead tokens, which carry the role, and its strings) are cut at 1024, 1152, ... (every 128,
  `OPENAI_CACHE_INCREMENT`, from the minimum); every such prefix is remembered for 5 minutes of
  inactivity (`OPENAI_CACHE_TTL`), and ``usage.prompt_tokens_details.cached_tokens`` is the longest
  one seen before (0, or the minimum plus a multiple of 128). ``prompt_tokens`` still counts them.
  Prompts under the minimum are never hashed.

Directives: ``[fake: key=value key=value]`` anywhere in the last user text (several blocks merge).
Unknown keys are ignored; a malformed value is a 400 invalid_request_error.

    chunks=N              stream the text as N deltas (default 4) split at word starts, or at
                          characters when N exceeds the word count; they rejoin exactly
    delay_ms=N            sleep N ms before each text delta; a non-streamed reply waits
                          deltas x N ms before answering
    words=N               append N filler words to the reply (long replies, truncation)
    status=CODE           fail with this status (400-599) in the provider's error shape
    retry_after=S         with status: send ``retry-after: S``, url-decoded and otherwise verbatim:
                          any printable ASCII, so nonsense (``inf``, ``nan``, ``-5``, 1e400, 20
                          digits) and HTTP-dates (``Wed,%2021%20Oct%202015%2007:28:00%20GMT``)
                          can be sent to test clients
    retry_after_ms=N      with status: send ``retry-after-ms: N``, url-decoded, verbatim as above
    quota=1               with status=429: quota spent (OpenAI insufficient_quota; Anthropic
                          details.error_code enforced_spend_limit_reached); no retry-after
    fail_times=N          only the first N attempts of this exact body (per path + sorted-key
                          JSON digest) fail; later ones succeed. Without it, every attempt fails.
                          Applies to status, stream_error_after and drop_after.
    stream_error_after=N  streamed: after N text deltas send an in-stream error (Anthropic
                          ``event: error`` overloaded_error; OpenAI ``data: {"error": ...}``)
                          and end the stream. Non-streamed: 500.
    drop_after=N          streamed: after N text deltas close the connection with no
                          terminator (the client sees an incomplete chunked body).
                          Non-streamed: close without any response.
    stop=REASON           force end_turn|max_tokens|refusal|stop_sequence (full text, no tool
                          call, no truncation or stop-sequence cutting)
    tool=NAME             reply with short text then a call to NAME, stop tool_use/tool_calls
    tool_input=JSON       the call's input, url-encoded JSON object (default {})
    tool_rounds=N         keep calling while fewer than N tool results follow the human turn
                          (default 1, so a tool loop ends after one round)
    usage_in=N usage_out=N cache_read=N cache_write=N
                          report these usage numbers verbatim (OpenAI: cache_read is
                          prompt_tokens_details.cached_tokens; cache_write is not reported)
    no_usage=1            OpenAI stream: never send the usage chunk, even if asked
    unknown_event=1       streamed only, for testing that clients tolerate wire additions:
                          Anthropic gets ``event: content_block_annotation`` with data
                          ``{"type":"content_block_annotation","index":0,"note":"future"}`` and
                          an extra ``ping`` after the first text delta (at the end of the head if
                          there is no text); every OpenAI chunk gets ``"x_future": {"a": 1}``
    reject_stream_options=1
                          OpenAI: a body with a ``stream_options`` key (even null) gets 400
                          invalid_request_error "Unrecognized request argument supplied:
                          stream_options" (param stream_options), as older OpenAI-compatible
                          servers answer, before any fault directive; a body without it is
                          served normally (so a stream has no usage chunk)
    cache_min=N           this request's minimum cacheable prefix, both providers (default 1024)
    context_limit=N       this request's context limit in tokens (see Context limit)
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import orjson
import uvicorn

from chatd.testing import fake_wire as wire
from chatd.testing.fake_anthropic import (
    anthropic_conversation,
    anthropic_error,
    anthropic_message,
    anthropic_model,
    anthropic_models,
    anthropic_reply,
    anthropic_stream,
)
from chatd.testing.fake_cache import (
    ANTHROPIC_CACHE_MIN,
    OPENAI_CACHE_MIN,
    CacheSplit,
    PromptCache,
    Segment,
    anthropic_segments,
    has_breakpoints,
)
from chatd.testing.fake_directives import Directives, WireError
from chatd.testing.fake_openai import (
    openai_completion,
    openai_conversation,
    openai_error,
    openai_models,
    openai_reply,
    openai_stream,
)
from chatd.testing.fake_tokens import count_tokens
from chatd.testing.fake_wire import Provider, StreamPlan

__all__ = ["CONTEXT_LIMITS", "FakeApp", "FakeUpstream", "RecordedRequest", "create_app", "run"]

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_MALFORMED = object()
_JSON = (b"content-type", b"application/json")
_SSE: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_BAD_KEY = "bad-key"
# A standalone server may serve a benchmark's millions of requests; keep only recent ones.
_RUN_MAX_RECORDED = 10_000
CONTEXT_LIMITS: dict[Provider, int] = {"anthropic": 200_000, "openai": 128_000}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received.

    ``usage`` stays empty until a model call is served, and is filled before the response's
    first byte leaves, so a client that has its answer reads it here: the numbers the reply
    reported, as ``input_tokens`` (as the wire reports it: Anthropic's excludes cache reads and
    writes, OpenAI's ``prompt_tokens`` includes cache reads), ``output_tokens``, ``cache_read``
    and ``cache_write`` (never reported on the OpenAI wire).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    time: float
    usage: dict[str, int] = field(default_factory=dict)


class FakeApp:
    """The ASGI app; holds the recorded requests, fail_times counters and the prompt cache."""

    def __init__(
        self,
        recorder: list[RecordedRequest] | None = None,
        *,
        max_recorded: int | None = None,
        context_limit: int | None = None,
        cache_min: int | None = None,
    ) -> None:
        self.requests: list[RecordedRequest] = recorder if recorder is not None else []
        self._max_recorded = max_recorded
        self._attempts: dict[bytes, int] = {}
        # Streams whose client left before their end: (request body, text deltas sent).
        self.cut_short: list[tuple[Any, int]] = []
        # Settable at any time; None means the provider's default.
        self.context_limit = context_limit
        self.cache_min = cache_min
        self.cache = PromptCache()
        self._clock_offset = 0.0

    def now(self) -> float:
        """Return the fake's clock: monotonic time plus every advance_clock so far."""
        return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock forward, so cache entries expire without waiting."""
        self._clock_offset += seconds

    def clear(self) -> None:
        """Forget recorded requests, fail_times counters and cached prompts."""
        self.requests.clear()
        self._attempts.clear()
        self.cut_short.clear()
        self.cache.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI request."""
        if scope["type"] != "http":
            return
        arrived = time.monotonic()
        method: str = scope["method"]
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        raw = await _read_body(receive)
        if path == "/_fake/requests":
            await self._control(method, send)
            return
        body = _parse_json(raw)
        if path == "/_fake/clock":
            await self._clock(method, body, send)
            return
        recorded = None if body is _MALFORMED else body
        record = RecordedRequest(method, path, headers, recorded, arrived)
        self.requests.append(record)
        if self._max_recorded is not None and len(self.requests) > 2 * self._max_recorded:
            # Trimming in halves keeps a long benchmark's memory bounded at amortised O(1).
            del self.requests[: -self._max_recorded]

        provider = _provider_for(path, headers)
        route = (method, path)
        if route not in _ROUTES:
            known = any(p == path for _, p in _ROUTES)
            status = 405 if known else 404
            await _error(send, provider, status, f"{method} {path} is not served here")
            return
        denied = _auth_error(provider, headers)
        if denied:
            await _error(send, provider, 401, denied)
            return
        if method == "POST" and not isinstance(body, dict):
            await _error(send, provider, 400, "The request body is not a valid JSON object.")
            return
        try:
            await _ROUTES[route](self, body, send, provider, _api_key(headers), record)
        except WireError as err:
            await _error(send, provider, 400, err.message, param=err.param, code=err.code)

    async def _control(self, method: str, send: Send) -> None:
        if method == "GET":
            await _send_json(send, 200, [asdict(r) for r in self.requests])
        elif method == "DELETE":
            count = len(self.requests)
            self.clear()
            await _send_json(send, 200, {"cleared": count})
        else:
            await _send_json(send, 405, {"error": "use GET or DELETE"})

    async def _clock(self, method: str, body: Any, send: Send) -> None:
        if method == "POST":
            advance = body.get("advance") if isinstance(body, dict) else None
            if not isinstance(advance, int | float) or isinstance(advance, bool) or advance < 0:
                await _send_json(send, 400, {"error": 'send {"advance": <seconds >= 0>}'})
                return
            self.advance_clock(float(advance))
        elif method != "GET":
            await _send_json(send, 405, {"error": "use GET or POST"})
            return
        await _send_json(send, 200, {"offset": self._clock_offset})

    def _measure(
        self, provider: Provider, body: dict[str, Any], d: Directives
    ) -> tuple[int, list[Segment] | None]:
        """Count the prompt (cut into segments if it has breakpoints); enforce the context limit."""
        segments = None
        if provider == "anthropic" and has_breakpoints(body):
            segments = anthropic_segments(body)
            total = sum(segment.tokens for segment in segments)
        else:
            total = count_tokens(body)
        limit = d.context_limit or self.context_limit or CONTEXT_LIMITS[provider]
        if total > limit:
            raise _too_long(provider, total, limit)
        return total, segments

    def _split(
        self,
        provider: Provider,
        measured: tuple[int, list[Segment] | None],
        body: dict[str, Any],
        scope: str,
        d: Directives,
    ) -> CacheSplit:
        """Split a served prompt's tokens by the prompt cache, reading and writing it."""
        total, segments = measured
        minimum = d.cache_min or self.cache_min
        if segments is not None:
            return self.cache.anthropic(
                scope.encode(), segments, self.now(), minimum or ANTHROPIC_CACHE_MIN
            )
        if provider == "openai":
            cached = self.cache.openai(
                scope.encode(), body, total, self.now(), minimum or OPENAI_CACHE_MIN
            )
            return CacheSplit(total, cached)
        return CacheSplit(total)

    def _failing(self, path: str, body: dict[str, Any], directives: Directives) -> bool:
        if not directives.has_fault:
            return False
        if directives.fail_times is None:
            return True
        key = path.encode() + b"\0" + wire.canonical_json(body)
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        return attempt < directives.fail_times

    async def _complete(
        self, body: Any, send: Send, provider: Provider, key: str, record: RecordedRequest
    ) -> None:
        if provider == "anthropic":
            model = anthropic_model(body)
            conv = anthropic_conversation(body)
            path = "/v1/messages"
        else:
            model = wire.require_model(body)
            conv = openai_conversation(body)
            path = "/v1/chat/completions"
        d = conv.directives
        if d.reject_stream_options and provider == "openai" and "stream_options" in body:
            raise WireError(
                "Unrecognized request argument supplied: stream_options", param="stream_options"
            )
        measured = self._measure(provider, body, d)
        if not self._failing(path, body, d):
            d = d.without_faults()
        stream = body.get("stream") is True
        if d.status is not None:
            await _fault_status(send, provider, d)
            return
        if not stream and d.drop_after is not None:
            await _drop_connection(send)
            return
        if not stream and d.stream_error_after is not None:
            await _error(send, provider, 500, "Internal server error (fake stream_error_after).")
            return

        # Only a served request reads or writes the cache; failed ones are never cached upstream.
        prompt = self._split(provider, measured, body, f"{provider}\0{key}\0{model}", d)
        reply = (anthropic_reply if provider == "anthropic" else openai_reply)(body, conv, prompt)
        record.usage.update(
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            cache_read=reply.cache_read,
            cache_write=reply.cache_write if provider == "anthropic" else 0,
        )
        if stream:
            if provider == "anthropic":
                plan = anthropic_stream(model, reply, unknown_event=d.unknown_event)
            else:
                options = body.get("stream_options")
                asked = isinstance(options, dict) and options.get("include_usage") is True
                plan = openai_stream(
                    model,
                    reply,
                    include_usage=asked and not d.no_usage,
                    unknown_event=d.unknown_event,
                )
            sent = await _write_stream(send, provider, plan, d)
            if sent is not None:
                self.cut_short.append((body, sent))
            return
        if d.delay_ms:
            await asyncio.sleep(len(reply.pieces) * d.delay_ms / 1000)
        if provider == "anthropic":
            await _send_json(send, 200, anthropic_message(model, reply), _request_id(provider))
        else:
            await _send_json(send, 200, openai_completion(model, reply), _request_id(provider))

    async def _count_tokens(
        self, body: Any, send: Send, provider: Provider, key: str, record: RecordedRequest
    ) -> None:
        conv = anthropic_conversation(body)
        usage_in = conv.directives.usage_in
        if has_breakpoints(body):
            anthropic_segments(body)  # the same 400s as /v1/messages for bad cache_control
        tokens = usage_in if usage_in is not None else count_tokens(body)
        await _send_json(send, 200, {"input_tokens": tokens}, _request_id(provider))

    async def _models(
        self, body: Any, send: Send, provider: Provider, key: str, record: RecordedRequest
    ) -> None:
        models = anthropic_models() if provider == "anthropic" else openai_models()
        await _send_json(send, 200, models, _request_id(provider))


Handler = Callable[[FakeApp, Any, Send, Provider, str, RecordedRequest], Awaitable[None]]
_ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/messages"): FakeApp._complete,
    ("POST", "/v1/messages/count_tokens"): FakeApp._count_tokens,
    ("POST", "/v1/chat/completions"): FakeApp._complete,
    ("GET", "/v1/models"): FakeApp._models,
}


def create_app(
    recorder: list[RecordedRequest] | None = None,
    *,
    max_recorded: int | None = None,
    context_limit: int | None = None,
    cache_min: int | None = None,
) -> FakeApp:
    """Build the fake's ASGI app, appending every request to recorder (or its own list)."""
    return FakeApp(
        recorder, max_recorded=max_recorded, context_limit=context_limit, cache_min=cache_min
    )


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _MALFORMED


def _provider_for(path: str, headers: dict[str, str]) -> Provider:
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/chat/"):
        return "openai"
    return "anthropic" if "anthropic-version" in headers or "x-api-key" in headers else "openai"


def _auth_error(provider: Provider, headers: dict[str, str]) -> str | None:
    authorization = headers.get("authorization")
    token = None
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Malformed Authorization header: expected 'Bearer <key>'."
    if provider == "anthropic":
        # SDK 2.x sends api_key as a Bearer token; older clients and curl send x-api-key.
        token = headers.get("x-api-key") or token
        if not token:
            return "x-api-key header is required"
        return "invalid x-api-key" if token == _BAD_KEY else None
    return f"Incorrect API key provided: {token}." if token == _BAD_KEY else None


def _api_key(headers: dict[str, str]) -> str:
    """Return the caller's key (x-api-key, else the bearer token, else empty): the cache's owner."""
    _, _, token = headers.get("authorization", "").partition(" ")
    return headers.get("x-api-key") or token.strip()


def _too_long(provider: Provider, total: int, limit: int) -> WireError:
    if provider == "anthropic":
        return WireError(f"prompt is too long: {total} tokens > {limit} maximum")
    return WireError(
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {total} tokens. Please reduce the length of the messages.",
        param="messages",
        code="context_length_exceeded",
    )


def _request_id(provider: Provider) -> Headers:
    name = b"request-id" if provider == "anthropic" else b"x-request-id"
    return [(name, b"req_" + secrets.token_hex(12).encode())]


async def _send_json(
    send: Send, status: int, payload: Any, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    data = orjson.dumps(payload)
    headers = [_JSON, (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _error(
    send: Send,
    provider: Provider,
    status: int,
    message: str,
    *,
    quota: bool = False,
    param: str | None = None,
    code: str | None = None,
    extra: Headers | None = None,
) -> None:
    if provider == "anthropic":
        payload = anthropic_error(status, message, quota=quota)
    else:
        payload = openai_error(status, message, quota=quota, param=param, code=code)
    await _send_json(send, status, payload, [*_request_id(provider), *(extra or [])])


async def _fault_status(send: Send, provider: Provider, d: Directives) -> None:
    assert d.status is not None
    quota = d.quota and d.status == 429
    extra: Headers = []
    if not quota and d.retry_after is not None:
        extra.append((b"retry-after", d.retry_after.encode()))
    if not quota and d.retry_after_ms is not None:
        extra.append((b"retry-after-ms", d.retry_after_ms.encode()))
    message = f"Fake upstream error {d.status} (status directive)."
    await _error(send, provider, d.status, message, quota=quota, extra=extra)


async def _write_stream(
    send: Send, provider: Provider, plan: StreamPlan, d: Directives
) -> int | None:
    """Send a stream; return how many text deltas went out if the client left before its end."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [*_SSE, *_request_id(provider)]}
    )
    cut, fault = len(plan.deltas), None
    if d.drop_after is not None and (
        d.stream_error_after is None or d.drop_after <= d.stream_error_after
    ):
        cut, fault = min(cut, d.drop_after), "drop"
    elif d.stream_error_after is not None:
        cut, fault = min(cut, d.stream_error_after), "error"
    delay = d.delay_ms / 1000
    # Without delays the whole stream goes out in one write: that is what keeps benchmarks cheap.
    pending = [plan.head]
    for sent, frame in enumerate(plan.deltas[:cut]):
        if delay:
            await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
            pending.clear()
            if _disconnected(send):
                return sent
            await asyncio.sleep(delay)
        pending.append(frame)
    if fault == "drop":
        await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
        await _drop_connection(send)
        return None
    pending.append(plan.error if fault == "error" else plan.tail)
    await send({"type": "http.response.body", "body": b"".join(pending), "more_body": False})
    return None


class _DropConnection(Exception):
    """Raised to make the server close the connection when its transport is not reachable."""


# ASGI has no "abort" and no cheap disconnect probe; uvicorn's send is a bound method of its
# request cycle, which holds the transport and a `disconnected` flag, so the fake reads those.


def _disconnected(send: Send) -> bool:
    return bool(getattr(getattr(send, "__self__", None), "disconnected", False))


async def _drop_connection(send: Send) -> None:
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise _DropConnection
    # Closing the transport directly avoids the 500 uvicorn sends for an unanswered request.
    transport.close()
    # Returning before uvicorn notices the close would make it log "returned without response".
    for _ in range(500):
        if _disconnected(send):
            return
        await asyncio.sleep(0.002)


def _uvicorn_config(app: FakeApp, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        **kwargs,
    )


class FakeUpstream:
    """In-process handle: runs the server in a background thread with its own event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        context_limit: int | None = None,
        cache_min: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.app = create_app(self.requests, context_limit=context_limit, cache_min=cache_min)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Return the base URL, without a trailing slash or /v1."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> FakeUpstream:
        """Bind (port 0 picks a free one) and return once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("FakeUpstream is already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        # log_config=None leaves the host process's logging configuration alone.
        server = uvicorn.Server(
            _uvicorn_config(self.app, log_config=None, timeout_graceful_shutdown=1)
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-upstream", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("fake upstream failed to start")
            time.sleep(0.002)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)

    @property
    def cut_short(self) -> list[tuple[Any, int]]:
        """Return the streams whose client left before their end: (request body, deltas sent)."""
        return self.app.cut_short

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock forward, so cache entries expire without waiting."""
        self.app.advance_clock(seconds)

    def clear(self) -> None:
        """Forget recorded requests, fail_times counters and cached prompts."""
        self.app.clear()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run(
    host: str, port: int, *, context_limit: int | None = None, cache_min: int | None = None
) -> None:
    """Serve the fake upstream on host:port until interrupted."""
    app = create_app(
        max_recorded=_RUN_MAX_RECORDED, context_limit=context_limit, cache_min=cache_min
    )
    uvicorn.Server(_uvicorn_config(app, host=host, port=port)).run()
