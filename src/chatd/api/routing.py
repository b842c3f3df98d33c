"""The route class of every router: request text is checked before any route sees it."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from chatd.textcheck import NOT_UNICODE, may_hold_surrogates, unencodable_at

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class CheckedRoute(APIRoute):
    """A route that refuses a JSON body holding a lone surrogate, with a 422 naming the field.

    Such text passes JSON decoding and some of pydantic's checks, then fails wherever it is
    encoded (the database, the upstream call, the error that echoes it): a 500. One check here
    covers every field of every body, nested ones and free-form documents included.
    """

    def get_route_handler(self) -> Handler:
        """Return FastAPI's handler, preceded by the check when the route takes a body."""
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            try:
                raw = await request.body()
            except ClientDisconnect:
                # FastAPI's own read meets the same end and answers as it always has.
                return await handler(request)
            if may_hold_surrogates(raw):
                try:
                    decoded = json.loads(raw)
                except ValueError:
                    decoded = None  # FastAPI refuses it as malformed, saying where
                found = unencodable_at(decoded)
                if found is not None:
                    error = {"type": "string_unicode", "loc": ("body", *found), "msg": NOT_UNICODE}
                    raise RequestValidationError([error])
            return await handler(request)

        return checked
