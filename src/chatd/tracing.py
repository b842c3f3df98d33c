"""Optional OpenTelemetry tracing (CHATD_OTEL): spans for requests, turns, model calls, SQL.

Off (the default), nothing here runs and OpenTelemetry is never imported. On, `Tracing` makes
spans with OpenTelemetry's API from whatever tracer provider the process has: `chatd serve`
sets one up with `export_spans` (the SDK, exporting over OTLP/HTTP as the standard OTEL_*
variables say); a program embedding chatd, or a test, sets its own. The tree:

    POST /v1/sessions/{session_id}/messages   (the HTTP request: api/requests.py)
    ├── SELECT / INSERT …                     (each SQL statement, from SQLAlchemy's events)
    └── chatd.turn                            (the turn's task, until its end is stored)
        ├── chat test-model                   (each provider call, retries included)
        └── UPDATE …

A stateless completion has no turn: its calls hang off the request's span, which gets the
completion's figures. Spans carry no message text and no key.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from chatd.errors import ConfigError
from chatd.providers.base import Provider, TokenCounter
from chatd.types import CallReport, ChatRequest, StopEvent, StreamEvent, UsageEvent

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy import Engine

    from chatd.engine.options import ProviderSource
    from chatd.engine.service import ChatService

INSTALL = "pip install 'chatd[otel]'"
# The modules `chatd serve` needs to export spans; the API alone is enough to make them.
_API = "opentelemetry.trace"
_EXPORT = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def require(*modules: str) -> None:
    """Raise ConfigError naming the extra to install unless OpenTelemetry's modules import."""
    for module in modules or (_API, *_EXPORT):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"CHATD_OTEL=true needs OpenTelemetry, which is not installed "
                f"({exc.name or module} is missing): {INSTALL}"
            ) from None


def export_spans() -> None:
    """Give this process an SDK tracer provider exporting over OTLP/HTTP (OTEL_* variables)."""
    require(*_EXPORT)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    otlp = importlib.import_module(_EXPORT[1])
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name.
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": "chatd"})
    provider = TracerProvider(resource=resource)
    # The endpoint, headers and timeout come from OTEL_EXPORTER_OTLP_*; spans leave in batches,
    # off the request path, and the rest are flushed at exit.
    provider.add_span_processor(BatchSpanProcessor(otlp.OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


class Tracing:
    """Make chatd's spans with OpenTelemetry's API."""

    def __init__(self) -> None:
        require(_API)
        from opentelemetry import trace

        self.tracer: Tracer = trace.get_tracer("chatd")

    @contextmanager
    def request(self, scope: Mapping[str, Any]) -> Iterator[Span]:
        """Run an HTTP request in its server span, continuing the caller's trace if it sent one."""
        from opentelemetry import propagate, trace

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method: str = scope["method"]
        span = self.tracer.start_span(
            method,
            context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
            },
        )
        with trace.use_span(span, end_on_exit=True):
            yield span

    @staticmethod
    def answered(
        span: Span,
        method: str,
        route: str | None,
        status: int,
        user: str | None,
        request_id: str,
    ) -> None:
        """Name a request's span by its route, and note how it was answered."""
        from opentelemetry.trace import Status, StatusCode

        if route is not None:
            # As HTTP server spans are named: the method, then the route's template.
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("chatd.request_id", request_id)
        if user is not None:
            span.set_attribute("enduser.id", user)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))

    def instrument(self, service: ChatService, engine: Engine) -> None:
        """Trace the service's turns and provider calls, and the SQL run on the engine."""
        service.turn_wrapper = self.turn
        service.providers = TracedProviders(service.providers, self.tracer)
        service.observers.append(self.report)
        self.trace_sql(engine)

    async def turn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a turn's task in its span (ChatService.turn_wrapper)."""
        with self.tracer.start_as_current_span("chatd.turn"):
            await work

    @staticmethod
    def report(report: CallReport) -> None:
        """Put a finished turn's figures on its span (a completion's on its request's)."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        # Observers run where the work ran: in a turn's task its span is the current one.
        span = trace.get_current_span()
        if not span.is_recording():
            return
        usage = report.usage
        attributes: dict[str, str | int | float | bool] = {
            "chatd.kind": report.kind,
            "chatd.state": report.state,
            "chatd.user": report.user_id,
            "gen_ai.provider.name": report.provider,
            "gen_ai.request.model": report.model,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "chatd.usage.cache_read_tokens": usage.cache_read_tokens,
            "chatd.usage.cache_write_tokens": usage.cache_write_tokens,
            "chatd.usage.estimated": usage.estimated,
            "chatd.latency_ms": report.latency_ms,
            "chatd.retries": report.retries,
            "chatd.tool_rounds": report.tool_rounds,
            "chatd.context_moves": report.context_moves,
        }
        optional = {
            "chatd.session_id": report.session_id,
            "chatd.turn_id": report.turn_id,
            "chatd.request_id": report.request_id,
            "chatd.cost_usd": report.cost_usd,
            "chatd.ttft_ms": report.ttft_ms,
            "chatd.error": report.error,
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        span.set_attributes(attributes)
        if report.state == "failed":
            span.set_status(Status(StatusCode.ERROR, report.error))

    def trace_sql(self, engine: Engine) -> None:
        """Make a span of each statement run on the engine, inside a request's or turn's span."""
        from opentelemetry import trace
        from sqlalchemy import event

        tracer = self.tracer
        system = engine.dialect.name
        key = "chatd.span"

        def before(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            # Only as part of a request or a turn: a background lease renewal or sweep is not.
            if not trace.get_current_span().is_recording():
                return
            operation = statement.split(None, 1)[0].upper() if statement.strip() else "SQL"
            span = tracer.start_span(
                operation,
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "db.system.name": system,
                    "db.operation.name": operation,
                    "db.query.text": statement,
                },
            )
            conn.info.setdefault(key, []).append(span)

        def after(conn: Any, *_: Any) -> None:
            spans = conn.info.get(key)
            if spans:
                spans.pop().end()

        def failed(context: Any) -> None:
            conn = context.connection
            spans = None if conn is None else conn.info.get(key)
            if spans:
                span = spans.pop()
                span.record_exception(context.original_exception)
                span.set_status(trace.Status(trace.StatusCode.ERROR))
                span.end()

        # With a listener here, chatd's direct SQLite statements go through SQLAlchemy too
        # (store/sqlite_fast.py), so every statement is seen.
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        event.listen(engine, "handle_error", failed)


class TracedProvider:
    """A provider whose every call (each attempt) is a client span with its model and usage."""

    def __init__(self, inner: Provider, tracer: Tracer) -> None:
        self.inner = inner
        self.name = inner.name
        self.default_model = inner.default_model
        self.tracer = tracer

    def __getattr__(self, name: str) -> Any:
        # Anything else a provider offers is the provider's own.
        return getattr(self.inner, name)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Stream the call in a span; its tokens and stop reason are noted as they come."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        # Not made current: no span of chatd's starts inside a provider call, and a current
        # span set in a generator would leak into whoever iterates it.
        span = self.tracer.start_span(
            f"chat {request.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": self.name,
                "gen_ai.request.model": request.model,
                "gen_ai.request.max_tokens": request.max_tokens,
            },
        )
        try:
            async for event in self.inner.stream(request):
                if isinstance(event, UsageEvent):
                    usage = event.usage
                    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
                    span.set_attribute("chatd.usage.cache_read_tokens", usage.cache_read_tokens)
                    span.set_attribute("chatd.usage.cache_write_tokens", usage.cache_write_tokens)
                elif isinstance(event, StopEvent):
                    span.set_attribute("gen_ai.response.finish_reasons", [str(event.reason)])
                yield event
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """Count the request's tokens with the provider, if it counts, in a span."""
        if not isinstance(self.inner, TokenCounter):
            return None
        from opentelemetry.trace import SpanKind

        name = f"count_tokens {request.model}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
            span.set_attribute("gen_ai.provider.name", self.name)
            return await self.inner.count_tokens(request)

    async def aclose(self) -> None:
        """Close the provider."""
        await self.inner.aclose()


class TracedProviders:
    """A provider source whose providers are traced."""

    def __init__(self, inner: ProviderSource, tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer
        # By identity: the pool keeps one provider per name for the process's life.
        self._traced: dict[int, tuple[Provider, TracedProvider]] = {}

    def get(self, name: str | None = None) -> Provider:
        """Return the named provider (the default when None), traced."""
        provider = self.inner.get(name)
        found = self._traced.get(id(provider))
        if found is None:
            found = self._traced[id(provider)] = (provider, TracedProvider(provider, self.tracer))
        return found[1]
