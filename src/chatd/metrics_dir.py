"""The directory where a server run's worker processes keep their metrics (stdlib only).

The Prometheus client library reads PROMETHEUS_MULTIPROC_DIR as it is imported, and then
keeps every metric's value in a file there, one per process; a scrape of any worker adds up
the files (`chatd.api.metrics`). So the server process, which starts the workers, sets it
first. Kept apart from `chatd.api.metrics` so that process loads neither the client library
nor the web framework for it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def multiprocess_dir(workers: int) -> Iterator[str | None]:
    """Give this server run's worker processes one metrics directory; remove it after the run.

    An operator's own PROMETHEUS_MULTIPROC_DIR is used (emptied first: values of an earlier
    run would be counted again) and kept. Otherwise, with more than one worker, a fresh
    directory is made and removed at the end. One worker needs none.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        yield given
        return
    if workers < 2:
        yield None
        return
    made = tempfile.mkdtemp(prefix="chatd-metrics-")
    # The workers inherit it, and their client library reads it as each of them imports it.
    os.environ[MULTIPROC_ENV] = made
    try:
        yield made
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)
