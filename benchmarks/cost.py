"""Conversation cost: what a long support conversation is billed, three ways, on both wire formats.

    python -m benchmarks.cost                        # 200 turns, checkpoints 50 and 200
    python -m benchmarks.cost --turns 12 --out DIR   # a smoke run
    python -m benchmarks.run --only cost             # the same, through the harness's command

One scripted conversation (`system_prompt`, `user_message`: a support bot's ~1,500-token
prompt, ~60-token user messages, ~250-token replies, all in the fake's tokens) is billed for:

(a) naive: every turn sends the whole history, no prompt caching;
(b) window: every turn sends the last `WINDOW` messages and the new one, no caching (a window
    that slides by one exchange a turn breaks any prefix cache past the system prompt);
(c) chatd: the conversation run through chatd itself (`chatd.runtime.open_runtime` on a
    temporary SQLite file, settings at chatd's defaults, so its default context policy) against
    the in-process fake upstream, billed from the usage the fake reported for each call.

(a) and (b) are not sent anywhere: each request body they would send is built and counted with
the fake's tokenizer (`count_tokens`, exactly what the fake would report), and its reply is the
one the fake's reply planner gives for that body. (An OpenAI-compatible server would cache a
naive client's growing prefix on its own; (a) is billed without any caching all the same.)

Billing is in input-equivalent tokens: uncached input x1, cache writes x1.25, cache reads x0.1,
and output of calls that are not a turn's reply (a summary chatd writes, say) x5. The replies'
own output is the same for every approach and not counted. The fake answers a summary request
as any other (a short echo of the instruction), so (c) runs with chatd's own summary prompt plus
the fake's ``words`` directive (`REALISTIC_SUMMARIES`): summaries of about 490 tokens, as a
model writes for a long support conversation, billed at x5 and carried in every later prompt.
A checkpoint N is the first N turns of the one conversation, so the 50-turn figure is the
200-turn run's first 50 turns. Writes cost.json and cost.md to `--out` (default
benchmarks/results/cost-<time>/) and prints the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvloop

from chatd.config import Settings
from chatd.engine import ChatService, TurnOptions
from chatd.engine.summarize import SUMMARY_PROMPT
from chatd.runtime import open_runtime
from chatd.testing.fake_anthropic import anthropic_conversation, anthropic_reply
from chatd.testing.fake_cache import CacheSplit
from chatd.testing.fake_openai import openai_conversation, openai_reply
from chatd.testing.fake_tokens import count_text, count_tokens
from chatd.testing.fake_upstream import FakeUpstream, RecordedRequest
from chatd.types import TurnEnded, TurnState

Format = Literal["anthropic", "openai"]
FORMATS: tuple[Format, ...] = ("anthropic", "openai")
APPROACHES = ("naive", "window", "chatd")

# Input-equivalent weights: what each kind of token costs against one uncached input token.
UNCACHED, CACHE_WRITE, CACHE_READ, EXTRA_OUTPUT = 1.0, 1.25, 0.1, 5.0
WINDOW = 20
# chatd's share of naive's bill, and the history it must show the model (benchmarks/README.md).
TARGETS = {50: 0.15, 200: 0.06}
TARGET_VERBATIM = 20
# Turns from which the history is longer than the verbatim target: the view is judged after it.
JUDGED_AFTER_TURN = TARGET_VERBATIM // 2
MODEL = "bench-model"
SESSION = "cost-bench"
MAX_TOKENS = 1024

SYSTEM_TOKENS = 1500
USER_TOKENS = 60
REPLY_TOKENS = 250

# ---- The script ------------------------------------------------------------------------------

_INTRO = """\
You are Lumen, the customer support assistant of Brightwave Home Energy, a company that sells, \
installs and services rooftop solar panels, home batteries, heat pumps and smart thermostats \
in the United Kingdom and Ireland. You answer customers in the chat window of the Brightwave \
app and website. Customers come to you with questions about their installation, their bills, \
their monitoring app, appointments, faults, warranties and moving home. Your job is to solve \
the problem in the chat when you can, to set the right expectations when you cannot, and to \
hand over to a human colleague cleanly when the rules below say so.

Tone and style. Be warm, plain and brief. Write the way a helpful engineer talks to a \
neighbour: short sentences, no jargon unless the customer uses it first, and no marketing \
language. Never blame the customer. Do not apologise more than once in a conversation; say \
what you will do instead. Use the customer's first name if they give it. Answer the question \
that was asked before offering anything else. When you give steps, number them and keep each \
step to one action. Do not use emoji. Keep most answers under 180 words unless the customer \
asks for detail.

Identity and privacy. Before you discuss a specific account, confirm the customer's identity \
with two of: the account number (BW followed by eight digits), the postcode of the \
installation, the email address on the account, or the last four digits of the bank account \
that pays the direct debit. Never ask for a full card number, a password or a one-time code, \
and if a customer offers one, tell them not to share it and carry on without it. Do not read \
out personal data the customer has not already given you in this conversation. If someone says \
they are calling for a relative or a tenant, you may give general information but not account \
details unless the account holder has added them as an authorised contact.
"""

_PRODUCTS = [
    ("Solar Starter", "4 kW array, 10 panels, string inverter", "10 years", "25 years output"),
    ("Solar Plus", "6 kW array, 14 panels, hybrid inverter", "12 years", "25 years output"),
    ("Solar Max", "8 kW array, 18 panels, hybrid inverter", "12 years", "30 years output"),
    ("Battery 5", "5 kWh lithium iron phosphate battery", "10 years", "70 percent capacity"),
    ("Battery 10", "10 kWh lithium iron phosphate battery", "10 years", "70 percent capacity"),
    ("Heat Pump Air 7", "7 kW air source heat pump with cylinder", "7 years", "parts and labour"),
    ("Heat Pump Air 12", "12 kW air source heat pump with cylinder", "7 years", "parts and labour"),
    ("Thermostat One", "smart thermostat with two room sensors", "3 years", "replacement"),
]

_FAULTS = [
    ("E01", "inverter lost grid connection", "check the AC isolator is on; wait 10 minutes"),
    ("E04", "battery temperature high", "make sure the vents are clear; the battery cools itself"),
    ("E07", "panel string voltage low", "usually shade or snow; book a visit if it lasts 3 days"),
    ("E12", "monitoring gateway offline", "restart the router, then the gateway, in that order"),
    ("E19", "heat pump low flow", "check the system pressure is between 1 and 1.5 bar"),
    ("E23", "thermostat sensor missing", "replace the sensor's AA batteries and re-pair it"),
]

_POLICIES = """\
Appointments. Service visits are booked in four-hour windows, Monday to Saturday, 8am to 6pm. \
You can offer the next three free windows from the booking tool and confirm one. A customer may \
move a visit for free up to 24 hours before it starts; later changes are allowed but tell them \
the engineer may already be on the way. Emergency visits (smoke, burning smell, water leaking \
from a heat pump or battery, exposed wiring) are not booked in chat: tell the customer to turn \
the system off at the isolator if it is safe, to call the emergency line on 0800 112 4455 at \
once, and to leave the property if they smell burning.

Billing and refunds. Monthly plans are billed on the first working day of the month by direct \
debit. Export payments under the Smart Export Guarantee are paid quarterly, three months in \
arrears, and depend on meter readings from the customer's supplier, so a late payment is \
usually a late reading. You may refund a missed-appointment charge or a duplicate payment of \
up to 150 pounds without approval; anything larger, or any refund of an installation payment, \
goes to the billing team with a summary of the case. Never promise a refund date: say the \
billing team answers within three working days.

Warranties. The warranty periods are in the product table above. A warranty claim needs the \
serial number (on the label under the unit, or in the app under Devices), a photo of the fault \
code if there is one, and the date the fault started. Damage from storms, pests, alterations by \
someone other than Brightwave, or a roof replaced without telling us is not covered; say so \
kindly and offer a paid visit.

Moving home. The system stays with the property. Transfer the monitoring account to the buyer \
from Settings, Property, Transfer, and give the buyer the handover pack. Export payments move \
to the new owner from the completion date once they register with their own supplier.

Escalation. Hand over to a human colleague when the customer asks for one twice, when a \
safety issue is reported, when a complaint mentions a regulator or a solicitor, when a refund \
is above your limit, or when you have tried two fixes that did not work. When you hand over, \
write a three-line summary: who the customer is, what is wrong, and what was already tried. \
Tell the customer the usual wait (under 15 minutes from 8am to 8pm, otherwise the next \
morning).

Tools. You can look up an account (after the identity check), read the last 30 days of \
monitoring data and fault codes, see and book service windows, issue refunds within your \
limit, and open a case for the billing, warranty or installations team. Say what you are \
doing when you use a tool (for example, "I am checking your monitoring data now"), and tell \
the customer what you found in plain words rather than pasting raw numbers. If a tool fails, \
try once more; if it fails again, say that the system is slow and offer to open a case so \
that a colleague follows up by email within one working day. Every case you open needs a \
title, the customer's account number, and the summary described under Escalation. Close the \
conversation by asking whether there is anything else, and if there is not, thank the \
customer by name and remind them that the app's Help page has guides for the common faults.

What you must not do. Do not give electrical instructions beyond switching an isolator off or \
on, restarting a gateway, or replacing thermostat batteries. Do not diagnose roof or structural \
problems. Do not quote prices for new installations: send the customer to the quote page. Do not \
comment on competitors. Do not guess: if the tools or this prompt do not give you the answer, \
say you will find out and hand over.
"""

_OPENERS = [
    "Hi again.",
    "Thanks, that helps.",
    "Sorry, one more thing.",
    "OK, I tried that.",
    "Quick follow-up.",
    "Right, understood.",
    "Hello, it's me again.",
]
_TOPICS = [
    "The app shows fault code E12 and the monitoring graph stopped yesterday afternoon.",
    "My export payment for the last quarter has not arrived yet.",
    "The battery only charged to 60 percent overnight even on the cheap tariff.",
    "The heat pump is making a humming noise when it starts up in the morning.",
    "I want to move my service visit from Thursday morning to next week.",
    "We are selling the house in the spring and the buyers asked about the panels.",
    "The thermostat in the back bedroom keeps saying the sensor is missing.",
    "I was charged twice for this month's plan, both on the same day.",
    "The inverter display went blank for about an hour during the storm.",
    "Our solar output looks lower this month than the same month last year.",
    "The engineer who came last week left the loft hatch open and a panel clip behind.",
    "I would like to add my daughter as a contact on the account.",
]
_DETAILS = [
    "The account number is BW40217785 and the postcode is BS6 7QT.",
    "I already restarted the router and the gateway, in that order, twice.",
    "The pressure gauge on the cylinder reads about 1.2 bar, if that matters.",
    "Nothing has changed on the roof, and there is no shade from the new extension.",
    "My neighbour has the same system and theirs seems fine.",
    "I have the serial number from the label if you need it.",
]
_ASKS = [
    "What should I do next, and do I need an engineer?",
    "Can you tell me when this will be sorted?",
    "Is this covered by the warranty or will I be charged?",
    "Could you explain what that code means in plain words?",
    "How long does this usually take, roughly?",
    "Can you book that for me, or do I have to call?",
]
_FILLERS = [
    "It is not urgent, but I would like to understand it.",
    "I am working from home most days this week, so mornings are easiest.",
    "My partner set the system up, so I am not sure about every setting.",
    "I checked the app on my phone and on the laptop and both show the same.",
    "We have had the system for about two years and it has been fine until now.",
]
# `[fake: words=NNN]` is 7 tokens: [ fake : words = NNN ].
_DIRECTIVE_TOKENS = 7
# The fake's reply around the quoted text: `Fake reply #HEX to N messages. You said: "`, `".`.
_REPLY_FRAME_TOKENS = 14


def system_prompt() -> str:
    """Return the support bot's system prompt (about 1,500 fake tokens)."""
    products = "\n".join(
        f"- {name}: {what}; warranty {years}; guarantee {guarantee}."
        for name, what, years, guarantee in _PRODUCTS
    )
    faults = "\n".join(
        f"- {code}: {meaning}. First step: {step}." for code, meaning, step in _FAULTS
    )
    return (
        f"{_INTRO}\nProducts and warranties:\n{products}\n\n"
        f"Fault codes shown in the app:\n{faults}\n\n{_POLICIES}"
    )


def user_said(turn: int) -> str:
    """Return the words of the user's message on turn (1-based), without the fake's directive."""
    # Seeded by the turn alone: the same words on every run and Python version.
    pick = random.Random(turn)
    opener = pick.choice(_OPENERS) if turn > 1 else "Hello."
    parts = [opener, pick.choice(_TOPICS), pick.choice(_DETAILS), pick.choice(_ASKS)]
    # A filler sentence when it brings the message, directive included, closer to USER_TOKENS.
    filler = pick.choice(_FILLERS)
    short = USER_TOKENS - _DIRECTIVE_TOKENS - count_text(" ".join(parts))
    if count_text(filler) < 2 * short:
        parts.insert(3, filler)
    return " ".join(parts)


def user_message(turn: int) -> str:
    """Return the user's message on turn (1-based): its words and a directive sizing the reply."""
    said = user_said(turn)
    words = max(0, REPLY_TOKENS - _REPLY_FRAME_TOKENS - count_text(said))
    return f"{said} [fake: words={words}]"


# ---- Billing ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Bill:
    """Tokens of one or more model calls, by how they are billed."""

    uncached: int = 0
    cache_write: int = 0
    cache_read: int = 0
    extra_output: int = 0
    calls: int = 0
    extra_calls: int = 0

    @property
    def billed(self) -> float:
        """Return the input-equivalent tokens these are billed as."""
        return (
            UNCACHED * self.uncached
            + CACHE_WRITE * self.cache_write
            + CACHE_READ * self.cache_read
            + EXTRA_OUTPUT * self.extra_output
        )

    def add(self, other: Bill) -> None:
        """Add another bill's tokens and calls to this one."""
        self.uncached += other.uncached
        self.cache_write += other.cache_write
        self.cache_read += other.cache_read
        self.extra_output += other.extra_output
        self.calls += other.calls
        self.extra_calls += other.extra_calls


def bill_of_call(fmt: Format, usage: dict[str, int], *, extra: bool) -> Bill:
    """Bill one served call from the usage the fake reported for it."""
    read = usage.get("cache_read", 0)
    # OpenAI's prompt_tokens includes the cached ones; Anthropic's input_tokens is the rest.
    fresh = usage["input_tokens"] - (read if fmt == "openai" else 0)
    return Bill(
        uncached=fresh,
        cache_write=usage.get("cache_write", 0),
        cache_read=read,
        extra_output=usage.get("output_tokens", 0) if extra else 0,
        calls=1,
        extra_calls=int(extra),
    )


def total(bills: Sequence[Bill]) -> Bill:
    """Return the sum of bills."""
    out = Bill()
    for bill in bills:
        out.add(bill)
    return out


# ---- (a) and (b): counted, not sent ----------------------------------------------------------


def wire_body(fmt: Format, system: str, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Build the request body a plain client sends: no cache breakpoints, no streaming."""
    if fmt == "anthropic":
        return {
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            "system": system,
            "messages": list(messages),
        }
    return {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "system", "content": system}, *messages],
    }


def fake_reply(fmt: Format, body: dict[str, Any]) -> str:
    """Return the reply text the fake gives to body (its planner, without the HTTP)."""
    prompt = CacheSplit(count_tokens(body))
    if fmt == "anthropic":
        return anthropic_reply(body, anthropic_conversation(body), prompt).text
    return openai_reply(body, openai_conversation(body), prompt).text


def counted(fmt: Format, turns: int, window: int | None) -> tuple[list[Bill], list[int]]:
    """Bill each turn of a client that sends the whole history, or its last `window` messages.

    Returns the bills and each reply's tokens.
    """
    system = system_prompt()
    history: list[dict[str, Any]] = []
    bills: list[Bill] = []
    replies: list[int] = []
    for turn in range(1, turns + 1):
        user = {"role": "user", "content": user_message(turn)}
        # An even window over alternating messages starts at a user message, as the APIs want.
        past = history if window is None else history[-window:] if window else []
        body = wire_body(fmt, system, [*past, user])
        bills.append(Bill(uncached=count_tokens(body), calls=1))
        reply = fake_reply(fmt, body)
        replies.append(count_text(reply))
        history += [user, {"role": "assistant", "content": reply}]
    return bills, replies


# ---- (c): through chatd ----------------------------------------------------------------------


@dataclass(slots=True)
class ChatdTurn:
    """What one chatd turn cost and what its reply call showed the model."""

    turn: int
    bill: Bill
    # Messages of earlier turns the reply call carried verbatim (the new user message not counted).
    verbatim: int
    history: int
    summary: bool
    summary_tokens: int
    prompt_tokens: int
    # Anthropic's count_tokens calls: not billed (the API does not charge for them).
    token_counts: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    context_events: list[dict[str, Any]] = field(default_factory=list)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def last_user_text(body: dict[str, Any]) -> str | None:
    """Return the text of a request's last user message, if it has one."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return None


def view_of(fmt: Format, body: dict[str, Any], system: str) -> tuple[int, list[str]]:
    """Return the conversation messages a call carried and the summary texts beside them.

    A summary is any system text other than the system prompt: a second block of Anthropic's
    `system`, or a second system (or developer) message on the OpenAI wire.
    """
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if fmt == "anthropic":
        raw = body.get("system")
        texts = [raw] if isinstance(raw, str) else [_text([b]) for b in raw or []]
        conversation = messages
    else:
        texts = [_text(m.get("content")) for m in messages if m.get("role") in SYSTEM_ROLES]
        conversation = [m for m in messages if m.get("role") not in SYSTEM_ROLES]
    return len(conversation), [t for t in texts if t and t != system]


SYSTEM_ROLES = ("system", "developer")
COMPLETION_PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
COUNT_PATH = "/v1/messages/count_tokens"


@contextmanager
def chatd_defaults(overrides: Sequence[str]) -> Iterator[None]:
    """Hide CHATD_* variables (and apply overrides) while chatd's settings are read."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CHATD_")}
    for item in overrides:
        name, _, value = item.partition("=")
        os.environ[name] = value
    try:
        yield
    finally:
        for item in overrides:
            os.environ.pop(item.partition("=")[0], None)
        os.environ.update(saved)


def provider_env(fmt: Format, url: str) -> dict[str, str]:
    """Return the environment that points chatd's provider at the fake."""
    if fmt == "anthropic":
        return {"ANTHROPIC_API_KEY": "bench-key", "ANTHROPIC_BASE_URL": url}
    return {"OPENAI_API_KEY": "bench-key", "OPENAI_BASE_URL": url + "/v1"}


async def _one_turn(service: ChatService, text: str, system: str) -> tuple[TurnEnded, list[Any]]:
    """Run a turn to its end; return how it ended and the context events it posted."""
    changes: list[Any] = []
    async for event in service.turn(SESSION, text, TurnOptions(system_prompt=system)):
        # ContextChanged is new (issue 18): matched by its kind, so older trees run too.
        if getattr(event, "kind", None) == "context":
            changes.append(event)
        if isinstance(event, TurnEnded):
            return event, changes
    raise RuntimeError("the turn ended without TurnEnded")


def _classify(fmt: Format, turn: int, calls: Sequence[RecordedRequest], system: str) -> ChatdTurn:
    """Bill a turn's served calls; the reply call is the one whose last user text is the turn's."""
    scripted = user_message(turn)
    served = [c for c in calls if c.path == COMPLETION_PATHS[fmt] and c.usage]
    replies = [c for c in served if isinstance(c.body, dict) and last_user_text(c.body) == scripted]
    if not replies:
        raise RuntimeError(f"turn {turn}: no served call carried the scripted user message")
    # A retried reply is billed like any other call; the last one is what the user saw.
    reply = replies[-1]
    bill, rows = Bill(), []
    for call in served:
        extra = call is not reply
        billed = bill_of_call(fmt, call.usage, extra=extra)
        bill.add(billed)
        prompt = count_tokens(call.body) if isinstance(call.body, dict) else 0
        rows.append({"extra": extra, "prompt_tokens": prompt, **call.usage})
    verbatim, summaries = view_of(fmt, reply.body, system)
    return ChatdTurn(
        turn=turn,
        bill=bill,
        verbatim=verbatim - 1,
        history=2 * (turn - 1),
        summary=bool(summaries),
        summary_tokens=sum(count_text(s) for s in summaries),
        prompt_tokens=count_tokens(reply.body),
        token_counts=sum(c.path == COUNT_PATH for c in calls),
        calls=rows,
    )


async def through_chatd(
    fmt: Format, turns: int, fake: FakeUpstream, work: Path, gap_s: float, overrides: Sequence[str]
) -> tuple[list[ChatdTurn], dict[str, Any]]:
    """Run the conversation through chatd on the fake; bill each turn from the fake's usage."""
    system = system_prompt()
    with chatd_defaults(overrides):
        settings = Settings(
            provider=fmt,
            model=MODEL,
            database_url=f"sqlite:///{work / f'cost-{fmt}.db'}",
            _env_file=None,
        )  # type: ignore[call-arg]
    policy = {
        k: getattr(settings, k) for k in type(settings).model_fields if k.startswith("context")
    }
    runtime = await open_runtime(settings, env=provider_env(fmt, fake.url))
    results: list[ChatdTurn] = []
    seen = len(fake.requests)
    try:
        for turn in range(1, turns + 1):
            ended, changes = await _one_turn(runtime.service, user_message(turn), system)
            if ended.state is not TurnState.COMPLETE:
                raise RuntimeError(f"{fmt} turn {turn} ended {ended.state}: {ended.text[:200]}")
            if turn == turns:
                # Whatever chatd does after a turn (a summary in the background) is billed too.
                await runtime.service.wait_idle(30)
            # Sliced at one length: a call still arriving belongs to the next turn's slice.
            now = len(fake.requests)
            calls, seen = fake.requests[seen:now], now
            result = _classify(fmt, turn, calls, system)
            result.context_events = [_event_dict(e) for e in changes]
            results.append(result)
            # The user reads and types; the fake's cache ages (its entries live 5 minutes).
            fake.advance_clock(gap_s)
    finally:
        await runtime.aclose()
    return results, policy


def _event_dict(event: Any) -> dict[str, Any]:
    try:
        return asdict(event)
    except TypeError:
        return {"repr": repr(event)}


# ---- The report ------------------------------------------------------------------------------


def checkpoint(
    n: int, naive: Sequence[Bill], window: Sequence[Bill], chatd: Sequence[ChatdTurn]
) -> dict[str, Any]:
    """Summarise the conversation's first n turns."""
    a, b = total(naive[:n]), total(window[:n])
    c = total([t.bill for t in chatd[:n]])
    judged = [t for t in chatd[:n] if t.turn > JUDGED_AFTER_TURN]
    dropped = [t for t in judged if t.verbatim < t.history]
    target = TARGETS.get(n)
    least = min((t.verbatim for t in judged), default=None)
    view_met = least is not None and least >= TARGET_VERBATIM and all(t.summary for t in dropped)
    return {
        "turns": n,
        "naive": {**asdict(a), "billed": a.billed},
        "window": {**asdict(b), "billed": b.billed, "share_of_naive": b.billed / a.billed},
        "chatd": {**asdict(c), "billed": c.billed, "share_of_naive": c.billed / a.billed},
        "target_share": target,
        "cost_met": None if target is None else c.billed / a.billed <= target,
        "min_verbatim_after_turn_10": least,
        "turns_judged": len(judged),
        "token_count_calls": sum(t.token_counts for t in chatd[:n]),
        "turns_with_history_dropped": len(dropped),
        "turns_with_summary": sum(t.summary for t in judged),
        "dropped_without_summary": sum(not t.summary for t in dropped),
        "last_turn": {
            "verbatim": chatd[n - 1].verbatim,
            "history": chatd[n - 1].history,
            "summary": chatd[n - 1].summary,
            "summary_tokens": chatd[n - 1].summary_tokens,
            "prompt_tokens": chatd[n - 1].prompt_tokens,
        },
        "view_met": view_met if judged else None,
    }


def _k(tokens: float) -> str:
    return f"{tokens / 1000:,.1f}k"


def _met(flag: bool | None) -> str:
    return "–" if flag is None else "**met**" if flag else "missed"


def render(results: dict[str, Any]) -> str:
    """Render the results as markdown."""
    plan = results["plan"]
    lines = [
        "# Conversation cost",
        "",
        f"{results['machine']['date']}, commit {results['machine']['commit']}; "
        f"{plan['turns']} turns a format, {plan['gap_s']:g} s of fake time between turns, "
        f"window {plan['window']} messages; {results['wall_s']} s.",
        f"Script: system prompt {plan['system_tokens']} tokens, user messages "
        f"{plan['user_tokens_mean']:.0f} on average, replies "
        f"{next(iter(results['formats'].values()))['reply_tokens_mean']:.0f} "
        "(the fake's tokenizer).",
        "Billed input-equivalent tokens: uncached x1, cache write x1.25, cache read x0.1, "
        "output of extra calls x5; (a) and (b) counted, (c) as the fake reported it.",
        "",
    ]
    for fmt, result in results["formats"].items():
        lines += [
            f"## {fmt}  (chatd: {result['chatd_policy']})",
            "",
            "| turns | (a) naive | (b) window | (b)/(a) | (c) chatd | (c)/(a) | target | |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cp in result["checkpoints"]:
            target = cp["target_share"]
            lines.append(
                f"| {cp['turns']} | {_k(cp['naive']['billed'])} | {_k(cp['window']['billed'])} "
                f"| {cp['window']['share_of_naive']:.1%} | {_k(cp['chatd']['billed'])} "
                f"| {cp['chatd']['share_of_naive']:.1%} "
                f"| {'–' if target is None else f'≤ {target:.0%}'} | {_met(cp['cost_met'])} |"
            )
        lines += [
            "",
            "| turns | (c) uncached / write / read / extra output | calls (extra) "
            "| fewest earlier messages seen, turns > 10 | turns that dropped history "
            "(with a summary) | last turn sees | target | |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cp in result["checkpoints"]:
            c, last = cp["chatd"], cp["last_turn"]
            sees = f"{last['verbatim']} of {last['history']}" + (
                f" + summary ({last['summary_tokens']} tokens)" if last["summary"] else ""
            )
            least = cp["min_verbatim_after_turn_10"]
            dropped = cp["turns_with_history_dropped"]
            summarised = dropped - cp["dropped_without_summary"]
            lines.append(
                f"| {cp['turns']} | {_k(c['uncached'])} / {_k(c['cache_write'])} / "
                f"{_k(c['cache_read'])} / {_k(c['extra_output'])} | {c['calls']} "
                f"({c['extra_calls']}) | {'–' if least is None else least} "
                f"| {dropped} ({summarised}) | {sees} | ≥ {TARGET_VERBATIM} + summary "
                f"| {_met(cp['view_met'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cost", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--turns", default="50,200", help="checkpoints; the longest is run (default %(default)s)"
    )
    parser.add_argument(
        "--formats", default=",".join(FORMATS), help="wire formats (default %(default)s)"
    )
    parser.add_argument(
        "--gap-s",
        type=float,
        default=30.0,
        help="fake-clock seconds between turns; the fake's cache entries live 300 (default 30)",
    )
    parser.add_argument("--window", type=int, default=WINDOW, help="(b)'s earlier messages")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="CHATD_NAME=VALUE",
        help="a chatd setting for (c); by default every CHATD_* variable is ignored",
    )
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results/)")
    args = parser.parse_args(argv)
    try:
        args.turns = sorted({int(t) for t in args.turns.split(",") if t.strip()})
    except ValueError:
        parser.error("--turns takes comma-separated whole numbers")
    if not args.turns or args.turns[0] < 1:
        parser.error("--turns: at least one checkpoint, each at least 1")
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats:
        parser.error(f"--formats: choose from {', '.join(FORMATS)}")
    if args.window < 0 or args.window % 2:
        parser.error("--window: an even number of messages (whole exchanges), at least 0")
    if args.gap_s < 0:
        parser.error("--gap-s: at least 0")
    if any(not item.startswith("CHATD_") or "=" not in item for item in args.server_env):
        parser.error("--server-env takes CHATD_NAME=VALUE")
    if not any(item.startswith("CHATD_SUMMARY_PROMPT=") for item in args.server_env):
        args.server_env.insert(0, REALISTIC_SUMMARIES)
    return args


# chatd's summary prompt, with the fake's directive for a summary of realistic length.
REALISTIC_SUMMARIES = f"CHATD_SUMMARY_PROMPT={SUMMARY_PROMPT} [fake: words=380]"


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Bill every approach on every format; return the results."""
    turns = args.turns[-1]
    formats: dict[str, Any] = {}
    with FakeUpstream() as fake:
        for fmt in args.formats:
            naive, replies = counted(fmt, turns, None)
            window, _ = counted(fmt, turns, args.window)
            chatd, policy = await through_chatd(fmt, turns, fake, work, args.gap_s, args.server_env)
            formats[fmt] = {
                "reply_tokens_mean": sum(replies) / len(replies),
                "chatd_policy": ", ".join(f"{k}={v}" for k, v in policy.items()),
                "settings": policy,
                "checkpoints": [checkpoint(n, naive, window, chatd) for n in args.turns],
                "per_turn": {
                    "naive": [b.billed for b in naive],
                    "window": [b.billed for b in window],
                    "chatd": [{**asdict(t), "billed": t.bill.billed} for t in chatd],
                },
            }
            fake.clear()
    return formats


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write cost.json and cost.md; print the report."""
    args = parse_args(argv)
    out = args.out or Path(__file__).resolve().parent / "results" / time.strftime(
        "cost-%Y%m%d-%H%M%S"
    )
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chatd-cost-"))
    from benchmarks.bench import machine

    turns = args.turns[-1]
    results: dict[str, Any] = {
        "machine": machine(),
        "plan": {
            "turns": turns,
            "checkpoints": args.turns,
            "formats": args.formats,
            "gap_s": args.gap_s,
            "window": args.window,
            "server_env": args.server_env,
            "system_tokens": count_text(system_prompt()),
            "user_tokens_mean": sum(count_text(user_message(t)) for t in range(1, turns + 1))
            / turns,
            "weights": {
                "uncached": UNCACHED,
                "cache_write": CACHE_WRITE,
                "cache_read": CACHE_READ,
                "extra_output": EXTRA_OUTPUT,
            },
            "targets": {str(k): v for k, v in TARGETS.items()},
        },
    }
    t0 = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results["formats"] = runner.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - t0, 1)
    (out / "cost.json").write_text(json.dumps(results, indent=2, default=str))
    text = render(results)
    (out / "cost.md").write_text(text)
    print(text)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
