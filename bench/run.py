"""statefulproxy benchmark: throughput, latency and CPU of the proxy against a direct call and a minimal relay.

    python bench/run.py                              # full run, several minutes
    python bench/run.py --quick                      # smoke run, ~25 s
    python bench/run.py --only stateless,redis10     # a subset (keys or letters a, ref, b, c, d, e)
    python bench/run.py --profile redis10:16:json    # py-spy on the proxy for one cell (see bench/PROFILE.md)

Starts, each in its own process: the scripted upstream (bench/upstream.py), the reference relay
(bench/relay.py), a dedicated redis-server, and the proxy twice (``--store redis://...`` and
``--store memory://``, as ``python -m statefulproxy``, so PYTHONPATH picks the version); the load driver runs in
this process. Where the machine allows, the driver, upstream and redis-server run on one CPU and the proxy or
relay on another. Every configuration is measured at concurrency 1 and at each of ``--concurrency``,
non-streaming and streaming. The report (markdown) goes to stdout, progress to stderr. A configuration whose
server does not start is reported as unavailable with the reason. bench/README.md explains the columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import load
import options
import pinning
import profiling
import redis_stats
import render
import servers
import sessions
from report import Config, Outcome, Results

BENCH = Path(__file__).resolve().parent

# where a session configuration's pool size is estimated from (the first that was measured)
ESTIMATE_FROM = {"redis10": ["stateless", "ref", "direct"], "redis200": ["redis10", "stateless", "ref", "direct"]}
ESTIMATE_FROM["memory10"] = ESTIMATE_FROM["redis10"]
DEFAULT_RPS_GUESS = 2000.0
POOL_MARGIN = 1.2
QUIET_BUSY_PERCENT = 15.0
PROFILE_WARMUP_S = 1.0


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
        self.commandstats: redis_stats.CommandStatsReader | None = None
        self.pools: dict[str, sessions.SessionPool] = {}
        self.results: Results = {}
        self.notes: list[str] = []
        self.usable_cpus = len(os.sched_getaffinity(0))  # before this process is pinned
        self.pin = pinning.plan(not args.no_pin)
        self.pinned: dict[str, str] = {}  # process -> the CPUs the kernel reports it is allowed on
        self.profiles: list[tuple[str, str, profiling.Profile | None]] = []  # cell, headline or problem, profile

    async def _start(
        self, name: str, argv: list[str], port: int, health: str | None, cpus: set[int] | None
    ) -> servers.Server:
        async def ready() -> bool:
            if health is None:
                return await servers.tcp_ready(port)
            return await servers.http_status(port, health) == 200

        server = await servers.start(name, argv, port, self.log_dir, ready, cpus=cpus)
        self.stack.callback(servers.stop, server)
        self.pinned[name] = pinning.allowed_cpus(server.pids[0])
        return server

    async def start_servers(self) -> None:
        if self.pin.applied:
            os.sched_setaffinity(0, self.pin.load_cpus() or set())
            self.pinned["driver"] = pinning.allowed_cpus(os.getpid())
        hops = {config.hop for config in self.args.configs}
        port = servers.free_port()
        argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        upstream = await self._start("upstream", argv, port, None, self.pin.load_cpus())
        self.hops["upstream"] = upstream
        if "relay" in hops:
            port = servers.free_port()
            argv = [sys.executable, str(BENCH / "relay.py"), "--upstream", upstream.base_url, "--port", str(port)]
            await self._start_hop("relay", argv, port, None)
        if "proxy-redis" in hops:
            await self._start_redis()
            if self.redis is not None:
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

    async def _start_redis(self) -> None:
        try:
            self.redis, redis_server = await servers.start_redis(self.log_dir, self.stack, self.pin.load_cpus())
        except servers.Unavailable as exc:
            self.redis_problem = str(exc)
            self.hops["proxy-redis"] = f"redis: {exc}"
            return
        if redis_server is not None:
            self.stack.callback(servers.stop, redis_server)
        if self.redis.pid is not None:
            if self.pin.applied:
                pinning.pin_process(self.redis.pid, self.pin.load_cpus() or set())
            self.pinned["redis-server"] = pinning.allowed_cpus(self.redis.pid)
        self.commandstats = redis_stats.CommandStatsReader(self.redis.url)

    async def _start_proxy(self, hop: str, upstream: servers.Server, store: str) -> None:
        port = servers.free_port()
        argv = [sys.executable, "-m", "statefulproxy", "--upstream", upstream.base_url, "--store", store]
        await self._start_hop(hop, [*argv, "--port", str(port)], port, "/healthz")

    async def _start_hop(self, hop: str, argv: list[str], port: int, health: str | None) -> None:
        progress(f"starting {hop}: {' '.join(argv[1:])}")
        try:
            self.hops[hop] = await self._start(hop, argv, port, health, self.pin.hop_cpus())
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

    async def _fill_pool(self, config: Config, hop: servers.Server, concurrency: int, stream: bool) -> str:
        """Pre-fill the configuration's session pool for one repetition; the reason when it cannot."""
        pool = self.pools.get(config.key)
        if pool is None:
            assert config.history is not None
            pool = self.pools[config.key] = sessions.SessionPool(config.key, hop.base_url, config.history, config.uses)
        duration = self.args.duration / self.args.repeat
        expected = estimate_rps(config, concurrency, stream, self.results) * (self.args.warmup + duration)
        needed = math.ceil(expected * POOL_MARGIN / config.uses) + concurrency
        started = time.perf_counter()
        try:
            async with aiohttp.ClientSession() as client:
                await pool.ensure(needed, client)
        except (RuntimeError, aiohttp.ClientError) as exc:
            return f"pre-fill failed: {exc}"
        progress(f"  pool {config.key}: {len(pool.fresh)} fresh sessions ({time.perf_counter() - started:.1f} s)")
        return ""

    async def measure(
        self,
        config: Config,
        concurrency: int,
        stream: bool,
        outcome: Outcome,
        recorder: profiling.Recorder | None = None,
    ) -> None:
        """One repetition of one cell, pooled into ``outcome`` (or its reason set when it cannot run);
        ``recorder`` (py-spy) is attached to the hop for the measured window."""
        hop = self.hops.get(config.hop)
        if not isinstance(hop, servers.Server):
            outcome.reason = hop or "not started"
            return
        if config.history:
            outcome.reason = await self._fill_pool(config, hop, concurrency, stream)
            if outcome.reason:
                return
        pool = self.pools.get(config.key)
        if self.args.quiet_wait > 0:
            busy = await servers.wait_for_quiet(QUIET_BUSY_PERCENT, self.args.quiet_wait)
            if busy >= QUIET_BUSY_PERCENT:
                progress(f"  machine still {busy:.0f}% busy after waiting {self.args.quiet_wait:g} s; running anyway")
        groups = self.cpu_groups(config)
        marks: dict[str, dict[str, float]] = {}
        commands: dict[str, redis_stats.CommandStats | None] = {}
        reader = self.commandstats if config.redis else None

        async def on_window(edge: str) -> None:
            if reader is not None:
                commands[edge] = await reader.read()
            marks[edge] = {name: servers.cpu_seconds(pids) for name, pids in groups.items()}
            marks[edge]["machine"] = servers.machine_busy_seconds()
            if recorder is not None:
                if edge == "start":
                    recorder.start(hop.pids[0])
                else:
                    recorder.signal_stop()

        warmup = max(self.args.warmup, PROFILE_WARMUP_S) if recorder is not None else self.args.warmup
        result = await load.run_load(
            hop.base_url + "/v1/chat/completions",
            request_source(config, pool, stream),
            concurrency=concurrency,
            duration=self.args.duration / self.args.repeat,
            warmup=warmup,
            stream=stream,
            on_window=on_window,
        )
        if pool is not None:
            await self._after_pool_run(config, pool)
        if result.errors:
            examples = "; ".join(result.error_examples)
            self.notes.append(f"{config.label}, conc {concurrency}: {result.errors} errors, e.g. {examples}")
        if result.errors >= load.MAX_ERRORS:
            outcome.reason = f"failed: {result.errors} errors, e.g. {'; '.join(result.error_examples)}"
            return
        if not result.latency_ns:
            outcome.reason = "no request sent in the measured window came back: a longer --duration is needed here"
            return
        used = {name: marks["end"][name] - marks["start"][name] for name in groups}
        others = marks["end"]["machine"] - marks["start"]["machine"] - sum(used.values())
        before, after = commands.get("start"), commands.get("end")
        window = redis_stats.delta(before, after) if before is not None and after is not None else {}
        if reader is not None and not window:
            self.notes.append(f"{config.label}, conc {concurrency}: no INFO commandstats for this window")
        outcome.add(result, used, others, window)
        mode = "stream" if stream else "json"
        progress(
            f"{config.label:38} conc {concurrency:3} {mode:6} {result.rps:7.0f} req/s  "
            f"p50 {result.latency_ms(50):7.3f} ms  p99 {result.latency_ms(99):7.3f} ms  errors {result.errors}"
        )

    async def _after_pool_run(self, config: Config, pool: sessions.SessionPool) -> None:
        pool.end_run()
        if not pool.checked:
            pool.checked = True
            async with aiohttp.ClientSession() as client:
                self.notes.append(f"{config.label}: {await pool.check_recorded(client)}")

    async def run(self) -> None:
        """Interleaved: every configuration at one (concurrency, mode), then the next; the whole matrix
        ``repeat`` times, so drifting background load reaches all configurations alike."""
        await self.start_servers()
        for repetition in range(self.args.repeat):
            progress(f"repetition {repetition + 1}/{self.args.repeat}")
            for concurrency in self.args.concurrencies:
                for stream in (False, True):
                    for config in self.args.configs:
                        outcome = self.results.setdefault((config.key, concurrency, stream), Outcome())
                        if outcome.reason:
                            continue
                        await self.measure(config, concurrency, stream, outcome)
                        if outcome.reason:
                            progress(f"{config.label:38} conc {concurrency:3} unavailable: {outcome.reason}")

    async def run_profiles(self) -> None:
        """``--profile``: each cell once, with py-spy on the proxy during its measured window."""
        binary = profiling.find_py_spy()
        if binary is None:
            for cell in self.args.cells:
                self.profiles.append((cell.name, "py-spy is not on PATH (`pip install py-spy`): profile skipped", None))
            return
        await self.start_servers()
        raw_dir = self.args.profile_raw or self.log_dir
        raw_dir.mkdir(parents=True, exist_ok=True)
        for cell in self.args.cells:
            config = next(config for config in self.args.configs if config.key == cell.key)
            path = raw_dir / f"{cell.name.replace(':', '-')}.folded"
            path.unlink(missing_ok=True)
            recorder = profiling.Recorder(binary, path, self.args.profile_rate, self.args.profile_native)
            outcome = self.results.setdefault((cell.key, cell.concurrency, cell.stream), Outcome())
            progress(f"profiling {cell.name} for {self.args.duration:g} s at {self.args.profile_rate} Hz")
            await self.measure(config, cell.concurrency, cell.stream, outcome, recorder)
            text = recorder.finish()
            if outcome.result is None:
                self.profiles.append((cell.name, f"the cell did not run: {outcome.reason}", None))
                continue
            if text is None:
                self.profiles.append((cell.name, recorder.problem, None))
                continue
            profile = profiling.Profile(profiling.parse_folded(text), outcome.hop_cpu_us_per_request)
            headline = (
                f"{outcome.result.rps:,.0f} req/s, p50 {outcome.result.latency_ms(50):.3f} ms, "
                f"proxy CPU {outcome.hop_cpu_us_per_request:,.0f} µs/req from /proc while py-spy sampled "
                f"({profile.total:,} samples at {self.args.profile_rate} Hz"
                f"{', native frames' if self.args.profile_native else ''}"
                f"{f'; collapsed stacks: {path}' if self.args.profile_raw else ''})."
            )
            self.profiles.append((cell.name, headline, profile))


async def amain(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="statefulproxy-bench-") as tmp, contextlib.ExitStack() as stack:
        log_dir = Path(tmp)
        if args.keep_logs:
            log_dir = Path(tempfile.mkdtemp(prefix="statefulproxy-bench-logs-"))
            progress(f"logs in {log_dir}")
        bench = Bench(args, log_dir, stack)
        try:
            if args.cells:
                await bench.run_profiles()
                return render.profiles(bench)
            await bench.run()
        except servers.Unavailable as exc:
            raise SystemExit(f"the upstream did not start: {exc}") from exc
        finally:
            if bench.commandstats is not None:
                await bench.commandstats.aclose()
        return render.document(bench)


def main(argv: list[str] | None = None) -> int:
    args = options.parse_args(argv, __doc__.splitlines()[0])
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
