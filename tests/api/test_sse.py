"""EventStream against a scripted ASGI server: one send at a time, pings, disconnects."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

from chatd.api.responses import HANDOFF, PING, EventStream, StreamHandoff


class Server:
    """Record the body sends, fail if two overlap; hold pings or every send while told to."""

    def __init__(self, *, hold_pings: bool = False, send_s: float = 0.0) -> None:
        self.log: list[tuple[str, bytes]] = []
        self.active = 0
        self.receives = 0
        self.ping_started = asyncio.Event()
        self.release_ping = asyncio.Event()
        if not hold_pings:
            self.release_ping.set()
        self.send_s = send_s
        self.disconnect = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        body = message["body"] if message["more_body"] else b"<end>"
        assert self.active == 0, f"{body!r} sent while another send was under way"
        self.active += 1
        self.log.append(("start", body))
        try:
            if body == PING:
                self.ping_started.set()
                await self.release_ping.wait()
            await asyncio.sleep(self.send_s)
        finally:
            self.active -= 1
            self.log.append(("end", body))

    def receive(self) -> Awaitable[dict[str, Any]]:
        # Counted when asked for: a wait that times out at once may never get to run.
        self.receives += 1
        return self._disconnected()

    async def _disconnected(self) -> dict[str, Any]:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    def bodies(self) -> list[bytes]:
        return [body for what, body in self.log if what == "end"]


async def run(stream: EventStream, server: Server) -> None:
    await stream({"type": "http"}, server.receive, server.send)


async def test_a_chunk_that_comes_while_a_ping_goes_out_waits_for_it() -> None:
    server = Server(hold_pings=True)
    more = asyncio.Event()

    async def source() -> AsyncGenerator[bytes, None]:
        yield b"a"
        await more.wait()
        yield b"b"

    task = asyncio.create_task(run(EventStream(source(), media_type="x", ping_s=0.01), server))
    await asyncio.wait_for(server.ping_started.wait(), 5)
    more.set()
    await asyncio.sleep(0.05)
    assert server.log[-1] == ("start", PING)  # b waits: the ping is still going out
    server.release_ping.set()
    await asyncio.wait_for(task, 5)
    bodies = server.bodies()
    assert bodies[0] == b"a"
    assert bodies[-2:] == [b"b", b"<end>"]
    assert PING in bodies[1:-2]


async def test_a_chunk_held_up_by_a_slow_reader_gets_no_ping_beside_it() -> None:
    server = Server(send_s=0.1)

    async def source() -> AsyncGenerator[bytes, None]:
        for chunk in (b"a", b"b", b"c"):
            yield chunk

    await asyncio.wait_for(run(EventStream(source(), media_type="x", ping_s=0.02), server), 5)
    assert server.bodies() == [b"a", b"b", b"c", b"<end>"]
    # The watcher looked again a ping period later each time, rather than spinning.
    assert server.receives < 100


async def test_a_client_that_leaves_stops_the_stream_and_closes_its_source() -> None:
    server = Server()
    closed = asyncio.Event()

    async def source() -> AsyncGenerator[bytes, None]:
        try:
            while True:
                yield b"x"
                server.disconnect.set()
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    await asyncio.wait_for(run(EventStream(source(), media_type="x"), server), 5)
    assert closed.is_set()
    assert b"<end>" not in server.bodies()


class Held:
    """Something a framework keeps per request (a Request, an exit stack)."""


async def test_a_handed_off_stream_runs_after_the_framework_has_let_go() -> None:
    server = Server()
    seen: list[tuple[bool, set[str]]] = []
    held: list[weakref.ReferenceType[Held]] = []

    async def source() -> AsyncGenerator[bytes, None]:
        gc.collect()
        seen.append((held[0]() is None, set(scope)))
        yield b"a"

    async def framework(scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Held()
        held.append(weakref.ref(request))
        scope["framework.stack"] = request
        await EventStream(source(), media_type="x")(scope, receive, send)

    scope: dict[str, Any] = {"type": "http"}
    await asyncio.wait_for(StreamHandoff(framework)(scope, server.receive, server.send), 5)
    assert server.bodies() == [b"a", b"<end>"]
    [(released, keys)] = seen
    assert released  # the framework's frame and what it held are gone while the stream runs
    assert keys == {"type", HANDOFF}


async def test_without_the_handoff_a_stream_runs_inside_the_framework() -> None:
    server = Server()
    stream = EventStream(_one(b"a"), media_type="x")
    await asyncio.wait_for(stream({"type": "http"}, server.receive, server.send), 5)
    assert server.bodies() == [b"a", b"<end>"]


async def _one(chunk: bytes) -> AsyncGenerator[bytes, None]:
    yield chunk
