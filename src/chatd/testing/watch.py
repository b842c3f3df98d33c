"""What the servers under test answered and logged: their 5xx responses and tracebacks.

The suite's autouse fixture reads this after every test and fails the test if a server it
did not expect to fail answered 5xx or logged a traceback (docs/promises.md, promise 4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# uvicorn's logger, which does not propagate to the root (where chatd's loggers are heard).
UVICORN = "uvicorn.error"


class ServerWatch(logging.Filter):
    """Count the 5xx answers of registered servers; keep every traceback logged."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: list[Callable[[], int]] = []
        self._stopped_errors = 0  # of servers no longer running, whose counts are gone
        self.tracebacks: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep an error record that carries a traceback; never drop the record."""
        if record.levelno >= logging.ERROR and record.exc_info:
            self.tracebacks.append(record)
        return True

    @contextmanager
    def server(self, errors: Callable[[], int]) -> Iterator[None]:
        """Count a server's 5xx answers (`errors` tells how many so far) while the block runs."""
        self._counts.append(errors)
        try:
            yield
        finally:
            self._counts.remove(errors)
            self._stopped_errors += errors()

    def server_errors(self) -> int:
        """Return how many 5xx answers the registered servers have sent so far."""
        return self._stopped_errors + sum(errors() for errors in self._counts)


class _Relay(logging.Handler):
    """Hand the records of chatd's loggers, heard at the root, to the watch."""

    def __init__(self, watch: ServerWatch) -> None:
        super().__init__(logging.ERROR)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        """Hand a chatd record to the watch."""
        if record.name == "chatd" or record.name.startswith("chatd."):
            self.watch.filter(record)


WATCH = ServerWatch()


def install() -> ServerWatch:
    """Install the watch once for the process and return it."""
    # A filter on uvicorn's logger: uvicorn's logging setup replaces its handlers, not these.
    uvicorn = logging.getLogger(UVICORN)
    if WATCH not in uvicorn.filters:
        uvicorn.addFilter(WATCH)
    root = logging.getLogger()
    if not any(isinstance(h, _Relay) for h in root.handlers):
        root.addHandler(_Relay(WATCH))
    return WATCH
