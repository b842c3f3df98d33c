"""What one open stream holds in memory: tracemalloc, tasks and objects (docs/performance.md).

    python -m benchmarks.stream_memory                    # chatd, 100 -> 300 open streams
    python -m benchmarks.stream_memory --target floor     # the same for arm N (floor_app.py)
    python -m benchmarks.stream_memory --target floor --transport httpx      # arm Nh
    python -m benchmarks.stream_memory --no-trace         # the plain pass only (about 1 minute)

A pass is one process that is the server under measurement: `chatd serve`'s app
(`chatd.api.app:app_from_env`: SQLite, `CHATD_PROVIDER=openai`, auth off) or the floor app, under
uvicorn on uvloop in its own event loop, with `chatd fake-upstream` in a subprocess sending one
chunk every `--delay-ms` (5 s: the reply text a stream keeps grows little between snapshots; what
it costs per chunk is measured apart). The load client is another subprocess (this module with
`client`), so neither client nor fake is in what is measured. The client opens the first level of
streams (100) and waits until each has had a chunk; the server then collects garbage and
measures; the same at the second level (300), and again `--settle` seconds later (growth per
chunk). What changed between the levels, divided by the streams added, is what one more open
stream holds.

Two passes, each in a fresh process: the plain one reads RSS and counts gc objects by type (no
tracing, so RSS is not inflated by tracemalloc's own tables); the traced one
(`tracemalloc.start(--frames)`) takes snapshots, grouped by the allocating line, by the package
of the innermost non-stdlib frame, by the innermost chatd (or floor_app) line on the stack, and
as whole stacks. Both count asyncio tasks by coroutine. tracemalloc sees what goes through
Python's allocators; C libraries calling malloc themselves (uvloop's and httptools' buffers,
SQLite) are not in it: RSS minus traced memory per stream is that, plus fragmentation.

Traced, chatd runs several times slower, so its turns get a 600 s lease (`CHATD_TURN_LEASE_S`)
in both passes: otherwise the lease sweeper interrupts turns while the ramp crawls. The lease
keeper task per turn exists whatever the lease's length.

It measures whatever `chatd` is importable (PYTHONPATH first): to measure a commit while the
working tree is elsewhere, `git archive <commit> src | tar -x -C /tmp/x` and
`PYTHONPATH=/tmp/x/src python -m benchmarks.stream_memory`.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from benchmarks import arms as A
from benchmarks.client import ClientError, Conn
from benchmarks.procs import PAGE, free_port

HERE = str(Path(__file__).resolve())
STDLIB = sysconfig.get_paths()["stdlib"]
PLAIN = "Tell me about the plan."


# ---- the load client (a subprocess) ----


def _stream_request(target: str, index: int, text: str) -> tuple[str, bytes, Any]:
    if target == "chatd":
        body = orjson.dumps({"content": text, "stream": True})
        return f"/v1/sessions/mem-{os.getpid()}-{index}/messages", body, "sse-chatd"
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 1024,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    return "/v1/chat/completions", body, "sse-openai"


async def _client(args: argparse.Namespace) -> None:
    """Open the levels of streams one after another; say when each level is flowing."""
    text = f"{PLAIN} [fake: chunks={args.chunks} delay_ms={args.delay_ms} words={args.chunks}]"
    lines = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    # Warm-up: a few whole (short) turns, so that first-use costs do not count per stream.
    for i in range(6):
        conn = await Conn.open("127.0.0.1", args.port)
        path, body, kind = _stream_request(args.target, 10_000 + i, f"{PLAIN} [fake: chunks=3]")
        result = await conn.request("POST", path, body, (), kind, 30)
        conn.close()
        if result.status != 200:
            say(f"error warm-up answered {result.status}: {result.body[:300]!r}")
            return
    conns: list[Conn] = []
    requests: list[asyncio.Task[Any]] = []
    say("level 0")
    for level in args.levels:
        await lines.readline()
        start = len(conns)
        for i in range(start, level):
            conn = await Conn.open("127.0.0.1", args.port)
            path, body, kind = _stream_request(args.target, i, text)
            conns.append(conn)
            wait = args.chunks * args.delay_ms / 1000 + 60
            requests.append(asyncio.create_task(conn.request("POST", path, body, (), kind, wait)))
            await asyncio.sleep(1 / args.ramp)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            flowing = sum(1 for c in conns if c._result is not None and c._result.content)
            if flowing == len(conns):
                break
            await asyncio.sleep(0.05)
        failed = [t for t in requests if t.done()]
        if failed:
            say(f"error {len(failed)} streams ended early")
            return
        say(f"level {len(conns)} flowing={flowing}")
    await lines.readline()
    ended = sum(1 for t in requests if t.done())
    for c in conns:
        c.close()
    for t in requests:
        with contextlib.suppress(ClientError, asyncio.CancelledError):
            await t
    say(f"done: {ended} of {len(requests)} streams had ended before the client closed them")


# ---- the server under measurement (this process) ----


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _coro_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    module = getattr(getattr(coro, "cr_code", None), "co_filename", "")
    return f"{name} ({_short(module)})" if module else name


def _measure(tracing: bool) -> dict[str, Any]:
    """Collect garbage, then: a snapshot (tracing) or RSS and gc objects by type; tasks."""
    t0 = time.monotonic()
    gc.collect()
    gc.collect()
    out: dict[str, Any] = {"time": time.monotonic(), "rss": _rss()}
    out["tasks"] = Counter(_coro_name(t) for t in asyncio.all_tasks())
    if tracing:
        # Filtered later: filtering takes seconds, and the event loop waits meanwhile.
        out["snapshot"] = tracemalloc.take_snapshot()
    else:
        # Without tracing only: under tracemalloc this loop's own allocations cost seconds.
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for obj in gc.get_objects():
            kind = type(obj)
            name = f"{kind.__module__}.{kind.__qualname__}"
            counts[name] += 1
            sizes[name] += sys.getsizeof(obj)
        out["objects"], out["object_bytes"] = counts, sizes
    took = time.monotonic() - t0
    print(f"  measured in {took:.1f} s: {len(asyncio.all_tasks())} tasks", file=sys.stderr)
    return out


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/benchmarks/"):
        i = filename.rfind(marker)
        if i >= 0:
            rest = filename[i + len(marker) :]
            return "benchmarks/" + rest if marker == "/benchmarks/" else rest
    if filename.startswith(STDLIB):
        return "stdlib/" + filename[len(STDLIB) :].lstrip("/")
    return filename


def _package(filename: str) -> str | None:
    """The distribution-level package of a file, None for the stdlib and this script."""
    short = _short(filename)
    if short.startswith("stdlib/") or filename == HERE or short.startswith("<"):
        return None
    head = short.split("/", 1)[0]
    if head == "benchmarks":
        return "benchmarks (floor_app)"
    return head.removesuffix(".py")


def _stdlib_module(filename: str) -> str:
    short = _short(filename)
    if short.startswith("stdlib/"):
        parts = short[len("stdlib/") :].split("/")
        return "stdlib " + (parts[0] if len(parts) > 1 else parts[0].removesuffix(".py"))
    return short


@functools.lru_cache(maxsize=512)
def _functions(filename: str) -> list[tuple[int, int, str]]:
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    found: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno or child.lineno, name))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def _where(filename: str, lineno: int) -> str:
    inner = [(a, b, n) for a, b, n in _functions(filename) if a <= lineno <= b]
    func = max(inner)[2] if inner else "<module>"
    return f"{_short(filename)}:{lineno} {func}"


def _own(filename: str) -> bool:
    short = _short(filename)
    chatd = short.startswith("chatd/") and "chatd/testing/" not in short
    return chatd or short == "benchmarks/floor_app.py"


def _group(snapshot: tracemalloc.Snapshot) -> dict[str, Counter[str]]:
    """Bytes by innermost package (else stdlib module) and by innermost chatd/floor line."""
    by_package: Counter[str] = Counter()
    by_own: Counter[str] = Counter()
    for stat in snapshot.statistics("traceback"):
        frames = list(reversed(stat.traceback))  # innermost first
        package = next((p for f in frames if (p := _package(f.filename))), None)
        by_package[package or _stdlib_module(frames[0].filename)] += stat.size
        own = next((f for f in frames if _own(f.filename)), None)
        key = _where(own.filename, own.lineno) if own else "(no chatd frame on the stack)"
        by_own[key] += stat.size
    return {"package": by_package, "own": by_own}


def _diff(low: Counter[str], high: Counter[str], per: int) -> list[tuple[str, float]]:
    keys = set(low) | set(high)
    rows = [(k, (high.get(k, 0) - low.get(k, 0)) / per) for k in keys]
    return sorted(rows, key=lambda r: -abs(r[1]))


def _filter(level: dict[str, Any]) -> None:
    """Leave out what this script holds (allocated in this file, or by tracemalloc)."""
    snap = level["snapshot"].filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__, all_frames=False),
            tracemalloc.Filter(False, HERE, all_frames=False),
        ]
    )
    level["snapshot"] = snap
    level["traced"] = sum(t.size for t in snap.traces)


def _report(args: argparse.Namespace, levels: list[dict[str, Any]]) -> dict[str, Any]:
    low, high = levels[1], levels[2]
    added = high["level"] - low["level"]
    out: dict[str, Any] = {
        "target": args.target,
        "levels": [lv["level"] for lv in levels[:3]],
        "flowing": [lv["flowing"] for lv in levels[:3]],
        "streams_added": added,
        "tasks_per_stream": [
            (k, round(v, 2)) for k, v in _diff(low["tasks"], high["tasks"], added) if v
        ],
    }
    later = levels[3] if len(levels) > 3 else None
    seconds = later["time"] - high["time"] if later else 0.0
    chunks = seconds * 1000 / args.delay_ms
    if "snapshot" not in high:
        out["rss_kib_per_stream"] = round((high["rss"] - low["rss"]) / added / 1024, 1)
        out["objects_per_stream"] = [
            (k, round(v, 2), round((high["object_bytes"][k] - low["object_bytes"][k]) / added))
            for k, v in _diff(low["objects"], high["objects"], added)[:30]
        ]
        if later:
            per = (later["rss"] - high["rss"]) / high["level"]
            out["settle_rss"] = {"seconds": round(seconds, 1), "bytes_per_stream": round(per)}
        return out
    for level in levels[1:]:
        _filter(level)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        for name, level in zip(("low", "high", "settled"), levels[1:], strict=False):
            level["snapshot"].dump(str(args.dump / f"{args.target}-{name}.tracemalloc"))
    out["traced_kib_per_stream"] = round((high["traced"] - low["traced"]) / added / 1024, 2)
    lines = high["snapshot"].compare_to(low["snapshot"], "lineno")
    out["by_line"] = [
        (_where(s.traceback[0].filename, s.traceback[0].lineno), s.size_diff, s.count_diff)
        for s in lines[: args.top]
    ]
    stacks = high["snapshot"].compare_to(low["snapshot"], "traceback")
    out["by_stack"] = [
        (
            [_where(f.filename, f.lineno) for f in reversed(s.traceback)][: args.stack_depth],
            s.size_diff,
            s.count_diff,
        )
        for s in stacks[: args.stacks]
    ]
    glow, ghigh = _group(low["snapshot"]), _group(high["snapshot"])
    out["by_package"] = _diff(glow["package"], ghigh["package"], added)[: args.top]
    out["by_own_line"] = _diff(glow["own"], ghigh["own"], added)[: args.top]
    if later:
        per = (later["traced"] - high["traced"]) / high["level"]
        out["settle"] = {
            "seconds": round(seconds, 1),
            "traced_bytes_per_stream": round(per),
            "bytes_per_stream_per_chunk": round(per / chunks, 1) if chunks else None,
        }
        growth = later["snapshot"].compare_to(high["snapshot"], "lineno")
        out["settle"]["by_line"] = [
            (_where(s.traceback[0].filename, s.traceback[0].lineno), s.size_diff)
            for s in growth[:10]
        ]
    return out


def _markdown(r: dict[str, Any]) -> str:
    n = r["streams_added"]
    low, high = r["levels"][1], r["levels"][2]
    head = [f"RSS per extra open stream (no tracing): **{r.get('rss_kib_per_stream', '–')} KiB**"]
    if "traced_kib_per_stream" in r:
        head.append(f"traced by tracemalloc: **{r['traced_kib_per_stream']} KiB**")
    out = [f"# Memory per open stream: {r['target']}, {low} -> {high} streams", ""]
    out += ["; ".join(head) + ".", ""]
    if r.get("flowing") and r["flowing"][1:] != r["levels"][1:3]:
        out += [f"Note: streams flowing at the snapshots: {r['flowing']} of {r['levels']}.", ""]
    out += [
        "## Tasks per stream (asyncio.all_tasks, by coroutine)",
        "",
        "| coroutine | per stream |",
        "|---|---|",
        *(f"| `{k}` | {v} |" for k, v in r["tasks_per_stream"]),
        "",
    ]
    if "by_line" in r:
        out += [
            f"## Traced KiB per stream by allocating line (top {len(r['by_line'])})",
            "",
            "| line (innermost frame) | KiB per stream | blocks per stream |",
            "|---|---|---|",
            *(
                f"| `{k}` | {size / n / 1024:.2f} | {count / n:.1f} |"
                for k, size, count in r["by_line"]
            ),
            "",
            "## Traced KiB per stream by package of the innermost non-stdlib frame",
            "",
            "| package | KiB per stream |",
            "|---|---|",
            *(f"| {k} | {v / 1024:.2f} |" for k, v in r["by_package"]),
            "",
            "## Traced KiB per stream by the innermost chatd / floor_app line on the stack",
            "",
            "| line | KiB per stream |",
            "|---|---|",
            *(f"| `{k}` | {v / 1024:.2f} |" for k, v in r["by_own_line"]),
            "",
        ]
    if r.get("by_stack"):
        out += [f"## The {len(r['by_stack'])} largest allocating stacks (innermost first)", ""]
        for frames, size, count in r["by_stack"]:
            out.append(f"- {size / n / 1024:.2f} KiB, {count / n:.1f} blocks per stream:")
            out += [f"  - `{f}`" for f in frames]
        out.append("")
    if "objects_per_stream" in r:
        out += [
            "## gc-tracked objects per stream (containers only; shallow sizes)",
            "",
            "| type | objects per stream | bytes per stream |",
            "|---|---|---|",
            *(f"| `{k}` | {v} | {b} |" for k, v, b in r["objects_per_stream"]),
            "",
        ]
    settle = r.get("settle")
    if settle:
        out += [
            f"Growth while open: {settle['traced_bytes_per_stream']} traced bytes per stream over "
            f"{settle['seconds']} s ({settle['bytes_per_stream_per_chunk']} B per chunk); "
            "top lines:",
            "",
            *(f"- `{k}`: {d / high:.0f} B per stream" for k, d in settle["by_line"]),
            "",
        ]
    if r.get("settle_rss"):
        sr = r["settle_rss"]
        out += [
            f"RSS growth while open: {sr['bytes_per_stream']} B per stream over {sr['seconds']} s.",
            "",
        ]
    return "\n".join(out)


def _server_config(args: argparse.Namespace, work: Path, upstream: str, port: int) -> Any:
    import uvicorn

    common: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "timeout_graceful_shutdown": 5,
        "loop": "none",
    }
    if args.target == "floor":
        from benchmarks.floor_app import FloorApp

        app = FloorApp(upstream, A.UPSTREAM_KEY, "lowlevel", args.transport)
        return uvicorn.Config(app, **common)
    for k in [k for k in os.environ if k.startswith(("CHATD_", "OPENAI_", "ANTHROPIC_"))]:
        del os.environ[k]
    os.environ.update(
        {
            "CHATD_PROVIDER": "openai",
            "OPENAI_API_KEY": A.UPSTREAM_KEY,
            "OPENAI_BASE_URL": upstream,
            "CHATD_DATABASE_URL": f"sqlite:///{work / 'chatd.db'}",
            "CHATD_AUTH": "off",
            # Traced, chatd runs several times slower: turns must not lose their lease (and
            # be swept) meanwhile. The lease keeper task is there whatever its period.
            "CHATD_TURN_LEASE_S": "600",
        }
    )
    return uvicorn.Config("chatd.api.app:app_from_env", factory=True, **common)


async def _serve(args: argparse.Namespace, work: Path, upstream: str) -> dict[str, Any]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(_server_config(args, work, upstream, port))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.05)
    argv = [sys.executable, "-m", "benchmarks.stream_memory", "client", "--port", str(port)]
    argv += ["--target", args.target, "--levels", ",".join(map(str, args.levels))]
    argv += ["--chunks", str(args.chunks), "--delay-ms", str(args.delay_ms)]
    argv += ["--ramp", str(args.ramp)]
    client = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert client.stdin is not None
    assert client.stdout is not None
    tracing = args.trace
    levels: list[dict[str, Any]] = []
    try:
        for _ in range(len(args.levels) + 1):
            line = (await asyncio.wait_for(client.stdout.readline(), 300)).decode().strip()
            if not line.startswith("level"):
                raise RuntimeError(f"the load client says: {line or 'nothing (it exited)'}")
            count = int(line.split()[1])
            flowing = int(line.split("flowing=")[1]) if "flowing=" in line else count
            print(line, file=sys.stderr, flush=True)
            if count == 0 and tracing:
                tracemalloc.start(args.frames)
            await asyncio.sleep(1.0)  # let the last streams' first chunks settle
            print(f"{time.monotonic():.1f} measuring at {count} open streams", file=sys.stderr)
            levels.append({"level": count, "flowing": flowing, **_measure(tracing)})
            if count == args.levels[-1] and args.settle > 0:
                await asyncio.sleep(args.settle)
                levels.append({"level": count, "flowing": flowing, **_measure(tracing)})
            client.stdin.write(b"next\n")
            await client.stdin.drain()
        done = await asyncio.wait_for(client.stdout.readline(), 120)
        print(done.decode().strip(), file=sys.stderr)
    finally:
        if client.returncode is None:
            client.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.wait(), 30)
        if tracing:
            tracemalloc.stop()
        # chatd lets detached turns run on at shutdown; their cancellation is not news here.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 10)
    t0 = time.monotonic()
    report = _report(args, levels)
    print(f"  grouped in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return report


def _both(args: argparse.Namespace) -> dict[str, Any]:
    """Run the plain pass, then the traced pass, each in a fresh process; merge their figures."""
    merged: dict[str, Any] = {}
    passes = ["--no-trace"] if args.no_trace else ["--no-trace", "--trace"]
    work = Path(tempfile.mkdtemp(prefix="chatd-memory-"))
    try:
        for flag in passes:
            merged.update({k: v for k, v in _pass(args, flag, work).items() if k not in merged})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return merged


def _pass(args: argparse.Namespace, flag: str, work: Path) -> dict[str, Any]:
    """One pass in a fresh process of its own; its figures."""
    out = work / f"pass{flag}.json"
    argv = [sys.executable, "-m", "benchmarks.stream_memory", "server", flag]
    argv += ["--chatd", args.chatd or str(Path(sys.executable).parent / "chatd")]
    argv += ["--json", str(out), "--target", args.target, "--transport", args.transport]
    argv += ["--levels", ",".join(map(str, args.levels))]
    argv += ["--chunks", str(args.chunks), "--delay-ms", str(args.delay_ms)]
    argv += ["--ramp", str(args.ramp), "--settle", str(args.settle)]
    argv += ["--frames", str(args.frames), "--top", str(args.top)]
    argv += ["--stacks", str(args.stacks), "--stack-depth", str(args.stack_depth)]
    if args.dump and flag == "--trace":
        argv += ["--dump", str(args.dump)]
    print(f"pass {flag}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    paths = [str(A.REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False, cwd=A.REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the {flag} pass failed ({done.returncode})")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    """Run both passes (or one: `server`; or, with `client`, the load client a pass starts)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stream_memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("role", nargs="?", choices=["both", "server", "client"], default="both")
    parser.add_argument("--target", choices=["chatd", "floor"], default="chatd")
    parser.add_argument(
        "--transport",
        choices=["httpx", "aiohttp"],
        default="aiohttp",
        help="the floor's SDK transport (httpx: arm Nh)",
    )
    parser.add_argument("--levels", default="100,300", help="open streams at each snapshot")
    parser.add_argument("--chunks", type=int, default=120, help="chunks per stream")
    parser.add_argument("--delay-ms", type=int, default=5000, help="between chunks")
    parser.add_argument("--ramp", type=float, default=100.0, help="streams opened per second")
    parser.add_argument("--settle", type=float, default=30.0, help="s before a last snapshot")
    parser.add_argument("--frames", type=int, default=16, help="tracemalloc frames kept")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--stacks", type=int, default=15, help="largest stacks to show")
    parser.add_argument("--stack-depth", type=int, default=10, help="frames shown per stack")
    parser.add_argument(
        "--trace",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(server) the traced pass; --no-trace: the plain pass (both: plain pass only)",
    )
    parser.add_argument("--port", type=int, help="(client) the server's port")
    parser.add_argument("--chatd", help="(server) the `chatd` command that runs the fake")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--dump", type=Path, help="save the snapshots here (tracemalloc.Snapshot.load)"
    )
    args = parser.parse_args(argv)
    args.no_trace = not args.trace
    args.levels = [int(x) for x in args.levels.split(",")]
    if len(args.levels) != 2:
        parser.error("--levels takes two levels: the low and the high one")
    import uvloop

    if args.role == "client":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_client(args))
        return 0
    if args.role == "both":
        result = _both(args)
        print(_markdown(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
        return 0
    work = Path(tempfile.mkdtemp(prefix="chatd-memory-"))
    fake = A.fake_server(work, None, args.chatd)
    fake.start()
    try:
        fake.wait_ready(60)
        upstream = f"http://127.0.0.1:{fake.port}/v1"
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_serve(args, work, upstream))
    finally:
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(_markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
