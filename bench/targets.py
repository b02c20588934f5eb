"""Issue 12's targets, checked against one run: one row per target, one column per concurrency and mode.

A figure is marked ✓/✗ only where its target applies (e.g. the throughput ratios at the higher
concurrencies); elsewhere it is shown for reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from report import RPS, TTFB50, Config, Results, cpu_value, ratio, table, value

Cell = tuple[int, bool]  # (concurrency, stream)
Figure = Callable[[Results, int, bool], float | None]


@dataclass(frozen=True)
class Target:
    name: str
    figure: Figure
    threshold: float
    at_most: bool  # True: the figure must be ≤ threshold; False: ≥
    applies: Callable[[int, bool], bool]
    unit: str = "×"  # noqa: RUF001

    def check(self, found: float) -> bool:
        return found <= self.threshold if self.at_most else found >= self.threshold


def _any(concurrency: int, stream: bool) -> bool:
    return True


def _loaded(concurrency: int, stream: bool) -> bool:
    return concurrency > 1


def _stream_c1(concurrency: int, stream: bool) -> bool:
    return stream and concurrency == 1


def _rps_ratio(key: str, base: str) -> Figure:
    return lambda results, c, s: ratio(value(results, key, c, s, RPS), value(results, base, c, s, RPS))


def _cpu_ratio(key: str, base: str) -> Figure:
    return lambda results, c, s: ratio(cpu_value(results, key, c, s), cpu_value(results, base, c, s))


def _redis_cpu(key: str) -> Figure:
    return lambda results, c, s: cpu_value(results, key, c, s, "redis")


def _ttfb_added(key: str) -> Figure:
    def figure(results: Results, c: int, s: bool) -> float | None:
        mine, relay = value(results, key, c, s, TTFB50), value(results, "ref", c, s, TTFB50)
        if not s or mine is None or relay is None or math.isnan(mine) or math.isnan(relay):
            return None
        return mine - relay

    return figure


def _scaling(key: str, concurrencies: Sequence[int]) -> Figure:
    """req/s at a concurrency ÷ req/s at the next lower one above 1 (issue 12: c=64 ≥ 0.9 times c=16)."""
    loaded = [c for c in concurrencies if c > 1]
    previous = dict(zip(loaded[1:], loaded, strict=False))

    def figure(results: Results, c: int, s: bool) -> float | None:
        if c not in previous:
            return None
        return ratio(value(results, key, c, s, RPS), value(results, key, previous[c], s, RPS))

    return figure


def _errors(results: Results, c: int, s: bool) -> float | None:
    found = [o.result.errors for (_, oc, om), o in results.items() if oc == c and om == s and o.result is not None]
    return float(sum(found)) if found else None


def issue_targets(configs: Sequence[Config], concurrencies: Sequence[int]) -> list[Target]:
    keys = {config.key for config in configs}
    labels = {config.key: config.label for config in configs}
    wanted: list[tuple[set[str], Target]] = [
        ({"stateless", "ref"}, Target("stateless req/s ÷ relay", _rps_ratio("stateless", "ref"), 0.9, False, _loaded)),
        (
            {"redis10", "stateless"},
            Target("Redis 10 req/s ÷ stateless", _rps_ratio("redis10", "stateless"), 0.75, False, _loaded),
        ),
        (
            {"redis200", "redis10"},
            Target("Redis 200 req/s ÷ Redis 10", _rps_ratio("redis200", "redis10"), 0.8, False, _loaded),
        ),
        (
            {"memory10", "redis10"},
            Target("memory 10 req/s ÷ Redis 10", _rps_ratio("memory10", "redis10"), 1.0, False, _any),
        ),
    ]
    for key in ("redis10", "redis200", "memory10"):
        name = f"{labels.get(key, key)}: proxy CPU/turn ÷ stateless"
        wanted.append(({key, "stateless"}, Target(name, _cpu_ratio(key, "stateless"), 1.6, True, _any)))
    for key, limit in (("redis10", 40.0), ("redis200", 100.0)):
        name = f"{labels.get(key, key)}: redis-server CPU µs/turn"
        wanted.append(({key}, Target(name, _redis_cpu(key), limit, True, _any, unit=" µs")))
    for key in ("stateless", "redis10", "redis200", "memory10"):
        name = f"{labels.get(key, key)}: stream TTFB p50 added over relay"
        wanted.append(({key, "ref"}, Target(name, _ttfb_added(key), 0.5, True, _stream_c1, unit=" ms")))
    if len([c for c in concurrencies if c > 1]) > 1:
        for config in configs:
            name = f"{config.label}: req/s ÷ the next lower concurrency"
            wanted.append(({config.key}, Target(name, _scaling(config.key, concurrencies), 0.9, False, _any)))
    wanted.append((set(), Target("errors and non-2xx, all configurations", _errors, 0, True, _any, unit="")))
    return [target for needs, target in wanted if needs <= keys]


def _show(found: float, unit: str) -> str:
    if unit == " µs":
        return f"{found:,.0f}"
    if unit == " ms":
        return f"{found:+.3f}"
    if unit == "":
        return f"{found:.0f}"
    return f"{found:.2f}"


def targets_table(configs: Sequence[Config], concurrencies: Sequence[int], results: Results) -> str:
    cells: list[Cell] = [(c, s) for c in concurrencies for s in (False, True)]
    header = ["target", "goal", *(f"c={c} {'stream' if s else 'json'}" for c, s in cells)]
    rows = []
    for target in issue_targets(configs, concurrencies):
        goal = (
            "= 0" if target.figure is _errors else f"{'≤' if target.at_most else '≥'} {target.threshold:g}{target.unit}"
        )
        row = [target.name, goal]
        for c, s in cells:
            found = target.figure(results, c, s)
            if found is None or math.isnan(found):
                row.append("—")
                continue
            mark = (" ✓" if target.check(found) else " ✗") if target.applies(c, s) else ""
            row.append(_show(found, target.unit) + mark)
        rows.append(row)
    return table(header, rows)
