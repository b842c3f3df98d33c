"""The `chatd` command as a user runs it: real subprocesses, piped input, signals."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from chatd.testing.fake_upstream import FakeUpstream

CHATD = [sys.executable, "-m", "chatd"]
Run = Callable[..., subprocess.CompletedProcess[str]]
Terminal = Callable[..., str]


def test_chat_remembers_across_processes(env: dict[str, str], chatd: Run) -> None:
    first = chatd(env, "chat", "--session", "mem", stdin="my name is Ada\n")
    assert first.returncode == 0, first.stderr
    assert 'You said: "my name is Ada"' in first.stdout
    second = chatd(env, "chat", "--session", "mem", stdin="what did I tell you?\n")
    assert second.returncode == 0, second.stderr
    assert 'the first was: "my name is Ada"' in second.stdout
    other = chatd(env, "chat", "--session", "other", stdin="what did I tell you?\n")
    assert "my name is Ada" not in other.stdout


def test_chat_says_which_provider_it_picked(env: dict[str, str], chatd: Run) -> None:
    result = chatd(env, "chat", stdin="hi\n")
    assert "using provider demo" in result.stderr
    assert "ANTHROPIC_API_KEY" in result.stderr


@pytest.mark.parametrize(
    ("xdg", "where"),
    [
        ("xdg", "xdg/chatd/chatd.db"),
        (None, ".local/share/chatd/chatd.db"),
        ("relative", ".local/share/chatd/chatd.db"),  # the XDG spec: ignore a relative path
    ],
)
def test_chat_says_where_the_default_database_is(
    env: dict[str, str], tmp_path: Path, xdg: str | None, where: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    unset = {k: v for k, v in env.items() if k not in ("CHATD_DATABASE_URL", "XDG_DATA_HOME")}
    given = {} if xdg is None else {"XDG_DATA_HOME": str(tmp_path / xdg) if xdg == "xdg" else xdg}
    result = subprocess.run(
        [*CHATD, "chat"], input="hi\n", env=unset | given, cwd=work,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    database = (tmp_path / where).resolve()
    assert f"chatd: database is SQLite at {database} (CHATD_DATABASE_URL)\n" in result.stderr
    assert database.exists()
    assert list(work.iterdir()) == []


def test_a_tilde_in_a_sqlite_url_means_home(env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [*CHATD, "chat"], input="hi\n", cwd=work, capture_output=True, text=True, timeout=60,
        env={**env, "HOME": str(tmp_path), "CHATD_DATABASE_URL": "sqlite:///~/dbs/chat.db"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    database = (tmp_path / "dbs" / "chat.db").resolve()
    assert f"chatd: database is SQLite at {database} (CHATD_DATABASE_URL)\n" in result.stderr
    assert database.exists()
    assert list(work.iterdir()) == []  # no folder named "~" where chatd was started


def test_chat_shows_a_postgresql_url_without_its_password(env: dict[str, str], chatd: Run) -> None:
    url = "postgresql+asyncpg://ann:s3cret@127.0.0.1:9/chatd?password=k3y"
    result = chatd({**env, "CHATD_DATABASE_URL": url}, "chat", stdin="hi\n")
    assert result.returncode == 2
    shown = "postgresql+asyncpg://ann:***@127.0.0.1:9/chatd?password=***"
    assert f"chatd: database is PostgreSQL at {shown} (CHATD_DATABASE_URL)" in result.stderr
    assert "s3cret" not in result.stderr
    assert "k3y" not in result.stderr


def test_chat_streams_a_real_provider_through_its_sdk(
    anthropic_env: dict[str, str], fake_upstream: FakeUpstream, chatd: Run
) -> None:
    result = chatd(anthropic_env, "chat", "--system", "Be terse.", stdin="hello\nagain\n")
    assert result.returncode == 0, result.stderr
    assert 'to 1 message. You said: "hello"' in result.stdout
    assert 'to 3 messages. You said: "again"' in result.stdout
    bodies = [r.body for r in fake_upstream.requests]
    assert bodies[0]["system"] == "Be terse."
    assert bodies[-1]["messages"][0]["content"] == "hello"


def test_missing_key_names_the_variable(env: dict[str, str], chatd: Run) -> None:
    result = chatd({**env, "CHATD_PROVIDER": "anthropic"}, "chat", stdin="hi\n")
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ({}, ["--provider", "nope"], "unknown provider 'nope'"),
        ({"CHATD_DATABASE_URL": "mysql://x/y"}, [], "unsupported database URL"),
        ({"CHATD_MAX_TOKENS": "lots"}, [], "CHATD_MAX_TOKENS"),
        ({}, ["--session", "bad id!"], "session id"),
    ],
)
def test_bad_configuration_is_one_plain_line(
    env: dict[str, str], extra: dict[str, str], args: list[str], message: str, chatd: Run
) -> None:
    result = chatd({**env, **extra}, "chat", *args, stdin="hi\n")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_a_plain_error(
    env: dict[str, str], tmp_path: Path, chatd: Run
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker / 'sub' / 'chat.db'}"
    result = chatd({**env, "CHATD_DATABASE_URL": url}, "chat", stdin="hi\n")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_unreachable_provider_says_so_and_leaves_no_half_turn(
    anthropic_env: dict[str, str], chatd: Run
) -> None:
    dead = {**anthropic_env, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    result = chatd(dead, "chat", stdin="hello\n")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "cannot reach anthropic" in errors[0]
    assert "Traceback" not in result.stderr
    history = chatd(anthropic_env, "chat", stdin="/history\n")
    assert "[failed: not in context]" in history.stdout
    retry = chatd(anthropic_env, "chat", stdin="hello again\n")
    assert "to 1 message." in retry.stdout  # the failed turn is not in the model's context


def test_unreachable_provider_is_one_line_naming_the_root_cause(
    env: dict[str, str], chatd: Run
) -> None:
    port = free_port()
    dead = {
        **env,
        "CHATD_PROVIDER": "openai-compatible",
        "CHATD_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "CHATD_MODEL": "m",
        "CHATD_RETRY_MAX_ATTEMPTS": "3",
        "CHATD_RETRY_MAX_TOTAL_S": "5",
    }
    result = chatd(dead, "chat", stdin="hello\n")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    said = f"error: cannot reach openai-compatible at 127.0.0.1:{port}: connection refused"
    assert [line for line in lines if "connection refused" in line] == [said]
    # Three attempts were made; the two retries are the server log's business, not the user's.
    assert not [line for line in lines if "retry" in line]


def test_slash_commands(env: dict[str, str], tmp_path: Path, chatd: Run) -> None:
    saved = tmp_path / "conv.json"
    script = "\n".join(
        ["/system You are a pirate.", "ahoy", "/history", f"/save {saved}", "/reset", "/history"]
    )
    result = chatd(env, "chat", "--session", "cmd", stdin=script + "\n")
    assert result.returncode == 0, result.stderr
    assert 'My instructions: "You are a pirate."' in result.stdout
    assert "user: ahoy" in result.stdout
    assert "[reset: 1 turns removed]" in result.stderr
    assert "[no messages yet]" in result.stderr
    assert saved.exists()
    loaded = chatd(env, "chat", "--session", "new", stdin=f"/load {saved}\nand now?\n")
    assert "[loaded 1 turns" in loaded.stderr
    assert 'the first was: "ahoy"' in loaded.stdout
    assert "You are a pirate." in loaded.stdout


def test_unknown_slash_command_is_named_and_not_sent(env: dict[str, str], chatd: Run) -> None:
    script = "/foo\n/usr/bin/env is missing, why?\n/save\n/history\n"
    result = chatd(env, "chat", "--session", "slash", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "unknown command /foo; commands: /quit /reset /history" in result.stderr
    assert "usage: /save FILE" in result.stderr
    assert "user: /usr/bin/env is missing, why?" in result.stdout  # a path is a message
    assert "/foo" not in result.stdout


def test_ctrl_d_leaves_on_a_new_line(env: dict[str, str], terminal: Terminal) -> None:
    shown = terminal(env, "chat", after="you> ", keys=b"\x04")
    assert shown.endswith("you> \n")


HOSTILE = "\x1b]0;pwned\x07 \x1b]52;c;cHduZWQ=\x07 \x1b[2J \x9b31m \x1bP1$r\x1b\\ \u202eevil"


def test_the_terminal_never_gets_escape_sequences_from_replies_or_history(
    env: dict[str, str], terminal: Terminal
) -> None:
    # The demo quotes the session's system prompt in its reply, which /history shows again.
    shown = terminal(
        env, "chat", "--system", HOSTILE, after="you> ", keys=b"hello\n/history\n/quit\n", raw=True
    )
    assert "My instructions:" in shown
    for raw in ("\x1b]", "\x07", "\x1b[2J", "\x9b", "\x1bP", "\u202e"):
        assert raw not in shown, f"{raw!r} reached the terminal"
    # Made visible, not dropped: the reply and its stored copy both show what was there.
    assert shown.count("\\x1b]52;c;cHduZWQ=\\x07") == 2
    assert shown.count("\\x9b31m") == 2
    assert shown.count("\\u202eevil") == 2


def test_load_rejects_a_malformed_file_and_changes_nothing(
    env: dict[str, str], tmp_path: Path, chatd: Run
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    result = chatd(env, "chat", "--session", "keep", stdin=f"first\n/load {bad}\n/history\n")
    assert "not a valid chatd session file" in result.stderr
    assert "user: first" in result.stdout


def test_ctrl_c_stops_the_reply_but_not_the_repl(
    anthropic_env: dict[str, str], replying: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = replying(anthropic_env, "tell me a long story [fake: chunks=50 delay_ms=100]")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    out, err = proc.communicate("/history\nstill here?\n/quit\n", timeout=30)
    assert proc.returncode == 0, err
    assert "[stopped" in err
    assert "[interrupted: not in context]" in out
    assert 'You said: "still here?"' in out
    assert "to 1 message." in out.split('You said: "still here?"')[0].splitlines()[-1]


def free_port() -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_starts_with_no_configuration_and_answers(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    unset = {k: v for k, v in env.items() if k not in ("CHATD_DATABASE_URL", "XDG_DATA_HOME")}
    proc = subprocess.Popen(
        [*CHATD, "serve", "--port", str(port)],
        env=unset,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "service": "chatd"}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "using provider demo" in err
    database = tmp_path / ".local" / "share" / "chatd" / "chatd.db"
    assert f"chatd: database is SQLite at {database.resolve()} (CHATD_DATABASE_URL)\n" in err
    assert database.exists()


def test_serve_refuses_a_public_address_without_auth(env: dict[str, str], chatd: Run) -> None:
    off = {**env, "CHATD_AUTH": "off"}
    result = chatd(off, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 with auth off" in result.stderr


def test_db_upgrade_creates_the_database(env: dict[str, str], tmp_path: Path, chatd: Run) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'up.db'}"
    result = chatd({**env, "CHATD_DATABASE_URL": url}, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sub" / "up.db").exists()
    again = chatd({**env, "CHATD_DATABASE_URL": url}, "db", "upgrade")
    assert again.returncode == 0
