"""CHATD_OTEL: the span tree of a request, its turn, the provider calls and the SQL, exported
through the SDK's in-memory exporter; nothing at all with tracing off; a clear error without
the extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chatd.errors import ConfigError
from chatd.tracing import require

EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture(scope="module", autouse=True)
def _tracer_provider() -> None:
    """Give the test process one SDK tracer provider (it can be set only once)."""
    if trace.get_tracer_provider() is not _PROVIDER:
        trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def wait_for(
    exporter: InMemorySpanExporter, found: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """Return the finished spans once `found` says they are all there (a request's ends last)."""
    deadline = time.monotonic() + 5
    while True:
        finished = list(exporter.get_finished_spans())
        if found(finished) or time.monotonic() > deadline:
            return finished
        time.sleep(0.01)


def request_span(finished: list[ReadableSpan], request_id: str) -> ReadableSpan | None:
    """Return the server span of the request with this id, once it ended."""
    for span in finished:
        if (
            span.kind is trace.SpanKind.SERVER
            and (span.attributes or {}).get("chatd.request_id") == request_id
        ):
            return span
    return None


def children(finished: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """Return the spans whose parent is this one."""
    assert parent.context is not None
    return [
        s for s in finished if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def traced_until(
    exporter: InMemorySpanExporter, request_id: str, *, turn: bool = False
) -> tuple[list[ReadableSpan], ReadableSpan]:
    """Wait for the request's span (and a turn's), and return them all with the request's."""

    def done(finished: list[ReadableSpan]) -> bool:
        ended = request_span(finished, request_id) is not None
        return ended and (not turn or any(s.name == "chatd.turn" for s in finished))

    finished = wait_for(exporter, done)
    found = request_span(finished, request_id)
    assert found is not None, [s.name for s in finished]
    return finished, found


@pytest.fixture
def traced(make_server: Any) -> Iterator[httpx.Client]:
    server = make_server(otel=True)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_a_turn_is_a_tree_of_request_turn_calls_and_sql(
    traced: httpx.Client, spans: InMemorySpanExporter, sid: str
) -> None:
    r = traced.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": "a secret message"},
        headers={"X-Request-ID": "span-1"},
    )
    assert r.status_code == 200
    finished, root = traced_until(spans, "span-1", turn=True)
    assert root.name == "POST /v1/sessions/{session_id}/messages"
    attributes = root.attributes or {}
    assert attributes["http.route"] == "/v1/sessions/{session_id}/messages"
    assert attributes["http.response.status_code"] == 200
    assert attributes["enduser.id"] == "local"
    under_request = children(finished, root)
    [turn] = [s for s in under_request if s.name == "chatd.turn"]
    # The turn's read and its commit run in the request; the rest in the turn's own task.
    assert any(s.kind is trace.SpanKind.CLIENT and s.name == "SELECT" for s in under_request)
    turn_attributes = turn.attributes or {}
    usage = r.json()["usage"]
    assert turn_attributes["chatd.turn_id"] == r.json()["turn_id"]
    assert turn_attributes["chatd.session_id"] == sid
    assert turn_attributes["chatd.state"] == "complete"
    assert turn_attributes["chatd.request_id"] == "span-1"
    assert turn_attributes["gen_ai.usage.input_tokens"] == usage["input_tokens"]
    under_turn = children(finished, turn)
    [call] = [s for s in under_turn if s.name == "chat test-model"]
    call_attributes = call.attributes or {}
    assert call.kind is trace.SpanKind.CLIENT
    assert call_attributes["gen_ai.provider.name"] == "anthropic"
    assert call_attributes["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    # The turn's end is stored from its task: its statements hang off the turn.
    assert any(s.name == "UPDATE" for s in under_turn)
    assert {s.context.trace_id for s in finished if s.context} == {root.context.trace_id}  # type: ignore[union-attr]
    for span in finished:
        text = repr(span.attributes) + repr(span.events)
        assert "a secret message" not in text


def test_each_attempt_is_a_span_and_a_failure_is_marked(
    make_server: Any, spans: InMemorySpanExporter, sid: str
) -> None:
    server = make_server(otel=True, retry_max_attempts=2, retry_base_delay_s=0.01)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(
            f"/v1/sessions/{sid}/messages",
            json={"content": "x [fake: status=529 fail_times=1]"},
            headers={"X-Request-ID": "span-2"},
        )
    assert r.status_code == 200
    finished, root = traced_until(spans, "span-2", turn=True)
    [turn] = [s for s in children(finished, root) if s.name == "chatd.turn"]
    calls = [s for s in children(finished, turn) if s.name.startswith("chat ")]
    assert [c.status.status_code for c in calls] == [trace.StatusCode.ERROR, trace.StatusCode.UNSET]
    assert (turn.attributes or {})["chatd.retries"] == 1


def test_the_callers_trace_is_continued(traced: httpx.Client, spans: InMemorySpanExporter) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = traced.get(
        "/healthz",
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "X-Request-ID": "span-3"},
    )
    assert r.status_code == 200
    _, root = traced_until(spans, "span-3")
    assert root.context is not None
    assert f"{root.context.trace_id:032x}" == trace_id
    assert root.name == "GET /healthz"


def test_a_completion_has_its_call_under_the_request(
    traced: httpx.Client, spans: InMemorySpanExporter
) -> None:
    r = traced.post(
        "/v1/chat/completions",
        json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Request-ID": "span-4"},
    )
    assert r.status_code == 200
    finished, root = traced_until(spans, "span-4")
    assert root.name == "POST /v1/chat/completions"
    [call] = children(finished, root)
    assert call.name == "chat test-model"
    attributes = root.attributes or {}
    assert (attributes["chatd.kind"], attributes["chatd.state"]) == ("completion", "complete")


def test_with_tracing_off_nothing_is_traced(
    make_server: Any, spans: InMemorySpanExporter, sid: str
) -> None:
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
        assert r.status_code == 200
        assert c.get("/healthz").status_code == 200
    time.sleep(0.2)
    # Not chatd's spans, nor FastAPI's own (it traces by itself once a provider is set).
    assert spans.get_finished_spans() == ()


OFF = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from fastapi import FastAPI

    async def through(app, requests):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
                for method, path, body in requests:
                    r = await c.request(method, path, json=body)
                    assert r.status_code < 300, r.text

    def otel():
        return {m for m in sys.modules if m.startswith("opentelemetry")}

    bare = FastAPI()
    bare.add_api_route("/", lambda: {})
    asyncio.run(through(bare, [("GET", "/", None)]))
    framework = otel()

    from chatd.api.app import create_app
    from chatd.config import Settings
    app = create_app(Settings(_env_file=None, provider="demo", database_url="sqlite://"))
    asyncio.run(through(app, [
        ("POST", "/v1/sessions/s1/messages", {"content": "hi"}),
        ("POST", "/v1/sessions/s1/messages", {"content": "again", "stream": True}),
        ("POST", "/v1/chat/completions", {"model": "demo-1", "messages": [
            {"role": "user", "content": "x"}
        ]}),
        ("GET", "/v1/sessions/s1", None),
    ]))
    print(sorted(otel() - framework))
    print(sorted(m for m in otel() if m.startswith("opentelemetry.sdk")))
    """
)


def test_with_tracing_off_chatd_imports_no_opentelemetry() -> None:
    # FastAPI itself imports OpenTelemetry's API (0.16x); chatd adds nothing to it, and the
    # SDK is never loaded.
    done = subprocess.run(
        [sys.executable, "-c", OFF], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "[]"]


def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigError, match=r"pip install 'chatd\[otel\]'"):
        require()


def test_chatd_serve_refuses_to_start_without_the_extra(tmp_path: Any) -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry.exporter.otlp.proto.http.trace_exporter'] = None\n"
        "from chatd.cli import main\n"
        "sys.argv = ['chatd', 'serve', '--port', '1']\n"
        "main()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CHATD_OTEL": "true"}
    env["CHATD_DATABASE_URL"] = f"sqlite:///{tmp_path}/c.db"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    assert "pip install 'chatd[otel]'" in done.stderr
    assert "Traceback" not in done.stderr
