"""Time chatd's store for one turn at several history sizes (measurement 6a).

Run by the harness pinned to the server core while the servers are idle:

    python -m benchmarks.store_bench --url sqlite:////tmp/x.db --sizes 10,100,1000

For each size it imports sessions with that many messages of history, then times what a turn
costs the store, step by step as the engine calls it: "begin" (`chatd.testing.turns.begin_turn`:
`open_turn` reads the session's settings for the engine's plan, the history is decoded as far
back as the engine's default context policy needs, timed apart as "history", and the commit
writes the user's message), and
`finish_turn` (the reply and final state, one transaction).
It also counts, per step, the SQL statements sent and (on SQLite) the calls that had to go to
a thread (only when another process holds the lock: none here). A session
with 20 messages or fewer is used once; larger ones serve a few turns each, so the history
grows by at most 2 %. Prints one JSON object: per size, the median milliseconds of each step
and of store = begin's write + finish (the write side, which docs/performance.md bounds at 1,000
messages to 1.2x the time at 10), and the statements and thread round trips of one turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from sqlalchemy import event

from benchmarks.workload import PLAIN, session_doc
from chatd.engine import EngineConfig
from chatd.store import open_store
from chatd.store.database import SqliteDatabase
from chatd.testing.turns import begin_turn
from chatd.transfer import parse_doc
from chatd.types import (
    DEFAULT_USER,
    Message,
    SessionSettings,
    StopReason,
    TurnPlan,
    TurnState,
    Usage,
)

REPLY = 'Fake reply #0badcafe to 11 messages. You said: "' + PLAIN + '".'


class Counts:
    """SQL statements, round trips to the store's threads, and time in reads, as they happen."""

    def __init__(self) -> None:
        self.statements = 0
        self.hops = 0
        self.read_s = 0.0


def _instrument(db: Any, counts: Counts) -> None:
    def on_execute(*_args: Any) -> None:
        counts.statements += 1

    event.listen(db.sync_engine, "before_cursor_execute", on_execute)
    read = db.read

    async def timed_read(work: Any) -> Any:
        began = time.perf_counter()
        try:
            return await read(work)
        finally:
            counts.read_s += time.perf_counter() - began

    db.read = timed_read
    if not isinstance(db, SqliteDatabase):
        return  # asyncpg through run_sync: no threads
    # SQLite calls run in the event loop; one goes to a thread only when it must wait.
    submit = db._patient.submit

    def counted(*args: Any, **kwargs: Any) -> Any:
        counts.hops += 1
        return submit(*args, **kwargs)

    db._patient.submit = counted  # type: ignore[method-assign]


# A turn's begin is timed in two parts: its reads ("history"), and the rest (its write).
STEPS = ("begin", "history", "finish")


async def bench(url: str, sizes: list[int], reps: int) -> dict[str, dict[str, float]]:
    """Return per size the median ms of each step and of store (begin + finish), and counts."""
    store = await open_store(url)
    counts = Counts()
    _instrument(store.db, counts)
    policy = EngineConfig().policy
    out: dict[str, dict[str, float]] = {}
    try:
        for size in sizes:
            reuse = 1 if size <= 20 else 3 if size <= 100 else 10
            sessions = []
            for n in range(-(-reps // reuse) + 1):
                doc = parse_doc(json.loads(session_doc(f"store-{size}-{n}", size // 2)))
                await store.import_session(
                    DEFAULT_USER,
                    doc.session_id,
                    system_prompt=None,
                    params=doc.params,
                    provider=None,
                    turns=doc.turns,
                )
                sessions.append(doc.session_id)
            timings: dict[str, list[float]] = {k: [] for k in (*STEPS, "store")}
            per_step: dict[str, tuple[int, int]] = {}
            # One unmeasured turn on the spare session warms the statements' caches.
            for rep in range(reps + 1):
                sid = sessions[-1] if rep == 0 else sessions[(rep - 1) // reuse]
                marks = [(time.perf_counter(), counts.statements, counts.hops)]
                read_before = counts.read_s
                start = await begin_turn(
                    store,
                    DEFAULT_USER,
                    sid,
                    Message.user(PLAIN),
                    # As the engine plans a turn: from the settings the open read.
                    lambda _settings: TurnPlan("gpt-4o-mini", "openai", policy.history_cut()),
                    create=SessionSettings(),
                    # As the engine guesses at open: the server's default policy.
                    history_until=policy.history_cut(),
                    same_as_hint=True,
                )
                history_s = counts.read_s - read_before
                marks.append((time.perf_counter(), counts.statements, counts.hops))
                await store.finish_turn(
                    start.record.id,
                    state=TurnState.COMPLETE,
                    messages=[Message.assistant(REPLY)],
                    stop_reason=StopReason.END_TURN,
                    usage=Usage(input_tokens=100, output_tokens=20),
                    latency_ms=1.0,
                    ttft_ms=1.0,
                )
                marks.append((time.perf_counter(), counts.statements, counts.hops))
                if rep == 0:
                    continue
                for i, step in enumerate(("begin", "finish")):
                    timings[step].append(marks[i + 1][0] - marks[i][0])
                    per_step[step] = (
                        marks[i + 1][1] - marks[i][1],
                        marks[i + 1][2] - marks[i][2],
                    )
                timings["begin"][-1] -= history_s
                timings["history"].append(history_s)
                timings["store"].append(timings["begin"][-1] + timings["finish"][-1])
            result: dict[str, Any] = {
                f"{k}_ms": round(statistics.median(v) * 1000, 3) for k, v in timings.items()
            }
            result["statements"] = {k: v[0] for k, v in per_step.items()}
            result["thread_round_trips"] = {k: v[1] for k, v in per_step.items()}
            out[str(size)] = result
    finally:
        await store.close()
    return out


def main() -> None:
    """Parse arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(json.dumps(asyncio.run(bench(args.url, sizes, args.reps))))


if __name__ == "__main__":
    main()
