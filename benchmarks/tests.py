"""The measurements (docs/performance.md, issue 6), each over every arm, interleaved, several runs.

Every figure is summarised per run, then the median over runs is reported; differences and
ratios against D and N are taken within a run before the median, so drift between runs cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import profile as prof
from benchmarks.arms import BASELINE, Arm
from benchmarks.client import ClientError, Conn, Result, percentile
from benchmarks.procs import pinning, thread_count
from benchmarks.workload import (
    MAIN_HISTORY,
    PLAIN,
    Req,
    chatd_send,
    history_reuse,
    openai_body,
    streaming_text,
)

if TYPE_CHECKING:
    from benchmarks.bench import Bench

# Streams are held at their rate if, while all were open, their chunks came on average at
# most this much further apart than the upstream sent them, over a window of at least:
MAX_GAP_RATIO = 1.15
MIN_WINDOW_S = 1.0
# Arms that only compare upstream-client choices: measured for latency, throughput, memory.
INFO_ARMS = frozenset({"Nc", "Nh", "Ns"})

ALL_TESTS = ("latency", "streaming", "throughput", "history", "open_streams", "store")
_nonce = itertools.count()


def rotate(items: list[Arm], k: int) -> list[Arm]:
    """The arms in another order for each run and block, so none always goes first."""
    k %= len(items)
    return items[k:] + items[:k]


def med(values: list[float]) -> float | None:
    """Median, None for no values."""
    clean = [v for v in values if v is not None and v == v]
    return statistics.median(clean) if clean else None


def ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded to microseconds."""
    return round(seconds * 1000, 3)


async def _send(conn: Conn, req: Req, wait_s: float = 60.0) -> Result:
    return await conn.request(req.method, req.path, req.body, req.headers, req.kind, wait_s)


class Keeper:
    """One keep-alive connection per arm, reopened if the server closed it."""

    def __init__(self) -> None:
        self.conns: dict[str, Conn] = {}

    async def send(self, arm: Arm, req: Req) -> Result:
        conn = self.conns.get(arm.name)
        if conn is None or conn.closed:
            conn = self.conns[arm.name] = await Conn.open("127.0.0.1", arm.port)
        return await _send(conn, req)

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


# ---- memory at rest ----


async def idle_rss(bench: Bench) -> dict[str, Any]:
    """Measurement 5a: RSS of each server restarted, after 5 requests and a second at rest.

    Restarted so that nothing the harness did before (seeding thousands of sessions) counts.
    """
    out: dict[str, Any] = {}
    for arm in bench.arms.values():
        if arm.server is None:
            continue
        await asyncio.to_thread(arm.server.restart, bench.args.start_timeout)
        keeper = Keeper()
        try:
            for _ in range(5):
                req = arm.request(bench.captured[MAIN_HISTORY], PLAIN, stream=False)
                await keeper.send(arm, req)
        finally:
            keeper.close()
        await asyncio.sleep(1.0)
        out[arm.name] = {
            "rss_mb": round(arm.server.rss() / 2**20, 1),
            "threads": thread_count(arm.server.pid),
        }
    return out


# ---- 1: added latency, one connection, not streamed ----


async def latency(bench: Bench) -> dict[str, Any]:
    """Measurement 1: non-streamed turns one at a time on one connection per arm."""
    p, arms = bench.plan, list(bench.arms.values())
    body = bench.captured[MAIN_HISTORY]
    keeper = Keeper()
    runs: list[dict[str, dict[str, float]]] = []
    print("latency: one connection, not streamed", flush=True)
    try:
        for arm in arms:
            for _ in range(p.warm):
                await keeper.send(arm, arm.request(body, PLAIN, stream=False))
        per_block = max(1, p.lat_n // p.lat_blocks)
        for r in range(p.runs):
            samples: dict[str, list[float]] = {a.name: [] for a in arms}
            errors = dict.fromkeys(samples, 0)
            for b in range(p.lat_blocks):
                for arm in rotate(arms, r + b):
                    for _ in range(per_block):
                        res = await keeper.send(arm, arm.request(body, PLAIN, stream=False))
                        if res.status == 200:
                            samples[arm.name].append(res.latency * 1000)
                        else:
                            errors[arm.name] += 1
            run = {
                name: {
                    "p50": round(percentile(s, 50), 3),
                    "p99": round(percentile(s, 99), 3),
                    "mean": round(statistics.fmean(s), 3) if s else float("nan"),
                    "n": len(s),
                    "errors": errors[name],
                }
                for name, s in samples.items()
            }
            runs.append(run)
            print("  run", r + 1, _brief(run, "p50"), flush=True)
    finally:
        keeper.close()
    return {"runs": runs, "summary": _summarise(runs, ("p50", "p99", "mean"))}


def _brief(run: dict[str, dict[str, Any]], key: str) -> str:
    return " ".join(f"{n}={v[key]}" for n, v in run.items())


def _bases(name: str, bases: tuple[str, ...]) -> tuple[str, ...]:
    """What an arm is compared with within a run: G also with its baseline, Gb."""
    return (*bases, BASELINE) if name == "G" else bases


def _summarise(runs: list[dict[str, dict[str, Any]]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Median over runs of each figure, and of each arm minus D and N (G: and Gb) within a run."""
    names = list(runs[0]) if runs else []
    out: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {}
        for key in keys:
            entry[key] = med([run[name][key] for run in runs])
            for base in _bases(name, ("D", "N")):
                if base in runs[0] and base != name:
                    entry[f"{key}_minus_{base}"] = med(
                        [run[name][key] - run[base][key] for run in runs]
                    )
        entry["errors"] = sum(run[name].get("errors", 0) for run in runs)
        out[name] = entry
    return out


# ---- 2: time to first token and gaps, streamed ----


async def _stream_once(arm: Arm, req: Req, delay: float, wait_s: float) -> Result:
    await asyncio.sleep(delay)
    conn = await Conn.open("127.0.0.1", arm.port)
    try:
        return await _send(conn, req, wait_s)
    finally:
        conn.close()


async def streaming(bench: Bench) -> dict[str, Any]:
    """Measurement 2: streams of N chunks D ms apart; TTFT, gaps, chunks one for one."""
    p = bench.plan
    arms = [a for a in bench.arms.values() if a.name not in INFO_ARMS]
    text = streaming_text(p.stream_chunks, p.stream_delay_ms)
    short = streaming_text(p.ttft_chunks, p.stream_delay_ms)
    nominal = p.stream_chunks * p.stream_delay_ms / 1000
    stagger = p.stream_delay_ms / 1000 / p.stream_conc
    print(f"streaming: {p.stream_chunks} chunks {p.stream_delay_ms} ms apart", flush=True)
    runs: list[dict[str, dict[str, Any]]] = []
    # One unmeasured stream per arm first.
    for arm in arms:
        await _stream_once(arm, arm.request(bench.captured[MAIN_HISTORY], text, stream=True), 0, 60)
    for r in range(p.runs):
        run: dict[str, dict[str, Any]] = {}
        for arm in rotate(arms, r):
            results: list[Result] = []
            for start in range(0, p.stream_n, p.stream_conc):
                batch = [
                    _stream_once(
                        arm,
                        arm.request(bench.captured[MAIN_HISTORY], text, stream=True),
                        i * stagger,
                        nominal + 60,
                    )
                    for i in range(min(p.stream_conc, p.stream_n - start))
                ]
                results.extend(await asyncio.gather(*batch, return_exceptions=False))
            # The first chunk comes stream_delay_ms in however long the stream: short ones
            # give TTFT enough samples at a fraction of the time.
            firsts = list(results)
            for _ in range(p.ttft_n):
                req = arm.request(bench.captured[MAIN_HISTORY], short, stream=True)
                firsts.append(await _stream_once(arm, req, 0, 60))
            ttfts = [x.ttft * 1000 for x in firsts if x.ttft is not None]
            gaps = [g * 1000 for x in results for g in x.gaps()]
            run[arm.name] = {
                "ttft_p50": round(percentile(ttfts, 50), 3),
                "ttft_n": len(ttfts),
                "gap_p50": round(percentile(gaps, 50), 3),
                "gap_p99": round(percentile(gaps, 99), 3),
                "chunks": sum(len(x.content) for x in results),
                "expected": p.stream_chunks * len(results),
                "batched": sum(x.batched() for x in results),
                "failed": sum(1 for x in results if not x.ended or x.error),
                "errors": sum(1 for x in results if x.status != 200),
            }
        run = {a.name: run[a.name] for a in arms}
        runs.append(run)
        print("  run", r + 1, _brief(run, "ttft_p50"), flush=True)
    summary = _summarise(runs, ("ttft_p50", "gap_p50", "gap_p99"))
    for name in summary:
        chunks = sum(run[name]["chunks"] for run in runs)
        expected = sum(run[name]["expected"] for run in runs)
        batched = sum(run[name]["batched"] for run in runs)
        failed = sum(run[name]["failed"] for run in runs)
        summary[name].update(
            chunks=chunks,
            expected=expected,
            batched=batched,
            failed=failed,
            one_for_one=chunks == expected and batched == 0 and failed == 0,
        )
    return {"runs": runs, "summary": summary}


# ---- 3: throughput at 64 connections, instant upstream ----


def _request_source(
    bench: Bench, arm: Arm, conns: int, sessions_per_conn: int, size: int
) -> Callable[[int, int], Req]:
    """Requests for connection i's k-th turn; chatd arms cycle through their own sessions."""
    if not arm.chatd:
        req = arm.request(bench.captured[size], PLAIN, stream=False)
        return lambda _i, _k: req
    assert arm.pool is not None
    per_conn = [[arm.pool.take(size) for _ in range(sessions_per_conn)] for _ in range(conns)]

    def make(i: int, k: int) -> Req:
        sessions = per_conn[i]
        return chatd_send(sessions[k % len(sessions)], PLAIN, stream=False, headers=arm.headers)

    return make


async def load(
    bench: Bench,
    arm: Arm,
    conns: int,
    warm_s: float,
    run_s: float,
    sessions_per_conn: int,
    size: int = MAIN_HISTORY,
) -> dict[str, Any]:
    """Closed-loop load: `conns` connections each sending back to back; count the window."""
    source = _request_source(bench, arm, conns, sessions_per_conn, size)
    assert bench.fake is not None
    assert arm.server is not None
    done: list[tuple[float, float]] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    start, end = t0 + warm_s, t0 + warm_s + run_s
    turns_per_conn = [0] * conns

    async def worker(i: int) -> None:
        try:
            conn = await Conn.open("127.0.0.1", arm.port)
        except ClientError as exc:
            errors.append(str(exc))
            return
        try:
            k = 0
            while time.perf_counter() < end:
                try:
                    res = await _send(conn, source(i, k))
                except ClientError as exc:
                    errors.append(str(exc))
                    conn.close()
                    conn = await Conn.open("127.0.0.1", arm.port)
                    continue
                k += 1
                if res.status == 200:
                    done.append((res.t_end, res.latency))
                else:
                    errors.append(f"HTTP {res.status}: {res.body[:120]!r}")
            turns_per_conn[i] = k
        finally:
            conn.close()

    cpu: dict[str, float] = {}

    def sample() -> dict[str, float]:
        assert arm.server is not None
        assert bench.fake is not None
        user, system, switches = arm.server.counters()
        return {
            "user": user,
            "system": system,
            "switches": switches,
            "threads": thread_count(arm.server.pid),
            "fake": bench.fake.cpu(),
            "client": _self_cpu(),
        }

    async def meter() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = sample()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after = sample()
        cpu.update({k: after[k] - before[k] for k in before})
        cpu["server"] = cpu["user"] + cpu["system"]
        cpu["threads"] = after["threads"]

    await asyncio.gather(meter(), *(worker(i) for i in range(conns)))
    window = [lat for t, lat in done if start <= t < end]
    rps = len(window) / run_s
    return {
        "rps": round(rps, 1),
        "p50_ms": round(percentile([x * 1000 for x in window], 50), 3),
        "p99_ms": round(percentile([x * 1000 for x in window], 99), 3),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "server_cpu": round(cpu["server"] / run_s, 2),
        "client_core_cpu": round((cpu["fake"] + cpu["client"]) / run_s, 2),
        "server_cpu_ms_per_req": round(cpu["server"] / max(1, len(window)) * 1000, 3),
        "server_sys_share": round(cpu["system"] / cpu["server"], 2) if cpu["server"] else None,
        "switches_per_req": round(cpu["switches"] / max(1, len(window)), 1),
        "server_threads": int(cpu["threads"]),
        "turns_per_session": (
            round(statistics.fmean(turns_per_conn) / sessions_per_conn, 1) if arm.chatd else None
        ),
    }


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def throughput(bench: Bench) -> dict[str, Any]:
    """Measurement 3: requests per second at 64 connections with an instant upstream."""
    p = bench.plan
    arms = [a for a in bench.arms.values() if a.server is not None]
    print(f"throughput: {p.tp_conns} connections, {p.tp_s:.0f} s per arm per run", flush=True)
    runs: list[dict[str, dict[str, Any]]] = []
    for r in range(p.runs):
        run: dict[str, dict[str, Any]] = {}
        for arm in rotate(arms, r):
            run[arm.name] = await load(
                bench, arm, p.tp_conns, p.tp_warm_s, p.tp_s, p.tp_sessions_per_conn
            )
            await asyncio.sleep(0.3)
        run = {a.name: run[a.name] for a in arms}
        runs.append(run)
        print("  run", r + 1, _brief(run, "rps"), flush=True)
    summary: dict[str, Any] = {}
    for arm in arms:
        name = arm.name
        entry: dict[str, Any] = {
            k: med([run[name][k] for run in runs])
            for k in (
                "rps",
                "p50_ms",
                "p99_ms",
                "server_cpu",
                "client_core_cpu",
                "server_sys_share",
                "switches_per_req",
                "server_threads",
            )
        }
        entry["server_cpu_ms_per_req"] = med([run[name]["server_cpu_ms_per_req"] for run in runs])
        entry["errors"] = sum(run[name]["errors"] for run in runs)
        entry["first_error"] = next((run[name]["first_error"] for run in runs), None)
        for base in _bases(name, ("N", "L")):
            if base in run and base != name:
                entry[f"ratio_to_{base}"] = med(
                    [run[name]["rps"] / run[base]["rps"] for run in runs if run[base]["rps"]]
                )
        if name == "G" and BASELINE in run:
            cpu = "server_cpu_ms_per_req"
            entry[f"cpu_ratio_to_{BASELINE}"] = med(
                [run[name][cpu] / run[BASELINE][cpu] for run in runs if run[BASELINE][cpu]]
            )
        if arm.chatd:
            entry["turns_per_session"] = med([run[name]["turns_per_session"] for run in runs])
        summary[name] = entry
    return {"runs": runs, "summary": summary}


# ---- 6: history growth ----


async def history(bench: Bench) -> dict[str, Any]:
    """Measurement 6b: added latency with 10, 100, 1,000 messages of history (chatd vs D)."""
    p = bench.plan
    chatd_arms = [a for a in bench.arms.values() if a.chatd]
    arms = [a for a in bench.arms.values() if a.name in ("D", "N")] + chatd_arms
    if not chatd_arms:
        return {"skipped": "no chatd arm"}
    print(f"history: sizes {p.hist_sizes} messages", flush=True)
    keeper = Keeper()
    runs: list[dict[str, dict[str, Any]]] = []
    try:
        for r in range(p.runs):
            run: dict[str, dict[str, Any]] = {}
            for size in p.hist_sizes:
                for arm in rotate(arms, r):
                    reuse, session, used = history_reuse(size), "", 0
                    samples: list[float] = []
                    for _ in range(p.hist_n):
                        if arm.chatd:
                            assert arm.pool is not None
                            if not session or used == reuse:
                                session, used = arm.pool.take(size), 0
                            used += 1
                            req = chatd_send(session, PLAIN, stream=False, headers=arm.headers)
                        else:
                            req = arm.request(bench.captured[size], PLAIN, stream=False)
                        res = await keeper.send(arm, req)
                        if res.status == 200:
                            samples.append(res.latency * 1000)
                    run[f"{arm.name}@{size}"] = {
                        "p50": round(percentile(samples, 50), 3),
                        "n": len(samples),
                    }
            runs.append(run)
    finally:
        keeper.close()
    summary: dict[str, Any] = {}
    for arm in chatd_arms:
        for size in p.hist_sizes:
            key = f"{arm.name}@{size}"
            entry: dict[str, Any] = {"p50": med([run[key]["p50"] for run in runs])}
            if "D" in bench.arms:
                entry["minus_D"] = med([run[key]["p50"] - run[f"D@{size}"]["p50"] for run in runs])
                entry["D_p50"] = med([run[f"D@{size}"]["p50"] for run in runs])
            if "N" in bench.arms:
                entry["minus_N"] = med([run[key]["p50"] - run[f"N@{size}"]["p50"] for run in runs])
                entry["N_p50"] = med([run[f"N@{size}"]["p50"] for run in runs])
            entry["upstream_messages"] = len(bench.captured[size]["messages"])
            summary[key] = entry
    return {"runs": runs, "summary": summary}


# ---- 4 and 5b: concurrent open streams, memory per stream ----


async def _hold(bench: Bench, arm: Arm, count: int) -> dict[str, Any]:
    """Open `count` streams at the plan's ramp rate; judge them while all are open together.

    Each stream lasts the ramp plus `open_hold_s`, so once the last one is flowing they are all
    open at once until the first ends: in that window a server that keeps up delivers every
    stream's chunks `open_delay_ms` apart; one that cannot spreads them further.
    """
    p = bench.plan
    gap_s = p.open_delay_ms / 1000
    ramp_s = count / p.open_ramp_rate
    chunks = math.ceil((ramp_s + p.open_hold_s) / gap_s)
    text = streaming_text(chunks, p.open_delay_ms)
    nominal = chunks * gap_s
    # One message, no history: the same upstream body chatd sends for a new session.
    single = dict(bench.captured[MAIN_HISTORY])
    single["messages"] = bench.captured[MAIN_HISTORY]["messages"][-1:]
    nonce = next(_nonce)
    open_now = 0
    peak = 0
    rss_max = 0

    async def one(i: int) -> Result | str:
        nonlocal open_now, peak
        await asyncio.sleep(i * ramp_s / count)
        if arm.chatd:
            session = f"{arm.name.lower()}-open{nonce}-{count}-{i}"
            req = chatd_send(session, text, stream=True, headers=arm.headers)
        else:
            req = Req(
                "POST",
                "/v1/chat/completions",
                openai_body(single, text, stream=True),
                arm.headers,
                "sse-openai",
            )
        try:
            conn = await Conn.open("127.0.0.1", arm.port)
        except ClientError as exc:
            return str(exc)
        open_now += 1
        peak = max(peak, open_now)
        try:
            return await _send(conn, req, nominal + 60)
        except ClientError as exc:
            return str(exc)
        finally:
            open_now -= 1
            conn.close()

    stop = asyncio.Event()

    async def sampler() -> None:
        nonlocal rss_max
        while not stop.is_set():
            if arm.server is not None:
                rss_max = max(rss_max, arm.server.rss())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    sampling = asyncio.create_task(sampler())
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    wall = time.perf_counter() - t0
    stop.set()
    await sampling
    results = [o for o in outcomes if isinstance(o, Result)]
    failures = [o for o in outcomes if isinstance(o, str)]
    failures += [
        r.error or f"HTTP {r.status}: {r.body[:200].decode(errors='replace')}"
        for r in results
        if not r.ended or r.error
    ]
    received = sum(len(r.content) for r in results)
    lost = count * chunks - received
    complete = not failures and lost == 0 and peak >= count
    # The window when every stream was flowing: from the last first chunk to the first end.
    flowing = [r for r in results if r.content]
    window_gaps: list[float] = []
    window = 0.0
    if flowing:
        opened = max(r.content[0][0] for r in flowing)
        closed = min(r.content[-1][0] for r in flowing)
        window = closed - opened
        for r in flowing:
            times = [t for t, _ in r.content if opened <= t <= closed]
            window_gaps += [b - a for a, b in itertools.pairwise(times)]
    mean_gap = statistics.fmean(window_gaps) if window_gaps else float("nan")
    kept_up = window >= MIN_WINDOW_S and mean_gap <= gap_s * MAX_GAP_RATIO
    stretch = [r.latency / nominal for r in results if r.ended]
    return {
        "streams": count,
        "chunks_each": chunks,
        # Every chunk of every stream arrived, all streams open at once ...
        "complete": complete,
        # ... and while all were open, chunks came (nearly) as fast as the upstream sent them.
        "held": complete and kept_up,
        "peak_open": peak,
        "lost_chunks": lost,
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        # Negative: the last stream began to flow only after the first had ended.
        "window_s": round(max(window, 0.0), 2),
        "window_gap_mean_ms": round(mean_gap * 1000, 1),
        "window_gap_p99_ms": round(percentile([g * 1000 for g in window_gaps], 99), 1),
        "duration_stretch_p50": round(percentile(stretch, 50), 3),
        "rss_max_mb": round(rss_max / 2**20, 1) if rss_max else None,
        "wall_s": round(wall, 1),
    }


async def open_streams(bench: Bench) -> dict[str, Any]:
    """Measurement 4 (and 5b): raise concurrent streams at 10 chunks/s until one is lost.

    Each server is restarted first, so its memory starts from rest: RSS per extra open stream
    is the rise of the peak RSS between the smallest and the largest level held.
    """
    p = bench.plan
    rate = 1000 / p.open_delay_ms
    print(f"open streams: levels {p.open_levels} at {rate:.0f} chunks/s", flush=True)
    out: dict[str, Any] = {}
    for arm in bench.arms.values():
        if arm.name in INFO_ARMS:
            continue
        if arm.server is not None and p.open_restart:
            await asyncio.to_thread(arm.server.restart, bench.args.start_timeout)
            keeper = Keeper()
            try:
                for _ in range(5):
                    await keeper.send(
                        arm, arm.request(bench.captured[MAIN_HISTORY], PLAIN, stream=False)
                    )
            finally:
                keeper.close()
            await asyncio.sleep(1.0)
        base = arm.server.rss() if arm.server else 0
        levels = []
        # D (the fake itself) is only the rig's check: can client and fake do the top level?
        counts = p.open_levels[-1:] if arm.server is None else p.open_levels
        for count in counts:
            level = await _hold(bench, arm, count)
            levels.append(level)
            print(
                f"  {arm.name} {count}: held={level['held']} complete={level['complete']} "
                f"lost={level['lost_chunks']} failed={level['failed']} "
                f"window={level['window_s']}s gap={level['window_gap_mean_ms']}ms "
                f"rss={level['rss_max_mb']}",
                flush=True,
            )
            if not level["held"]:
                break
            await asyncio.sleep(0.5)
        held = [lv for lv in levels if lv["held"]]
        complete = [lv for lv in levels if lv["complete"]]
        entry: dict[str, Any] = {
            "levels": levels,
            "most_held": held[-1]["streams"] if held else 0,
            "most_complete": complete[-1]["streams"] if complete else 0,
        }
        if arm.server is not None:
            entry["rest_rss_mb"] = round(base / 2**20, 1)
            top = complete[-1] if complete else None
            if top and len(complete) >= 2:
                low = complete[0]
                rise = (top["rss_max_mb"] - low["rss_max_mb"]) * 2**20
                entry["rss_per_stream_kib"] = round(
                    rise / (top["streams"] - low["streams"]) / 1024, 1
                )
                entry["rss_per_stream_between"] = [low["streams"], top["streams"]]
            elif top:
                entry["rss_per_stream_kib"] = round(
                    (top["rss_max_mb"] * 2**20 - base) / top["streams"] / 1024, 1
                )
                entry["rss_per_stream_between"] = [0, top["streams"]]
        out[arm.name] = entry
    return out


# ---- 6a: time to store a turn (chatd's store, in a process on the server core) ----


def store_timing(bench: Bench) -> dict[str, Any]:
    """Measurement 6a: begin_turn + finish_turn at 10, 100, 1,000 messages, per database."""
    p = bench.plan
    out: dict[str, Any] = {}
    for arm in bench.arms.values():
        if not arm.chatd or arm.name == "Ga":  # Ga's store is G's
            continue
        if arm.name == "Gpg":
            url = bench.pg.create_database("chatd_store_bench")
        else:
            url = f"sqlite:///{bench.work / f'store_bench-{arm.name}.db'}"
        argv = [
            *pinning([0] if bench.pin else None),
            sys.executable,
            "-m",
            "benchmarks.store_bench",
        ]
        argv += ["--url", url, "--reps", str(p.store_reps)]
        argv += ["--sizes", ",".join(str(s) for s in p.hist_sizes)]
        root, paths = Path(__file__).resolve().parent.parent, []
        if arm.src is not None:
            # Gb: its chatd, timed by its own store_bench (exported beside it) if it has one.
            paths.append(str(arm.src))
            if (arm.src.parent / "benchmarks" / "store_bench.py").is_file():
                root = arm.src.parent
        paths.append(str(root))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        # In `root` too: `python -m` puts the working directory first on sys.path.
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root, timeout=300)
        if done.returncode != 0:
            out[arm.name] = {"error": done.stderr.strip()[-500:]}
            continue
        out[arm.name] = json.loads(done.stdout)
        print(f"store ({arm.name}):", done.stdout.strip(), flush=True)
    return out


# ---- profiles ----


async def _spy(spy: str, pid: int, seconds: float, raw: Path) -> asyncio.subprocess.Process:
    cmd = [spy, "record", "-p", str(pid), "-d", str(math.ceil(seconds)), "-r", "250"]
    cmd += ["--nonblocking", "--format", "raw", "-o", str(raw)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(0.5)
    return proc


async def profile(bench: Bench) -> dict[str, Any]:
    """py-spy on G (and N): one connection, 64, a long history, and many open streams.

    Each phase's CPU per request (per chunk for streams) is measured from /proc alongside, so
    each function's share of the samples becomes milliseconds per request.
    """
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        bench.note("profile skipped: py-spy not installed (pip install -e '.[bench]')")
        return {"skipped": "py-spy not installed"}
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    p = bench.plan
    out: dict[str, Any] = {}
    for arm in bench.arms.values():
        if arm.name not in ("G", "N", "Gpg", "Ga", BASELINE) or arm.server is None:
            continue
        big = max(p.hist_sizes)
        phases = [
            ("one_connection", 1, MAIN_HISTORY, p.profile_sessions),
            (f"{p.tp_conns}_connections", p.tp_conns, MAIN_HISTORY, p.profile_sessions),
            (f"one_connection_history_{big}", 1, big, p.profile_big_sessions),
        ]
        for phase, conns, size, sessions in phases:
            raw = bench.out / f"profile-{arm.name}-{phase}.txt"
            spy_proc = await _spy(spy, arm.server.pid, p.profile_s + 1, raw)
            per_conn = max(1, sessions // conns)
            measured = await load(bench, arm, conns, 0.0, p.profile_s, per_conn, size)
            _, spy_err = await asyncio.wait_for(spy_proc.communicate(), 60)
            _record(out, f"{arm.name}/{phase}", raw, spy_proc, spy_err, measured)
        # Many open streams: what each chunk costs.
        count = p.profile_streams
        phase = f"open_streams_{count}"
        raw = bench.out / f"profile-{arm.name}-{phase}.txt"
        seconds = 2 * count / p.open_ramp_rate + p.open_hold_s + 1
        spy_proc = await _spy(spy, arm.server.pid, seconds, raw)
        before = arm.server.cpu()
        level = await _hold(bench, arm, count)
        cpu = arm.server.cpu() - before
        chunks = level["streams"] * level["chunks_each"] - level["lost_chunks"]
        measured = {
            "streams": count,
            "held": level["held"],
            "chunks": chunks,
            "server_cpu_ms_per_req": round(cpu / max(1, chunks) * 1000, 4),
            "unit": "chunk",
        }
        _, spy_err = await asyncio.wait_for(spy_proc.communicate(), 60)
        _record(out, f"{arm.name}/{phase}", raw, spy_proc, spy_err, measured)
    (bench.out / "profile.json").write_text(json.dumps(out, indent=2))
    return out


def _record(
    out: dict[str, Any],
    key: str,
    raw: Path,
    spy_proc: asyncio.subprocess.Process,
    spy_err: bytes,
    measured: dict[str, Any],
) -> None:
    if spy_proc.returncode != 0 or not raw.exists():
        out[key] = {"error": spy_err.decode(errors="replace")[-400:]}
        return
    summary = prof.summarise(raw.read_text(), measured["server_cpu_ms_per_req"])
    summary["load"] = measured
    out[key] = summary
    unit = measured.get("unit", "request")
    print(f"profile {key}: {measured['server_cpu_ms_per_req']} ms CPU per {unit}", flush=True)
