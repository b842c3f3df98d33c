"""Read py-spy's raw (collapsed) stacks and say where a server's CPU goes.

Each sample is charged twice over:
  * to a library: the innermost frame whose file belongs to a known package (SQLAlchemy,
    sqlite, the openai SDK, httpx, pydantic, Starlette, FastAPI, uvicorn, asyncio, ...);
  * to chatd: the innermost frame in chatd's own code (src/chatd), which is the chatd function
    that asked for that work (a sample in SQLAlchemy under `SqlStore.begin_turn` is charged to
    begin_turn), so the table reads "what each chatd function costs, with what it calls".
Shares are of all non-idle samples; times are shares of the server's measured CPU per request.

    python -m benchmarks.profile results/.../profile-G-64_connections.txt [--cpu-ms 3.2]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (label, substrings of a frame's file path), most specific first.
LIBRARIES: list[tuple[str, tuple[str, ...]]] = [
    ("chatd", ("chatd/",)),
    ("aiosqlite/sqlite3", ("aiosqlite/", "sqlite3/")),
    ("asyncpg", ("asyncpg/",)),
    ("SQLAlchemy", ("sqlalchemy/",)),
    # Before the SDK: its aiohttp transport is vendored under openai/_vendor/.
    ("aiohttp", ("aiohttp/", "httpx_aiohttp/", "multidict/", "yarl/")),
    ("openai SDK", ("openai/",)),
    (
        "httpx/httpcore/anyio",
        ("httpx/", "httpx2/", "httpcore/", "httpcore2/", "h11/", "anyio/", "sniffio/"),
    ),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("FastAPI", ("fastapi/",)),
    ("Starlette", ("starlette/",)),
    ("uvicorn/httptools", ("uvicorn/", "httptools/")),
    ("logging", ("logging/",)),
    ("json", ("json/",)),
    ("asyncio/uvloop", ("asyncio/", "uvloop/")),
    ("typing/dataclasses/enum", ("typing.py", "dataclasses.py", "enum.py", "abc.py")),
    ("uuid/datetime/re", ("uuid.py", "datetime.py", "re/", "_strptime.py")),
    ("threading/queue", ("threading.py", "queue.py", "concurrent/")),
]


def parse_frame(frame: str) -> tuple[str, str]:
    """Return (function, file) of one py-spy frame 'func (file:line)'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m.group("func"), m.group("file")


def library(file: str) -> str | None:
    """The package a frame's file belongs to, if known."""
    if "chatd/testing/" in file:
        return None
    for label, needles in LIBRARIES:
        if any(n in file for n in needles):
            return label
    return None


def _chatd_name(func: str, file: str) -> str:
    i = file.find("chatd/")
    return f"{file[i:]}:{func}"


WORKER = "(aiosqlite worker threads: SQLite and aiosqlite)"
LOOP = "(event loop in C: socket I/O, thread wake-ups, callbacks)"
OUTSIDE = "(server stack outside chatd: uvicorn, Starlette, SDK callbacks)"
STORE = "(chatd's store calls: SQLAlchemy and the driver on the event loop, inside greenlets)"
TRANSFORM = (
    "(openai SDK request transform inside chat.completions.create; py-spy cut the stack "
    "short; in chatd its caller is OpenAICompatProvider._open)"
)


def _owner(frames: list[tuple[str, str]]) -> tuple[str, set[str]]:
    """The chatd function a sample is charged to, and every chatd function on its stack."""
    if any("aiosqlite/" in file and "worker" in func for func, file in frames):
        return WORKER, set()
    seen = [
        _chatd_name(func, file)
        for func, file in frames
        if library(file) == "chatd" and not file.endswith("chatd/cli.py")
    ]
    if seen:
        return seen[-1], set(seen)
    if any("openai/_utils/_transform" in file for _, file in frames):
        return TRANSFORM, {TRANSFORM}
    # SQLAlchemy's asyncio layer runs the sync core in a greenlet: those stacks start there,
    # without the chatd frame that awaited them, but only the store calls SQLAlchemy.
    if any(library(file) in ("SQLAlchemy", "aiosqlite/sqlite3", "asyncpg") for _, file in frames):
        return STORE, set()
    if frames and frames[-1][1].endswith(("asyncio/runners.py", "asyncio/base_events.py")):
        return LOOP, set()
    return OUTSIDE, set()


def summarise(raw: str, cpu_ms_per_req: float | None = None, top: int = 25) -> dict[str, Any]:
    """Aggregate collapsed stacks: by library (innermost known frame) and by chatd function."""
    total = 0
    by_library: Counter[str] = Counter()
    by_chatd: Counter[str] = Counter()  # innermost chatd frame, with everything it calls
    inclusive: Counter[str] = Counter()  # every chatd frame on the stack
    under_chatd: dict[str, Counter[str]] = {}
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [parse_frame(f) for f in stack.split(";")]
        total += count
        lib = "other"
        for _func, file in reversed(frames):
            found = library(file)
            if found:
                lib = found
                break
        by_library[lib] += count
        owner, seen = _owner(frames)
        by_chatd[owner] += count
        under_chatd.setdefault(owner, Counter())[lib] += count
        for name in seen:
            inclusive[name] += count

    def rows(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        out = []
        for name, count in counter.most_common(n):
            share = count / total if total else 0.0
            row: dict[str, Any] = {"name": name, "share": round(share, 4), "samples": count}
            if cpu_ms_per_req is not None:
                row["ms_per_req"] = round(share * cpu_ms_per_req, 3)
            out.append(row)
        return out

    chatd_rows = rows(by_chatd, top)
    for row in chatd_rows:
        libs = under_chatd.get(row["name"], Counter())
        row["libraries"] = ", ".join(
            f"{k} {v / max(1, sum(libs.values())):.0%}" for k, v in libs.most_common(4)
        )
    return {
        "samples": total,
        "cpu_ms_per_req": cpu_ms_per_req,
        "by_library": rows(by_library, 30),
        "by_chatd_function": chatd_rows,
        "chatd_inclusive": rows(inclusive, top),
    }


def render(summary: dict[str, Any], top: int = 15) -> str:
    """Plain-text tables of a summary."""
    lines = [f"samples: {summary['samples']}, CPU per request: {summary['cpu_ms_per_req']} ms"]
    for key, title in (
        ("by_library", "by library (innermost known frame)"),
        ("by_chatd_function", "by chatd function (innermost chatd frame, with what it calls)"),
        ("chatd_inclusive", "chatd functions, inclusive"),
    ):
        lines.append(f"\n{title}:")
        for row in summary[key][:top]:
            extra = f"  [{row['libraries']}]" if row.get("libraries") else ""
            ms = f"{row['ms_per_req']:7.3f} ms" if "ms_per_req" in row else ""
            lines.append(f"  {row['share']:6.1%} {ms}  {row['name']}{extra}")
    return "\n".join(lines)


def main() -> None:
    """Summarise one raw profile file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw")
    parser.add_argument("--cpu-ms", type=float, help="server CPU ms per request")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    with open(args.raw) as f:
        print(render(summarise(f.read(), args.cpu_ms, args.top), args.top))


if __name__ == "__main__":
    main()
