"""Arm N, the floor: a bare forwarding ASGI app on chatd's server stack and upstream client path.

`POST /v1/chat/completions` takes an OpenAI Chat Completions body and forwards it through one
process-wide `openai.AsyncOpenAI` client built the way chatd builds its own (max_retries=0, the
SDK's aiohttp transport, pooled connections dropped after 4 s idle), called the way chatd calls
it (`providers/openai_compat.py` `OpenAICompatProvider._open`): the SDK's low-level

    client.post("/chat/completions", content=orjson.dumps(body), cast_to=object, stream=True,
                stream_cls=openai.AsyncStream[object])

with `"stream": true` and `stream_options.include_usage` always set, as chatd always streams
upstream, and reads the response's body as chatd's providers do: its bytes
(`chatd.providers.base.response_bytes`) cut into events by chatd's `SSEDecoder`, each event's
JSON parsed with orjson. A streamed request gets each chunk re-encoded as an SSE event; a
non-streamed one gets the chunks' text gathered into one JSON completion, as chatd gathers a
non-streamed turn. Nothing else: no framework, no validation, no storage, no middleware.
`GET /healthz` answers 200. It runs under uvicorn with the settings `chatd serve` uses, so the
only difference from chatd's path is chatd itself.

    python -m benchmarks.floor_app --port 8101 --upstream http://127.0.0.1:8100/v1

References for what the SDK's layers cost (`--client`, `--transport`):
  lowlevel  the call above: chatd's path (the default; arm N)
  sdkstream the same call, its body read through the SDK's own event iterator (`async for chunk
            in stream`: its SSE decoder and `json.loads`) (arm Ns; chatd before it read bytes)
  create    `client.chat.completions.create(**body, stream=True)`: the SDK's typed path, with
            its request transform and a pydantic model per chunk (arm Nc; chatd before c62d48e)
  --transport httpx: the low-level call on the SDK's default httpx transport (arm Nh; chatd's
            path before it moved to aiohttp)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import openai
import orjson
import uvicorn

from chatd.providers.base import pool_limits, response_bytes
from chatd.providers.sse import SSEDecoder

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
        aio = self.transport == "aiohttp"
        limits = pool_limits(openai.DEFAULT_CONNECTION_LIMITS)  # as chatd's providers
        http_client = openai.DefaultAioHttpClient(timeout=120.0, limits=limits) if aio else None
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
        asked = bool(body.get("stream"))
        # chatd streams upstream whatever its client asked (openai_compat.py `_body`).
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        try:
            stream = await self._open(body)
            if asked:
                await self._relay(stream, send)
            else:
                await self._gather(stream, send)
        except openai.APIStatusError as exc:
            await _reply(send, exc.status_code, orjson.dumps({"error": {"message": exc.message}}))

    async def _open(self, body: dict[str, Any]) -> Any:
        assert self.client is not None
        if self.mode == "create":
            return await self.client.chat.completions.create(**body)
        return await self.client.post(
            "/chat/completions",
            content=orjson.dumps(body),
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )

    def _encode(self, chunk: Any) -> bytes:
        if self.mode == "create":
            data: bytes = chunk.model_dump_json(exclude_unset=True).encode()
            return data
        return orjson.dumps(chunk)

    async def _relay(self, stream: Any, send: Send) -> None:
        """A streamed request: each upstream chunk goes out as one SSE event."""
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        async with stream:
            if self.mode == "lowlevel":
                decoder = SSEDecoder()
                async for data in response_bytes(stream.response):
                    for sse in decoder.feed(data):
                        if sse.data.startswith(b"[DONE]"):
                            continue
                        event = b"data: " + orjson.dumps(orjson.loads(sse.data)) + b"\n\n"
                        await send({"type": "http.response.body", "body": event, "more_body": True})
            else:
                async for chunk in stream:
                    event = b"data: " + self._encode(chunk) + b"\n\n"
                    await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _dicts(self, stream: Any) -> list[Any]:
        """Read a non-streamed request's upstream chunks whole, as chatd reads them."""
        if self.mode != "lowlevel":
            return [chunk async for chunk in stream]
        chunks: list[Any] = []
        decoder = SSEDecoder()
        async for data in response_bytes(stream.response):
            chunks += [orjson.loads(e.data) for e in decoder.feed(data) if e.data[:6] != b"[DONE]"]
        return chunks

    async def _gather(self, stream: Any, send: Send) -> None:
        """A non-streamed request: the chunks' text, finish reason and usage as one completion."""
        parts: list[str] = []
        finish: str | None = None
        usage: Any = None
        model = ""
        async with stream:
            for chunk in await self._dicts(stream):
                if self.mode == "create":  # typed chunks, read as chatd's old _normalize did
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = chunk.usage.model_dump(exclude_unset=True)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            parts.append(choice.delta.content)
                        finish = choice.finish_reason or finish
                    continue
                if not isinstance(chunk, dict):
                    continue
                model = chunk.get("model") or model
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
                    finish = choice.get("finish_reason") or finish
        reply = {
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }
        await _reply(send, 200, orjson.dumps(reply))

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
    parser.add_argument("--client", choices=["lowlevel", "sdkstream", "create"], default="lowlevel")
    parser.add_argument("--transport", choices=["httpx", "aiohttp"], default="aiohttp")
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
        ws="none",
    )


if __name__ == "__main__":
    main()
