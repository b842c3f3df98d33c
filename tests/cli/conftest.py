"""Fixtures for running `chatd` as a subprocess, as a user would."""

from __future__ import annotations

import os
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
