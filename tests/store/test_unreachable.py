"""A PostgreSQL server that refuses to serve (starting, shutting down, full) is StoreUnavailable.

The server here is a real socket speaking PostgreSQL's wire protocol just far enough to refuse
the connection with the ErrorResponse a real server sends in that state, so the driver and
SQLAlchemy wrap it exactly as they would in production, whichever versions are installed.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from chatd.errors import StoreUnavailable
from chatd.store import SqlStore, create_database

SSL_REQUEST = 80877103


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, message: str
) -> None:
    try:
        while True:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if struct.unpack("!I", body[:4])[0] == SSL_REQUEST:
                writer.write(b"N")  # no TLS here: go on in the clear
                continue
            break
        fields = b"".join(
            key + value.encode() + b"\0"
            for key, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
        )
        payload = fields + b"\0"
        writer.write(b"E" + struct.pack("!I", len(payload) + 4) + payload)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def refusing_server(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    code, message = request.param
    server = await asyncio.start_server(lambda r, w: _refuse(r, w, code, message), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"postgresql+asyncpg://chatd:pw@127.0.0.1:{port}/chatd"


@pytest.mark.parametrize(
    "refusing_server",
    [
        ("57P03", "the database system is starting up"),
        ("57P03", "the database system is shutting down"),
        ("57P01", "terminating connection due to administrator command"),
        ("53300", "sorry, too many clients already"),
        ("08006", "connection failure"),
    ],
    indirect=True,
    ids=["starting", "shutting-down", "admin-shutdown", "too-many-clients", "connection-failure"],
)
async def test_a_server_that_refuses_to_serve_is_store_unavailable(refusing_server: str) -> None:
    store = SqlStore(create_database(refusing_server))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            async with asyncio.timeout(10):
                await store.get_session("alice", "s")
        assert "database unavailable" in caught.value.message
        assert "\n" not in caught.value.message
        assert caught.value.status == 503
    finally:
        await store.close()


@pytest.mark.parametrize(
    "refusing_server",
    [("28P01", 'password authentication failed for user "chatd"')],
    indirect=True,
    ids=["bad-password"],
)
async def test_a_server_that_refuses_the_password_is_not_called_unavailable(
    refusing_server: str,
) -> None:
    # A wrong password is the operator's to fix, not an outage to wait out.
    store = SqlStore(create_database(refusing_server))
    try:
        with pytest.raises(Exception, match="password authentication failed") as caught:
            async with asyncio.timeout(10):
                await store.get_session("alice", "s")
        assert not isinstance(caught.value, StoreUnavailable)
    finally:
        await store.close()
