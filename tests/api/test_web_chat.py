"""The chat page in real headless Chromium: send, stream, stop, switch, reload, sign in, limits."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from playwright.sync_api import Page, expect

Shot = Callable[[Page, str], Path]

SLOW = "[fake: chunks=12 delay_ms=250]"


def session_of(page: Page) -> str:
    """Return the session the page's address names."""
    return parse_qs(urlparse(page.url).query)["session"][0]


def send(page: Page, text: str) -> None:
    """Type a message and press Enter."""
    page.fill("#input", text)
    page.press("#input", "Enter")


def last_turn_ends(page: Page, state: str = "complete") -> None:
    """Wait until the last turn on the page is stored in `state`."""
    expect(page.locator(".turn").last).to_have_attribute("data-state", state)


def key_for(make_key: Any, server: Any, user: str) -> str:
    """Make a key for user; in a thread, as Playwright's loop runs in this one."""
    with ThreadPoolExecutor(1) as pool:
        key: str = pool.submit(make_key, server, user).result()
    return key


def turns(server: Any, session_id: str, key: str | None = None) -> list[dict[str, Any]]:
    """Return the session's turns as the API lists them."""
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    answer = httpx.get(f"{server.url}/v1/sessions/{session_id}/messages", headers=headers)
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def test_the_empty_page_opens_without_a_key_when_auth_is_off(
    make_server: Any, open_page: Any, screenshot: Shot
) -> None:
    page, log = open_page(make_server())
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#signin")).to_be_hidden()
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#input")).to_be_focused()
    screenshot(page, "empty")
    assert not log.errors
    assert not log.console
    assert not log.elsewhere()


def test_a_reply_streams_in_as_it_is_written(
    make_server: Any, open_page: Any, screenshot: Shot
) -> None:
    server = make_server()
    page, log = open_page(server)
    send(page, f"Tell me about streams {SLOW}")
    reply = page.locator(".turn .bubble.markdown").last
    expect(page.locator(".turn").last).to_have_attribute("data-state", "streaming")
    # The new session is named after its first message at once, in the top bar and sidebar.
    expect(page.locator("#session-title")).to_have_text(f"Tell me about streams {SLOW}")
    expect(page.locator("#sessions .session-link")).to_have_text([f"Tell me about streams {SLOW}"])
    expect(reply).not_to_be_empty()
    partial = reply.inner_text()
    expect(page.locator("#stop")).to_be_visible()
    screenshot(page, "streaming")
    last_turn_ends(page)
    final = reply.inner_text()
    assert len(partial) < len(final)
    assert final.startswith(partial.strip())
    assert "You said" in final
    # Tokens and cost of the turn, and the session's cost, are shown once it ends.
    expect(page.locator(".turn .usage").last).to_contain_text(" in · ")
    expect(page.locator("#send")).to_be_visible()
    (stored,) = turns(server, session_of(page))
    assert stored["state"] == "complete"
    assert stored["messages"][1]["content"] == final
    assert not log.errors
    assert not log.console
    assert not log.elsewhere()


def test_switching_sessions_and_reloading_keep_each_conversation(
    make_server: Any, open_page: Any
) -> None:
    page, log = open_page(make_server())
    send(page, "first conversation")
    last_turn_ends(page)
    first = session_of(page)
    page.click("#new-chat")
    expect(page.locator("#empty")).to_be_visible()
    send(page, "second conversation")
    last_turn_ends(page)
    second = session_of(page)
    assert first != second
    expect(page.locator("#sessions .session")).to_have_count(2)
    page.locator(f'#sessions .session[data-id="{first}"] .session-link').click()
    expect(page.locator(".turn .msg.user")).to_have_text(["first conversation"])
    assert session_of(page) == first
    page.reload()
    expect(page.locator(".turn .msg.user")).to_have_text(["first conversation"])
    expect(page.locator(".turn .bubble.markdown")).to_contain_text("first conversation")
    expect(page.locator(f'#sessions .session[data-id="{first}"]')).to_have_class("session current")
    page.go_back()
    expect(page.locator(".turn .msg.user")).to_have_text(["second conversation"])
    assert not log.errors
    assert not log.console


def test_a_page_opened_on_a_session_shows_it(make_server: Any, open_page: Any) -> None:
    server = make_server()
    answer = httpx.post(f"{server.url}/v1/sessions/opened/messages", json={"content": "hello"})
    assert answer.status_code == 200
    page, _ = open_page(server, "/ui/?session=opened")
    expect(page.locator(".turn .msg.user")).to_have_text(["hello"])
    page2, _ = open_page(server, "/ui/?session=missing")
    expect(page2.locator("#notice")).to_contain_text("No such session")
    expect(page2.locator("#empty")).to_be_visible()


def test_stop_mid_stream_leaves_an_interrupted_turn(make_server: Any, open_page: Any) -> None:
    server = make_server()
    page, log = open_page(server)
    send(page, "[fake: chunks=40 delay_ms=250] a long answer please")
    expect(page.locator(".turn .bubble.markdown").last).not_to_be_empty()
    page.click("#stop")
    last_turn_ends(page, "interrupted")
    expect(page.locator(".turn .state.interrupted")).to_contain_text("Stopped")
    # Asked for, so not reported as an error.
    expect(page.locator("#notice")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()
    (stored,) = turns(server, session_of(page))
    assert stored["state"] == "interrupted"
    # The session is free again at once.
    send(page, "and now?")
    last_turn_ends(page)
    assert [t["state"] for t in turns(server, session_of(page))] == ["interrupted", "complete"]
    assert not log.errors
    assert not log.console


def test_a_rate_limited_send_says_when_the_limit_resets(make_server: Any, open_page: Any) -> None:
    # One day's tokens run out with the first reply; reading goes on, the next send is refused.
    server = make_server(limit_tokens_per_day=5)
    page, log = open_page(server)
    send(page, "use up the day's tokens")
    last_turn_ends(page)
    send(page, "one more")
    notice = page.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice).to_have_attribute("data-kind", "rate-limit")
    expect(notice).to_contain_text("Rate limit reached. You can send again at")
    expect(notice).to_contain_text(re.compile(r"\(in (\d+ s|\d+ min|\d+ h \d+ min)\)"))
    reset_at = notice.get_attribute("data-reset-at")
    assert reset_at is not None
    assert reset_at.endswith("Z")
    # Refused, so nothing changed: the message is still in the box, one turn stored.
    expect(page.locator("#input")).to_have_value("one more")
    expect(page.locator(".turn")).to_have_count(1)
    assert len(turns(server, session_of(page))) == 1
    assert not log.errors


def test_sign_in_with_a_key_and_a_wrong_key_is_refused(
    make_server: Any, make_key: Any, open_page: Any, screenshot: Shot
) -> None:
    server = make_server(auth="on")
    ann = key_for(make_key, server, "ann")
    bob = key_for(make_key, server, "bob")
    page, log = open_page(server)
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#signin-key", "chatd-not-a-real-key")
    page.press("#signin-key", "Enter")
    expect(page.locator("#signin-error")).to_have_text("That key was refused.")
    screenshot(page, "signin-refused")
    assert page.evaluate("sessionStorage.getItem('chatd.key')") is None
    page.fill("#signin-key", ann)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#app")).to_be_visible()
    send(page, "ann's secret plan")
    last_turn_ends(page)
    mine = session_of(page)
    # The key lives in this tab's sessionStorage: never in the address or a cookie.
    assert page.evaluate("sessionStorage.getItem('chatd.key')") == ann
    assert ann not in page.url
    assert page.context.cookies() == []
    page.reload()
    expect(page.locator(".turn .msg.user")).to_have_text(["ann's secret plan"])
    # Another user's session is missing to bob, exactly as one that does not exist.
    other, _ = open_page(server, f"/ui/?session={mine}")
    expect(other.locator("#signin")).to_be_visible()
    other.fill("#signin-key", bob)
    other.press("#signin-key", "Enter")
    expect(other.locator("#notice")).to_contain_text("No such session")
    expect(other.locator(".turn")).to_have_count(0)
    expect(other.locator("#sessions .session")).to_have_count(0)
    # Signing out forgets the key.
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('chatd.key')") is None
    assert not log.errors


def test_a_failed_reply_is_shown_as_failed(
    make_server: Any, open_page: Any, screenshot: Shot
) -> None:
    server = make_server()
    page, _ = open_page(server)
    send(page, "[fake: status=500] this will fail")
    notice = page.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice).to_have_attribute("data-kind", "error")
    last_turn_ends(page, "failed")
    expect(page.locator(".turn .state.failed")).to_contain_text("Failed")
    screenshot(page, "error")
    assert [t["state"] for t in turns(server, session_of(page))] == ["failed"]


def test_a_truncated_reply_can_be_continued(make_server: Any, open_page: Any) -> None:
    server = make_server()
    page, log = open_page(server)
    send(page, "[fake: stop=max_tokens] go on and on")
    last_turn_ends(page, "truncated")
    expect(page.locator(".turn .state.truncated")).to_contain_text("Cut short")
    before = page.locator(".turn .bubble.markdown").inner_text()
    page.click(".turn .continue")
    expect(page.locator(".turn .bubble.markdown")).not_to_have_text(before)
    last_turn_ends(page, "truncated")
    expect(page.locator(".turn")).to_have_count(1)
    after = page.locator(".turn .bubble.markdown").inner_text()
    assert after.startswith(before)
    assert len(after) > len(before)
    (stored,) = turns(server, session_of(page))
    assert "".join(m["content"] for m in stored["messages"][1:]) == after
    assert not log.errors


def test_regenerate_replaces_the_last_reply(make_server: Any, open_page: Any) -> None:
    server = make_server()
    page, log = open_page(server)
    send(page, "say something")
    last_turn_ends(page)
    first = page.locator(".turn").get_attribute("data-turn-id")
    page.click(".turn .regenerate")
    expect(page.locator(".turn")).not_to_have_attribute("data-turn-id", first or "")
    last_turn_ends(page)
    expect(page.locator(".turn")).to_have_count(1)
    (stored,) = turns(server, session_of(page))
    assert stored["id"] != first
    assert stored["messages"][0]["content"] == "say something"
    assert not log.errors


def test_enter_sends_and_shift_enter_starts_a_new_line(make_server: Any, open_page: Any) -> None:
    page, _ = open_page(make_server())
    page.click("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(page.locator("#input")).to_have_value("line one\nline two")
    expect(page.locator(".turn")).to_have_count(0)
    page.keyboard.press("Enter")
    last_turn_ends(page)
    expect(page.locator(".turn .msg.user")).to_have_text(["line one\nline two"])
    expect(page.locator("#input")).to_have_value("")
    # Escape stops a reply as it streams.
    page.keyboard.type(f"{SLOW} a long one")
    page.keyboard.press("Enter")
    expect(page.locator(".turn .bubble.markdown").last).not_to_be_empty()
    page.keyboard.press("Escape")
    last_turn_ends(page, "interrupted")


def test_copy_puts_the_reply_on_the_clipboard(make_server: Any, open_page: Any) -> None:
    page, _ = open_page(make_server(), permissions=["clipboard-read", "clipboard-write"])
    send(page, "copy me")
    last_turn_ends(page)
    page.click(".turn .copy")
    expect(page.locator(".turn .copy")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator(".turn .bubble.markdown").inner_text()


def test_session_settings_are_saved(make_server: Any, open_page: Any) -> None:
    server = make_server()
    page, _ = open_page(server)
    send(page, "hello")
    last_turn_ends(page)
    page.click("#toggle-settings")
    page.fill("#set-title", "Support bot")
    page.fill("#set-system", "Answer in one sentence.")
    page.select_option("#set-policy", "window")
    page.fill("#set-limit", "10")
    page.click("#settings button[type=submit]")
    expect(page.locator("#settings")).to_be_hidden()
    expect(page.locator("#session-title")).to_have_text("Support bot")
    info = httpx.get(f"{server.url}/v1/sessions/{session_of(page)}").json()
    assert info["title"] == "Support bot"
    assert info["system_prompt"] == "Answer in one sentence."
    assert info["context"] == {"policy": "window", "limit": 10}
    # A bad value is explained where it was typed, and nothing is saved.
    page.click("#toggle-settings")
    page.fill("#set-limit", "99999999")
    page.click("#settings button[type=submit]")
    expect(page.locator("#settings-error")).to_be_visible()
    info = httpx.get(f"{server.url}/v1/sessions/{session_of(page)}").json()
    assert info["context"] == {"policy": "window", "limit": 10}


def test_sessions_are_renamed_cleared_and_deleted_from_the_sidebar(
    make_server: Any, open_page: Any
) -> None:
    server = make_server()
    page, log = open_page(server)
    send(page, "keep this one")
    last_turn_ends(page)
    sid = session_of(page)
    item = page.locator(f'#sessions .session[data-id="{sid}"]')
    expect(item).to_contain_text("keep this one")
    item.locator(".session-menu").click()
    item.locator(".rename").click()
    page.fill(".rename-input", "Renamed chat")
    page.press(".rename-input", "Enter")
    expect(item.locator(".session-link")).to_have_text("Renamed chat")
    expect(page.locator("#session-title")).to_have_text("Renamed chat")
    assert httpx.get(f"{server.url}/v1/sessions/{sid}").json()["title"] == "Renamed chat"
    item.locator(".session-menu").click()
    item.locator(".reset").click()
    item.locator(".confirm").click()
    expect(page.locator(".turn")).to_have_count(0)
    assert turns(server, sid) == []
    item.locator(".session-menu").click()
    item.locator(".delete").click()
    item.locator(".confirm").click()
    expect(page.locator("#sessions .session")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    assert httpx.get(f"{server.url}/v1/sessions/{sid}").status_code == 404
    assert not log.errors
    assert not log.dialogs


def test_the_sidebar_pages_through_many_sessions(make_server: Any, open_page: Any) -> None:
    server = make_server()
    for i in range(35):
        created = httpx.post(f"{server.url}/v1/sessions", json={"id": f"s{i:02d}"})
        assert created.status_code == 201
    httpx.patch(f"{server.url}/v1/sessions/s05", json={"title": "touched last"})
    page, _ = open_page(server)
    expect(page.locator("#sessions .session")).to_have_count(30)
    # Most recently active first: the one just renamed, then the newest.
    ids = page.locator("#sessions .session").evaluate_all(
        "(items) => items.map((i) => i.dataset.id)"
    )
    assert ids[:3] == ["s05", "s34", "s33"]
    page.click("#more-sessions")
    expect(page.locator("#sessions .session")).to_have_count(35)
    expect(page.locator("#more-sessions")).to_be_hidden()


MARKDOWN = """# Release notes

Here is what changed, with **bold**, *emphasis* and `inline code`:

1. Faster *streaming*
2. A [changelog](https://example.com/changes)

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"
```

| Feature | Status |
|---|---|
| Stop | done |
| Continue | done |

> Quoted text stays quoted.
"""


def test_a_long_markdown_conversation_renders_safely_and_readably(
    make_server: Any, open_page: Any, screenshot: Shot, imported: Any
) -> None:
    server = make_server()
    imported(server, "notes", [(f"What changed in release {i}?", MARKDOWN) for i in range(6)])
    page, log = open_page(server, "/ui/?session=notes")
    expect(page.locator(".turn")).to_have_count(6)
    last = page.locator(".turn").last
    expect(last.locator("h1")).to_have_text("Release notes")
    expect(last.locator("pre code .hljs-keyword").first).to_have_text("def")
    expect(last.locator("table td").first).to_have_text("Stop")
    link = last.locator('a[href="https://example.com/changes"]')
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(link).to_have_attribute("target", "_blank")
    screenshot(page, "markdown")
    assert not log.errors
    assert not log.console
    assert not log.elsewhere()


def test_the_page_works_at_phone_width_and_in_dark_mode(
    make_server: Any, open_page: Any, screenshot: Shot, imported: Any
) -> None:
    server = make_server()
    imported(server, "phone", [("How do I deploy?", MARKDOWN)])
    page, log = open_page(
        server,
        "/ui/?session=phone",
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
        is_mobile=True,
        has_touch=True,
    )
    expect(page.locator(".turn")).to_have_count(1)
    # The sidebar is out of the way until asked for; nothing scrolls sideways.
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 28)"
    screenshot(page, "phone-dark")
    page.click("#toggle-sidebar")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    screenshot(page, "phone-sidebar")
    page.locator('#sessions .session[data-id="phone"] .session-link').click()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    send(page, "from my phone")
    last_turn_ends(page)
    expect(page.locator(".turn")).to_have_count(2)
    assert not log.errors
    assert not log.console


def test_leaving_a_reply_mid_stream_does_not_stop_it(make_server: Any, open_page: Any) -> None:
    server = make_server()
    page, log = open_page(server)
    send(page, "an earlier chat")
    last_turn_ends(page)
    earlier = session_of(page)
    page.click("#new-chat")
    send(page, f"{SLOW} keep going while I look elsewhere")
    expect(page.locator(".turn .bubble.markdown").last).not_to_be_empty()
    busy = session_of(page)
    page.locator(f'#sessions .session[data-id="{earlier}"] .session-link').click()
    expect(page.locator(".turn .msg.user")).to_have_text(["an earlier chat"])
    expect(page.locator("#send")).to_be_visible()
    # The reply went on being written and was stored whole; going back shows it.
    page.locator(f'#sessions .session[data-id="{busy}"] .session-link').click()
    expect(page.locator(".turn .msg.user")).to_contain_text("keep going")
    deadline = time.monotonic() + 20
    while turns(server, busy)[0]["state"] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.2)
    page.reload()
    last_turn_ends(page)
    assert [t["state"] for t in turns(server, busy)] == ["complete"]
    assert not log.errors


def test_the_settings_panel_clears_and_deletes_after_asking_again(
    make_server: Any, open_page: Any
) -> None:
    server = make_server()
    page, log = open_page(server)
    send(page, "something to clear")
    last_turn_ends(page)
    sid = session_of(page)
    page.click("#toggle-settings")
    page.click("#reset-session")
    expect(page.locator("#reset-session")).to_have_text("Click again to clear")
    assert len(turns(server, sid)) == 1
    page.click("#reset-session")
    expect(page.locator(".turn")).to_have_count(0)
    assert turns(server, sid) == []
    page.click("#delete-session")
    expect(page.locator("#delete-session")).to_have_text("Click again to delete")
    page.click("#delete-session")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator(f'#sessions .session[data-id="{sid}"]')).to_have_count(0)
    assert httpx.get(f"{server.url}/v1/sessions/{sid}").status_code == 404
    assert not log.dialogs


def test_after_a_reply_only_the_new_turn_is_read_back(
    make_server: Any, open_page: Any, imported: Any
) -> None:
    server = make_server()
    imported(server, "long", [(f"question {i}", f"answer {i}") for i in range(1, 4)])
    page, log = open_page(server, "/ui/?session=long")
    expect(page.locator(".turn")).to_have_count(3)
    send(page, "question 4")
    last_turn_ends(page)
    replaced = page.locator(".turn").last.get_attribute("data-turn-id") or ""
    page.click(".turn:last-child .regenerate")
    expect(page.locator(".turn").last).not_to_have_attribute("data-turn-id", replaced)
    last_turn_ends(page)

    def reads() -> list[str]:
        return [u for u in log.requests if "/v1/sessions/long/messages?" in u]

    deadline = time.monotonic() + 10
    while len(reads()) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    page.wait_for_timeout(300)  # and no read more
    seen = reads()
    # The page's first read, then after each of the two replies the turns past the third.
    assert len(seen) == 3
    assert "cursor" not in seen[0]
    assert all("cursor=3" in u for u in seen[1:])
    expect(page.locator(".turn .msg.user")).to_have_text([f"question {i}" for i in range(1, 5)])
    expect(page.locator(".turn")).to_have_count(4)
