"""`chatd sessions …` and crash recovery, run as a user would: real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

CHATD = [sys.executable, "-m", "chatd"]
Run = Callable[..., subprocess.CompletedProcess[str]]
Terminal = Callable[..., str]
LONG_ID = "support.ticket-2024:" + "x" * 60


def test_export_import_round_trips_a_session_losslessly(
    anthropic_env: dict[str, str], tmp_path: Path, chatd: Run
) -> None:
    script = "first\nsecond [fake: stop=max_tokens]\nthird [fake: status=400]\n"
    chatd(anthropic_env, "chat", "--session", "orig", "--system", "Be kind.", stdin=script)
    exported = chatd(anthropic_env, "sessions", "export", "orig")
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert [t["state"] for t in doc["turns"]] == ["complete", "truncated", "failed"]
    assert doc["system_prompt"] == "Be kind."
    assert doc["turns"][0]["usage"]["output_tokens"] > 0
    path = tmp_path / "orig.json"
    path.write_text(exported.stdout)
    imported = chatd(anthropic_env, "sessions", "import", str(path), "--session", "copy")
    assert imported.returncode == 0, imported.stderr
    again = json.loads(chatd(anthropic_env, "sessions", "export", "copy").stdout)
    assert {**again, "session_id": "orig"} == doc
    listed = chatd(anthropic_env, "sessions", "list")
    assert "orig" in listed.stdout
    assert "copy" in listed.stdout


def test_list_piped_prints_whole_ids_one_tab_separated_line_each(
    env: dict[str, str], chatd: Run
) -> None:
    chatd(env, "chat", "--session", LONG_ID, stdin="hello\nagain\n")
    chatd(env, "chat", "--session", "short", stdin="hello\n")
    listed = chatd(env, "sessions", "list")
    assert listed.returncode == 0, listed.stderr
    rows = sorted(line.split("\t") for line in listed.stdout.splitlines())
    assert [row[:2] for row in rows] == [["short", "1"], [LONG_ID, "2"]]
    assert all(len(row) == 4 for row in rows)
    ids = [row[0] for row in rows]
    assert chatd(env, "sessions", "delete", ids[1]).returncode == 0


def test_list_on_a_narrow_terminal_folds_ids_rather_than_cutting_them(
    env: dict[str, str], chatd: Run, terminal: Terminal
) -> None:
    chatd(env, "chat", "--session", LONG_ID, stdin="hello\n")
    shown = terminal({**env, "COLUMNS": "60"}, "sessions", "list")
    assert "…" not in shown
    rows = [line for line in shown.splitlines() if line.startswith("│")]
    assert "".join(row.split("│")[1].strip() for row in rows) == LONG_ID


def test_list_on_a_terminal_shows_titles_as_plain_text(
    env: dict[str, str], chatd: Run, terminal: Terminal
) -> None:
    chatd(env, "chat", "--session", "named", stdin="[bold]How[/bold] do I boil an egg?\n")
    shown = terminal({**env, "COLUMNS": "160"}, "sessions", "list")
    assert "[bold]How[/bold] do I boil an egg?" in shown


def test_import_refuses_a_malformed_file_and_changes_nothing(
    env: dict[str, str], tmp_path: Path, chatd: Run
) -> None:
    chatd(env, "chat", "--session", "keep", stdin="hello\n")
    before = chatd(env, "sessions", "export", "keep").stdout
    bad_files = {
        "not-json.json": "{nope",
        "wrong-format.json": json.dumps({"format": "other", "session_id": "keep"}),
        "bad-turn.json": json.dumps(
            {
                "format": "chatd.session/1",
                "session_id": "keep",
                "turns": [{"state": "complete", "messages": [{"role": "assistant", "parts": []}]}],
            }
        ),
        "bad-state.json": json.dumps(
            {"format": "chatd.session/1", "session_id": "x", "turns": [{"state": "weird"}]}
        ),
    }
    for name, content in bad_files.items():
        path = tmp_path / name
        path.write_text(content)
        result = chatd(env, "sessions", "import", str(path))
        assert result.returncode == 2, (name, result.stderr)
        assert "not a valid chatd session file" in result.stderr, name
        assert "Traceback" not in result.stderr
    assert chatd(env, "sessions", "export", "keep").stdout == before
    listed = chatd(env, "sessions", "list").stdout
    assert "x" not in listed.split()


def test_import_over_an_existing_session_is_refused(
    env: dict[str, str], tmp_path: Path, chatd: Run
) -> None:
    chatd(env, "chat", "--session", "one", stdin="hello\n")
    path = tmp_path / "one.json"
    path.write_text(chatd(env, "sessions", "export", "one").stdout)
    result = chatd(env, "sessions", "import", str(path))
    assert result.returncode == 2
    assert "already exists" in result.stderr


def test_delete_removes_every_row_and_prune_removes_idle_sessions(
    env: dict[str, str], chatd: Run
) -> None:
    chatd(env, "chat", "--session", "a", stdin="hello\n")
    chatd(env, "chat", "--session", "b", stdin="hello\n")
    assert chatd(env, "sessions", "delete", "a").returncode == 0
    assert chatd(env, "sessions", "export", "a").returncode == 2
    assert chatd(env, "sessions", "delete", "a").returncode == 1
    kept = chatd(env, "sessions", "prune", "--older-than", "30d")
    assert "pruned 0 sessions" in kept.stderr
    time.sleep(1.1)
    pruned = chatd(env, "sessions", "prune", "--older-than", "1s")
    assert "pruned 1 sessions" in pruned.stderr
    assert chatd(env, "sessions", "export", "b").returncode == 2
    bad = chatd(env, "sessions", "prune", "--older-than", "soon")
    assert bad.returncode == 2
    assert "cannot read duration" in bad.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_turn_orphaned_by_sigkill_reads_interrupted_after_its_lease(
    anthropic_env: dict[str, str], chatd: Run, replying: Callable[..., subprocess.Popen[str]]
) -> None:
    env = {**anthropic_env, "CHATD_TURN_LEASE_S": "1"}
    proc = replying(env, "a long story [fake: chunks=50 delay_ms=100]", "--session", "crash")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(1.2)
    history = chatd(env, "chat", "--session", "crash", stdin="/history\nare you there?\n")
    assert "user: a long story [fake: chunks=50 delay_ms=100]  [interrupted: not in context]" in (
        history.stdout
    )
    assert "to 1 message." in history.stdout  # the orphan is not in the model's context
