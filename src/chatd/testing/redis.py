"""A real, throwaway Redis server process for tests and benchmarks.

    with RedisServer() as redis:
        settings = Settings(redis_url=redis.url)

It runs the installed `redis-server` on 127.0.0.1 at a free port with no persistence, in a
fresh temporary directory that `stop()` deletes. Redis runs fine as root, so unlike
PostgreSQL no user switch is needed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class RedisError(RuntimeError):
    """The server could not be started; the message says why."""


class RedisServer:
    """One redis-server process; a context manager that starts and stops it."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RedisError("redis-server not found (apt-get install redis-server)")
        self.binary = found
        self.port = 0
        self.tmpdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> bool:
        """Tell whether the redis-server binary is installed."""
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        """Return the redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        self.tmpdir = Path(tempfile.mkdtemp(prefix="chatd-redis-"))
        self.port = _free_port()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.tmpdir),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.tmpdir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.tmpdir / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise RedisError(f"redis-server did not start\n--- redis.log ---\n{tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def flush(self) -> None:
        """Delete every key (FLUSHALL), so tests start from empty counters."""
        self._command(b"FLUSHALL")

    def _answers(self) -> bool:
        try:
            return self._command(b"PING") == b"+PONG"
        except OSError:
            return False

    def _command(self, name: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(b"*1\r\n$%d\r\n%s\r\n" % (len(name), name))
            return conn.recv(64).strip()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
