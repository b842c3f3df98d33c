"""The provider protocol, the plugin shape, and upstream-status-to-error mapping."""

from __future__ import annotations

import email.utils
import json
import math
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from chatd.bounds import MAX_TURN_TOKENS
from chatd.errors import (
    ContextOverflow,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStreamError,
    UpstreamUnavailable,
    bounded_wait,
)
from chatd.types import ChatRequest, Message, Part, Role, StreamEvent, TextPart


class Provider(Protocol):
    """A model provider: one call in, normalized events out."""

    name: str
    default_model: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield text deltas and tool calls, then one UsageEvent and one StopEvent.

        Raises an UpstreamError subclass on failure; `retryable` is only set when
        no text or tool call was yielded yet.
        """
        ...

    async def aclose(self) -> None:
        """Close the provider's HTTP client."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that can count a request's input tokens exactly, as its model will be charged."""

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """Return the request's input tokens, or None when they cannot be counted."""
        ...


async def count_request_tokens(provider: object, request: ChatRequest) -> int | None:
    """Return the request's exact input tokens from its provider, or None if it cannot count."""
    # Optional, so providers written before it (and outside plugins) stay Providers.
    if not isinstance(provider, TokenCounter):
        return None
    return await provider.count_tokens(request)


SUMMARY_HEADING = "Summary of the earlier conversation:\n\n"


def joined_replies(messages: Sequence[Message]) -> list[Message]:
    """Return messages with each run of consecutive assistant messages joined into one.

    A reply continued after truncation is stored as several assistant messages in a row; a
    provider gets it as the one reply it is: their parts in order, adjacent text joined.
    """
    out: list[Message] = []
    for message in messages:
        if out and message.role is Role.ASSISTANT and out[-1].role is Role.ASSISTANT:
            parts: list[Part] = list(out[-1].parts)
            for part in message.parts:
                if isinstance(part, TextPart) and parts and isinstance(parts[-1], TextPart):
                    parts[-1] = TextPart(parts[-1].text + part.text)
                else:
                    parts.append(part)
            out[-1] = Message(Role.ASSISTANT, tuple(parts))
        else:
            out.append(message)
    return out


def summary_text(summary: str) -> str:
    """Return what the model is told in place of the turns folded into a summary."""
    return SUMMARY_HEADING + summary


@dataclass(frozen=True, slots=True)
class ProviderOptions:
    """What a provider is built from: resolved from settings and the environment."""

    name: str
    api_key: str | None
    base_url: str | None
    model: str | None
    timeout_s: float
    demo_delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class ProviderPlugin:
    """What a `chatd.providers` entry point exposes.

    `names` are the provider names it serves; `options(name, env, base_url, model)`
    resolves credentials (raising ProviderNotConfigured when they are missing) and
    `configured(name, env)` tells `auto` whether the user set this provider up.
    """

    names: tuple[str, ...]
    create: Callable[[ProviderOptions], Provider]
    resolve: Callable[[str, Mapping[str, str], str | None, str | None, float], ProviderOptions]
    configured: Callable[[str, Mapping[str, str]], bool]


def token_count(value: object) -> int:
    """Read a token count an upstream reported: a whole number within one turn's range, or 0."""
    # The upstream is not trusted: a string, a float, -5 or 2**70 must not reach storage.
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), MAX_TURN_TOKENS)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Read retry-after-ms or retry-after (seconds or an HTTP date) as bounded seconds.

    A value that is no number or date is ignored; any other is clamped to 0..MAX_RETRY_AFTER_S.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        ms = _number(raw_ms)
        if ms is not None:
            return bounded_wait(ms / 1000)
    raw = headers.get("retry-after")
    if not raw:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return bounded_wait(seconds)
    try:
        when = email.utils.parsedate_to_datetime(raw)
        return bounded_wait(when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, IndexError):
        # A date no calendar holds (year 99999, day 32) says nothing about when to retry.
        return None


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def error_for_status(
    provider: str,
    status: int,
    detail: str,
    headers: Mapping[str, str],
    *,
    quota_spent: bool = False,
    context_exceeded: bool = False,
) -> UpstreamError:
    """Turn an upstream HTTP error into chatd's typed error, deciding whether it is retryable.

    `context_exceeded` says the error's code already names a prompt too long for the model.
    """
    retry_after = parse_retry_after(headers)
    where = f"{provider} answered HTTP {status}"
    if status in (401, 403):
        # Providers echo (parts of) the key they refused; say nothing of it.
        return UpstreamAuthError(
            f"{where}: the API key was rejected; check the provider's key variable",
            upstream_status=status,
        )
    if status == 429:
        if quota_spent and retry_after is None:
            return UpstreamRateLimited(
                f"{where}: the account's quota is spent ({detail})",
                upstream_status=status,
                retryable=False,
            )
        return UpstreamRateLimited(
            f"{where}: rate limited ({detail})", upstream_status=status, retry_after=retry_after
        )
    if status == 408 or status == 529 or status >= 500:
        return UpstreamUnavailable(
            f"{where}: unavailable ({detail})", upstream_status=status, retry_after=retry_after
        )
    overflow = context_overflow(where, status, detail, known=context_exceeded)
    if overflow is not None:
        return overflow
    return UpstreamBadRequest(f"{where}: request rejected ({detail})", upstream_status=status)


# How providers word "the prompt does not fit", with the numbers they give: Anthropic, Anthropic
# counting max_tokens in, llama.cpp's server, and OpenAI's wording (vLLM, Groq and others copy
# it); the prompt's own size is then in one of _PROMPT_SIZE's phrasings, when it is given.
_OVERFLOW = (
    re.compile(r"prompt is too long: (?P<prompt>\d{1,15}) tokens > (?P<limit>\d{1,15}) maximum"),
    re.compile(
        r"input length and `max_tokens` exceed context limit: (?P<prompt>\d{1,15}) \+ \d+ > "
        r"(?P<limit>\d{1,15})"
    ),
    re.compile(
        r"request \((?P<prompt>\d{1,15}) tokens\) exceeds the available context size "
        r"\((?P<limit>\d{1,15}) tokens\)"
    ),
    re.compile(r"maximum context length is (?P<limit>\d{1,15}) tokens"),
)
_PROMPT_SIZE = (
    # vLLM: "you requested N tokens (X in the messages, Y in the completion)"; N is not the prompt.
    re.compile(r"\((?P<prompt>\d{1,15}) in the messages"),
    re.compile(r"your messages resulted in (?P<prompt>\d{1,15}) tokens"),
    re.compile(r"your request has (?P<prompt>\d{1,15}) input tokens"),
)


def context_overflow(
    where: str, status: int, detail: str, *, known: bool = False
) -> ContextOverflow | None:
    """Return a ContextOverflow if detail says the prompt exceeds the context window, else None."""
    match = next((m for pattern in _OVERFLOW if (m := pattern.search(detail))), None)
    if match is None and not known:
        return None
    found = match.groupdict() if match is not None else {}
    limit = _tokens(found.get("limit"))
    prompt = _tokens(found.get("prompt"))
    if prompt is None:
        size = next((m for pattern in _PROMPT_SIZE if (m := pattern.search(detail))), None)
        prompt = _tokens(size["prompt"]) if size is not None else None
    if prompt is not None and limit is not None and prompt > limit:
        said = f"the prompt is {prompt:,} tokens, more than the model's context window of {limit:,}"
    elif prompt is not None and limit is not None:
        # The prompt fits, but not with room for the reply's max_tokens.
        said = (
            f"the prompt ({prompt:,} tokens) and the reply's max_tokens do not fit the "
            f"model's context window of {limit:,}"
        )
    elif limit is not None:
        said = f"the prompt is longer than the model's context window of {limit:,} tokens"
    else:
        said = f"the prompt is longer than the model's context window ({detail})"
    return ContextOverflow(
        f"{where}: {said}", upstream_status=status, limit=limit, prompt_tokens=prompt
    )


def _tokens(digits: str | None) -> int | None:
    return None if digits is None else token_count(int(digits))


def redact(text: str, secret: str | None) -> str:
    """Remove a secret from text."""
    return text.replace(secret, "[redacted]") if secret else text


def after_output(error: UpstreamError, emitted: bool) -> UpstreamError:
    """Return the error to raise: once reply text went out, a stream error nobody retries."""
    if not emitted:
        return error
    return UpstreamStreamError(
        f"the reply broke off: {error.message}", upstream_status=error.upstream_status
    )


# How long a pooled upstream connection may sit idle before it is dropped. The SDKs keep one
# for 5 s, exactly as long as uvicorn (vLLM, LiteLLM), Node and llama.cpp's server keep theirs:
# a connection reused at that moment is closed under the request, which then fails.
KEEPALIVE_S = 4.0


def pool_limits(sdk_limits: Any) -> Any:
    """Return an SDK's connection limits with the idle expiry shortened to KEEPALIVE_S."""
    return type(sdk_limits)(
        max_connections=sdk_limits.max_connections,
        max_keepalive_connections=sdk_limits.max_keepalive_connections,
        keepalive_expiry=KEEPALIVE_S,
    )


def response_bytes(response: Any) -> AsyncIterator[bytes]:
    """Return an SDK response's body as it arrives, decoded only if it was compressed."""
    # The SDKs' aiohttp transport leaves decompression to httpx's decoders: a layer of work
    # on every chunk that an uncompressed stream (every provider's SSE) does not need.
    if "content-encoding" in response.headers:
        body: AsyncIterator[bytes] = response.aiter_bytes()
    else:
        body = response.aiter_raw()
    return body


def stream_json(provider: str, data: bytes) -> Any:
    """Parse one event's JSON data, or fail the stream with a plain message."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        shown = data[:200].decode("utf-8", "replace")
        raise UpstreamStreamError(f"{provider} sent an event that is not JSON: {shown!r}") from None


def is_transport_error(exc: BaseException) -> bool:
    """Tell whether exc comes from the SDKs' HTTP stack (they let some through mid-stream)."""
    return type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore")


def parse_tool_input(raw: str) -> dict[str, Any]:
    """Parse a tool call's JSON arguments; keep what does not parse so validation can say so."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_invalid_json": raw}
    return value if isinstance(value, dict) else {"_invalid_json": raw}


def connection_error(
    provider: str, exc: BaseException, endpoint: str | None = None
) -> UpstreamUnavailable:
    """Describe a failure to talk to the provider by its root cause, e.g. "connection refused"."""
    where = f"{provider} at {address}" if (address := _address(endpoint)) else provider
    connected, reason = diagnose(exc)
    if connected:
        return UpstreamUnavailable(f"lost the connection to {where}: {reason}")
    return UpstreamUnavailable(f"cannot reach {where}: {reason}")


def cause_chain(exc: BaseException) -> list[BaseException]:
    """Return exc and the exceptions that caused it, outermost first."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and all(link is not seen for seen in chain):
        chain.append(link)
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return chain


def diagnose(exc: BaseException) -> tuple[bool, str]:
    """Return whether a connection was made, and in a few plain words why it failed."""
    # The SDKs wrap the socket's error two or three times, and the wrappers mislead: the openai
    # SDK's aiohttp transport calls a refused connection "Request timed out.". The root says.
    import aiohttp

    chain = cause_chain(exc)
    for link in reversed(chain):
        if isinstance(link, ConnectionRefusedError):
            return False, "connection refused"
        if isinstance(link, socket.gaierror):
            return False, f"cannot resolve the host name ({link.strerror})"
        if isinstance(link, ssl.SSLCertVerificationError):
            return False, f"its TLS certificate is not trusted ({link.verify_message})"
        if isinstance(link, ssl.SSLError):
            return False, f"the TLS handshake failed ({link.reason or link})"
        if isinstance(link, TimeoutError):
            return False, "timed out"
        if isinstance(link, ConnectionResetError | BrokenPipeError):
            return True, "the connection was reset"
        if isinstance(link, aiohttp.ServerDisconnectedError):
            return True, "the server closed it without answering"
        if isinstance(link, aiohttp.ClientPayloadError):
            return True, "it closed before the reply was complete"
        if isinstance(link, OSError) and link.strerror:
            return False, link.strerror[:1].lower() + link.strerror[1:]
    root = chain[-1]
    return False, str(root) or type(root).__name__


def _address(endpoint: str | None) -> str | None:
    if not endpoint:
        return None
    url = urllib.parse.urlsplit(endpoint)
    try:
        port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    except ValueError:
        return None
    host = url.hostname
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host
