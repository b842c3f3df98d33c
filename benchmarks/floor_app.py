"""Arm N, the floor: a bare forwarding ASGI app on chatd's server stack and upstream client path.

`POST /v1/chat/completions` takes an OpenAI Chat Completions body and forwards it as-is through
one process-wide `openai.AsyncOpenAI` client built the way chatd builds its own (max_retries=0,
the default httpx transport), then returns the completion as JSON or re-encodes each streamed
chunk as an SSE event. Nothing else: no framework, no validation, no storage, no middleware.
`GET /healthz` answers 200. It runs under uvicorn with the settings `chatd serve` uses, so the
only difference from chatd's path is chatd itself.

    python -m benchmarks.floor_app --port 8101 --upstream http://127.0.0.1:8100/v1

Variants of the upstream call, for measuring what the SDK's layers cost (`--client`):
  create    `client.chat.completions.create(**body)`: chatd's path today (the default)
  lowlevel  `client.post("/chat/completions", body=..., cast_to=object)`: the SDK's request
            method with a plain dict, skipping create()'s request transform and typed models
and `--transport httpx|aiohttp` (the SDK's `DefaultAioHttpClient`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import openai
import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class FloorApp:
    """The forwarding app; the SDK client is built at lifespan start, once for the process."""

    def __init__(self, upstream: str, api_key: str, client: str, transport: str) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.mode = client
        self.transport = transport
        self.client: openai.AsyncOpenAI | None = None

    def _build(self) -> openai.AsyncOpenAI:
        http_client = openai.DefaultAioHttpClient() if self.transport == "aiohttp" else None
        return openai.AsyncOpenAI(
            api_key=self.api_key,
            base_url=self.upstream,
            max_retries=0,
            timeout=120.0,
            http_client=http_client,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection event."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            await _reply(send, 200, b'{"status":"ok"}')
            return
        if (method, path) != ("POST", "/v1/chat/completions"):
            await _reply(send, 404, b'{"error":{"message":"not found"}}')
            return
        body = orjson.loads(await _read_body(receive))
        assert self.client is not None
        try:
            if body.get("stream"):
                await self._stream(body, send)
            else:
                await self._complete(body, send)
        except openai.APIStatusError as exc:
            await _reply(send, exc.status_code, orjson.dumps({"error": {"message": exc.message}}))

    async def _complete(self, body: dict[str, Any], send: Send) -> None:
        assert self.client is not None
        if self.mode == "lowlevel":
            data = await self.client.post("/chat/completions", body=body, cast_to=object)
            await _reply(send, 200, orjson.dumps(data))
            return
        completion = await self.client.chat.completions.create(**body)
        await _reply(send, 200, completion.model_dump_json(exclude_unset=True).encode())

    async def _stream(self, body: dict[str, Any], send: Send) -> None:
        assert self.client is not None
        if self.mode == "lowlevel":
            stream: Any = await self.client.post(
                "/chat/completions",
                body=body,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            encode: Callable[[Any], bytes] = orjson.dumps
        else:
            stream = await self.client.chat.completions.create(**body)

            def encode(chunk: Any) -> bytes:
                return chunk.model_dump_json(exclude_unset=True).encode()

        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        async with stream:
            async for chunk in stream:
                event = b"data: " + encode(chunk) + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = self._build()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send: Send, status: int, data: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    """Run the floor app under uvicorn with `chatd serve`'s settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="OpenAI base URL, ending in /v1")
    parser.add_argument("--client", choices=["create", "lowlevel"], default="create")
    parser.add_argument("--transport", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args()
    key = os.environ.get("OPENAI_API_KEY", "sk-bench")
    app = FloorApp(args.upstream, key, args.client, args.transport)
    # The same uvicorn settings as `chatd serve` (chatd/cli.py): one worker, info logging
    # (so an access log line per request, as chatd writes), 30 s graceful shutdown.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_level="info",
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
