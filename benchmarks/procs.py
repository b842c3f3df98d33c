"""Server processes for the arms: started pinned to a core, probed until ready, measured, stopped.

Only processes this harness started are ever signalled, by their own pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinning(cores: Sequence[int] | None) -> list[str]:
    """Return the taskset prefix for a command, or nothing when pinning is off."""
    if not cores or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", ",".join(str(c) for c in cores)]


def descendants(pid: int) -> list[int]:
    """Return pid and every live descendant (read from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def rss_bytes(pid: int) -> int:
    """Return the resident set size of pid and its descendants, in bytes."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """Return user+system CPU seconds used so far by pid and its live descendants."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / CLOCK_TICKS


def cpu_split(pid: int) -> tuple[float, float]:
    """Return (user, system) CPU seconds of pid and its live descendants."""
    user = system = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of pid and its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                continue
    return total


def thread_count(pid: int) -> int:
    """Threads of pid and its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/task"))
        except OSError:
            continue
    return total


class Server:
    """One server process of an arm (or the fake upstream)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        health: str,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        cores: Sequence[int] | None,
        health_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [*pinning(cores), *argv]
        self.port = port
        self.health = health
        self.env = dict(env)
        self.cwd = cwd
        self.log = log
        self.health_headers = dict(health_headers or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None

    @property
    def pid(self) -> int:
        """The server's pid (taskset execs the command, so it is the server's own)."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the process; output goes to its log file."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._t0 = time.monotonic()

    def wait_ready(self, timeout: float) -> None:
        """Poll the health URL until it answers 200; RuntimeError (with the log's tail) if not."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}{self.health}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                request = urllib.request.Request(url, headers=self.health_headers)
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        self.started_in = time.monotonic() - self._t0
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        """Return the last lines of the log, on one line."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def rss(self) -> int:
        """Resident memory of the server and its children, in bytes."""
        return rss_bytes(self.pid) if self.proc is not None else 0

    def cpu(self) -> float:
        """CPU seconds used so far by the server and its children."""
        return cpu_seconds(self.pid) if self.proc is not None else 0.0

    def counters(self) -> tuple[float, float, int]:
        """(user s, system s, context switches) so far, for the server and its children."""
        if self.proc is None:
            return 0.0, 0.0, 0
        user, system = cpu_split(self.pid)
        return user, system, context_switches(self.pid)

    def restart(self, timeout: float) -> None:
        """Stop and start again on the same port, waiting until it is ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def stop(self, grace: float = 10.0) -> None:
        """Send SIGTERM to this process group (the server's own session), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        pgid = os.getpgid(proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(5)
