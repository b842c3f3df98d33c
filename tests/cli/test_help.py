"""`chatd --help` and `--version` as a newcomer first meets them: real subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any

import pytest
import typer

from chatd.cli import app

Run = Callable[..., subprocess.CompletedProcess[str]]


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _option_names(path: tuple[str, ...]) -> list[str]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    options = [p for p in command.params if p.param_type_name == "option"]
    return [name for p in options for name in (*p.opts, *p.secondary_opts)]


def test_version_prints_the_installed_version(env: dict[str, str], chatd: Run) -> None:
    result = chatd(env, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"chatd {version('chatd')}\n"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "chatd")
def test_help_fits_80_columns_and_shows_every_option_whole(
    env: dict[str, str], chatd: Run, path: tuple[str, ...]
) -> None:
    narrow = {k: v for k, v in env.items() if k != "TERMINAL_WIDTH"} | {"COLUMNS": "80"}
    result = chatd(narrow, *path, "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if len(line) > 80] == []
    assert "…" not in result.stdout
    for name in [*_option_names(path), "--help"]:
        assert f" {name} " in result.stdout, name


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "chatd")
def test_flags_show_no_value_placeholder_in_help(
    env: dict[str, str], chatd: Run, path: tuple[str, ...]
) -> None:
    result = chatd(env, *path, "--help")
    assert "<bool>" not in result.stdout
    assert "--no-" not in result.stdout
