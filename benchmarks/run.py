"""The benchmark harness: one command, every arm side by side, medians of interleaved runs.

    python -m benchmarks.run            # the full run (about 6-8 minutes on 2 cores)
    python -m benchmarks.run --quick    # a smoke run (under a minute)

See benchmarks/README.md for what is measured, how, and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import uvloop

from benchmarks import arms as A
from benchmarks import report, tests
from benchmarks.bench import Bench, Plan, machine


async def run_all(bench: Bench) -> None:
    """Prepare, then every test in turn; the open-streams test last (it leaves memory high)."""
    await bench.prepare()
    r = bench.results
    r["idle_rss"] = await tests.idle_rss(bench)
    only = set(bench.args.only or tests.ALL_TESTS)
    if "latency" in only:
        r["latency"] = await tests.latency(bench)
    if "streaming" in only:
        r["streaming"] = await tests.streaming(bench)
    if "throughput" in only:
        r["throughput"] = await tests.throughput(bench)
    if "history" in only:
        r["history"] = await tests.history(bench)
    if "open_streams" in only:
        r["open_streams"] = await tests.open_streams(bench)
    if "store" in only:
        r["store"] = tests.store_timing(bench)
    if bench.args.profile:
        r["profile"] = await tests.profile(bench)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measure chatd (G) against the fake upstream (D), a bare forwarding app "
        "(N) and LiteLLM (L), side by side, interleaved, medians of several runs.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of every test")
    parser.add_argument(
        "--arms",
        default=",".join(A.DEFAULT_ARMS),
        help=f"comma-separated arms of {', '.join(A.ALL_ARMS)} (default %(default)s)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated tests of {', '.join(tests.ALL_TESTS)}; or `instructions` alone "
        "(benchmarks.instructions: instructions per request under callgrind); or `cost` alone "
        "(benchmarks.cost: what a long conversation is billed)",
    )
    parser.add_argument("--runs", type=int, help="interleaved runs (default 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results/)")
    parser.add_argument("--profile", action="store_true", help="py-spy G (and N) after the tests")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="chatd arms with CHATD_AUTH=on and a key made by `chatd keys create`",
    )
    parser.add_argument(
        "--auth-key",
        default=os.environ.get("CHATD_BENCH_API_KEY"),
        help="with --auth, send this key instead of creating one ($CHATD_BENCH_API_KEY)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for chatd arms (e.g. how --auth's key is configured)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help=f"add arm {A.BASELINE}: chatd's src/ at this git revision, beside G in the same run",
    )
    parser.add_argument("--start-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for old, new in A.ARM_ALIASES.items():
        if old in arms:
            print(f"note: arm {old} is now {new} (chatd's upstream path)", file=sys.stderr)
    arms = [A.ARM_ALIASES.get(a, a) for a in arms]
    args.arms = list(dict.fromkeys(arms))
    unknown = [a for a in args.arms if a not in A.ALL_ARMS]
    if unknown:
        parser.error(f"unknown arms: {', '.join(unknown)}")
    if A.BASELINE in args.arms and not args.baseline:
        parser.error(f"arm {A.BASELINE} is chatd at another revision: give it with --baseline REV")
    if args.baseline and A.BASELINE not in args.arms:
        at = args.arms.index("G") + 1 if "G" in args.arms else len(args.arms)
        args.arms.insert(at, A.BASELINE)
    if args.only:
        args.only = [t.strip() for t in args.only.split(",")]
        bad = [t for t in args.only if t not in (*tests.ALL_TESTS, "instructions", "cost")]
        if bad:
            parser.error(f"unknown tests: {', '.join(bad)}")
        if "instructions" in args.only and len(args.only) > 1:
            parser.error("--only instructions runs alone: its servers run under callgrind")
        if "cost" in args.only and len(args.only) > 1:
            parser.error("--only cost runs alone: it runs chatd in-process, not the arms")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write results.json and report.md; print the report."""
    args = parse_args(argv)
    if args.only == ["instructions"]:
        from benchmarks import instructions

        return instructions.main(instructions.run_argv(args))
    if args.only == ["cost"]:
        from benchmarks import cost

        argv = ["--out", str(args.out)] if args.out else []
        return cost.main(argv + (["--turns", "12"] if args.quick else []))
    plan = Plan.quick() if args.quick else Plan()
    if args.runs:
        plan.runs = args.runs
    out = args.out or A.REPO / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chatd-bench-"))
    bench = Bench(args, plan, work, out)
    if args.pin and (os.cpu_count() or 1) < 2:
        bench.note("fewer than 2 CPUs: nothing pinned, client and servers share the CPU")
        args.pin = False
    if args.pin and shutil.which("taskset") is None:
        bench.note("taskset not found (util-linux): nothing pinned")
        args.pin = False
    if args.pin:
        # The load client (this process) and the fake upstream share core 1; servers get core 0.
        os.sched_setaffinity(0, {1})
    bench.results["machine"] = machine()
    bench.results["plan"] = asdict(plan)
    bench.results["pinned"] = args.pin
    bench.results["quick"] = args.quick
    t0 = time.monotonic()
    try:
        bench.start()
        bench.results["arms"] = {
            n: {"title": a.title, "started_in_s": a.server.started_in if a.server else None}
            for n, a in bench.arms.items()
        }
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_all(bench))
    finally:
        bench.stop()
        shutil.copytree(work / "logs", out / "logs", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    bench.results["wall_s"] = round(time.monotonic() - t0, 1)
    (out / "results.json").write_text(json.dumps(bench.results, indent=2, default=str))
    text = report.render(bench.results)
    (out / "report.md").write_text(text)
    print(text)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
