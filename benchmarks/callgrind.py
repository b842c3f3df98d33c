"""Callgrind plumbing for benchmarks.instructions: run a server under it, count windows, read dumps.

The server starts with instrumentation off (`--instr-atstart=no`), so start-up and anything sent
outside a window costs nothing; `callgrind_control` turns it on and off by pid and dumps the
counts, one dump file per window (`callgrind.<arm>.<pid>.<part>`, all threads in it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.procs import Server, pinning

TOOLS = ("valgrind", "callgrind_control")
_TOTALS = re.compile(rb"^(?:totals|summary):\s*(\d+)", re.M)


def missing_tools() -> list[str]:
    """The valgrind tools that are not on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


def wrap(server: Server, out: Path, cores: list[int] | None, *, chatd: bool) -> None:
    """Rewrite a harness server's argv to run under callgrind, instrumentation off.

    `chatd serve` checks its options and then execs `python -m chatd.server HOST PORT WORKERS`
    (src/chatd/server.py); started as that directly, valgrind measures the server process itself
    and need not follow an exec. Settings come from the environment, as with `chatd serve`.
    """
    pre = pinning(cores)
    assert server.argv[: len(pre)] == pre, server.argv
    cmd = server.argv[len(pre) :]
    if chatd:
        host, port = cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1]
        cmd = [sys.executable, "-m", "chatd.server", host, port, "1"]
    out_file = out / f"callgrind.{server.name}.%p"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    server.argv = [*pre, *valgrind, f"--callgrind-out-file={out_file}", *cmd]


def total_ir(path: Path) -> int:
    """Instructions counted in one dump file (its `totals:` line, else `summary:`)."""
    found = _TOTALS.findall(path.read_bytes())
    return max((int(x) for x in found), default=0)


@dataclass
class Counter:
    """Instruction counting windows on one callgrind'ed server process."""

    name: str
    pid: int
    out: Path

    def __post_init__(self) -> None:
        self.seen: set[Path] = set(self._parts())
        self.last_parts: list[Path] = []

    def _parts(self) -> list[Path]:
        return sorted(self.out.glob(f"callgrind.{self.name}.{self.pid}.*"))

    def control(self, *args: str) -> None:
        """Send one command; RuntimeError if callgrind did not take it (the tool exits 0)."""
        done = subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if "OK." not in done.stdout:
            raise RuntimeError(f"callgrind_control {' '.join(args)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        """Open a window: zero the counters (nothing should be there) and instrument."""
        self.control("--zero")
        self.control("--instr=on")

    def stop(self) -> int:
        """Close the window: stop instrumenting, dump, and return the instructions counted."""
        self.control("--instr=off")
        return self.dump()

    def dump(self) -> int:
        """Dump what was counted since the last dump or zeroing, and return it."""
        self.control("--dump")
        deadline = time.monotonic() + 60
        while True:
            new = [p for p in self._parts() if p not in self.seen]
            # A dump file is complete once its totals line is written (its last line).
            if new and all(_TOTALS.search(p.read_bytes()) for p in new):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no complete callgrind dump of {self.name} in {self.out}")
            time.sleep(0.05)
        self.seen.update(new)
        self.last_parts = new
        return sum(total_ir(p) for p in new)


def _object(path: str) -> str:
    """A short name for a shared object: `_sqlite3`, `libsqlite3`, `libpython3.11`, ..."""
    name = Path(path).name
    for cut in (".cpython-", ".so", "-linux-gnu"):
        name = name.split(cut, 1)[0]
    return name or "???"


# Which name table each key of the format uses (names are compressed as "(id) name", "(id)").
_TABLES = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}
_TABLES.update(dict.fromkeys(("fl", "fi", "fe", "cfi", "cfl"), "fl"))


def self_cost(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Exclusive instructions of one dump by shared object and by function (`fn [object]`).

    Read from the file itself: `callgrind_annotate` drops the object of code inlined from
    another file (Python's headers), and splits such a function by file; code inlined into a
    function is that function's cost.
    """
    tables: dict[str, dict[str, str]] = {"ob": {}, "fn": {}, "fl": {}}
    objects: dict[str, int] = defaultdict(int)
    functions: dict[str, int] = defaultdict(int)
    ob = fn = "???"
    after_call = False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line[:1]
            if head.isdigit() or head in "+-*":
                # The cost line after `calls=` is what the call cost, inclusive: not ours.
                if not after_call:
                    fields = line.split()
                    ir = int(fields[1]) if len(fields) > 1 else 0
                    objects[ob] += ir
                    functions[f"{fn} [{ob}]"] += ir
                after_call = False
                continue
            key, eq, value = line.rstrip("\n").partition("=")
            if not eq:
                continue
            if key == "calls":
                after_call = True
            elif key in _TABLES:
                name = _name(tables[_TABLES[key]], value)
                if key == "ob":
                    ob = _object(name)
                elif key == "fn":
                    # Callgrind names each recursion depth apart (`f'2`): one function, one row.
                    fn = name.split("'", 1)[0]
    return dict(objects), dict(functions)


def _name(table: dict[str, str], value: str) -> str:
    if not value.startswith("("):
        return value
    ref, _, name = value[1:].partition(")")
    name = name.strip()
    if name:
        table[ref] = name
        return name
    return table.get(ref, "???")


def per_request(parts: list[Path], requests: int) -> dict[str, Any]:
    """Millions of instructions per request of dumps, by shared object and top functions."""
    objects: dict[str, int] = defaultdict(int)
    functions: dict[str, int] = defaultdict(int)
    for part in parts:
        by_object, by_function = self_cost(part)
        for k, v in by_object.items():
            objects[k] += v
        for k, v in by_function.items():
            functions[k] += v
    top = sorted(functions.items(), key=lambda kv: -kv[1])[:40]
    return {
        "objects": {k: round(v / requests / 1e6, 4) for k, v in objects.items()},
        "functions": {k: round(v / requests / 1e6, 4) for k, v in top},
    }
