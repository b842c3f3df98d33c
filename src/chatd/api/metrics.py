"""Prometheus metrics with the official client: one registry per app, nothing at import time.

What is counted, and where: requests by route template, method and status, and their duration
(`api/middleware.py`, SecurityHeaders); turns and stateless completions, their latency, time to
first token, tokens, cost, retries and upstream errors (`observe`, the engine's report
observer); refusals by the caller's limits (`api/limits.py`); streamed responses in flight
(`api/responses.py`); the database pool, read when scraped.

Labels a caller can influence are bounded: a path is named by the route template serving it
(`unmatched` for any other), and a model, provider, state or error class takes one of the first
`MAX_VALUES` values seen, then `other`.

What it costs: a request's count and a turn's counters are dict updates, added up and handed
to the client library when published (before a scrape); the two histograms of each (request
duration; turn latency and TTFT) are observed at once. Nothing is done per streamed chunk.

Several workers (`chatd serve --workers N`): the server process makes one directory for the
run (`chatd.metrics_dir`) and hands it to the workers in PROMETHEUS_MULTIPROC_DIR, which the
client library reads as it is imported. Each worker's values then live in files there, and a
scrape of any worker adds up all of them: counters and histograms summed, the open streams and
pool gauges summed over the workers alive (`livesum`). Each worker publishes its pending
counts and its pool use every PUBLISH_S, so another worker's scrape is at most that late.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import fastapi.routing
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.routing import BaseRoute, Mount

from chatd.metrics_dir import MULTIPROC_ENV

if TYPE_CHECKING:
    from chatd.store.database import PoolStats
    from chatd.types import CallReport, ReportSink

log = logging.getLogger("chatd.metrics")

OTHER = "other"  # a bounded label's value once its cap is reached
UNMATCHED = "unmatched"  # the route of a path that no route serves
MAX_VALUES = 100  # distinct values of each label a caller can influence (per process)
# How often each worker publishes its pending counts and its pool use when several share the
# metrics (a scrape reaches only one of them); a scrape publishes the scraping worker's first.
PUBLISH_S = 1.0
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")  # chatd_tokens_total's kinds

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

M = TypeVar("M", Counter, Gauge, Histogram)


class Bounded:
    """A label's values: the first `cap` distinct ones pass as they are, any later one is OTHER."""

    def __init__(self, cap: int = MAX_VALUES) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        """Return the value to label with."""
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap:
            return OTHER
        self.seen.add(value)
        return value


class Children(Generic[M]):
    """A labelled metric's children by label values: `labels()` checks and locks on every call."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self.made: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        """Return the child of these (already bounded) label values."""
        child = self.made.get(labels)
        if child is None:
            child = self.made[labels] = self.metric.labels(*labels)
        return child


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")


class RouteNames:
    """Name a request's path by the template of the route serving it, so labels stay bounded."""

    def __init__(self, routes: Iterable[BaseRoute] = ()) -> None:
        self.exact: dict[str, str] = {}
        self.groups: dict[str, str] = {}
        patterns: list[str] = []
        for path, mount in _route_paths(routes):
            template = f"{path}/{{path:path}}" if mount else path
            if "{" not in template:
                self.exact.setdefault(template, template)
                continue
            shown = _PARAM.sub(r"{\1}", template)
            if shown in self.groups.values():
                continue  # another method's route on the same path
            group = f"r{len(self.groups)}"
            self.groups[group] = shown
            patterns.append(f"(?P<{group}>{_pattern(template)})")
        # One expression for every templated route, tried in the router's order.
        self.pattern = re.compile("|".join(patterns)) if patterns else None

    def __call__(self, path: str) -> str:
        """Return the template serving path, or UNMATCHED."""
        found = self.exact.get(path)
        if found is not None:
            return found
        if self.pattern is not None:
            match = self.pattern.fullmatch(path)
            if match is not None and match.lastgroup is not None:
                return self.groups[match.lastgroup]
        return UNMATCHED


def _route_paths(routes: Iterable[BaseRoute]) -> Iterator[tuple[str, bool]]:
    """Yield each route's path as matched, and whether it is a mount, in the router's order."""
    # FastAPI 0.16x keeps included routers whole, and says where their routes end up through
    # iter_route_contexts; earlier versions copy the routes into the app's list.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    for item in flatten(list(routes)) if flatten is not None else routes:
        path = getattr(item, "path", None)
        if isinstance(path, str):
            yield path, isinstance(getattr(item, "original_route", item), Mount)


def _pattern(template: str) -> str:
    parts: list[str] = []
    end = 0
    for param in _PARAM.finditer(template):
        parts.append(re.escape(template[end : param.start()]))
        parts.append(".*" if param.group(2) == "path" else "[^/]+")
        end = param.end()
    parts.append(re.escape(template[end:]))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class ModelSeries:
    """One provider and model's children, looked up once: a report then costs no label lookups."""

    seconds: Histogram
    ttft: Histogram
    tokens: tuple[Counter, Counter, Counter, Counter]  # as TOKEN_KINDS
    cost: Counter
    unpriced: Counter


class PoolCollector:
    """The database pool's use, read from the pool each time the metrics are scraped."""

    def __init__(self, read: Callable[[], PoolStats]) -> None:
        self.read = read

    def describe(self) -> list[Metric]:
        """Name nothing up front: registering must not read the pool."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the pool's size and its connections in use."""
        stats = self.read()
        yield GaugeMetricFamily(_POOL_SIZE, _POOL_SIZE_HELP, value=stats.size)
        yield GaugeMetricFamily(_POOL_USED, _POOL_USED_HELP, value=stats.checked_out)


_POOL_SIZE = "chatd_db_pool_size"
_POOL_SIZE_HELP = "Database connections the pools may keep (without overflow)."
_POOL_USED = "chatd_db_pool_checked_out"
_POOL_USED_HELP = "Database connections in use now."


class Metrics:
    """One app's metrics and the registry /metrics renders."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        # With several workers the values live in files, and the registry reads them all;
        # the metrics themselves then register nowhere.
        own: CollectorRegistry | None = self.registry
        if multiprocess_dir is not None:
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            own = None
        else:
            # The process's CPU, memory and open files (the library has no multiprocess form).
            ProcessCollector(registry=self.registry)
        self.routes = RouteNames()
        self.models, self.providers = Bounded(), Bounded()
        self.states, self.errors = Bounded(), Bounded()
        self.requests = Children(
            Counter(
                "chatd_http_requests",
                "HTTP requests answered, by route template, method and status.",
                ("route", "method", "status"),
                registry=own,
            )
        )
        self.request_seconds = Children(
            Histogram(
                "chatd_http_request_duration_seconds",
                "Time from a request's arrival to the end of its response, streams included.",
                ("route", "method"),
                buckets=HTTP_BUCKETS,
                registry=own,
            )
        )
        self.turns = Children(
            Counter(
                "chatd_turns",
                "Turns, continuations and stateless completions ended, by kind, provider, "
                "model and state.",
                ("kind", "provider", "model", "state"),
                registry=own,
            )
        )
        self.turn_seconds = Children(
            Histogram(
                "chatd_turn_duration_seconds",
                "Time from a turn's (or completion's) start to its end, tool rounds included.",
                ("provider", "model"),
                buckets=TURN_BUCKETS,
                registry=own,
            )
        )
        self.ttft_seconds = Children(
            Histogram(
                "chatd_turn_ttft_seconds",
                "Time from a turn's (or completion's) start to its first reply text.",
                ("provider", "model"),
                buckets=TTFT_BUCKETS,
                registry=own,
            )
        )
        self.tokens = Children(
            Counter(
                "chatd_tokens",
                "Tokens used, by provider, model and kind: input, output, cache_read, "
                "cache_write (chatd's estimate where a provider never reported usage).",
                ("provider", "model", "kind"),
                registry=own,
            )
        )
        self.cost = Children(
            Counter(
                "chatd_cost_usd",
                "What calls cost in US dollars at the price table's rates; calls to a model "
                "without a price add nothing here (see chatd_unpriced_calls_total).",
                ("provider", "model"),
                registry=own,
            )
        )
        self.unpriced = Children(
            Counter(
                "chatd_unpriced_calls",
                "Turns and completions on a model the price table has no price for.",
                ("provider", "model"),
                registry=own,
            )
        )
        self.retries = Children(
            Counter(
                "chatd_upstream_retries",
                "Upstream attempts retried, by provider.",
                ("provider",),
                registry=own,
            )
        )
        self.upstream_errors = Children(
            Counter(
                "chatd_upstream_errors",
                "Upstream errors met, retried or not, by provider and chatd error class.",
                ("provider", "error"),
                registry=own,
            )
        )
        self.refusals = Children(
            Counter(
                "chatd_rate_limit_refusals",
                "Requests refused by the caller's limits, by the limit reached "
                "(requests_per_minute, tokens_per_minute, tokens_per_day, budget_usd_per_day) "
                "or limiter_unavailable (the shared limit store was unreachable: 503).",
                ("limit",),
                registry=own,
            )
        )
        self.open_streams = Gauge(
            "chatd_open_streams",
            "Streamed responses in flight (SSE, NDJSON, plain text).",
            registry=own,
            multiprocess_mode="livesum",
        )
        # Published by each worker when several share the metrics; else read when scraped.
        self.pool_gauges: tuple[Gauge, Gauge] | None = None
        if multiprocess_dir is not None:
            self.pool_gauges = (
                Gauge(_POOL_SIZE, _POOL_SIZE_HELP, registry=None, multiprocess_mode="livesum"),
                Gauge(_POOL_USED, _POOL_USED_HELP, registry=None, multiprocess_mode="livesum"),
            )
        self._models: dict[tuple[str, str], ModelSeries] = {}
        # Counter increments of requests and turns, added up here and applied when published
        # (before a scrape; every PUBLISH_S with several workers): a dict update each
        # instead of the client's checks and lock. Keyed by child: bounded as the labels are.
        self._pending: dict[Counter, float] = {}
        # 5xx answers so far, for the test suite's watch (which reads it from another thread).
        self.server_errors = 0
        self._pool: Callable[[], PoolStats] | None = None
        self._observers: list[ReportSink] | None = None
        self._publisher: asyncio.Task[None] | None = None

    @classmethod
    def for_process(cls) -> Metrics:
        """Return metrics in the client library's multiprocess mode when it is on, else plain."""
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return cls()
        # The client chose where values live when it was imported: both must agree.
        if not getattr(values.ValueClass, "_multiprocess", False) or not os.path.isdir(path):
            log.warning(
                "%s=%s is ignored: it must be an existing directory, set before the "
                "process started; /metrics shows this process only",
                MULTIPROC_ENV,
                path,
            )
            return cls()
        return cls(path)

    def start(
        self,
        routes: Sequence[BaseRoute],
        observers: list[ReportSink],
        pool: Callable[[], PoolStats],
    ) -> None:
        """Learn the app's routes, observe the engine's reports, and watch the database pool."""
        self.routes = RouteNames(routes)
        observers.append(self.observe)
        self._observers = observers
        self._pool = pool
        if self.pool_gauges is None:
            self.registry.register(PoolCollector(pool))
        else:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_often())

    async def aclose(self) -> None:
        """Stop observing; with several workers, take this one out of the live gauges."""
        if self._observers is not None and self.observe in self._observers:
            self._observers.remove(self.observe)
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        self.publish()
        if self.multiprocess_dir is not None:
            mark_dead(os.getpid(), self.multiprocess_dir)

    def request(self, path: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request (in the event loop, as its response ends)."""
        route = self.routes(path)
        counter = self.requests(route, method, str(status))
        self._pending[counter] = self._pending.get(counter, 0) + 1
        self.request_seconds(route, method).observe(seconds)
        if status >= 500:
            self.server_errors += 1

    def refused(self, limit: str) -> None:
        """Count one request refused by a limit."""
        self.refusals(limit).inc()

    def observe(self, report: CallReport) -> None:
        """Count a finished turn or completion: the engine's observer, a few increments.

        Called in the event loop, as each turn ends: two histogram observations, and the
        counters' increments added up in a dict until they are published.
        """
        provider, model = self.providers(report.provider), self.models(report.model)
        series = self._models.get((provider, model)) or self._model_series(provider, model)
        pending = self._pending
        turns = self.turns(report.kind, provider, model, self.states(report.state))
        pending[turns] = pending.get(turns, 0) + 1
        series.seconds.observe(report.latency_ms / 1000)
        if report.ttft_ms is not None:
            series.ttft.observe(report.ttft_ms / 1000)
        usage = report.usage
        counts = (
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
        )
        for child, n in zip(series.tokens, counts, strict=True):
            if n:
                pending[child] = pending.get(child, 0) + n
        cost = report.cost_usd
        if cost is None:
            pending[series.unpriced] = pending.get(series.unpriced, 0) + 1
        elif cost > 0:
            pending[series.cost] = pending.get(series.cost, 0) + cost
        # Retries and upstream errors are rare: counted at once.
        if report.retries:
            self.retries(provider).inc(report.retries)
        for error in report.upstream_errors:
            self.upstream_errors(provider, self.errors(error)).inc()

    def publish(self) -> None:
        """Apply the counters' pending increments (in the event loop's thread, as observe)."""
        pending, self._pending = self._pending, {}
        for child, amount in pending.items():
            child.inc(amount)

    def _model_series(self, provider: str, model: str) -> ModelSeries:
        made = self._models[(provider, model)] = ModelSeries(
            self.turn_seconds(provider, model),
            self.ttft_seconds(provider, model),
            (
                self.tokens(provider, model, TOKEN_KINDS[0]),
                self.tokens(provider, model, TOKEN_KINDS[1]),
                self.tokens(provider, model, TOKEN_KINDS[2]),
                self.tokens(provider, model, TOKEN_KINDS[3]),
            ),
            self.cost(provider, model),
            self.unpriced(provider, model),
        )
        return made

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """Return the metrics in the format the scraper accepts, and its content type."""
        self.publish()
        # On a thread: with several workers a scrape reads and adds up every worker's files.
        return await asyncio.to_thread(self.render, accept)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Render the registry (what is pending not included: `scrape` publishes it first)."""
        if self.multiprocess_dir is not None:
            self._publish_pool()
            sweep_dead_workers(self.multiprocess_dir)
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    async def _publish_often(self) -> None:
        while True:
            self.publish()
            self._publish_pool()
            await asyncio.sleep(PUBLISH_S)

    def _publish_pool(self) -> None:
        if self.pool_gauges is None or self._pool is None:
            return
        stats = self._pool()
        size, used = self.pool_gauges
        size.set(stats.size)
        used.set(stats.checked_out)


def sweep_dead_workers(path: str) -> None:
    """Drop the live gauges of worker processes that died without saying so (killed)."""
    if os.name != "posix":
        return  # os.kill(pid, 0) would terminate the process on Windows
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = os.path.basename(file)[: -len(".db")].rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            mark_dead(int(pid), path)


def mark_dead(pid: int, path: str) -> None:
    """Remove a worker's live gauges (open streams, pool use): it serves nothing any more."""
    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
