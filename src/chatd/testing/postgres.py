"""A real, throwaway PostgreSQL server process for tests and benchmarks.

    with PostgresServer() as pg:
        pg.create_database("t1")
        store = await open_store(pg.url("t1"))

It runs the installed binaries (``pg_config --bindir``, else the newest
/usr/lib/postgresql/*/bin): ``initdb`` into a fresh temporary directory, then a server on
127.0.0.1 at a free port, with trust auth and its Unix socket in that directory. The directory
goes in /dev/shm when that has room (creating a database makes ~300 files: about 10 ms on tmpfs,
0.25 s on some disks), else in the system temp dir. ``initdb`` and ``pg_ctl`` refuse to run as
root, so as root (CI, containers) they run as the ``postgres`` system user through ``runuser``,
and the directory is handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

SERVER_USER = "postgres"  # the OS user that owns the server when we run as root
SUPERUSER = "postgres"  # the database role initdb creates, used in url()

# Throwaway test data only: these trade crash safety for speed. A small max_wal_size keeps
# the WAL of many CREATE DATABASEs from piling up (in RAM, on tmpfs).
_SETTINGS = """
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 128MB
min_wal_size = 32MB
"""
_SHM = Path("/dev/shm")
_SHM_MIN_FREE = 1 << 30


class PostgresError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why."""


class PostgresServer:
    """One PostgreSQL server in its own temporary directory; ``stop()`` deletes it all."""

    def __init__(self, bindir: Path | None = None, base_dir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresError("PostgreSQL binaries not found (apt-get install postgresql)")
        self.bindir = found
        self.base_dir = base_dir or _default_base_dir()
        self.host = "127.0.0.1"
        self.port = 0
        self.tmpdir: Path | None = None
        self.running = False

    @classmethod
    def available(cls) -> bool:
        """Whether the binaries (and, as root, the ``postgres`` user and runuser) exist."""
        if find_bindir() is None:
            return False
        if os.geteuid() != 0:
            return True
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return False
        return shutil.which("runuser") is not None

    def url(self, dbname: str = "postgres") -> str:
        """Return the SQLAlchemy URL of a database on this server."""
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server, creating the cluster first if needed; returns once it accepts."""
        if self.running:
            return
        if self.tmpdir is None:
            self._create_cluster()
        assert self.tmpdir is not None
        log = self.tmpdir / "postgres.log"
        try:
            self._as_owner("pg_ctl", "start", "-w", "-D", str(self._data), "-l", str(log))
        except PostgresError as e:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresError(f"{e}\n--- postgres.log ---\n{tail}") from None
        self.running = True

    def stop(self, *, keep: bool = False, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server; delete its files unless ``keep``.

        ``immediate`` is as if it crashed: with synchronous_commit off, the last fraction of a
        second of commits may be lost. ``fast`` closes connections and shuts down cleanly.
        """
        if self.running:
            self._as_owner("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self._data))
            self.running = False
        if not keep and self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def restart(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop and start again on the same port and data (open connections are cut)."""
        self.stop(keep=True, mode=mode)
        self.start()

    @contextmanager
    def outage(self, mode: Literal["fast", "immediate"] = "fast") -> Iterator[None]:
        """Keep the server down for the ``with`` block, then start it again as it was."""
        self.stop(keep=True, mode=mode)
        try:
            yield
        finally:
            self.start()

    def create_database(self, name: str) -> str:
        """Create an empty database (from template0) and return its URL."""
        self.sql(f"CREATE DATABASE {_ident(name)} TEMPLATE template0")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        self.sql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one statement through psql as the superuser; return its unaligned output."""
        connect = ["-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", dbname]
        return _run([str(self.bindir / "psql"), "-X", "-A", "-t", "-q", *connect, "-c", statement])

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def _data(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    def _create_cluster(self) -> None:
        tmpdir = Path(tempfile.mkdtemp(prefix="chatd-pg-", dir=self.base_dir))
        self.tmpdir = tmpdir
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SERVER_USER)
            os.chown(tmpdir, owner.pw_uid, owner.pw_gid)
        self._as_owner(
            "initdb", "-D", str(self._data), "-U", SUPERUSER, "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        self.port = _free_port()
        with (self._data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '{self.host}'\n"
                f"unix_socket_directories = '{tmpdir}'\n{_SETTINGS}"
            )

    def _as_owner(self, program: str, *args: str) -> str:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return _run(command, cwd=self.tmpdir)


def find_bindir() -> Path | None:
    """Return the directory holding initdb, pg_ctl and postgres, or None if not installed."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        with suppress(PostgresError):
            candidates.append(Path(_run([pg_config, "--bindir"]).strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    for bindir in candidates:
        if all((bindir / p).is_file() for p in ("initdb", "pg_ctl", "postgres", "psql")):
            return bindir
    return None


def _version(bindir: Path) -> tuple[int, ...]:
    parts = bindir.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


def _default_base_dir() -> Path:
    try:
        stat = os.statvfs(_SHM)
    except OSError:
        return Path(tempfile.gettempdir())
    roomy = stat.f_bavail * stat.f_frsize >= _SHM_MIN_FREE
    return _SHM if roomy and os.access(_SHM, os.W_OK) else Path(tempfile.gettempdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _run(command: list[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise PostgresError(f"{command[0]} failed: {e}") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise PostgresError(f"{' '.join(command)} exited {done.returncode}: {output}")
    return done.stdout
