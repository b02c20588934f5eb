"""The benchmark's markdown tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from load import LoadResult

STATELESS_ADDED_MS = (0.4, 1.0)
SESSION_ADDED_MS = (0.8, 1.5)
STATELESS_RPS_VS_RELAY = 0.9
REDIS_SESSION_RPS_VS_STATELESS = 0.75


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    hop: str  # "upstream" | "relay" | "proxy-redis" | "proxy-memory"
    history: int | None = None  # planned mean history size; None = no session
    uses: int = 1  # requests served by each pre-filled session
    redis: bool = False


@dataclass
class Outcome:
    """One cell (configuration, concurrency, mode): the pooled repetitions, or why it is unavailable."""

    result: LoadResult | None = None
    reason: str = ""
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per process group, summed over repetitions
    other_seconds: float = 0.0  # CPU the rest of the machine used meanwhile (processes not in the benchmark)

    def add(self, result: LoadResult, cpu_seconds: dict[str, float], other_seconds: float) -> None:
        if self.result is None:
            self.result = result
        else:
            self.result.merge(result)
        for name, seconds in cpu_seconds.items():
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + seconds
        self.other_seconds += other_seconds

    @property
    def cpu_percent(self) -> dict[str, float]:
        window = self.result.window_s if self.result else 0.0
        return {name: 100 * seconds / window for name, seconds in self.cpu_seconds.items()} if window else {}

    @property
    def other_cpu_percent(self) -> float:
        return 100 * max(0.0, self.other_seconds) / self.result.window_s if self.result else math.nan

    @property
    def hop_cpu_us_per_request(self) -> float:
        if self.result is None or not self.result.completed or "hop" not in self.cpu_seconds:
            return math.nan
        return self.cpu_seconds["hop"] / self.result.completed * 1e6


Results = dict[tuple[str, int, bool], Outcome]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(value: float, reference: float | None) -> str:
    if reference is None or math.isnan(value) or math.isnan(reference) or reference == 0:
        return ""
    return f" ({value / reference:.2f}×)"  # noqa: RUF001


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


Metric = Callable[[LoadResult], float]
RPS: Metric = lambda r: r.rps  # noqa: E731
P50: Metric = lambda r: r.latency_ms(50)  # noqa: E731
P99: Metric = lambda r: r.latency_ms(99)  # noqa: E731
TTFB50: Metric = lambda r: r.ttfb_ms(50)  # noqa: E731
TTFB99: Metric = lambda r: r.ttfb_ms(99)  # noqa: E731


def _value(results: Results, key: str, concurrency: int, stream: bool, metric: Metric) -> float | None:
    outcome = results.get((key, concurrency, stream))
    if outcome is None or outcome.result is None:
        return None
    return metric(outcome.result)


def results_table(configs: Sequence[Config], concurrencies: Sequence[int], results: Results, stream: bool) -> str:
    """One row per configuration and concurrency; every figure with its ratio to the reference relay."""
    metrics: list[tuple[str, Metric, bool]] = [("req/s", RPS, False)]
    if stream:
        metrics += [("TTFB p50 ms", TTFB50, True), ("TTFB p99 ms", TTFB99, True)]
    prefix = "total " if stream else ""
    metrics += [(f"{prefix}p50 ms", P50, True), (f"{prefix}p99 ms", P99, True)]
    header = ["configuration", "conc", *(name for name, _, _ in metrics), "errors"]
    rows = []
    for concurrency in concurrencies:
        for config in configs:
            outcome = results.get((config.key, concurrency, stream))
            if outcome is None:
                continue
            if outcome.result is None:
                rows.append([config.label, str(concurrency), f"unavailable: {outcome.reason}", *[""] * len(metrics)])
                continue
            cells = []
            for _, metric, is_ms in metrics:
                value = metric(outcome.result)
                text = _ms(value) if is_ms else f"{value:.0f}"
                cells.append(text + _ratio(value, _value(results, "ref", concurrency, stream, metric)))
            rows.append([config.label, str(concurrency), *cells, str(outcome.result.errors)])
    return table(header, rows)


def _added(value: float | None, base: float | None, target: float | None) -> str:
    if value is None or base is None or math.isnan(value) or math.isnan(base):
        return "n/a"
    added = value - base
    mark = "" if target is None else (" ✓" if added <= target else " ✗")
    return f"{added:+.3f}{mark}"


def added_latency_table(configs: Sequence[Config], results: Results) -> str:
    """Concurrency 1: latency each hop adds over the reference relay and over going direct."""
    measures: list[tuple[str, bool, Metric, Metric]] = [
        ("non-stream", False, P50, P99),
        ("stream TTFB", True, TTFB50, TTFB99),
        ("stream total", True, P50, P99),
    ]
    header = ["configuration", "measure", "+p50 vs ref", "+p99 vs ref", "+p50 vs direct", "+p99 vs direct", "target"]
    rows = []
    for config in configs:
        if config.key == "direct":
            continue
        targets: tuple[float, float] | None = None
        if config.hop.startswith("proxy"):
            targets = SESSION_ADDED_MS if config.history else STATELESS_ADDED_MS
        for name, stream, lo, hi in measures:
            if _value(results, config.key, 1, stream, lo) is None:
                if name == "non-stream":
                    outcome = results.get((config.key, 1, stream))
                    reason = outcome.reason if outcome else "not run"
                    rows.append([config.label, name, f"unavailable: {reason}", "", "", "", ""])
                continue
            cells = []
            for base in ("ref", "direct"):
                if base == config.key:
                    cells += ["—", "—"]
                    continue
                for metric, target in ((lo, targets[0] if targets else None), (hi, targets[1] if targets else None)):
                    value = _value(results, config.key, 1, stream, metric)
                    cells.append(_added(value, _value(results, base, 1, stream, metric), target))
            target_text = f"≤ {targets[0]} / {targets[1]} ms" if targets else "—"
            rows.append([config.label, name, *cells, target_text])
    return table(header, rows)


def throughput_targets_table(configs: Sequence[Config], concurrency: int, results: Results) -> str:
    by_key = {config.key: config for config in configs}
    checks: list[tuple[str, str, str, float | None]] = [
        ("stateless", "ref", "stateless proxy req/s ÷ relay req/s", STATELESS_RPS_VS_RELAY)
    ]
    for config in configs:
        if config.history:
            target = REDIS_SESSION_RPS_VS_STATELESS if config.redis else None
            checks.append((config.key, "stateless", f"{config.label} req/s ÷ stateless req/s", target))
    rows = []
    for key, base, name, target in checks:
        if key not in by_key or base not in by_key:
            continue
        cells = []
        for stream in (False, True):
            value = _value(results, key, concurrency, stream, RPS)
            reference = _value(results, base, concurrency, stream, RPS)
            if value is None or reference is None or reference == 0:
                cells.append("n/a")
                continue
            ratio = value / reference
            mark = "" if target is None else (" ✓" if ratio >= target else " ✗")
            cells.append(f"{ratio:.2f}{mark}")
        rows.append([name, *cells, f"≥ {target}" if target is not None else "— (comparison)"])
    if not rows:
        return "(not measured: needs the relay, the stateless proxy and the session configurations)"
    return table([f"throughput at concurrency {concurrency}", "non-stream", "stream", "target"], rows)


def cpu_table(configs: Sequence[Config], concurrencies: Sequence[int], results: Results) -> str:
    """CPU used in the measured window, % of one core, per process; shows which process is the bottleneck."""
    names = ["driver", "upstream", "hop", "redis"]
    header = ["configuration", "conc", "mode", *names, "ours", "other processes", "hop CPU µs/request"]
    rows = []
    for concurrency in concurrencies:
        for config in configs:
            for stream in (False, True):
                outcome = results.get((config.key, concurrency, stream))
                if outcome is None or outcome.result is None:
                    continue
                cpu = outcome.cpu_percent
                cells = [f"{cpu[name]:.0f}%" if name in cpu else "—" for name in names]
                per_request = outcome.hop_cpu_us_per_request
                reference = results.get(("ref", concurrency, stream))
                ratio = _ratio(per_request, reference.hop_cpu_us_per_request if reference else None)
                rows.append(
                    [
                        config.label,
                        str(concurrency),
                        "stream" if stream else "non-stream",
                        *cells,
                        f"{sum(cpu.values()):.0f}%",
                        "n/a" if math.isnan(outcome.other_cpu_percent) else f"{outcome.other_cpu_percent:.0f}%",
                        "—" if math.isnan(per_request) else f"{per_request:.0f}{ratio}",
                    ]
                )
    return table(header, rows)
