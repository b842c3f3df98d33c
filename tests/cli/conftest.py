"""Fixtures for running `chatd` as a subprocess, as a user would."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatd.testing.fake_upstream import FakeUpstream

CHATD = [sys.executable, "-m", "chatd"]
PROVIDER_VARS = ("ANTHROPIC_", "OPENAI_", "GROQ_", "TOGETHER_", "VLLM_", "CHATD_")
Run = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Return a clean environment: demo provider, a private SQLite file, no keys."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_VARS)}
    clean.update(
        HOME=str(tmp_path),
        CHATD_DATABASE_URL=f"sqlite:///{tmp_path / 'chat.db'}",
        CHATD_DEMO_DELAY_MS="0",
        CHATD_RETRY_BASE_DELAY_S="0.01",
        PYTHONUNBUFFERED="1",
    )
    return clean


@pytest.fixture
def anthropic_env(env: dict[str, str], fake_upstream: FakeUpstream) -> dict[str, str]:
    """Return an environment whose provider is Anthropic at the fake upstream."""
    return {
        **env,
        "CHATD_PROVIDER": "anthropic",
        "CHATD_MODEL": "test-model",
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": fake_upstream.url,
    }


@pytest.fixture
def chatd() -> Run:
    """Return a function that runs chatd to completion with piped input."""

    def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CHATD, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
        )

    return run


Replying = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def replying() -> Iterator[Replying]:
    """Return a function that starts `chatd chat`, sends text, and returns once a reply streams."""
    started: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], text: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*CHATD, "chat", *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no reply text arrived"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


Terminal = Callable[..., str]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    """Return a function that runs chatd on a pseudo-terminal and returns what it showed.

    It waits for `after` to appear, then types `keys`; the output comes back without colours
    and with the terminal's line ends as plain newlines, or with `raw=True` as every byte shown.
    """
    started: list[subprocess.Popen[bytes]] = []

    def run(
        env: dict[str, str], *args: str, after: str = "", keys: bytes = b"", raw: bool = False
    ) -> str:
        controller, tty = pty.openpty()
        proc = subprocess.Popen([*CHATD, *args], env=env, stdin=tty, stdout=tty, stderr=tty)
        started.append(proc)
        os.close(tty)
        shown = b""
        try:
            while True:
                if after and after.encode() in shown:
                    os.write(controller, keys)
                    after = ""
                ready, _, _ = select.select([controller], [], [], 20)
                assert ready, f"chatd showed nothing more; so far: {shown!r}"
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # Linux: the other end closed, chatd exited
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(controller)
        proc.wait(timeout=20)
        if raw:
            return shown.decode(errors="surrogateescape")
        return _ANSI.sub("", shown.decode()).replace("\r\n", "\n")

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
