"""The ASGI application: `create_app(settings)`; its lifespan owns the runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from chatd.api import errors
from chatd.api.auth import Authenticate, redact_access_logs
from chatd.api.hotpath import HotPath
from chatd.api.key_cache import KeyCache
from chatd.api.limits import RateLimit
from chatd.api.middleware import BodyLimit, SecurityHeaders
from chatd.api.openai import routes as openai
from chatd.api.requests import RequestLog, framework_tracing_off, watch
from chatd.api.responses import StreamHandoff
from chatd.api.routes import admin, compat, health, messages, regenerate, sessions
from chatd.api.state import attach, state
from chatd.api.web import add_page
from chatd.config import Settings
from chatd.keys import KeyLimits
from chatd.prices import load_prices
from chatd.quotas import open_limiter
from chatd.runtime import open_runtime
from chatd.store import SqlKeyStore
from chatd.tracing import Tracing, export_spans

DESCRIPTION = """\
chatd's HTTP API. The compatibility routes keep the common "Chat API" shapes; /v1 is chatd's
own (sessions, messages with SSE, export/import, usage); `POST /v1/chat/completions` and
`GET /v1/models` speak OpenAI's wire format, stateless unless the `X-Chatd-Session` header
names a session whose memory chatd keeps. Models are named `provider/model`, or bare for the
default provider.
"""


def default_limits(settings: Settings) -> KeyLimits:
    """Return the configured limits: for keys that set none, and the local user with auth off."""
    return KeyLimits(
        settings.limit_rpm,
        settings.limit_tpm,
        settings.limit_tokens_per_day,
        settings.limit_budget_usd_per_day,
    )


# The docs' sections, in reading order.
DOC_ORDER = ("compatibility", "sessions", "messages", "openai", "admin", "health")
OPENAPI_URL = "/openapi.json"
# Under /docs, so the assets pass auth, limits and headers exactly as the page does.
DOCS_STATIC = "/docs/static"


def add_docs(app: FastAPI) -> None:
    """Serve /docs (Swagger UI) with its scripts, styles and icon from this machine."""
    # FastAPI's own page loads them from a CDN: a blank page without internet. No ReDoc:
    # its bundle always fetches its logo from cdn.redoc.ly.
    app.mount(
        DOCS_STATIC, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-static"
    )

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            # Otherwise Swagger UI may send the schema's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    # A plain route, as FastAPI adds its own: it answers HEAD too.
    app.add_route("/docs", swagger_ui, include_in_schema=False)


def create_app(settings: Settings, *, env: Mapping[str, str] | None = None) -> FastAPI:
    """Build the app; nothing is opened until the lifespan starts.

    `env` is where provider keys are read from (the process environment by default). Auth is
    on only with `auth="on"`: "auto" depends on the address the server binds, which only
    `chatd serve` knows; it resolves it before building the app.
    """
    prices = load_prices(settings.prices, settings.prices_file)
    # Only with CHATD_OTEL: otherwise OpenTelemetry is never imported.
    tracing = Tracing() if settings.otel else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_access_logs()
        runtime = await open_runtime(settings, env)
        watch(runtime, tracing)
        live = state(app)
        live.runtime = runtime
        live.key_cache = KeyCache(SqlKeyStore(runtime.store.db), settings.key_cache_s)
        live.limiter = open_limiter(settings.redis_url, prices)
        live.metrics.start(app.routes, runtime.service.observers, runtime.store.db.pool_stats)
        try:
            yield
        finally:
            try:
                await runtime.aclose()
            finally:
                await live.metrics.aclose()
                await live.key_cache.aclose()
                await live.limiter.aclose()

    app = FastAPI(
        title="chatd",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[{"name": t} for t in DOC_ORDER],
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
        **framework_tracing_off(),
    )
    errors.install(app)
    # Routers are matched in this order, route by route: the hot routes first, so a send tries
    # no other route before its own. The docs keep their reading order through the tags.
    for module in (messages, regenerate, openai, sessions, compat, admin, health):
        app.include_router(module.router)
    add_docs(app)
    add_page(app)
    # Added innermost first: CORS sees a request first, the body cap last, then the hot
    # routes are taken, then streams are run past the framework's frames.
    app.add_middleware(StreamHandoff)
    # The route table's hot routes run here, past the router, when well-formed; all else goes on.
    app.add_middleware(HotPath)
    app.add_middleware(
        BodyLimit, default=settings.max_body_bytes, large=settings.max_completions_body_bytes
    )
    # Who is calling comes first; then their limits; then the body is read.
    app.add_middleware(RateLimit)
    app.add_middleware(
        Authenticate, enabled=settings.auth == "on", default_limits=default_limits(settings)
    )
    app.add_middleware(SecurityHeaders, metrics=attach(app).metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-Api-Key",
                "X-Chatd-Session",
                "X-Request-ID",
            ],
            expose_headers=[
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "X-Request-ID",
            ],
            max_age=600,
        )
    # Outermost: every response (CORS's own included) carries the request's id.
    app.add_middleware(RequestLog, tracing=tracing)
    return app


def app_from_env() -> FastAPI:
    """Build the app from CHATD_* settings (the uvicorn factory for `chatd serve`).

    `chatd serve` sets CHATD_AUTH to on or off for its workers; any other server running this
    factory cannot know its bind address, so "auto" means on here.
    """
    settings = Settings()
    if settings.auth == "auto":
        settings = settings.model_copy(update={"auth": "on"})
    if settings.otel:
        # Each worker process exports its own spans.
        export_spans()
    return create_app(settings)
