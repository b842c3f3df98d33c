"""The `chatd serve` process: uvicorn on the app factory, and nothing of the command line.

`chatd serve` checks its options and settings, then replaces itself with
`python -m chatd.server HOST PORT WORKERS`. The server, and each worker uvicorn spawns (they
re-import the main module), then load only what serving needs: not Typer and the other
subcommands, about 2 MB of every process.
"""

from __future__ import annotations

import logging
import os
import sys

APP_FACTORY = "chatd.api.app:app_from_env"


def setup_logging() -> None:
    """Send chatd's log lines to stderr as plain text (a server then sets up its own)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)


def run(host: str, port: int, workers: int) -> None:
    """Serve the app with uvicorn until it is stopped."""
    import logging.config

    import uvicorn

    from chatd.config import Settings
    from chatd.connections import GuardedProtocol, raise_fd_limit
    from chatd.logs import logging_config, resolve_format
    from chatd.metrics_dir import multiprocess_dir

    settings = Settings()
    # JSON lines unless stderr is a terminal (CHATD_LOG_FORMAT). Decided here, once: uvicorn
    # applies the same config again in each worker process.
    log_config = logging_config(resolve_format(settings.log_format, sys.stderr), settings.log_level)
    logging.config.dictConfig(log_config)
    # Before the workers start, so that they inherit it; the connection cap follows the limit.
    raise_fd_limit()
    # Several workers share /metrics through files in one directory, made for this run.
    with multiprocess_dir(workers):
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level,
            log_config=log_config,
            # chatd writes each request's line itself (chatd.api.requests), with its id and user.
            access_log=False,
            timeout_graceful_shutdown=30,
            # Header deadlines and the connection cap (chatd.connections); each worker reads them.
            http=GuardedProtocol,
            timeout_keep_alive=settings.keep_alive_s,
            # No WebSocket routes: without this uvicorn imports websockets whenever installed.
            ws="none",
        )


def become_server(host: str, port: int, workers: int) -> None:
    """Replace this process (same pid, same standard streams) with a fresh server process."""
    if os.name != "posix" or not sys.executable:
        # Windows has no exec that keeps the process; serve from this one.
        run(host, port, workers)
        return
    # What was printed so far lives in this interpreter's buffers, which exec discards.
    sys.stdout.flush()
    sys.stderr.flush()
    args = [sys.executable, "-m", "chatd.server", host, str(port), str(workers)]
    os.execv(sys.executable, args)


def main(argv: list[str]) -> None:
    """Serve as `python -m chatd.server HOST PORT WORKERS` (what `chatd serve` becomes)."""
    host, port, workers = argv
    run(host, int(port), int(workers))


if __name__ == "__main__":
    main(sys.argv[1:])
