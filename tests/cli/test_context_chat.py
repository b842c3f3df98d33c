"""The terminal chat says when the model stops seeing older messages."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_the_chat_says_when_older_messages_leave_the_models_view(
    anthropic_env: dict[str, str], chatd: Run
) -> None:
    env = {**anthropic_env, "CHATD_CONTEXT_POLICY": "window", "CHATD_CONTEXT_MAX_MESSAGES": "2"}
    result = chatd(env, "chat", "--session", "ctx", stdin="one\ntwo\n")
    assert result.returncode == 0, result.stderr
    # The second message makes three in a two-message window: the first exchange goes.
    assert result.stderr.count("[context: ") == 1
    assert "[context: 2 older messages left out (the limit); the model sees the last 1]" in (
        result.stderr
    )
