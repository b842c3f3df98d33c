"""`chatd keys …` and `chatd serve` with auth, run as a user would: real subprocesses.

Two `chatd serve` processes on one database and one Redis enforce one limit together and
both stop accepting a revoked key within a second; their logs never hold a key.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

CHATD = [sys.executable, "-m", "chatd"]
KEY = re.compile(r"chatd_[A-Za-z0-9_-]{43}")
Run = Callable[..., subprocess.CompletedProcess[str]]


def test_create_prints_the_key_alone_then_list_and_revoke(env: dict[str, str], chatd: Run) -> None:
    made = chatd(
        env, "keys", "create", "--user", "ann", "--rpm", "5", "--tokens-per-day", "1000",
        "--budget-usd-per-day", "2.5", "--expires", "30d",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert KEY.fullmatch(made.stdout.strip())
    assert made.stdout == made.stdout.strip() + "\n"
    key = made.stdout.strip()
    prefix = key[:14]
    assert f"created key {prefix}" in made.stderr
    assert "cannot be shown again" in made.stderr
    admin = chatd(env, "keys", "create", "--user", "root", "--admin")
    assert KEY.fullmatch(admin.stdout.strip())
    listed = chatd(env, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert prefix in listed.stdout
    assert key not in listed.stdout
    assert "5 rpm, 1000 tokens/day, $2.5/day" in listed.stdout
    revoked = chatd(env, "keys", "revoke", prefix)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == ""
    assert f"revoked {prefix}" in revoked.stderr
    ann = chatd(env, "keys", "list", "--user", "ann").stdout
    assert ann.count("chatd_") == 1
    assert ann.count(time.strftime("%Y-%m-%d")) >= 2  # created and revoked today


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("revoke", "chatd_nothing"), "no key 'chatd_nothing'"),
        (("create", "--user", "ann", "--expires", "soon"), "cannot read duration 'soon'"),
        (("create", "--user", "has space"), "user name must be"),
        (("create", "--user", "ann", "--rpm", str(2**70)), "--rpm must be at most"),
        (("create", "--user", "ann", "--tpm", str(2**63)), "--tpm must be at most"),
        (("create", "--user", "ann", "--budget-usd-per-day", "1e400"), "must be at most"),
        (("create", "--user", "ann", "--expires", "99999999999d"), "is too long"),
    ],
)
def test_key_commands_fail_plainly(
    env: dict[str, str], chatd: Run, args: tuple[str, ...], message: str
) -> None:
    done = chatd(env, "keys", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr


def test_serve_refuses_a_public_bind_with_auth_off(env: dict[str, str], chatd: Run) -> None:
    done = chatd({**env, "CHATD_AUTH": "off"}, "serve", "--host", "0.0.0.0", "--port", "9")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 with auth off" in done.stderr
    assert "CHATD_AUTH=on" in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_servers(
    anthropic_env: dict[str, str], redis_url: str, tmp_path: Path
) -> Iterator[tuple[list[str], list[Path]]]:
    """Start two `chatd serve` on 0.0.0.0 (auth auto: on) sharing a database and Redis."""
    env = {**anthropic_env, "CHATD_REDIS_URL": redis_url}
    procs, urls, logs = [], [], []
    try:
        for i in range(2):
            port = _free_port()
            log = tmp_path / f"serve{i}.log"
            logs.append(log)
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        [*CHATD, "serve", "--host", "0.0.0.0", "--port", str(port)],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
        # Generous: two servers start at once, on a machine that may be busy with other tests.
        deadline = time.monotonic() + 60
        for url, proc in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, "chatd serve exited"
                assert time.monotonic() < deadline, "chatd serve did not start"
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        yield urls, logs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def test_two_serve_processes_share_limits_and_revocations(
    two_servers: tuple[list[str], list[Path]],
    anthropic_env: dict[str, str],
    chatd: Run,
    fresh_minute: Callable[[float], None],
) -> None:
    urls, logs = two_servers
    limited = chatd(anthropic_env, "keys", "create", "--user", "ann", "--rpm", "6").stdout.strip()
    other = chatd(anthropic_env, "keys", "create", "--user", "bob").stdout.strip()
    # auto on a public bind means auth on: no key, no answer.
    assert httpx.get(f"{urls[0]}/sessions").status_code == 401
    fresh_minute(15)
    codes = [
        httpx.post(
            f"{url}/chat", json={"message": "hi"}, headers={"x-api-key": limited}, timeout=30
        ).status_code
        for url in urls * 8
    ]
    assert codes == [200] * 6 + [429] * 10
    for url in urls:
        assert httpx.get(f"{url}/sessions", headers={"x-api-key": other}).status_code == 200
        httpx.get(f"{url}/sessions?api_key={other}")
    assert chatd(anthropic_env, "keys", "revoke", other[:14]).returncode == 0
    revoked_at = time.monotonic()
    for url in urls:
        while httpx.get(f"{url}/sessions", headers={"x-api-key": other}).status_code == 200:
            assert time.monotonic() - revoked_at < 1.5
            time.sleep(0.05)
    text = "".join(log.read_text() for log in logs)
    assert "auth is on (CHATD_AUTH=auto, host 0.0.0.0)" in text
    # A request's line names its route, never its query string (where a key may have been put).
    assert '"route":"/sessions"' in text
    assert "api_key" not in text
    for key in (limited, other):
        assert key not in text
        assert key[6:] not in text
