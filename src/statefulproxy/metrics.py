"""The proxy's Prometheus metrics: what it counts, and their exposition (``GET /metrics``).

Counting is plain integer arithmetic on lists and dicts laid out when ``Metrics`` is built: no
locks, no label lookups, no objects made per request. A process serves one event loop, and the
exposition reads the numbers from that loop (``/metrics`` on the proxy's port) or from the
``metrics_port`` thread, where a read of an int is atomic; ``prometheus_client`` only formats
them. Measured against its pre-bound children (0.36 µs an increment, 0.82 µs an observation),
these cost 0.05 µs and 0.15 µs, which is what keeps the stateless path's added cost unmeasurable.

No label carries a session id, a credential or a client-chosen model: every label value comes
from a fixed set below, so the number of series is bounded.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

__all__ = ["KINDS", "Histogram", "Metrics", "MetricsServer", "refusal_reason"]

# what a request was, by the part of the proxy that answered it
KINDS: Final = ("stateless", "session", "management")
STATELESS, SESSION, MANAGEMENT = 0, 1, 2
# "none": no chat dialect (GET /v1/models, the management API, ...)
DIALECT_LABELS: Final = ("none", "openai", "anthropic", "gemini", "ollama")
_DIALECT_INDEX: Final = {name: index for index, name in enumerate(DIALECT_LABELS)}
# index status // 100; "none": no response was sent (the client left, or the request was cut)
STATUS_CLASSES: Final = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# why a session turn was refused, by the error code it was answered with
REFUSAL_REASONS: Final = (
    "busy",
    "rate_limited",
    "ended",
    "store_error",
    "shutting_down",
    "not_found",
    "too_large",
    "limited",
    "invalid",
)
_REFUSAL_BY_CODE: Final = {
    "session_busy": "busy",
    "rate_limit_exceeded": "rate_limited",
    "max_requests_exceeded": "rate_limited",
    "session_ended": "ended",
    "session_expired": "ended",
    "store_unavailable": "store_error",
    "shutting_down": "shutting_down",
    "not_found": "not_found",
    "session_not_found": "not_found",
    "session_full": "too_large",
    "splice_too_large": "too_large",
    "request_too_large": "too_large",
    "session_limit_reached": "limited",
}
# why a turn that reached the upstream was not recorded: the commit's answer, a store failure, or a cut
NOT_RECORDED_REASONS: Final = ("missing", "ended", "expired", "limited", "store_error", "cut")


def refusal_reason(code: str | None) -> str:
    """The ``reason`` label of a turn refused with error ``code``."""
    return _REFUSAL_BY_CODE.get(code or "", "invalid")


class Histogram:
    """A Prometheus histogram's counts: one slot per bucket (``le``), the last for +Inf."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            out.append((bound, cumulative))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class Metrics:
    """Every number the proxy keeps, and a registry that exposes them."""

    def __init__(self, *, process: bool = False, version: str | None = None) -> None:
        """``process``: also expose the process's CPU, memory, file descriptors and GC (one per process);
        ``version``: as ``statefulproxy_build_info{version}``."""
        self.version = version
        # requests[kind][dialect][status class]
        self.requests = [[[0] * len(STATUS_CLASSES) for _ in DIALECT_LABELS] for _ in KINDS]
        self.upstream_ttfb = [Histogram(LATENCY_BUCKETS) for _ in KINDS]
        self.turn_seconds = [Histogram(LATENCY_BUCKETS) for _ in DIALECT_LABELS]
        self.turns_recorded = 0
        self.turns_refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.turns_not_recorded = dict.fromkeys(NOT_RECORDED_REASONS, 0)
        self.store_seconds: dict[str, Histogram] = {}
        self.store_errors: dict[str, int] = {}
        self._gauges: list[tuple[str, str, Callable[[], float]]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def count(self, kind: int, dialect: str | None, status: int, ttfb: float | None, seconds: float) -> None:
        """One request answered (``status`` 0: no response sent), and its timings."""
        index = _DIALECT_INDEX.get(dialect, 0) if dialect is not None else 0
        self.requests[kind][index][status // 100 if status < 600 else 0] += 1
        if ttfb is not None:
            self.upstream_ttfb[kind].observe(ttfb)
        if kind == SESSION:
            self.turn_seconds[index].observe(seconds)

    def store_command(self, command: str) -> Histogram:
        """The latency histogram of one store command, made once (at startup) and kept by the caller."""
        self.store_errors.setdefault(command, 0)
        return self.store_seconds.setdefault(command, Histogram(STORE_BUCKETS))

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Expose ``read()``, asked for at each scrape."""
        self._gauges.append((name, documentation, read))

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The body and content type of a scrape, in the format ``accept`` asks for."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        # called by prometheus_client for each scrape
        requests = CounterMetricFamily(
            "statefulproxy_requests",
            "Requests answered, by kind (stateless, session, management), chat dialect and status class.",
            labels=("kind", "dialect", "status_class"),
        )
        for kind, by_dialect in zip(KINDS, self.requests, strict=True):
            for dialect, by_status in zip(DIALECT_LABELS, by_dialect, strict=True):
                for status_class, value in zip(STATUS_CLASSES, by_status, strict=True):
                    if value:
                        requests.add_metric((kind, dialect, status_class), value)
        yield requests
        yield _labelled_histogram(
            "statefulproxy_upstream_ttfb_seconds",
            "From sending a request upstream to the upstream's response head, by kind.",
            "kind",
            ((kind, ttfb) for kind, ttfb in zip(KINDS, self.upstream_ttfb, strict=True) if kind != "management"),
        )
        yield _labelled_histogram(
            "statefulproxy_turn_duration_seconds",
            "Session turns, from the request's arrival to the end of its response, by chat dialect.",
            "dialect",
            ((dialect, turns) for dialect, turns in zip(DIALECT_LABELS, self.turn_seconds, strict=True) if turns.count),
        )
        yield CounterMetricFamily(
            "statefulproxy_turns_recorded", "Session turns recorded in the store.", value=self.turns_recorded
        )
        yield _labelled_counter(
            "statefulproxy_turns_refused", "Session turns refused before reaching the upstream.", self.turns_refused
        )
        yield _labelled_counter(
            "statefulproxy_turns_not_recorded",
            "Session turns that reached the upstream but were not recorded.",
            self.turns_not_recorded,
        )
        yield _labelled_histogram(
            "statefulproxy_store_command_duration_seconds",
            "Session store commands, by command, failed ones included.",
            "command",
            ((command, seconds) for command, seconds in self.store_seconds.items() if seconds.count),
        )
        yield _labelled_counter(
            "statefulproxy_store_errors",
            "Session store commands that failed (StoreError), by command.",
            self.store_errors,
            label="command",
        )
        if self.version is not None:
            info = GaugeMetricFamily("statefulproxy_build_info", "The proxy's version.", labels=("version",))
            info.add_metric((self.version,), 1)
            yield info
        for name, documentation, read in self._gauges:
            yield GaugeMetricFamily(name, documentation, value=read())


def _labelled_counter(name: str, documentation: str, values: dict[str, int], label: str = "reason") -> Metric:
    family = CounterMetricFamily(name, documentation, labels=(label,))
    for value_label, value in values.items():
        family.add_metric((value_label,), value)
    return family


def _labelled_histogram(
    name: str, documentation: str, label: str, histograms: Iterable[tuple[str, Histogram]]
) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=(label,))
    for value_label, histogram in histograms:
        family.add_metric((value_label,), histogram.buckets(), histogram.total)
    return family


class MetricsServer:
    """``/metrics`` on a port of its own (``metrics_port``), served by prometheus_client in a thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen; OSError if the port cannot be bound."""
        self._server, self._thread = start_http_server(self.port, self.host, registry=self.metrics.registry)

    def stop(self) -> None:
        """Stop listening; blocks up to half a second (the server's poll interval)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
