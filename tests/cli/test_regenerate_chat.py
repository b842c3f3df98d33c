"""`/regenerate` in the terminal chat: the last reply asked for again, the new one in its place."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from chatd.testing.fake_upstream import FakeUpstream

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_regenerate_replaces_a_failed_reply_and_refuses_in_an_empty_session(
    anthropic_env: dict[str, str], fake_upstream: FakeUpstream, chatd: Run
) -> None:
    # The fake fails this exact request three times (every retry of the send), then answers.
    ask = "hello [fake: status=500 fail_times=3]"
    script = f"/regenerate\n{ask}\n/regenerate\n/history\n/help\n"
    result = chatd(anthropic_env, "chat", "--session", "again", stdin=script)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == "error: no session 'again'"
    assert len(errors) == 2  # the failed send; the regenerate answered
    assert "/regenerate" in result.stderr.splitlines()[-1]  # listed in the help
    assert len(fake_upstream.requests) == 4
    history = [
        line for line in result.stdout.splitlines() if line.startswith(("user:", "assistant:"))
    ]
    # One turn: the failed one was replaced by the reply.
    assert history[0] == f"user: {ask}"
    assert history[1].startswith("assistant: Fake reply #")
    assert len(history) == 2
