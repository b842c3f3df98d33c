"""`chatd serve --workers 2`: /metrics adds up both worker processes, whichever one answers."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

CHATD = [sys.executable, "-m", "chatd"]
MESSAGES = "/v1/sessions/{session_id}/messages"


@contextmanager
def serving(env: dict[str, str], log: Path, workers: int) -> Iterator[str]:
    """Run `chatd serve --workers N` until the block ends; yield its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*CHATD, "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def by_worker(directory: Path, name: str, **labels: str) -> dict[str, float]:
    """Return one metric's value in each worker's own file, by pid."""
    found: dict[str, float] = {}
    for file in directory.glob("*.db"):
        pid = file.stem.rsplit("_", 1)[-1]
        for metric in MultiProcessCollector.merge([str(file)]):
            for s in metric.samples:
                if s.name == name and set(labels.items()) <= set(s.labels.items()):
                    found[pid] = found.get(pid, 0) + s.value
    return found


def scrape(url: str, name: str, **labels: str) -> float:
    """Scrape /metrics on a new connection (any worker may answer); add up a metric."""
    text = httpx.get(f"{url}/metrics", headers={"connection": "close"}).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and set(labels.items()) <= set(s.labels.items())
    )


async def turns(url: str, first: int, n: int) -> None:
    """Send n turns at once, each on a connection of its own, slow enough to overlap."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        replies = await asyncio.gather(
            *(
                client.post(
                    f"/v1/sessions/w{i}/messages",
                    json={"content": "hello [fake: delay_ms=30]"},
                    headers={"connection": "close"},
                )
                for i in range(first, first + n)
            )
        )
    assert [r.status_code for r in replies] == [200] * n


def published(directory: Path, sent: int) -> Callable[[], bool]:
    """Return a check that the workers' files hold all the turns sent, and their requests."""

    def check() -> bool:
        turns = by_worker(directory, "chatd_turns_total")
        requests = by_worker(directory, "chatd_http_requests_total", route=MESSAGES)
        return sum(turns.values()) == sum(requests.values()) == sent

    return check


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Retry a condition for up to 30 s (two workers start slowly on a busy machine)."""
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_two_workers_report_their_totals_from_either_worker(
    anthropic_env: dict[str, str], tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**anthropic_env, "TMPDIR": str(temp)}
    with serving(env, tmp_path / "serve.log", workers=2) as url:
        [directory] = temp.glob("chatd-metrics-*")
        # Both workers up: each publishes its pool use as it starts.
        wait_for(lambda: len(by_worker(directory, "chatd_db_pool_size")) == 2, "two workers")

        sent = 0
        while len(by_worker(directory, "chatd_turns_total")) < 2:
            assert sent < 160, "one worker served every turn"
            asyncio.run(turns(url, sent, 8))
            sent += 8
            # Each worker publishes its counts every second.
            wait_for(published(directory, sent), f"{sent} turns in the workers' files")
        counts = by_worker(directory, "chatd_turns_total")
        assert all(n > 0 for n in counts.values())
        assert sum(counts.values()) == sent

        # Scrape until each worker has answered a scrape; every answer shows both workers' sums.
        scraped = 0
        while len(by_worker(directory, "chatd_http_requests_total", route="/metrics")) < 2:
            assert scraped < 100, "one worker answered every scrape"
            assert scrape(url, "chatd_turns_total", kind="turn", state="complete") == sent
            requests = scrape(url, "chatd_http_requests_total", route=MESSAGES, status="200")
            assert requests == sent
            assert scrape(url, "chatd_tokens_total", kind="output") > 0
            pool = scrape(url, "chatd_db_pool_size")
            assert pool == sum(by_worker(directory, "chatd_db_pool_size").values()) > 0
            assert scrape(url, "chatd_open_streams") == 0
            scraped += 1
    # The run's directory goes with it.
    assert not list(temp.glob("chatd-metrics-*"))
