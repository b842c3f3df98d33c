"""Instructions per request, counted by callgrind: a figure this noisy machine cannot move.

    python -m benchmarks.instructions --baseline ab770b3              # N, G and Gb
    python -m benchmarks.instructions --arms N --requests 3 --reps 1  # a smoke run

Each server arm starts as the harness starts it (arms.py), but under callgrind with its
instrumentation off; the fake upstream and this client run natively on the other core. Per arm
and repetition, callgrind counts four windows, each request sent one at a time on one keep-alive
connection: nothing for a few seconds (the idle rate: uvicorn's 10 Hz tick and chatd's timers,
which run by the clock and so are subtracted from each window by its length), K non-streamed
requests, S streams of 64 chunks and S of 8. Per chunk = (64-chunk stream - 8-chunk stream) / 56,
so a stream's fixed cost cancels. See benchmarks/README.md, "Instructions per request".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks import arms as A
from benchmarks import callgrind as cg
from benchmarks.client import Conn, Result
from benchmarks.instructions_report import KINDS, LONG, SHORT, render
from benchmarks.procs import Server
from benchmarks.workload import (
    MAIN_HISTORY,
    PLAIN,
    Req,
    SessionPool,
    streaming_text,
    synthetic_body,
)

SUPPORTED = ("N", "G", "Gb", "Ns")
IDLE_S = 3.0
WARM_STREAMS = 2


class Client:
    """One keep-alive connection to an arm, reopened if the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: Conn | None = None
        self.batched = 0

    async def send(self, req: Req, chunks: int | None) -> Result:
        """Send one request; RuntimeError unless it succeeded whole (all chunks, if a stream)."""
        if self.conn is None or self.conn.closed:
            self.conn = await Conn.open("127.0.0.1", self.port)
        res = await self.conn.request(req.method, req.path, req.body, req.headers, req.kind, 600)
        ok = res.status == 200 and (chunks is None or (res.ended and len(res.content) == chunks))
        if not ok or res.error:
            raise RuntimeError(f"HTTP {res.status} {res.error or ''} {res.body[:200]!r}")
        self.batched += res.batched()
        return res

    async def reconnect(self) -> None:
        """Open a new connection, and give the server time to take it before counting starts.

        uvicorn closes a connection idle for 5 s, as one is between repetitions; a request sent
        as it does so would fail.
        """
        self.close()
        self.conn = await Conn.open("127.0.0.1", self.port)
        await asyncio.sleep(0.5)

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()


def make_arm(
    name: str, work: Path, out: Path, upstream: str, args: argparse.Namespace, src: Path | None
) -> A.Arm:
    """The arm's server as the harness builds it, rewritten to start under callgrind."""
    pin = args.pin
    cores = A.SERVER_CORES if pin else None
    if name in A.CHATD_ARMS:
        url = f"sqlite:///{work / name / 'chatd.db'}"
        server = A.chatd_server(
            name, work, upstream, url, auth=False, extra_env={}, pin=pin, src=src
        )
        if src is not None:
            found = A.imported_chatd(server)
            if not Path(found).resolve().is_relative_to(src.resolve()):
                raise RuntimeError(f"{name} imports chatd from {found}, not from {src}")
        cg.wrap(server, out, cores, chatd=True)
        _seed_hashes(server, args.hash_seed)
        # One prefix for every chatd arm (each has its own database): session ids of another
        # length would be other bytes to hash, store and compare.
        pool = SessionPool("g")
        return A.Arm(name, "chatd, SQLite", server.port, server, chatd=True, pool=pool, src=src)
    client, transport = A.FLOOR_ARMS[name]
    server = A.floor_server(name, work, upstream, client, transport, pin)
    cg.wrap(server, out, cores, chatd=False)
    _seed_hashes(server, args.hash_seed)
    return A.Arm(name, f"floor app ({client}, {transport})", server.port, server)


def _seed_hashes(server: Server, seed: str) -> None:
    # str hashes decide dict and set layouts, so a random seed moves the count by up to ~0.5 %
    # between runs of the same code; with one fixed seed two runs agree within ~0.1 %.
    if seed != "random":
        server.env["PYTHONHASHSEED"] = seed


async def seed(arm: A.Arm, args: argparse.Namespace) -> None:
    """Import a fresh 10-turn session for every chatd request the arm will be sent."""
    assert arm.pool is not None
    count = 1 + args.warm + 2 * WARM_STREAMS + args.reps * (args.requests + 2 * args.streams)
    conns = [await Conn.open("127.0.0.1", arm.port) for _ in range(4)]
    try:
        await arm.pool.seed(conns, MAIN_HISTORY, count, arm.headers)
    finally:
        for c in conns:
            c.close()


async def capture(fake: Server, arm: A.Arm) -> dict[str, Any]:
    """The body chatd sends upstream for a 10-turn session, read from the fake's request log."""
    log = await Conn.open("127.0.0.1", fake.port)
    client = Client(arm.port)
    try:
        await log.request("DELETE", "/_fake/requests")
        await client.send(arm.request({}, PLAIN, stream=False), None)
        recorded = json.loads((await log.request("GET", "/_fake/requests")).body)
        bodies = [r["body"] for r in recorded if r["path"] == "/v1/chat/completions"]
        body: dict[str, Any] = bodies[-1]
        return body
    finally:
        log.close()
        client.close()


async def window(
    counter: cg.Counter, client: Client, reqs: list[Req], chunks: int | None
) -> dict[str, Any]:
    """Count the instructions the server spends on these requests (or, with none, at rest)."""
    if reqs:
        await client.reconnect()
    t0 = time.monotonic()
    counter.start()
    for req in reqs:
        await client.send(req, chunks)
    if not reqs:
        await asyncio.sleep(IDLE_S)
    ir = counter.stop()
    return {"ir": ir, "s": round(time.monotonic() - t0, 3), "n": len(reqs)}


async def measure(
    arm: A.Arm, counter: cg.Counter, body: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, Any], list[Path]]:
    """Warm the arm up, then count each window `--reps` times."""
    texts = {
        "request": (PLAIN, None),
        "stream": (streaming_text(LONG, args.chunk_delay_ms), LONG),
        "short": (streaming_text(SHORT, args.chunk_delay_ms), SHORT),
    }
    sizes = {"request": args.requests, "stream": args.streams, "short": args.streams}

    def reqs(kind: str, n: int) -> list[Req]:
        return [arm.request(body, texts[kind][0], stream=kind != "request") for _ in range(n)]

    client = Client(arm.port)
    try:
        for kind, n in (("request", args.warm), ("stream", WARM_STREAMS), ("short", WARM_STREAMS)):
            for req in reqs(kind, n):
                await client.send(req, texts[kind][1])
        # Sent with instrumentation off, the warm-up must have counted nothing at all.
        off = counter.dump()
        reps, parts = [], []
        for r in range(args.reps):
            rep = {"idle": await window(counter, client, [], None)}
            for kind in texts:
                rep[kind] = await window(counter, client, reqs(kind, sizes[kind]), texts[kind][1])
                if kind == "request":
                    parts = counter.last_parts
            reps.append(rep)
            brief = per_request(rep, idle_rate([rep]))["brief"]
            print(f"  {arm.name} rep {r + 1}: {brief}", flush=True)
    finally:
        client.close()
    return {"counted_while_off": off, "batched": client.batched, "reps": reps}, parts


def idle_rate(reps: list[dict[str, Any]]) -> float:
    """Instructions per second at rest: the median of the idle windows.

    A timer with a period longer than the window fires in some idle windows and not in others;
    the median keeps that out of every repetition's figures.
    """
    rates: list[float] = [rep["idle"]["ir"] / rep["idle"]["s"] for rep in reps]
    return statistics.median(rates)


def per_request(rep: dict[str, Any], rate: float) -> dict[str, Any]:
    """Millions of instructions per request, stream and chunk in one repetition, idle removed."""

    def each(w: dict[str, Any]) -> float:
        ir: float = w["ir"] - rate * w["s"]
        n: int = w["n"]
        return ir / n / 1e6

    figures = {"request": each(rep["request"]), "stream": each(rep["stream"])}
    figures["chunk"] = (figures["stream"] - each(rep["short"])) / (LONG - SHORT)
    figures["idle_per_s"] = rep["idle"]["ir"] / rep["idle"]["s"] / 1e6
    figures["raw_request"] = rep["request"]["ir"] / rep["request"]["n"] / 1e6
    brief = " ".join(f"{k}={figures[k]:.4f}" for k in KINDS)
    return {**figures, "brief": f"{brief} Minstr (idle {rate / 1e6:.3f} Minstr/s)"}


def summarise(arms: dict[str, Any]) -> dict[str, Any]:
    """Median over repetitions, the spread, and G against N and Gb."""
    summary: dict[str, Any] = {}
    for name, data in arms.items():
        rate = idle_rate(data["reps"])
        figures = [per_request(rep, rate) for rep in data["reps"]]
        entry: dict[str, Any] = {}
        for key in (*KINDS, "idle_per_s", "raw_request"):
            values = [f[key] for f in figures]
            mid = statistics.median(values)
            entry[key] = round(mid, 4)
            entry[f"{key}_spread_pct"] = round(100 * (max(values) - min(values)) / mid, 2)
        summary[name] = entry
    for base in ("N", "Gb"):
        if "G" in summary and base in summary:
            g, b = summary["G"], summary[base]
            for key in KINDS:
                g[f"{key}_minus_{base}"] = round(g[key] - b[key], 4)
                g[f"{key}_ratio_to_{base}"] = round(g[key] / b[key], 3)
    return summary


async def run_arms(
    args: argparse.Namespace, work: Path, out: Path, results: dict[str, Any]
) -> None:
    """Measure each arm in turn (chatd arms first: N is sent the body they send upstream)."""
    fake = A.fake_server(work, [1] if args.pin else None)
    fake.start()
    try:
        await asyncio.to_thread(fake.wait_ready, 60)
        upstream = f"http://127.0.0.1:{fake.port}/v1"
        src = None
        if A.BASELINE in args.arms:
            baseline = A.export_baseline(args.baseline, work)
            results["baseline"] = {"rev": baseline.rev, "sha": baseline.sha}
            src = baseline.src
        body: dict[str, Any] | None = None
        parts: dict[str, list[Path]] = {}
        order = sorted(args.arms, key=lambda n: n not in A.CHATD_ARMS)
        for name in order:
            arm = make_arm(name, work, out, upstream, args, src if name == A.BASELINE else None)
            assert arm.server is not None
            print(f"{name}: starting under callgrind", flush=True)
            arm.server.start()
            try:
                await asyncio.to_thread(arm.server.wait_ready, args.start_timeout)
                counter = cg.Counter(name, arm.server.pid, out)
                started = arm.server.started_in
                if arm.chatd:
                    await seed(arm, args)
                    body = body or await capture(fake, arm)
                elif body is None:
                    body = synthetic_body(MAIN_HISTORY)
                data, parts[name] = await measure(arm, counter, body, args)
                results["arms"][name] = {"title": arm.title, "started_in_s": started, **data}
            finally:
                arm.server.stop(grace=60)
        results["breakdown"] = {n: cg.per_request(p, args.requests) for n, p in parts.items()}
    finally:
        fake.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description="Count the instructions each server arm spends per request under callgrind.",
    )
    parser.add_argument("--arms", default="N,G", help=f"of {', '.join(SUPPORTED)} (default N,G)")
    parser.add_argument("--baseline", metavar="REV", help=f"add arm {A.BASELINE} at this revision")
    parser.add_argument("--requests", type=int, default=100, help="non-streamed per window (K)")
    parser.add_argument("--streams", type=int, help="streams per window (default K/10, >= 1)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each window")
    parser.add_argument("--warm", type=int, default=50, help="warm-up requests, uncounted")
    parser.add_argument("--chunk-delay-ms", type=int, default=20)
    parser.add_argument("--hash-seed", default="0", help="servers' PYTHONHASHSEED, or random")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results/)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    arms = [A.ARM_ALIASES.get(a.strip(), a.strip()) for a in args.arms.split(",") if a.strip()]
    if args.baseline and A.BASELINE not in arms:
        arms.insert(arms.index("G") + 1 if "G" in arms else len(arms), A.BASELINE)
    args.arms = list(dict.fromkeys(arms))
    unknown = [a for a in args.arms if a not in SUPPORTED]
    if unknown:
        parser.error(f"arms not supported here: {', '.join(unknown)} (only {', '.join(SUPPORTED)})")
    if A.BASELINE in args.arms and not args.baseline:
        parser.error(f"arm {A.BASELINE} is chatd at another revision: give it with --baseline REV")
    args.streams = args.streams or max(1, args.requests // 10)
    return args


def run_argv(args: argparse.Namespace) -> list[str]:
    """Translate `benchmarks.run`'s options (`--only instructions`), dropping arms not measured."""
    argv = ["--arms", ",".join(a for a in args.arms if a in SUPPORTED)]
    argv += ["--baseline", args.baseline] if args.baseline else []
    argv += ["--out", str(args.out)] if args.out else []
    argv += [] if args.pin else ["--no-pin"]
    argv += ["--requests", "5", "--reps", "1", "--warm", "3"] if args.quick else []
    return argv


def main(argv: list[str] | None = None) -> int:
    """Measure; write instructions.json and instructions.md; print the report."""
    args = parse_args(argv)
    missing = cg.missing_tools()
    if missing:
        print(f"not installed: {', '.join(missing)} (apt-get install valgrind)", file=sys.stderr)
        return 2
    notes: list[str] = []
    if args.pin and ((os.cpu_count() or 1) < 2 or shutil.which("taskset") is None):
        notes.append("not pinned: needs 2 cores and taskset")
        args.pin = False
    if args.pin:
        # This client and the fake upstream share core 1; the server under test gets core 0.
        os.sched_setaffinity(0, {1})
    out = args.out or A.REPO / "benchmarks" / "results" / time.strftime("instr-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chatd-instr-"))
    from benchmarks.bench import machine

    results: dict[str, Any] = {"machine": machine(), "notes": notes, "arms": {}}
    results["commit"] = results["machine"]["commit"]
    results["plan"] = {k: v for k, v in vars(args).items() if k not in ("out", "arms")}
    t0 = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_arms(args, work, out, results))
    finally:
        shutil.copytree(work / "logs", out / "logs", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - t0, 1)
    ordered = {n: results["arms"][n] for n in args.arms}
    results["arms"] = ordered
    results["summary"] = summarise(ordered)
    (out / "instructions.json").write_text(json.dumps(results, indent=2, default=str))
    text = render(results)
    (out / "instructions.md").write_text(text)
    print(text)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
