"""`chatd fake-upstream --context-limit N --cache-min N`: a real process, spoken to over HTTP."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from chatd.testing.fake_tokens import count_tokens

CHATD = [sys.executable, "-m", "chatd"]
LIMIT = 60
CACHE_MIN = 16
# Long enough to pass CACHE_MIN, short enough to stay under LIMIT.
SMALL = "You are a terse assistant for the Acme support desk; answer in one short line."
OVERSIZE = " ".join(["word"] * (LIMIT + 10))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _fake(env: dict[str, str], *flags: str) -> Iterator[str]:
    """Run `chatd fake-upstream` with flags; yield its base URL once it answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [*CHATD, "fake-upstream", "--port", str(port), *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "fake upstream did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def _anthropic(url: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    return httpx.post(f"{url}/v1/messages", json=body, headers=headers, timeout=10)


def _openai(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def test_flags_set_the_context_limit_and_the_cache_minimum(env: dict[str, str]) -> None:
    big_anthropic = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": OVERSIZE}],
    }
    big_openai = {"model": "m", "messages": [{"role": "user", "content": OVERSIZE}]}
    system = [{"type": "text", "text": SMALL, "cache_control": {"type": "ephemeral"}}]
    small_anthropic = {
        "model": "m",
        "max_tokens": 10,
        "system": system,
        "messages": [{"role": "user", "content": "hi"}],
    }
    small_openai = {
        "model": "m",
        "messages": [{"role": "system", "content": SMALL}, {"role": "user", "content": "hi"}],
    }
    assert count_tokens(small_openai) < LIMIT
    assert count_tokens(small_anthropic) >= CACHE_MIN
    with _fake(env, "--context-limit", str(LIMIT), "--cache-min", str(CACHE_MIN)) as url:
        too_long = _anthropic(url, big_anthropic)
        assert too_long.status_code == 400
        total = count_tokens(big_anthropic)
        assert too_long.json()["error"]["message"] == (
            f"prompt is too long: {total} tokens > {LIMIT} maximum"
        )
        too_long = _openai(url, big_openai)
        assert too_long.status_code == 400
        error = too_long.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert f"maximum context length is {LIMIT} tokens" in error["message"]

        prefix = count_tokens({"system": system})
        first, second = _anthropic(url, small_anthropic), _anthropic(url, small_anthropic)
        assert first.json()["usage"]["cache_creation_input_tokens"] == prefix
        assert second.json()["usage"]["cache_read_input_tokens"] == prefix
        _openai(url, small_openai)
        cached = _openai(url, small_openai).json()["usage"]["prompt_tokens_details"]
        assert cached["cached_tokens"] == CACHE_MIN


def test_without_flags_the_defaults_hold(env: dict[str, str]) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": OVERSIZE}]}
    small = {
        "model": "m",
        "messages": [{"role": "system", "content": SMALL}, {"role": "user", "content": "hi"}],
    }
    with _fake(env) as url:
        assert _openai(url, big).status_code == 200
        _openai(url, small)
        usage = _openai(url, small).json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0


@pytest.mark.parametrize("flag", ["--context-limit", "--cache-min"])
@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_value_is_refused_naming_the_flag(env: dict[str, str], flag: str, value: str) -> None:
    done = subprocess.run(
        [*CHATD, "fake-upstream", "--port", str(_free_port()), flag, value],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"Invalid value for '{flag}'" in done.stderr
