"""Hostile but well-formed input never gets a 5xx, and a refusal stores nothing (promise 4).

Bodies are drawn for every request model from its own fields: each value is either a fair one
or a hostile one (lone surrogates, control and escape sequences, integers of ±2**70, NaN and
infinities, dates at the ends of the calendar or without a timezone). They go to a real
server, as JSON with "\\ud800"-style escapes, which is how surrogates arrive.
"""

from __future__ import annotations

import base64
import json
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from inspect import isclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel

from chatd.api.openai.schemas import CompletionRequest
from chatd.api.routes.admin import KeyCreate
from chatd.api.schemas import ChatIn, MessageIn, SendIn, SessionCreate, SessionUpdate
from chatd.transfer import _Doc

S = st.SearchStrategy

hostile = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Lone surrogates, controls, terminal escapes (OSC 52 writes the clipboard), bidi overrides.
NASTY = [
    "\ud800",
    "\udfff",
    "a\udc80b",
    "\x00",
    "\x1b]52;c;aGVsbG8=\x07",
    "\x1b[2J\x1b[H",
    "\x1b]0;title\x07",
    "\u202e",
    "\r\n",
    "\ufeff",
]
HUGE_INTS = [2**31, 2**31 - 1, 2**63, 2**63 - 1, -(2**63) - 1, 2**64, 2**70, -(2**70)]
NOT_FINITE = [float("nan"), float("inf"), float("-inf"), 1e308]
# Each is a valid ISO date whose UTC moment falls outside year 1 to 9999, or has no zone.
EDGE_DATES = ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "2025-01-01T00:00:00"]


def texts() -> S[str]:
    """Return ordinary text and text salted with surrogates, controls and escapes."""
    nasty = st.sampled_from(NASTY)
    salted = st.tuples(st.text(max_size=8), nasty, st.text(max_size=8)).map("".join)
    surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
    return st.one_of(st.text(max_size=20), salted, surrogates, nasty)


def ints() -> S[int]:
    """Return small integers and integers past 32 and 64 bits."""
    return st.one_of(st.integers(-5, 5), st.sampled_from(HUGE_INTS), st.integers(-(2**70), 2**70))


def floats() -> S[float]:
    """Return ordinary floats, huge integers as numbers, NaN and the infinities."""
    return st.one_of(st.floats(-3, 3), st.sampled_from(NOT_FINITE), ints().map(float))


def dates() -> S[str]:
    """Return ISO dates at the calendar's ends, with offsets of a day, or naive."""
    offsets = st.one_of(
        st.none(),
        st.just(UTC),
        st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m))),
    )
    moments = st.one_of(
        st.datetimes(),
        st.sampled_from([datetime.min, datetime.max, datetime(2025, 1, 1)]),
    )
    made = st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), moments, offsets)
    return st.one_of(made, st.sampled_from(EDGE_DATES))


def json_values() -> S[Any]:
    """Return any JSON value, hostile leaves included."""
    leaves = st.one_of(st.none(), st.booleans(), ints(), floats(), texts(), dates())
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(texts(), inner, max_size=3)
        ),
        max_leaves=8,
    )


Overrides = dict[str, tuple[S[Any], S[Any]]]


def _parts(kind: Any) -> tuple[Any, tuple[Any, ...]]:
    origin, args = get_origin(kind), get_args(kind)
    if origin is Annotated:
        return _parts(args[0])
    return origin, args


def fair(kind: Any, overrides: Overrides) -> S[Any]:
    """Return ordinary values of a field's type (constraints aside: some are still refused)."""
    origin, args = _parts(kind)
    if origin in (Union, types.UnionType):
        return st.one_of([fair(a, overrides) for a in args])
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(fair(args[0], overrides), max_size=2)
    if origin is dict:
        return st.just({"type": "object"})
    if kind in (datetime, AwareDatetime):
        return st.just(datetime(2025, 1, 1, tzinfo=UTC).isoformat())
    if isclass(kind) and issubclass(kind, Enum):
        return st.sampled_from([m.value for m in kind])
    if isclass(kind) and issubclass(kind, BaseModel):
        return body_of(kind, overrides, spoil=False)
    plain: dict[Any, S[Any]] = {
        str: st.sampled_from(["hi", "what did I say?", "x"]),
        int: st.one_of(st.just(1), st.integers(1, 100)),
        float: st.floats(0.1, 2),
        bool: st.booleans(),
        type(None): st.none(),
    }
    return plain.get(kind, st.just("hi"))


def spoiled(kind: Any, overrides: Overrides) -> S[Any]:
    """Return hostile values of a field's type, or of another JSON kind."""
    origin, args = _parts(kind)
    if origin in (Union, types.UnionType):
        return st.one_of([spoiled(a, overrides) for a in args if a is not type(None)])
    if origin is list:
        one = spoiled(args[0], overrides)
        return st.builds(lambda a, x, b: [*a, x, *b], fair(kind, overrides), one, st.just([]))
    if kind in (datetime, AwareDatetime):
        return dates()
    if isclass(kind) and issubclass(kind, BaseModel):
        return body_of(kind, overrides, spoil=True)
    plain: dict[Any, S[Any]] = {str: texts(), int: ints(), float: floats()}
    return st.one_of(plain.get(kind, texts()), json_values())


@st.composite
def body_of(
    draw: st.DrawFn,
    model: type[BaseModel],
    overrides: Overrides | None = None,
    *,
    spoil: bool = True,
) -> dict[str, Any]:
    """Return a body of a request model: fair fields, one of them (or a stray key) hostile."""
    overrides = overrides or {}
    fields = model.model_fields
    target = draw(st.sampled_from([*fields, None])) if spoil else None
    body: dict[str, Any] = {}
    for name, field in fields.items():
        good, bad = overrides.get(name, (fair(field.annotation, overrides), None))
        if name == target:
            body[name] = draw(spoiled(field.annotation, overrides) if bad is None else bad)
        elif field.is_required() or draw(st.booleans()):
            body[name] = draw(good)
    if spoil and target is None:
        body[draw(texts())] = draw(json_values())
    return body


def encode(body: Any) -> bytes:
    """Encode as a client might: surrogates as \\u escapes, NaN and Infinity as literals."""
    return json.dumps(body, allow_nan=True).encode()


def header_values() -> S[bytes]:
    """Return header values, fair and not: any byte a client can send in one."""
    allowed = [*range(0x21, 0x7F), *range(0x80, 0x100), 0x20, 0x09]
    raw = st.lists(st.sampled_from(allowed), max_size=20).map(bytes).map(bytes.strip)
    return st.one_of(raw, st.sampled_from([b"key-1", b"support-42", "é".encode()]))


FRESH_IDS = st.uuids().map(lambda u: f"h-{u.hex[:12]}")


def session_ids() -> S[str]:
    """Return fresh session ids, mostly fair, and hostile text."""
    fair = st.uuids().map(lambda u: f"h-{u.hex[:12]}")
    bad = st.sampled_from(["x" * 129, "a b", "é", "..", "%00"])
    return st.one_of(fair, fair, bad, texts())


def cursors() -> S[str]:
    """Return session cursors: base64 of [date, id] with hostile parts, and garbage."""
    made = st.tuples(st.one_of(dates(), json_values()), st.one_of(texts(), json_values()))
    encoded = made.map(lambda c: base64.urlsafe_b64encode(encode(list(c))).decode().rstrip("="))
    return st.one_of(encoded, texts(), st.sampled_from(["999999999999", "-1", "1e400"]))


# The OpenAPI components that are request bodies (the others are answers).
REQUEST_SCHEMAS = {
    "ChatIn",
    "MessageIn",
    "SessionCreate",
    "SessionUpdate",
    "ContextSettings",
    "SendIn",
    "CompletionRequest",
    "ChatMessage",
    "ContentPart",
    "ToolCall",
    "FunctionCall",
    "ToolDef",
    "FunctionDef",
    "StreamOptions",
    "KeyCreate",
}
FAIR_MESSAGES = st.just(
    [
        {"role": "user", "parts": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "parts": [{"type": "text", "text": "hello"}]},
    ]
)
HOSTILE_MESSAGES = st.builds(
    lambda role, part: [{"role": role, "parts": [part]}],
    st.sampled_from(["user", "assistant"]) | texts(),
    st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, texts()),
        st.builds(
            lambda i, v: {"type": "tool_call", "id": "c1", "name": "calculate", "input": {i: v}},
            texts(),
            json_values(),
        ),
        st.builds(lambda c: {"type": "tool_result", "tool_call_id": "c1", "content": c}, texts()),
        json_values(),
    ),
)


@pytest.fixture(scope="module")
def keys(
    start_server: Any, make_key: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (URL, headers) of a server of this module's own, with auth on and an admin key."""
    db: Path = tmp_path_factory.mktemp("hostile") / "chatd.db"
    with start_server(db, auth="on") as server:
        key = make_key(server, "root", admin=True)
        yield server.url, {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def api(keys: tuple[str, dict[str, str]]) -> Iterator[httpx.Client]:
    """Yield a client of the module's server, authenticated as its admin."""
    url, headers = keys
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        yield client


def url_part(text: str) -> str:
    """Percent-encode text for a URL as a client must, a lone surrogate as its raw bytes."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def stored(api: httpx.Client, sid: str) -> Any:
    """Return what a refusal must not change: sessions, the session's turns, usage, keys."""
    return (
        api.get("/sessions").json(),
        api.get(f"/v1/sessions/{url_part(sid)}/messages?limit=200").json(),
        api.get("/v1/usage").json(),
        api.get("/v1/admin/keys").json(),
    )


def exchange(
    api: httpx.Client,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, bytes] | None = None,
    sid: str = "none",
) -> httpx.Response:
    """Send one request; assert it is no 5xx, and that a 4xx left everything as it was."""
    before = stored(api, sid)
    sent = {"content-type": b"application/json", **(headers or {})}
    content = None if body is None else encode(body)
    response = api.request(method, url, content=content, headers=sent)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert stored(api, sid) == before, response.text
    return response


def seeded(api: httpx.Client) -> str:
    """Return a session with a turn and settings, for edits and sends to land on."""
    sid = f"h-{uuid.uuid4().hex[:12]}"
    api.post("/v1/sessions", json={"id": sid, "system_prompt": "terse", "max_tokens": 100})
    api.post(f"/v1/sessions/{sid}/messages", json={"content": "first"})
    return sid


@hostile
@given(
    body=body_of(ChatIn, {"session_id": (FRESH_IDS, session_ids())}),
    route=st.sampled_from(["/chat", "/chat-stream"]),
)
@example(body={"message": "hi", "session_id": "\ud800"}, route="/chat")
@example(body={"message": "hi", "system_prompt": "\ud800"}, route="/chat-stream")
@example(body={"message": "hi", "session_id": float("nan")}, route="/chat")
def test_compat_chat_bodies_never_get_a_server_error(
    api: httpx.Client, body: dict[str, Any], route: str
) -> None:
    sid = body.get("session_id")
    exchange(api, "POST", route, body, sid=sid if isinstance(sid, str) else "none")


@hostile
@given(body=body_of(MessageIn), data=st.data())
def test_compat_session_message_bodies_never_get_a_server_error(
    api: httpx.Client, body: dict[str, Any], data: st.DataObject
) -> None:
    sid = data.draw(st.sampled_from([seeded(api), "h-fresh"]))
    exchange(api, "POST", f"/chat/{sid}", body, sid=sid)


@hostile
@given(body=body_of(SessionCreate, {"id": (FRESH_IDS, session_ids())}))
def test_session_creation_never_gets_a_server_error(
    api: httpx.Client, body: dict[str, Any]
) -> None:
    sid = body.get("id")
    exchange(api, "POST", "/v1/sessions", body, sid=sid if isinstance(sid, str) else "none")


@hostile
@given(body=body_of(SessionUpdate))
def test_session_updates_never_get_a_server_error(api: httpx.Client, body: dict[str, Any]) -> None:
    sid = seeded(api)
    exchange(api, "PATCH", f"/v1/sessions/{sid}", body, sid=sid)


@hostile
@given(body=body_of(SendIn), key=st.none() | header_values(), fresh=st.booleans())
def test_sends_never_get_a_server_error(
    api: httpx.Client, body: dict[str, Any], key: bytes | None, fresh: bool
) -> None:
    sid = f"h-{uuid.uuid4().hex[:12]}" if fresh else seeded(api)
    headers = {} if key is None else {"idempotency-key": key}
    exchange(api, "POST", f"/v1/sessions/{sid}/messages", body, headers, sid=sid)


@hostile
@given(
    body=body_of(CompletionRequest, {"model": (st.just("test-model"), texts())}),
    session=st.none() | header_values(),
    key=st.none() | header_values(),
)
@example(
    body={"model": "test-model", "messages": [{"role": "user", "content": "\ud800"}]},
    session=None,
    key=None,
)
@example(
    body={"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stop": "\udfff"},
    session=None,
    key=None,
)
@example(
    body={
        "model": "test-model",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"maximum": 2**70}}}
        ],
    },
    session=None,
    key=None,
)
def test_completions_never_get_a_server_error(
    api: httpx.Client, body: dict[str, Any], session: bytes | None, key: bytes | None
) -> None:
    headers = {} if session is None else {"x-chatd-session": session}
    if key is not None:
        headers["idempotency-key"] = key
    sid = session.decode("latin-1") if session else "none"
    exchange(api, "POST", "/v1/chat/completions", body, headers, sid=sid)


@hostile
@given(
    doc=body_of(
        _Doc,
        {
            "format": (st.just("chatd.session/1"), texts()),
            "session_id": (FRESH_IDS, session_ids()),
            "messages": (FAIR_MESSAGES, HOSTILE_MESSAGES),
        },
    )
)
@example(doc={"format": "chatd.session/1", "session_id": "h-edge", "system_prompt": "\ud800"})
@example(
    doc={
        "format": "chatd.session/1",
        "session_id": "h-edge",
        "turns": [
            {
                "state": "complete",
                "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
                "usage": {"input_tokens": 2**70},
            }
        ],
    }
)
@example(
    doc={
        "format": "chatd.session/1",
        "session_id": "h-edge",
        "turns": [
            {
                "state": "complete",
                "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
                "created_at": "2025-01-01T00:00:00",
            }
        ],
    }
)
@example(
    doc={
        "format": "chatd.session/1",
        "session_id": "h-edge",
        "turns": [
            {
                "state": "complete",
                "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
                "created_at": "9999-12-31T23:59:59-23:59",
            }
        ],
    }
)
@example(
    doc={"format": "chatd.session/1", "session_id": "h-edge", "params": {"context_limit": 2**63}}
)
def test_imports_never_get_a_server_error(api: httpx.Client, doc: dict[str, Any]) -> None:
    sid = doc.get("session_id")
    exchange(api, "POST", "/v1/sessions/import", doc, sid=sid if isinstance(sid, str) else "none")


@hostile
@given(cursor=cursors(), limit=st.none() | ints())
@example(
    cursor=base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+23:59", "x"]').decode(), limit=None
)
def test_paging_never_gets_a_server_error(
    api: httpx.Client, cursor: str, limit: int | None
) -> None:
    query = f"?cursor={url_part(cursor)}" + ("" if limit is None else f"&limit={limit}")
    assert api.get(f"/v1/sessions{query}").status_code < 500
    assert api.get(f"/v1/sessions/h-any/messages{query}").status_code < 500


@hostile
@given(body=body_of(KeyCreate))
@example(body={"user": "u", "rpm": 2**70})
@example(body={"user": "u", "expires_in_days": 1e300})
def test_key_creation_never_gets_a_server_error(api: httpx.Client, body: dict[str, Any]) -> None:
    exchange(api, "POST", "/v1/admin/keys", body)


def test_every_number_a_request_takes_has_a_declared_range(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()
    unbounded = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number"):
                low = "minimum" in node or "exclusiveMinimum" in node
                high = "maximum" in node or "exclusiveMaximum" in node
                if not (low and high):
                    unbounded.append(where)
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for n, value in enumerate(node):
                walk(value, f"{where}.{n}")

    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            walk(operation.get("parameters", []), f"{method} {path}")
    for name in REQUEST_SCHEMAS:
        walk(document["components"]["schemas"][name], name)
    assert unbounded == []
