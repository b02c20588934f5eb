"""The load driver: fixed-concurrency closed-loop workers on one aiohttp ClientSession.

``concurrency`` workers each send a request, wait for the whole response, and send the next, for a
warm-up period (samples discarded) and then a measured window of ``duration`` seconds. Latency is taken
with ``time.perf_counter_ns`` from just before the request is sent to the last body byte; for streams
the time to first byte is the arrival of the first body chunk. Percentiles are exact (nearest rank over
all samples, no histogram buckets).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

#: worker index -> (headers, body) of its next request
RequestSource = Callable[[int], tuple[Mapping[str, str], bytes]]

STREAM_END = b"data: [DONE]\n\n"
MAX_ERRORS = 50


@dataclass
class LoadResult:
    """What one run measured. Latency samples are of requests *started* inside the window; ``completed``
    counts successful requests *finished* inside it (so rps is not biased by requests in flight at the edges).
    """

    concurrency: int
    stream: bool
    window_s: float
    completed: int = 0
    latency_ns: list[int] = field(default_factory=list)
    ttfb_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.completed / self.window_s if self.window_s > 0 else 0.0

    def merge(self, other: LoadResult) -> None:
        """Pool another repetition's samples into this one."""
        self.window_s += other.window_s
        self.completed += other.completed
        self.latency_ns += other.latency_ns
        self.ttfb_ns += other.ttfb_ns
        self.errors += other.errors
        self.error_examples = (self.error_examples + other.error_examples)[:3]

    def latency_ms(self, q: float) -> float:
        return percentile(self.latency_ns, q) / 1e6

    def ttfb_ms(self, q: float) -> float:
        return percentile(self.ttfb_ns, q) / 1e6


def percentile(samples: list[int], q: float) -> float:
    """Exact nearest-rank percentile (q in 0..100) of the samples; NaN when there are none."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


async def run_load(
    url: str,
    source: RequestSource,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    stream: bool,
    on_window: Callable[[str], Awaitable[None] | None] | None = None,
) -> LoadResult:
    """POST ``source``'s requests to ``url`` with ``concurrency`` workers; ``on_window("start"|"end")`` is called
    at the edges of the measured window (e.g. to read CPU counters)."""
    result = LoadResult(concurrency=concurrency, stream=stream, window_s=duration)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        begin = time.perf_counter_ns()
        t0 = begin + int(warmup * 1e9)
        t1 = t0 + int(duration * 1e9)
        failed = asyncio.Event()

        async def one(worker: int) -> None:
            while not failed.is_set():
                if time.perf_counter_ns() >= t1:
                    return
                headers, body = source(worker)
                start = time.perf_counter_ns()
                first = 0
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        if stream:
                            tail = b""
                            async for chunk in response.content.iter_any():
                                if not first:
                                    first = time.perf_counter_ns()
                                tail = (tail + chunk)[-len(STREAM_END) :]
                            end = time.perf_counter_ns()
                            ok = response.status == 200 and tail == STREAM_END
                            problem = f"status {response.status}, stream tail {tail!r}"
                        else:
                            payload = await response.read()
                            end = time.perf_counter_ns()
                            ok = response.status == 200
                            problem = f"status {response.status}: {payload[:200]!r}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, problem, end = False, f"{type(exc).__name__}: {exc}", time.perf_counter_ns()
                if not ok:
                    result.errors += 1
                    if len(result.error_examples) < 3:
                        result.error_examples.append(problem)
                    if result.errors >= MAX_ERRORS:
                        failed.set()
                    continue
                if t0 <= end <= t1:
                    result.completed += 1
                if t0 <= start:
                    result.latency_ns.append(end - start)
                    if stream:
                        result.ttfb_ns.append(first - start)

        async def edges() -> None:
            for at, name in ((t0, "start"), (t1, "end")):
                await asyncio.sleep(max(0.0, (at - time.perf_counter_ns()) / 1e9))
                if on_window is not None:
                    maybe = on_window(name)
                    if maybe is not None:
                        await maybe

        await asyncio.gather(edges(), *(one(i) for i in range(concurrency)))
    return result
