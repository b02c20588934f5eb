"""statefulproxy benchmark: throughput and latency of the proxy against a direct call and a minimal relay.

    python bench/run.py                       # full run, a few minutes
    python bench/run.py --quick               # smoke run, ~20 s
    python bench/run.py --only direct,ref     # a subset (keys or letters a, ref, b, c, d, e)

Starts, each in its own process: the scripted upstream (bench/upstream.py), the reference relay
(bench/relay.py), a dedicated redis-server, and the proxy twice (``--store redis://...`` and
``--store memory://``); the load driver runs in this process. Every configuration is measured at
concurrency 1 and at ``--concurrency``, non-streaming and streaming. The report (markdown) goes to stdout,
progress to stderr. A configuration whose server does not start is reported as unavailable with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import load
import report
import servers
import sessions
from report import Config, Outcome, Results

BENCH = Path(__file__).resolve().parent

CONFIGS = [
    Config("direct", "(a) direct to upstream", "upstream"),
    Config("ref", "(ref) aiohttp relay", "relay"),
    Config("stateless", "(b) proxy, no session", "proxy-redis"),
    Config("redis10", "(c) proxy, Redis session, 10 msgs", "proxy-redis", history=10, uses=3, redis=True),
    Config("redis200", "(d) proxy, Redis session, 200 msgs", "proxy-redis", history=200, uses=11, redis=True),
    Config("memory10", "(e) proxy, memory session, 10 msgs", "proxy-memory", history=10, uses=3),
]
LETTERS = {"a": "direct", "b": "stateless", "c": "redis10", "d": "redis200", "e": "memory10"}
# where a session configuration's pool size is estimated from (the first that was measured)
ESTIMATE_FROM = {"redis10": ["stateless", "ref", "direct"], "redis200": ["redis10", "stateless", "ref", "direct"]}
ESTIMATE_FROM["memory10"] = ESTIMATE_FROM["redis10"]
DEFAULT_RPS_GUESS = 2000.0
POOL_MARGIN = 1.2
QUIET_BUSY_PERCENT = 15.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, help="measured seconds per cell, split over the repetitions (default 6, --quick 0.5)"
    )
    parser.add_argument("--warmup", type=float, help="warm-up s before each repetition (default 0.5, --quick 0.2)")
    parser.add_argument("--repeat", type=int, help="repetitions of the matrix, interleaved (default 3, --quick 1)")
    parser.add_argument("--concurrency", type=int, default=32, help="the higher concurrency (default 32)")
    parser.add_argument("--quick", action="store_true", help="short runs for a smoke test")
    parser.add_argument("--only", help="comma-separated configurations: direct,ref,stateless,redis10,redis200,memory10")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run wait up to this long for other processes to leave the machine idle (default 0: off)",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and print where")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 0.5 if args.quick else 6.0
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.5
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--repeat must be ≥ 1, --duration > 0, --warmup ≥ 0")
    keys = [config.key for config in CONFIGS]
    if args.only:
        wanted = {LETTERS.get(word.strip(), word.strip()) for word in args.only.split(",") if word.strip()}
        unknown = wanted - set(keys)
        if unknown:
            parser.error(f"unknown configuration(s) {sorted(unknown)}; choose from {keys} or letters a-e")
        args.configs = [config for config in CONFIGS if config.key in wanted]
    else:
        args.configs = list(CONFIGS)
    if args.concurrency < 2:
        parser.error("--concurrency must be at least 2 (concurrency 1 is always run)")
    return args


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def request_source(config: Config, pool: sessions.SessionPool | None, stream: bool) -> load.RequestSource:
    body = sessions.chat_body([{"role": "user", "content": "hi"}], stream=stream)
    headers: Mapping[str, str] = dict(sessions.AUTH)
    if pool is None:
        return lambda worker: (headers, body)
    return lambda worker: ({**headers, "session-id": pool.take(worker)}, body)


def estimate_rps(config: Config, concurrency: int, stream: bool, results: Results) -> float:
    for key in ESTIMATE_FROM.get(config.key, []):
        outcome = results.get((key, concurrency, stream))
        if outcome is not None and outcome.result is not None and outcome.result.rps > 0:
            return outcome.result.rps
    return DEFAULT_RPS_GUESS


class Bench:
    """One benchmark run: the servers, the session pools, the results."""

    def __init__(self, args: argparse.Namespace, log_dir: Path, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.log_dir = log_dir
        self.stack = stack
        self.hops: dict[str, servers.Server | str] = {}  # hop -> server, or the reason it is unavailable
        self.redis: servers.Redis | None = None
        self.redis_problem = ""
        self.pools: dict[str, sessions.SessionPool] = {}
        self.results: Results = {}
        self.notes: list[str] = []

    async def _start(self, name: str, argv: list[str], port: int, health: str | None = None) -> servers.Server:
        async def ready() -> bool:
            if health is None:
                return await servers.tcp_ready(port)
            return await servers.http_status(port, health) == 200

        server = await servers.start(name, argv, port, self.log_dir, ready)
        self.stack.callback(servers.stop, server)
        return server

    async def start_servers(self) -> None:
        hops = {config.hop for config in self.args.configs}
        port = servers.free_port()
        argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        upstream = await self._start("upstream", argv, port)
        self.hops["upstream"] = upstream
        if "relay" in hops:
            port = servers.free_port()
            argv = [sys.executable, str(BENCH / "relay.py"), "--upstream", upstream.base_url, "--port", str(port)]
            await self._start_hop("relay", argv, port, None)
        if "proxy-redis" in hops:
            try:
                self.redis, redis_server = await servers.start_redis(self.log_dir, self.stack)
            except servers.Unavailable as exc:
                self.redis_problem = str(exc)
                self.hops["proxy-redis"] = f"redis: {exc}"
            else:
                if redis_server is not None:
                    self.stack.callback(servers.stop, redis_server)
                await self._start_proxy("proxy-redis", upstream, self.redis.url)
            if not isinstance(self.hops["proxy-redis"], servers.Server):
                # the stateless path does not touch the store: measure it on the memory-store proxy instead
                self.args.configs = [
                    dataclasses.replace(config, hop="proxy-memory", label=config.label + " (memory-store proxy)")
                    if config.key == "stateless"
                    else config
                    for config in self.args.configs
                ]
                hops = {config.hop for config in self.args.configs}
        if "proxy-memory" in hops:
            await self._start_proxy("proxy-memory", upstream, "memory://")

    async def _start_proxy(self, hop: str, upstream: servers.Server, store: str) -> None:
        port = servers.free_port()
        argv = [sys.executable, "-m", "statefulproxy", "--upstream", upstream.base_url, "--store", store]
        await self._start_hop(hop, [*argv, "--port", str(port)], port, "/healthz")

    async def _start_hop(self, hop: str, argv: list[str], port: int, health: str | None) -> None:
        progress(f"starting {hop}: {' '.join(argv[1:])}")
        try:
            self.hops[hop] = await self._start(hop, argv, port, health)
        except servers.Unavailable as exc:
            progress(f"  {hop} unavailable: {exc}")
            self.hops[hop] = str(exc)

    def cpu_groups(self, config: Config) -> dict[str, list[int]]:
        groups = {"driver": [os.getpid()]}
        upstream = self.hops["upstream"]
        assert isinstance(upstream, servers.Server)
        groups["upstream"] = upstream.pids
        hop = self.hops.get(config.hop)
        if config.hop != "upstream" and isinstance(hop, servers.Server):
            groups["hop"] = hop.pids
        if self.redis is not None and self.redis.pid is not None:
            groups["redis"] = [self.redis.pid]
        return groups

    async def measure(self, config: Config, concurrency: int, stream: bool, outcome: Outcome) -> None:
        """One repetition of one cell, pooled into ``outcome`` (or its reason set when it cannot run)."""
        hop = self.hops.get(config.hop)
        if not isinstance(hop, servers.Server):
            outcome.reason = hop or "not started"
            return
        duration = self.args.duration / self.args.repeat
        pool = self.pools.get(config.key)
        if config.history and pool is None:
            pool = self.pools[config.key] = sessions.SessionPool(config.key, hop.base_url, config.history, config.uses)
        if pool is not None:
            expected = estimate_rps(config, concurrency, stream, self.results) * (self.args.warmup + duration)
            needed = math.ceil(expected * POOL_MARGIN / config.uses) + concurrency
            started = time.perf_counter()
            try:
                async with aiohttp.ClientSession() as client:
                    await pool.ensure(needed, client)
            except (RuntimeError, aiohttp.ClientError) as exc:
                outcome.reason = f"pre-fill failed: {exc}"
                return
            progress(f"  pool {config.key}: {len(pool.fresh)} fresh sessions ({time.perf_counter() - started:.1f} s)")
        if self.args.quiet_wait > 0:
            busy = await servers.wait_for_quiet(QUIET_BUSY_PERCENT, self.args.quiet_wait)
            if busy >= QUIET_BUSY_PERCENT:
                progress(f"  machine still {busy:.0f}% busy after waiting {self.args.quiet_wait:g} s; running anyway")
        groups = self.cpu_groups(config)
        marks: dict[str, dict[str, float]] = {}

        def on_window(edge: str) -> None:
            marks[edge] = {name: servers.cpu_seconds(pids) for name, pids in groups.items()}
            marks[edge]["machine"] = servers.machine_busy_seconds()

        result = await load.run_load(
            hop.base_url + "/v1/chat/completions",
            request_source(config, pool, stream),
            concurrency=concurrency,
            duration=duration,
            warmup=self.args.warmup,
            stream=stream,
            on_window=on_window,
        )
        if pool is not None:
            pool.end_run()
            if not pool.checked:
                pool.checked = True
                async with aiohttp.ClientSession() as client:
                    self.notes.append(f"{config.label}: {await pool.check_recorded(client)}")
        if result.errors:
            examples = "; ".join(result.error_examples)
            self.notes.append(f"{config.label}, conc {concurrency}: {result.errors} errors, e.g. {examples}")
        if result.errors >= load.MAX_ERRORS or not result.latency_ns:
            outcome.reason = f"failed: {result.errors} errors, e.g. {'; '.join(result.error_examples)}"
            return
        used = {name: marks["end"][name] - marks["start"][name] for name in groups}
        others = marks["end"]["machine"] - marks["start"]["machine"] - sum(used.values())
        outcome.add(result, used, others)
        mode = "stream" if stream else "non-stream"
        progress(
            f"{config.label:38} conc {concurrency:3} {mode:10} {result.rps:7.0f} req/s  "
            f"p50 {result.latency_ms(50):7.3f} ms  p99 {result.latency_ms(99):7.3f} ms  errors {result.errors}"
        )

    async def run(self) -> None:
        """Interleaved: every configuration at one (concurrency, mode), then the next; the whole matrix
        ``repeat`` times, so drifting background load reaches all configurations alike."""
        await self.start_servers()
        for repetition in range(self.args.repeat):
            progress(f"repetition {repetition + 1}/{self.args.repeat}")
            for concurrency in (1, self.args.concurrency):
                for stream in (False, True):
                    for config in self.args.configs:
                        outcome = self.results.setdefault((config.key, concurrency, stream), Outcome())
                        if outcome.reason:
                            continue
                        await self.measure(config, concurrency, stream, outcome)
                        if outcome.reason:
                            progress(f"{config.label:38} conc {concurrency:3} unavailable: {outcome.reason}")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _versions(bench: Bench) -> str:
    parts = [f"Python {platform.python_version()}", f"aiohttp {aiohttp.__version__}"]
    try:
        parts.append(f"uvloop {importlib.metadata.version('uvloop')} (upstream, relay, driver)")
    except importlib.metadata.PackageNotFoundError:
        parts.append("no uvloop")
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import statefulproxy; print(getattr(statefulproxy, '__version__', '?'))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        parts.append(f"statefulproxy {out.stdout.strip() or 'not importable'}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ", ".join(parts)


def render(bench: Bench) -> str:
    args = bench.args
    configs = args.configs
    concurrencies = [1, args.concurrency]
    cores = len(os.sched_getaffinity(0))
    out = [
        "## Benchmark",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cores} usable), {_cpu_model()}, Linux {platform.release()}; "
        f"{_versions(bench)}.",
        f"The driver, upstream, hop (relay or proxy) and redis all share these {cores} cores; no CPU pinning.",
        f"Each cell: {args.repeat} x ({args.warmup:g} s warm-up + {args.duration / args.repeat:g} s measured), "
        "interleaved (all configurations at one concurrency and mode, then the next; the whole matrix repeated), "
        "samples pooled. Closed loop: each worker sends its next request when the previous response has fully "
        "arrived; one aiohttp ClientSession, pool = concurrency, keep-alive. Latency = request sent → last body byte; "
        "TTFB = first body chunk. Percentiles exact (nearest rank over all samples). "
        "Ratios in parentheses are to the reference relay at the same concurrency.",
        "",
        "### Non-streaming",
        "",
        report.results_table(configs, concurrencies, bench.results, stream=False),
        "",
        "### Streaming (20 SSE chunk events + [DONE], sent in 4 writes)",
        "",
        report.results_table(configs, concurrencies, bench.results, stream=True),
        "",
        "### Added latency at concurrency 1 (ms; ✓/✗ against the target)",
        "",
        report.added_latency_table(configs, bench.results),
        "",
        "### Throughput targets",
        "",
        report.throughput_targets_table(configs, args.concurrency, bench.results),
        "",
        "### CPU in the measured window (% of one core; hop = relay or proxy process)",
        "",
        report.cpu_table(configs, concurrencies, bench.results),
        "",
        "### Method notes",
        "",
    ]
    notes = []
    if any(config.history for config in configs):
        notes.append(
            "Session configurations: every request sends one new user message with header `session-id` (store "
            "not false), so each turn appends 2 messages. Each session is pre-filled before the run (untimed) and "
            "serves a fixed odd number of consecutive requests of one worker, so the history a request is spliced "
            "into is spread evenly around the nominal size (mean exactly the nominal size); one distinct session "
            "per worker at a time."
        )
    for key, pool in bench.pools.items():
        notes.append(f"{key}: {pool.describe()}")
    if bench.redis is not None:
        notes.append(f"redis: {bench.redis.how}")
    elif bench.redis_problem:
        notes.append(f"redis unavailable: {bench.redis_problem}")
    for hop, server in bench.hops.items():
        if isinstance(server, servers.Server) and hop.startswith("proxy"):
            notes.append(f"{hop} wrote {server.log_bytes()} bytes of log during the benchmark")
    notes += bench.notes
    disturbed = []
    for (key, concurrency, stream), outcome in bench.results.items():
        mode = "stream" if stream else "non-stream"
        driver = outcome.cpu_percent.get("driver", 0.0)
        if driver >= 90:
            notes.append(f"driver-bound: {key} conc {concurrency} {mode} (driver at {driver:.0f}% of a core)")
        if outcome.other_cpu_percent >= 20:
            disturbed.append(f"{key} conc {concurrency} {mode} ({outcome.other_cpu_percent:.0f}%)")
    if disturbed:
        notes.append(
            "other processes on the machine were busy during: " + ", ".join(disturbed) + " — those figures are "
            "disturbed; rerun on a quiet machine"
        )
    out += [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


async def amain(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="statefulproxy-bench-") as tmp, contextlib.ExitStack() as stack:
        log_dir = Path(tmp)
        if args.keep_logs:
            log_dir = Path(tempfile.mkdtemp(prefix="statefulproxy-bench-logs-"))
            progress(f"logs in {log_dir}")
        bench = Bench(args, log_dir, stack)
        try:
            await bench.run()
        except servers.Unavailable as exc:
            raise SystemExit(f"the upstream did not start: {exc}") from exc
        return render(bench)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        import uvloop
    except ImportError:
        text = asyncio.run(amain(args))
    else:
        text = uvloop.run(amain(args))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted; servers stopped")
        sys.exit(130)
