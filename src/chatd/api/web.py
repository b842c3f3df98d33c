"""The chat page at /ui/: the built files shipped in the package, under a strict CSP."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

# Built from web/ by `bash scripts/build-web`; committed, so installing chatd needs no Node.
PAGE_DIR = Path(__file__).resolve().parent.parent / "web"
PAGE = "/ui"

# The page runs only its own script and style, talks only to this server, and loads no image
# from anywhere else; model output it shows is sanitised markup and can add none of these.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; frame-src 'none'; object-src 'none'; "
    "require-trusted-types-for 'script'; trusted-types dompurify"
)


class PageFiles(StaticFiles):
    """The page's files, revalidated on every load so a new release shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        """Serve a file, telling browsers to check it is current before reusing it."""
        response = await super().get_response(path, scope)
        response.headers["cache-control"] = "no-cache"
        return response


def wants_page(request: Request) -> bool:
    """Tell whether a request is a browser's asking for HTML rather than an API client's."""
    return "text/html" in request.headers.get("accept", "")


def page_url(request: Request) -> str:
    """Return the page's address, under any prefix a proxy serves chatd at."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/") + PAGE + "/"


async def _to_page(request: Request) -> Response:
    query = request.url.query
    return RedirectResponse(page_url(request) + (f"?{query}" if query else ""), status_code=307)


def add_page(app: FastAPI) -> None:
    """Serve the chat page at /ui/ (and /ui, sent there)."""
    app.add_route(PAGE, _to_page, include_in_schema=False)
    app.mount(PAGE, PageFiles(directory=PAGE_DIR, html=True, check_dir=False), name="ui")
