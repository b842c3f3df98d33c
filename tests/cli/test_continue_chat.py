"""`/continue` in the terminal chat: a reply cut at max_tokens goes on, as one reply."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from chatd.providers.openai_compat import CONTINUE_PROMPT
from chatd.testing.fake_upstream import FakeUpstream

Run = Callable[..., subprocess.CompletedProcess[str]]
CUT = "[truncated: the reply was cut at max_tokens; /continue continues it]"


def assistant_lines(stdout: str) -> list[str]:
    """Return the assistant lines /history printed."""
    return [line for line in stdout.splitlines() if line.startswith("assistant: ")]


def test_continue_goes_on_with_a_cut_reply_in_the_same_turn(
    anthropic_env: dict[str, str], fake_upstream: FakeUpstream, chatd: Run
) -> None:
    # The fake stops with max_tokens as told; the directive is in the message the prefilled
    # continuation still answers, so the continuation is cut too and can be continued again.
    script = "/help\nhello [fake: stop=max_tokens]\n/continue\n/history\n"
    result = chatd(anthropic_env, "chat", "--session", "cut", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "commands: /quit /reset /history /continue" in result.stderr  # listed in the help
    assert result.stderr.count(CUT) == 2
    first, more = (r.body["messages"] for r in fake_upstream.requests)
    # Anthropic continues a prefill: the reply so far, as the last message.
    assert more[-1]["role"] == "assistant"
    assert more[:-1] == first
    [line] = assistant_lines(result.stdout)  # both parts, as one reply
    assert line.startswith("assistant: " + more[-1]["content"])
    assert line.endswith("  [truncated]")
    assert line.count("Fake reply #") == 2


def test_continue_asks_an_openai_model_for_the_rest_and_refuses_when_nothing_is_cut(
    env: dict[str, str], fake_upstream: FakeUpstream, chatd: Run
) -> None:
    openai_env = {
        **env,
        "CHATD_PROVIDER": "openai",
        "CHATD_MODEL": "test-model",
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_upstream.url + "/v1",
    }
    script = "/continue\nhello [fake: stop=max_tokens]\n/continue\n/history\n/continue\n"
    result = chatd(openai_env, "chat", "--session", "cut", stdin=script)
    # Refusals of /continue are not failed turns: the exit status stays 0.
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: no session 'cut'",
        "error: the last reply in session 'cut' is complete, not truncated: "
        "only a reply cut short by max_tokens can be continued",
    ]
    assert result.stderr.count(CUT) == 1
    sent = fake_upstream.requests[-1].body["messages"]
    assert sent[-1] == {"role": "user", "content": CONTINUE_PROMPT}
    [line] = assistant_lines(result.stdout)
    assert line.count("Fake reply #") == 2
    assert "[truncated]" not in line
    # The request for the rest was sent, never stored.
    assert [line for line in result.stdout.splitlines() if line.startswith("user: ")] == [
        "user: hello [fake: stop=max_tokens]"
    ]
