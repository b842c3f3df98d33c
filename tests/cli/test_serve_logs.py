"""`chatd serve`'s own log: JSON lines when stderr is a file, readable lines on a terminal; one
line per request (no uvicorn access line beside it) and one per turn, sharing the id the
response carried; never a key, never the message text."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson

CHATD = [sys.executable, "-m", "chatd"]


def free_port() -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_up(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait for the server to answer /healthz."""
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except httpx.TransportError:
            assert proc.poll() is None, what
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """Run `chatd serve` with stderr going to a file; yield its URL; stop it at the end."""
    port = free_port()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*CHATD, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        wait_until_up(port, proc, "chatd serve exited")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Parse the server's log: the command's own notices, then nothing but JSON lines."""
    lines = log.read_text().splitlines()
    # What `chatd serve` prints before it becomes the server is for the person starting it.
    notices = [line for line in lines if line.startswith("chatd: ")]
    assert len(notices) == 2, lines
    return [orjson.loads(line) for line in lines if not line.startswith("chatd: ")]


def test_json_lines_with_ids_and_no_key_or_text(
    anthropic_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**anthropic_env, "CHATD_AUTH": "on"}
    made = subprocess.run(
        [*CHATD, "keys", "create", "--user", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = made.stdout.strip()
    log = tmp_path / "serve.log"
    secret = "the launch code is 0000"
    with serving(env, log) as url, httpx.Client(base_url=url, timeout=30) as c:
        sent = c.post(
            "/v1/sessions/s1/messages",
            json={"content": secret},
            headers={"Authorization": f"Bearer {key}", "X-Request-ID": "serve-1"},
        )
        completed = c.post(
            "/v1/chat/completions",
            json={"model": "test-model", "messages": [{"role": "user", "content": secret}]},
            headers={"x-api-key": key},
        )
        refused = c.get("/v1/sessions", headers={"Authorization": "Bearer chatd_" + "x" * 43})
    assert sent.status_code == completed.status_code == 200
    assert refused.status_code == 401
    assert sent.headers["x-request-id"] == "serve-1"
    text = log.read_text()
    assert key not in text
    assert key[:20] not in text
    assert "chatd_" + "x" * 43 not in text
    assert "0000" not in text
    lines = json_lines(log)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    requests = [line for line in lines if line["logger"] == "chatd.request"]
    # One line per request: the three, and the readiness probes before them.
    ids = [line["request_id"] for line in requests]
    assert len(ids) == len(set(ids))
    by_id = {line["request_id"]: line for line in requests}
    send = by_id["serve-1"]
    assert (send["route"], send["status"], send["user"]) == (
        "/v1/sessions/{session_id}/messages",
        200,
        "alice",
    )
    turns = [line for line in lines if line["logger"] == "chatd.turn"]
    assert len(turns) == 2
    turn = next(line for line in turns if line["request_id"] == "serve-1")
    assert (turn["msg"], turn["user"], turn["session"], turn["turn"]) == (
        "turn",
        "alice",
        "s1",
        sent.json()["turn_id"],
    )
    assert (turn["input_tokens"], turn["output_tokens"]) == (
        sent.json()["usage"]["input_tokens"],
        sent.json()["usage"]["output_tokens"],
    )
    completion_id = completed.headers["x-request-id"]
    call = next(line for line in turns if line["request_id"] == completion_id)
    assert (call["msg"], call["user"]) == ("completion", "alice")
    assert by_id[completion_id]["route"] == "/v1/chat/completions"
    assert by_id[refused.headers["x-request-id"]]["status"] == 401


def test_readable_lines_on_a_terminal(env: dict[str, str]) -> None:
    port = free_port()
    controller, tty = pty.openpty()
    proc = subprocess.Popen(
        [*CHATD, "serve", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=tty,
        stderr=tty,
    )
    os.close(tty)
    shown = b""

    def read_until(marker: bytes) -> None:
        nonlocal shown
        deadline = time.monotonic() + 30
        while marker not in shown:
            assert time.monotonic() < deadline, shown
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                shown += os.read(controller, 65536)

    try:
        read_until(b"Application startup complete")
        r = httpx.post(
            f"http://127.0.0.1:{port}/chat",
            json={"message": "hello", "session_id": "t1"},
            headers={"X-Request-ID": "tty-1"},
            timeout=30,
        )
        assert r.status_code == 200
        read_until(b"request_id=tty-1 method=POST")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        os.close(controller)
    lines = shown.decode().replace("\r\n", "\n").splitlines()
    request = next(line for line in lines if "request_id=tty-1 method=POST" in line)
    assert " INFO    request " in request
    assert "route=/chat status=200" in request
    turn = next(line for line in lines if " turn request_id=tty-1 " in line)
    assert "state=complete" in turn
    assert not any(line.lstrip().startswith("{") for line in lines)
