"""benchmarks.cost: its script, the fake's recorded usage it bills from, and a short run."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chatd.testing.fake_tokens import count_text, count_tokens
from chatd.testing.fake_upstream import FakeUpstream

REPO = Path(__file__).resolve().parents[2]
# Loaded from its file: on pytest's path, `benchmarks` is this tests/benchmarks directory.
_spec = importlib.util.spec_from_file_location("benchmarks_cost", REPO / "benchmarks" / "cost.py")
assert _spec is not None
assert _spec.loader is not None
cost = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cost)
TURNS = 12


def test_the_script_has_the_sizes_it_promises() -> None:
    assert abs(count_text(cost.system_prompt()) - cost.SYSTEM_TOKENS) < 100
    users = [count_text(cost.user_message(t)) for t in range(1, 201)]
    assert abs(statistics.mean(users) - cost.USER_TOKENS) < 5
    assert len(set(users)) > 5
    bills, replies = cost.counted("openai", 5, None)
    assert all(abs(r - cost.REPLY_TOKENS) <= 2 for r in replies)
    first = cost.wire_body(
        "openai", cost.system_prompt(), [{"role": "user", "content": cost.user_message(1)}]
    )
    assert bills[0].uncached == bills[0].billed == count_tokens(first)


def test_the_fake_records_the_usage_it_answered_with(fake_upstream: FakeUpstream) -> None:
    system = [
        {"type": "text", "text": cost.system_prompt(), "cache_control": {"type": "ephemeral"}}
    ]
    messages = [{"role": "user", "content": "hello [fake: words=3]"}]
    body = {"model": "m", "max_tokens": 50, "system": system, "messages": messages}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    for _ in range(2):
        answer = httpx.post(f"{fake_upstream.url}/v1/messages", json=body, headers=headers)
        usage = answer.json()["usage"]
        assert fake_upstream.requests[-1].usage == {
            "input_tokens": usage["input_tokens"],
            "output_tokens": usage["output_tokens"],
            "cache_read": usage["cache_read_input_tokens"],
            "cache_write": usage["cache_creation_input_tokens"],
        }
    assert fake_upstream.requests[-1].usage["cache_read"] == count_text(cost.system_prompt())

    messages = [
        {"role": "system", "content": cost.system_prompt()},
        {"role": "user", "content": "hello"},
    ]
    chat = {"model": "m", "messages": messages}
    for _ in range(2):
        answer = httpx.post(f"{fake_upstream.url}/v1/chat/completions", json=chat)
        usage = answer.json()["usage"]
        assert fake_upstream.requests[-1].usage == {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "cache_read": usage["prompt_tokens_details"]["cached_tokens"],
            "cache_write": 0,
        }
    # OpenAI caches prefixes cut at 1024 tokens and every 128 after.
    assert (
        fake_upstream.requests[-1].usage["cache_read"]
        == 1024 + (count_tokens(chat) - 1024) // 128 * 128
    )
    models = httpx.get(f"{fake_upstream.url}/v1/models")
    assert models.status_code == 200
    assert fake_upstream.requests[-1].usage == {}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_short_run_bills_every_approach_consistently(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "benchmarks.cost", "--turns", f"4,{TURNS}", "--out", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "cost.json").read_text())
    assert "Conversation cost" in (out / "cost.md").read_text()
    assert "(c) chatd" in done.stdout

    assert set(results["formats"]) == {"anthropic", "openai"}
    for fmt, result in results["formats"].items():
        short, full = result["checkpoints"]
        assert (short["turns"], full["turns"]) == (4, TURNS)
        for cp in (short, full):
            naive, window, chatd = cp["naive"], cp["window"], cp["chatd"]
            assert naive["billed"] >= window["billed"] > 0, fmt
            assert chatd["billed"] > 0
            assert chatd["calls"] >= cp["turns"]
        # The window only drops messages once the history is longer than it.
        assert short["window"]["billed"] == short["naive"]["billed"]
        assert full["window"]["billed"] < full["naive"]["billed"]
        assert short["chatd"]["billed"] < full["chatd"]["billed"]

        per_turn = result["per_turn"]
        assert len(per_turn["naive"]) == len(per_turn["chatd"]) == TURNS
        assert sum(per_turn["naive"]) == full["naive"]["billed"]
        for turn in per_turn["chatd"]:
            replies = [call for call in turn["calls"] if not call["extra"]]
            assert len(replies) == 1
            for call in turn["calls"]:
                # What the fake reported adds up to the prompt it was sent, on either wire.
                cached = call["cache_read"] + call["cache_write"] if fmt == "anthropic" else 0
                assert call["input_tokens"] + cached == call["prompt_tokens"]
            assert 0 < turn["verbatim"] <= turn["history"] or turn["turn"] == 1
        assert full["min_verbatim_after_turn_10"] is not None
        assert full["last_turn"]["prompt_tokens"] > 0
