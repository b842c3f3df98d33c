"""The ASGI application: `create_app(settings)`; its lifespan owns the runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel

from chatd.config import Settings
from chatd.runtime import open_runtime


class ServiceStatus(BaseModel):
    """The compatibility root's answer."""

    status: str
    service: str


class Health(BaseModel):
    """Liveness."""

    status: str


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing is opened until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await open_runtime(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.aclose()

    app = FastAPI(title="chatd", version="0.1.0", lifespan=lifespan)

    @app.get("/")
    async def root() -> ServiceStatus:
        """Answer that the service is up."""
        return ServiceStatus(status="ok", service="chatd")

    @app.get("/healthz")
    async def healthz() -> Health:
        """Answer that the process is alive."""
        return Health(status="ok")

    return app


def app_from_env() -> FastAPI:
    """Build the app from CHATD_* settings (the uvicorn factory for `chatd serve`)."""
    return create_app(Settings())
