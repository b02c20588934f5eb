"""The benchmark's cells and their markdown tables (the issue-12 targets are in targets.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from load import LoadResult
from redis_stats import CommandStats, WindowTotals

STATELESS_ADDED_MS = (0.4, 1.0)
SESSION_ADDED_MS = (0.8, 1.5)
TOP_COMMANDS = 5


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
    redis: WindowTotals = field(default_factory=WindowTotals)

    def add(
        self, result: LoadResult, cpu_seconds: dict[str, float], other_seconds: float, commands: CommandStats
    ) -> None:
        if self.result is None:
            self.result = result
        else:
            self.result.merge(result)
        for name, seconds in cpu_seconds.items():
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + seconds
        self.other_seconds += other_seconds
        self.redis.add(commands)

    @property
    def cpu_percent(self) -> dict[str, float]:
        window = self.result.window_s if self.result else 0.0
        return {name: 100 * seconds / window for name, seconds in self.cpu_seconds.items()} if window else {}

    @property
    def other_cpu_percent(self) -> float:
        return 100 * max(0.0, self.other_seconds) / self.result.window_s if self.result else math.nan

    def cpu_us_per_request(self, group: str) -> float:
        """CPU of one process group (``hop`` = the proxy or relay, ``redis``) per completed request, in µs."""
        if self.result is None or not self.result.completed or group not in self.cpu_seconds:
            return math.nan
        return self.cpu_seconds[group] / self.result.completed * 1e6

    @property
    def hop_cpu_us_per_request(self) -> float:
        return self.cpu_us_per_request("hop")


Results = dict[tuple[str, int, bool], Outcome]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _bad(value: float | None) -> bool:
    return value is None or math.isnan(value)


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or math.isnan(value) or math.isnan(reference) or reference == 0:
        return None
    return value / reference


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"  # noqa: RUF001


def _ratio(value: float, reference: float | None) -> str:
    found = ratio(value, reference)
    return "" if found is None else f" ({times(found)})"


def _ms(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _us(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.0f}"


def _rps(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.0f}"


Metric = Callable[[LoadResult], float]
RPS: Metric = lambda r: r.rps  # noqa: E731
P50: Metric = lambda r: r.latency_ms(50)  # noqa: E731
P99: Metric = lambda r: r.latency_ms(99)  # noqa: E731
TTFB50: Metric = lambda r: r.ttfb_ms(50)  # noqa: E731
TTFB99: Metric = lambda r: r.ttfb_ms(99)  # noqa: E731


def value(results: Results, key: str, concurrency: int, stream: bool, metric: Metric) -> float | None:
    outcome = results.get((key, concurrency, stream))
    if outcome is None or outcome.result is None:
        return None
    return metric(outcome.result)


def cpu_value(results: Results, key: str, concurrency: int, stream: bool, group: str = "hop") -> float | None:
    outcome = results.get((key, concurrency, stream))
    if outcome is None or outcome.result is None:
        return None
    found = outcome.cpu_us_per_request(group)
    return None if math.isnan(found) else found


def summary_table(configs: Sequence[Config], concurrencies: Sequence[int], results: Results, stream: bool) -> str:
    """Everything that matters for one mode: throughput, latency, CPU of the hop and of redis-server per request,
    each with its ratio to the stateless proxy and to the relay at the same concurrency."""
    header = ["configuration", "conc", "req/s", "÷ stateless", "÷ relay", "p50 ms", "p99 ms"]
    if stream:
        header += ["TTFB p50 ms", "TTFB p50 + over relay ms"]
    header += ["proxy CPU µs/req", "CPU ÷ stateless", "CPU ÷ relay", "redis CPU µs/turn", "errors"]
    rows = []
    for concurrency in concurrencies:
        for config in configs:
            outcome = results.get((config.key, concurrency, stream))
            if outcome is None:
                continue
            if outcome.result is None:
                rows.append(
                    [config.label, str(concurrency), f"unavailable: {outcome.reason}", *[""] * (len(header) - 3)]
                )
                continue
            result = outcome.result
            rps = [
                times(ratio(result.rps, value(results, key, concurrency, stream, RPS))) for key in ("stateless", "ref")
            ]
            row = [config.label, str(concurrency), _rps(result.rps), *rps]
            row += [_ms(result.latency_ms(50)), _ms(result.latency_ms(99))]
            if stream:
                ttfb = result.ttfb_ms(50)
                relay_ttfb = value(results, "ref", concurrency, stream, TTFB50)
                added = None if _bad(relay_ttfb) or config.key == "ref" else ttfb - (relay_ttfb or 0.0)
                row += [_ms(ttfb), "—" if added is None or math.isnan(added) else f"{added:+.3f}"]
            hop_cpu = cpu_value(results, config.key, concurrency, stream)
            redis_cpu = cpu_value(results, config.key, concurrency, stream, "redis") if config.redis else None
            cpu = [times(ratio(hop_cpu, cpu_value(results, key, concurrency, stream))) for key in ("stateless", "ref")]
            row += [_us(hop_cpu), *cpu, _us(redis_cpu)]
            rows.append([*row, str(result.errors)])
    return table(header, rows)


def headline_table(configs: Sequence[Config], concurrencies: Sequence[int], results: Results) -> str:
    """The shape of issue 12's table (non-streaming): req/s per concurrency (÷ stateless), CPU ranges."""
    header = ["configuration", *(f"c={c} req/s" for c in concurrencies), "proxy CPU µs/req", "redis CPU µs/turn"]
    rows = []
    for config in configs:
        cells = []
        hop: list[float] = []
        store: list[float] = []
        for concurrency in concurrencies:
            rps = value(results, config.key, concurrency, False, RPS)
            if rps is None:
                cells.append("n/a")
                continue
            versus = (
                "" if config.key == "stateless" else _ratio(rps, value(results, "stateless", concurrency, False, RPS))
            )
            cells.append(_rps(rps) + versus)
            hop += [v for v in [cpu_value(results, config.key, concurrency, False)] if v is not None]
            if config.redis:
                store += [v for v in [cpu_value(results, config.key, concurrency, False, "redis")] if v is not None]
        rows.append([config.label, *cells, _span(hop), _span(store)])
    return table(header, rows)


def _span(values: list[float]) -> str:
    if not values:
        return "—"
    low, high = min(values), max(values)
    return _us(low) if round(low) == round(high) else f"{_us(low)}–{_us(high)}"  # noqa: RUF001


def redis_table(configs: Sequence[Config], concurrencies: Sequence[int], results: Results) -> str:
    """Per turn: redis-server's CPU (from /proc) and the commands that spent it (INFO commandstats deltas)."""
    header = ["configuration", "conc", "mode", "redis CPU µs/turn", "commands/turn", "top commands: calls, µs per turn"]
    rows = []
    for concurrency in concurrencies:
        for config in configs:
            if not config.redis:
                continue
            for stream in (False, True):
                outcome = results.get((config.key, concurrency, stream))
                if outcome is None or outcome.result is None:
                    continue
                turns = outcome.result.completed
                top = outcome.redis.per_turn(turns, TOP_COMMANDS)
                commands = "; ".join(f"`{name}` {calls:.2f}, {usec:.1f} µs" for name, calls, usec in top) or "—"
                calls = outcome.redis.calls_per_turn(turns)
                rows.append(
                    [
                        config.label,
                        str(concurrency),
                        "stream" if stream else "json",
                        _us(outcome.cpu_us_per_request("redis")),
                        "—" if math.isnan(calls) else f"{calls:.1f}",
                        commands,
                    ]
                )
    if not rows:
        return "(no Redis session configuration measured)"
    return table(header, rows)


def _added(mine: float | None, base: float | None, target: float | None) -> str:
    if mine is None or base is None or math.isnan(mine) or math.isnan(base):
        return "n/a"
    added = mine - base
    mark = "" if target is None else (" ✓" if added <= target else " ✗")
    return f"{added:+.3f}{mark}"


def added_latency_table(configs: Sequence[Config], results: Results) -> str:
    """Concurrency 1: latency each hop adds over the reference relay and over going direct."""
    measures: list[tuple[str, bool, Metric, Metric]] = [
        ("json", False, P50, P99),
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
            if value(results, config.key, 1, stream, lo) is None:
                if name == "json":
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
                    mine = value(results, config.key, 1, stream, metric)
                    cells.append(_added(mine, value(results, base, 1, stream, metric), target))
            target_text = f"≤ {targets[0]} / {targets[1]} ms" if targets else "—"
            rows.append([config.label, name, *cells, target_text])
    return table(header, rows)


def cpu_table(configs: Sequence[Config], concurrencies: Sequence[int], results: Results) -> str:
    """CPU used in the measured window, % of one core, per process; shows which process is the bottleneck."""
    names = ["driver", "upstream", "hop", "redis"]
    header = ["configuration", "conc", "mode", *names, "ours", "other processes"]
    rows = []
    for concurrency in concurrencies:
        for config in configs:
            for stream in (False, True):
                outcome = results.get((config.key, concurrency, stream))
                if outcome is None or outcome.result is None:
                    continue
                cpu = outcome.cpu_percent
                other = outcome.other_cpu_percent
                rows.append(
                    [
                        config.label,
                        str(concurrency),
                        "stream" if stream else "json",
                        *[f"{cpu[name]:.0f}%" if name in cpu else "—" for name in names],
                        f"{sum(cpu.values()):.0f}%",
                        "n/a" if math.isnan(other) else f"{other:.0f}%",
                    ]
                )
    return table(header, rows)
