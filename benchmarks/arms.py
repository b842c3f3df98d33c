"""The arms: what each one is, how to start it, and how to phrase a request to it.

D   the load client straight to the fake upstream (zero delay)
N   benchmarks/floor_app.py: a bare forwarding ASGI app on chatd's server stack and upstream
    client path (the SDK's low-level `client.post(..., stream=True)` on its aiohttp transport,
    streamed upstream always, the body's bytes read with chatd's SSE framing)
G   chatd's full path: `chatd serve`, /v1/sessions/{id}/messages, 10 turns of history, stored
L   LiteLLM's proxy pointed at the same fake upstream (skipped with a note when not installed)
Nc    N calling `chat.completions.create(...)` instead (typed models; chatd's path before c62d48e)
Nh    N on the SDK's default httpx transport (chatd's path before the aiohttp transport)
Ns    N reading the body through the SDK's own event iterator (chatd's path before it read bytes)
      (Nc, Nh and Ns only price upstream-client choices: latency, throughput and memory)
Extras, by name with --arms:
Gpg   G on PostgreSQL (a throwaway server from chatd.testing.postgres)
Ga    G with auth on (CHATD_AUTH=on and a key from `chatd keys create`), beside G to price it
Gb    G at another git revision (--baseline REV): that revision's src/ first on PYTHONPATH, so
      the same venv runs the old code, measured in the same run as G (added by --baseline);
      its store is timed by that revision's own benchmarks/store_bench.py when it has one
(--auth turns auth on for G and Gpg themselves.)
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.client import Kind
from benchmarks.procs import Server, free_port
from benchmarks.workload import MAIN_HISTORY, Req, SessionPool, chatd_send, openai_body

REPO = Path(__file__).resolve().parent.parent
LITELLM_VENV = REPO / "benchmarks" / ".litellm"
LITELLM_VERSION = "1.106.2"
LITELLM_INSTALL = (
    f"python3 -m venv {LITELLM_VENV.relative_to(REPO)} && "
    f"{LITELLM_VENV.relative_to(REPO)}/bin/pip install 'litellm[proxy]=={LITELLM_VERSION}'"
)


UPSTREAM_KEY = "sk-bench-upstream"
DEFAULT_ARMS = ("D", "N", "G", "L", "Nc", "Nh", "Ns")
ALL_ARMS = ("D", "N", "G", "L", "Gpg", "Ga", "Gb", "Nc", "Nh", "Ns")
CHATD_ARMS = ("G", "Gpg", "Ga", "Gb")
# G at the revision given with --baseline.
BASELINE = "Gb"
# Old names: Nll (the low-level call) and Nlla (it on aiohttp) are what N is now.
ARM_ALIASES = {"Nll": "N", "Nlla": "N"}
# The floor app's variants: (--client, --transport).
FLOOR_ARMS = {
    "N": ("lowlevel", "aiohttp"),
    "Nc": ("create", "aiohttp"),
    "Nh": ("lowlevel", "httpx"),
    "Ns": ("sdkstream", "aiohttp"),
}
SERVER_CORES = [0]


@dataclass
class Arm:
    """One arm: where it listens and how a request to it is phrased."""

    name: str
    title: str
    port: int
    server: Server | None = None
    chatd: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    pool: SessionPool | None = None
    note: str = ""
    # The chatd source tree this arm imports, when it is not the editable install (arm Gb).
    src: Path | None = None

    def request(
        self, captured: dict[str, Any], text: str, *, stream: bool, size: int = MAIN_HISTORY
    ) -> Req:
        """The request for one turn: chatd's send on a fresh session, else the upstream body."""
        if self.chatd:
            assert self.pool is not None
            session = self.pool.take(size)
            return chatd_send(session, text, stream=stream, headers=self.headers)
        kind: Kind = "sse-openai" if stream else "json"
        body = openai_body(captured, text, stream=stream)
        return Req("POST", "/v1/chat/completions", body, self.headers, kind)


def litellm_binary() -> str | None:
    """The `litellm` command: $CHATD_BENCH_LITELLM, benchmarks/.litellm, or PATH."""
    candidates = [
        os.environ.get("CHATD_BENCH_LITELLM"),
        str(LITELLM_VENV / "bin" / "litellm"),
        shutil.which("litellm"),
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATD_", "OPENAI_"))}
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("ANTHROPIC_BASE_URL", None)
    return env


def fake_server(work: Path, cores: list[int] | None, chatd: str | None = None) -> Server:
    """The fake upstream, on the load client's core."""
    port = free_port()
    chatd = chatd or str(Path(sys.executable).parent / "chatd")
    return Server(
        "fake",
        [chatd, "fake-upstream", "--host", "127.0.0.1", "--port", str(port)],
        port=port,
        health="/v1/models",
        env=_base_env(),
        cwd=work,
        log=work / "logs" / "fake.log",
        cores=cores,
    )


def chatd_server(
    name: str,
    work: Path,
    upstream: str,
    database_url: str,
    *,
    auth: bool,
    extra_env: dict[str, str],
    pin: bool,
    src: Path | None = None,
) -> Server:
    """`chatd serve` on the openai provider pointed at the fake; its own empty cwd (no .env).

    With `src`, that tree's `chatd` is imported instead of the editable install (arm Gb).
    """
    port = free_port()
    cwd = work / name
    cwd.mkdir(parents=True, exist_ok=True)
    env = _base_env()
    env.update(
        {
            "CHATD_PROVIDER": "openai",
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "OPENAI_BASE_URL": upstream,
            "CHATD_DATABASE_URL": database_url,
        }
    )
    # Explicit either way: "auto" would depend on chatd's reading of the bind address.
    env["CHATD_AUTH"] = "on" if auth else "off"
    env.update(extra_env)
    if src is not None:
        # Ahead of site-packages, whose .pth adds the working tree's src/; `chatd serve` execs
        # `python -m chatd.server` with this environment, so the server imports it too.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    chatd = str(Path(sys.executable).parent / "chatd")
    return Server(
        name,
        [chatd, "serve", "--host", "127.0.0.1", "--port", str(port)],
        port=port,
        health="/healthz",
        env=env,
        cwd=cwd,
        log=work / "logs" / f"{name}.log",
        cores=SERVER_CORES if pin else None,
    )


@dataclass(frozen=True)
class Baseline:
    """chatd's src/ at another git revision, exported for arm Gb."""

    rev: str
    sha: str
    subject: str
    src: Path


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=120)


def export_baseline(rev: str, work: Path) -> Baseline:
    """Export src/ (and benchmarks/) at `rev` into <work>/baseline; RuntimeError if it cannot."""
    try:
        found = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        sha = found.stdout.decode().strip()
        if found.returncode != 0 or not sha:
            raise RuntimeError(f"{rev!r} is not a commit of {REPO}")
        paths = ["src"]
        # store_bench calls the store's internal API, which changes between revisions: the
        # baseline's store is timed by its own store_bench when the revision has one.
        if _git("cat-file", "-e", f"{sha}:benchmarks/store_bench.py").returncode == 0:
            paths.append("benchmarks")
        archive = _git("archive", "--format=tar", sha, *paths)
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {sha}: {archive.stderr.decode().strip()[-300:]}")
        short = _git("rev-parse", "--short", sha).stdout.decode().strip()
        subject = _git("log", "-1", "--format=%s", sha).stdout.decode().strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"git failed: {exc}") from exc
    dest = work / "baseline"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    src = dest / "src"
    if not (src / "chatd" / "__init__.py").is_file():
        raise RuntimeError(f"{short} has no src/chatd/__init__.py")
    return Baseline(rev, short, subject, src)


def imported_chatd(server: Server) -> str:
    """The file `import chatd` loads in a server's environment and cwd (as its server would)."""
    code = "import chatd; print(chatd.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=server.env,
        cwd=server.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`import chatd` failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def create_key(server: Server) -> str:
    """Create an API key in a chatd arm's database with `chatd keys create`; return it."""
    chatd = str(Path(sys.executable).parent / "chatd")
    done = subprocess.run(
        [chatd, "keys", "create", "--user", "bench"],
        env=server.env,
        cwd=server.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"`chatd keys create` failed: {done.stderr.strip()[-400:]}")
    return done.stdout.strip().splitlines()[-1]


def floor_server(
    name: str,
    work: Path,
    upstream: str,
    client: str,
    transport: str,
    pin: bool,
) -> Server:
    """benchmarks/floor_app.py under uvicorn."""
    port = free_port()
    env = _base_env()
    env["OPENAI_API_KEY"] = UPSTREAM_KEY
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "benchmarks.floor_app", "--port", str(port)]
    argv += ["--upstream", upstream, "--client", client, "--transport", transport]
    return Server(
        name,
        argv,
        port=port,
        health="/healthz",
        env=env,
        cwd=work,
        log=work / "logs" / f"{name}.log",
        cores=SERVER_CORES if pin else None,
    )


def litellm_server(
    work: Path, upstream: str, model: str, binary: str, pin: bool
) -> tuple[Server, str]:
    """LiteLLM's proxy, one worker, its master key on, no database, no callbacks."""
    port = free_port()
    key = "sk-" + secrets.token_hex(32)
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream}\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  telemetry: false\n"
    )
    env = _base_env()
    env.update(
        {
            "LITELLM_MASTER_KEY": key,
            # Use the cost map in the package instead of fetching one at start.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
        }
    )
    server = Server(
        "L",
        [
            binary,
            *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
            *("--num_workers", "1"),
        ],
        port=port,
        health="/health/liveliness",
        env=env,
        cwd=work,
        log=work / "logs" / "L.log",
        cores=SERVER_CORES if pin else None,
    )
    return server, key
