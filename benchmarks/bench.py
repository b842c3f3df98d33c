"""The harness's state for one run: the plan, the arms' servers, the machine it ran on."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks import arms as A
from benchmarks.client import ClientError, Conn
from benchmarks.procs import Server
from benchmarks.workload import MAIN_HISTORY, PLAIN, SessionPool, history_reuse, synthetic_body


@dataclass
class Plan:
    """How much of each test to run."""

    runs: int = 3
    warm: int = 20
    lat_n: int = 200  # requests per arm per run (measurement 1)
    lat_blocks: int = 4  # interleaving blocks per run
    stream_n: int = 3  # streams per arm per run, one at a time (measurement 2)
    stream_conc: int = 1
    stream_chunks: int = 64
    stream_delay_ms: int = 20
    # TTFT is the median over these streams too: a median of 3 moved by ±1.5 ms between runs.
    ttft_n: int = 20  # short streams per arm per run, one at a time
    ttft_chunks: int = 4
    tp_conns: int = 64  # measurement 3
    tp_warm_s: float = 1.0
    tp_s: float = 4.0
    tp_sessions_per_conn: int = 6
    open_levels: tuple[int, ...] = (100, 250, 500, 1000)  # measurement 4
    open_delay_ms: int = 100  # 10 chunks/s
    open_ramp_rate: float = 50.0  # streams opened per second
    open_hold_s: float = 4.0  # how long all of a level's streams are open together
    open_restart: bool = True  # restart servers first, so memory per stream starts from rest
    hist_sizes: tuple[int, ...] = (10, 100, 1000)  # measurement 6
    hist_n: int = 30
    store_reps: int = 40
    profile_s: float = 8.0
    profile_sessions: int = 640  # fresh sessions per profiled phase
    profile_big_sessions: int = 16  # sessions with the largest history, 10 turns each
    profile_streams: int = 250  # open streams for the per-chunk profile

    @classmethod
    def quick(cls) -> Plan:
        """A smoke run: every test, tiny."""
        return cls(
            runs=1,
            warm=3,
            lat_n=20,
            lat_blocks=2,
            stream_n=2,
            stream_conc=1,
            stream_chunks=12,
            ttft_n=3,
            tp_warm_s=0.3,
            tp_s=1.0,
            tp_conns=16,
            tp_sessions_per_conn=2,
            open_levels=(20,),
            open_hold_s=1.2,
            open_restart=False,
            open_ramp_rate=100.0,
            hist_sizes=(10, 100),
            hist_n=4,
            store_reps=4,
            profile_s=2.0,
            profile_sessions=64,
            profile_big_sessions=2,
            profile_streams=20,
        )


class Bench:
    """Everything one run holds: the plan, the servers, the arms, the results."""

    def __init__(self, args: argparse.Namespace, plan: Plan, work: Path, out: Path) -> None:
        self.args = args
        self.plan = plan
        self.work = work
        self.out = out
        self.pin = args.pin
        self.notes: list[str] = []
        self.servers: list[Server] = []
        self.arms: dict[str, A.Arm] = {}
        self.fake: Server | None = None
        self.captured: dict[int, dict[str, Any]] = {}
        self.results: dict[str, Any] = {"notes": self.notes}
        self.pg: Any = None
        self.baseline: A.Baseline | None = None

    def note(self, text: str) -> None:
        """Record a note for the report (and say it now)."""
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    # ---- setup ----

    def start(self) -> None:
        """Start the fake upstream and every arm's server; skip arms that cannot run."""
        wanted = self.args.arms
        client_cores = [1] if self.pin else None
        self.fake = A.fake_server(self.work, client_cores)
        self._launch([self.fake])
        upstream = f"http://127.0.0.1:{self.fake.port}/v1"
        pending: list[tuple[A.Arm, Server]] = []
        extra_env = dict(kv.split("=", 1) for kv in self.args.server_env)
        for name in wanted:
            if name == "D":
                self.arms["D"] = A.Arm(
                    "D",
                    "client -> fake upstream",
                    self.fake.port,
                    headers=[("Authorization", f"Bearer {A.UPSTREAM_KEY}")],
                )
            elif name in A.FLOOR_ARMS:
                client, transport = A.FLOOR_ARMS[name]
                server = A.floor_server(name, self.work, upstream, client, transport, self.pin)
                call = {
                    "lowlevel": "client.post(…, stream=True), body bytes read as chatd does",
                    "sdkstream": "client.post(…, stream=True) read by its own iterator",
                    "create": "create()",
                }[client]
                title = f"floor app: SDK {call} streamed upstream, {transport}"
                pending.append((A.Arm(name, title, server.port, server), server))
            elif name in A.CHATD_ARMS:
                made = self._chatd_arm(name, upstream, extra_env)
                if made is not None:
                    pending.append(made)
            elif name == "L":
                binary = A.litellm_binary()
                if binary is None:
                    self.note(
                        "arm L skipped: LiteLLM is not installed. It conflicts with chatd's "
                        f"openai SDK, so it lives in its own venv: {A.LITELLM_INSTALL}"
                    )
                    continue
                # The model name is the one chatd sends upstream (the openai preset's default).
                server, key = A.litellm_server(self.work, upstream, "gpt-4o-mini", binary, self.pin)
                arm = A.Arm("L", "LiteLLM proxy (master key on)", server.port, server)
                arm.headers = [("Authorization", f"Bearer {key}")]
                pending.append((arm, server))
        started = self._launch([s for _, s in pending], tolerate=True)
        for arm, server in pending:
            if server in started:
                self.arms[arm.name] = arm
        # Keep the order asked for.
        self.arms = {n: self.arms[n] for n in wanted if n in self.arms}

    def _chatd_arm(
        self, name: str, upstream: str, extra_env: dict[str, str]
    ) -> tuple[A.Arm, Server] | None:
        """A chatd arm's server, not started yet (None, with a note, when it cannot run)."""
        src = None
        if name == A.BASELINE:
            src = self._baseline_src()
            if src is None:
                return None
        url = self._database_url(name)
        if url is None:
            return None
        auth = self.args.auth or name == "Ga"
        server = A.chatd_server(
            name, self.work, upstream, url, auth=auth, extra_env=extra_env, pin=self.pin, src=src
        )
        auth_headers: list[tuple[str, str]] = []
        try:
            if src is not None:
                self._check_imports(server, src)
            if auth:
                key = self.args.auth_key or A.create_key(server)
                auth_headers = [("Authorization", f"Bearer {key}")]
        except RuntimeError as exc:
            if src is None:
                raise
            self.note(f"arm {name} skipped: {exc}")
            return None
        db = "PostgreSQL" if name == "Gpg" else "SQLite"
        title = f"chatd serve, /v1 send, {db}, auth " + ("on" if auth else "off")
        if self.baseline is not None and src is not None:
            title += f", at baseline {self.baseline.sha}"
        arm = A.Arm(
            name,
            title,
            server.port,
            server,
            chatd=True,
            headers=auth_headers,
            pool=SessionPool(name.lower()),
            src=src,
        )
        return arm, server

    def _baseline_src(self) -> Path | None:
        """Export --baseline's src/ (once); None, with a note, if it cannot be."""
        try:
            self.baseline = A.export_baseline(self.args.baseline, self.work)
        except RuntimeError as exc:
            self.results["baseline"] = {"rev": self.args.baseline}
            self.note(f"arm {A.BASELINE} skipped: could not export {self.args.baseline}: {exc}")
            return None
        b = self.baseline
        print(f"baseline {b.rev} = {b.sha} ({b.subject}) exported to {b.src}", flush=True)
        self.results["baseline"] = {"rev": b.rev, "sha": b.sha, "subject": b.subject}
        return b.src

    def _check_imports(self, server: Server, src: Path) -> None:
        """Make sure the server's environment imports chatd from `src`, not the working tree."""
        found = A.imported_chatd(server)
        if not Path(found).resolve().is_relative_to(src.resolve()):
            raise RuntimeError(f"its environment imports chatd from {found}, not from {src}")
        print(f"{server.name} imports chatd from {found}", flush=True)
        self.results["baseline"]["chatd_imported_from"] = found

    def _database_url(self, name: str) -> str | None:
        if name in ("G", "Ga", "Gb"):
            return f"sqlite:///{self.work / name / 'chatd.db'}"
        from chatd.testing.postgres import PostgresServer

        if not PostgresServer.available():
            self.note("arm Gpg skipped: PostgreSQL is not installed (apt-get install postgresql)")
            return None
        if self.pg is None:
            self.pg = PostgresServer()
            self.pg.start()
            if self.pin:
                _pin_postgres(self.pg)
        url: str = self.pg.create_database("chatd_bench")
        return url

    def _launch(self, servers: list[Server], tolerate: bool = False) -> list[Server]:
        for s in servers:
            s.start()
            self.servers.append(s)
        ok = []
        for s in servers:
            try:
                s.wait_ready(self.args.start_timeout)
                ok.append(s)
            except RuntimeError as exc:
                if not tolerate:
                    raise
                self.note(f"arm {s.name} skipped: it did not start: {exc}")
                s.stop()
        return ok

    def stop(self) -> None:
        """Stop every server this run started."""
        for s in reversed(self.servers):
            try:
                s.stop()
            except (OSError, ProcessLookupError) as exc:
                print(f"could not stop {s.name}: {exc}", file=sys.stderr)
        if self.pg is not None:
            self.pg.stop()

    # ---- preparation ----

    def sessions_needed(self) -> int:
        """Fresh sessions with the main history a chatd arm uses in the whole run."""
        p = self.plan
        latency = p.warm + p.runs * p.lat_n
        streaming = 1 + p.runs * p.stream_n
        throughput = p.runs * p.tp_conns * p.tp_sessions_per_conn
        history = p.runs * p.hist_n
        profile = 2 * p.profile_sessions if self.args.profile else 0
        return latency + streaming + throughput + history + profile + 8

    async def prepare(self) -> None:
        """Seed sessions on chatd arms and capture what chatd sends upstream, per history size."""
        p = self.plan
        for arm in [a for a in self.arms.values() if a.chatd]:
            try:
                await self._seed(arm)
            except (RuntimeError, ClientError) as exc:
                if arm.src is None:
                    raise
                # Another revision may lack what the harness relies on (the import route).
                self.note(f"arm {arm.name} dropped: seeding its sessions failed: {exc}")
                del self.arms[arm.name]
                self.results.get("arms", {}).pop(arm.name, None)
                if arm.server is not None:
                    arm.server.stop()
        chatd_arm = next((a for a in self.arms.values() if a.chatd), None)
        if chatd_arm is None:
            # No chatd arm: build the body chatd would send from the seeded history directly.
            sizes = {MAIN_HISTORY, *p.hist_sizes}
            self.captured = {size: synthetic_body(size) for size in sizes}
            return
        for size in sorted({MAIN_HISTORY, *p.hist_sizes}):
            self.captured[size] = await self._capture(chatd_arm, size)
        n = len(self.captured[MAIN_HISTORY]["messages"])
        print(f"chatd sends {n} messages upstream for {MAIN_HISTORY} of history", flush=True)

    async def _seed(self, arm: A.Arm) -> None:
        """Import every session a chatd arm will use in the run, at each history size."""
        p = self.plan
        assert arm.pool is not None
        conns = [await Conn.open("127.0.0.1", arm.port) for _ in range(8)]
        t0 = time.perf_counter()
        try:
            await arm.pool.seed(conns, MAIN_HISTORY, self.sessions_needed(), arm.headers)
            for size in p.hist_sizes:
                if size != MAIN_HISTORY:
                    count = 1 + p.runs * -(-p.hist_n // history_reuse(size))
                    if self.args.profile and size == max(p.hist_sizes):
                        count += p.profile_big_sessions
                    await arm.pool.seed(conns, size, count, arm.headers)
        finally:
            for c in conns:
                c.close()
        took = time.perf_counter() - t0
        print(f"seeded {arm.pool.seeded} sessions on {arm.name} in {took:.1f} s", flush=True)

    async def _capture(self, arm: A.Arm, size: int) -> dict[str, Any]:
        assert self.fake is not None
        fake = await Conn.open("127.0.0.1", self.fake.port)
        conn = await Conn.open("127.0.0.1", arm.port)
        try:
            await fake.request("DELETE", "/_fake/requests")
            req = arm.request({}, PLAIN, stream=False, size=size)
            result = await conn.request(req.method, req.path, req.body, req.headers, req.kind)
            if result.status != 200:
                raise RuntimeError(f"{arm.name} answered {result.status}: {result.body[:300]!r}")
            recorded = orjson.loads((await fake.request("GET", "/_fake/requests")).body)
            bodies = [r["body"] for r in recorded if r["path"] == "/v1/chat/completions"]
            if not bodies:
                raise RuntimeError("the fake upstream recorded no chat completion from chatd")
            body: dict[str, Any] = bodies[-1]
            return body
        finally:
            fake.close()
            conn.close()


def _pin_postgres(pg: Any) -> None:
    """Move the PostgreSQL server to the server core: backends forked later inherit it."""
    from benchmarks.procs import descendants

    try:
        postmaster = int((pg.tmpdir / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for pid in descendants(postmaster):
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(task), A.SERVER_CORES)
        except OSError:
            continue


def machine() -> dict[str, Any]:
    """What this ran on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=A.REPO
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=A.REPO
    ).stdout.strip()
    import openai
    import uvicorn

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit + (" (src/ modified)" if dirty else ""),
        "openai_sdk": openai.__version__,
        "uvicorn": uvicorn.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
