"""The ASGI application: `create_app(settings)`; its lifespan owns the runtime."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from chatd.api import errors
from chatd.api.middleware import BodyLimit, SecurityHeaders
from chatd.api.routes import compat, health, messages, openai, sessions
from chatd.config import Settings
from chatd.runtime import open_runtime

DESCRIPTION = """\
chatd's HTTP API. The compatibility routes keep the common "Chat API" shapes; /v1 is chatd's
own (sessions, messages with SSE, export/import, usage); `POST /v1/chat/completions` and
`GET /v1/models` speak OpenAI's wire format, stateless unless the `X-Chatd-Session` header
names a session whose memory chatd keeps. Models are named `provider/model`, or bare for the
default provider.
"""


def create_app(settings: Settings, *, env: Mapping[str, str] | None = None) -> FastAPI:
    """Build the app; nothing is opened until the lifespan starts.

    `env` is where provider keys are read from (the process environment by default).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await open_runtime(settings, env)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.aclose()

    app = FastAPI(title="chatd", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    counts: Counter[tuple[str, int]] = Counter()
    app.state.response_counts = counts
    errors.install(app)
    for module in (compat, sessions, messages, openai, health):
        app.include_router(module.router)
    # Added innermost first: CORS sees a request first, the body cap last.
    big = settings.max_completions_body_bytes
    app.add_middleware(
        BodyLimit,
        default=settings.max_body_bytes,
        per_path={"/v1/chat/completions": big, "/v1/sessions/import": big},
    )
    app.add_middleware(SecurityHeaders, counts=counts)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Chatd-Session"],
            max_age=600,
        )
    return app


def app_from_env() -> FastAPI:
    """Build the app from CHATD_* settings (the uvicorn factory for `chatd serve`)."""
    return create_app(Settings())
