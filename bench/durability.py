"""Durability under a Redis crash: does ``kill -9`` of redis-server lose or duplicate turns?

    python bench/durability.py            # full run: both fsync policies, 3 kills each, ~1 min
    python bench/durability.py --quick    # smoke run, ~10 s
    python bench/durability.py --cluster  # Redis Cluster master SIGKILLed, replica promoted: durability_cluster.py

For each ``appendfsync`` policy (``everysec``, then ``always``) it starts, each in its own process, a
redis-server with AOF on (``--appendonly yes``, its own temporary dir), the scripted upstream
(bench/upstream.py) and the proxy (``python -m statefulproxy --store redis://...``). ``--workers`` workers
each send sequential session chat turns (every turn a unique user message, streamed and not alternating;
a worker moves on to a new session every ``TURNS_PER_SESSION`` turns). A turn is *acknowledged* when its
HTTP 200 reply arrived completely (a JSON body that parses; a stream that ends with ``data: [DONE]``).
Every turn carries an ``Idempotency-Key`` (its session id and number) and its body is serialised once: a
failed attempt (non-200, 503 while Redis is down, connection error, stream cut before ``[DONE]``) is sent
again, same session, key and bytes, every ``FAILURE_PAUSE_S``, until it is acknowledged or the run stops.
An attempt whose turn Redis stored before dying unanswered is thus answered by its retry from the recorded
reply (``x-session-replayed: true``) instead of being stored twice. Mid-load, redis-server is killed with
SIGKILL and restarted on the same port from the same dir (it replays its AOF); the load runs on through the
outage. Afterwards every session is read back through the management API
(``GET /v1/sessions/{id}/messages``): each acknowledged turn is looked up (its user message followed by an
assistant message) and every user message stored more than once counted as duplicated.

``kill -9`` kills the process, not the machine: what Redis had written to the AOF file is in the kernel's page
cache and survives even if not yet fsynced. So a process crash should lose nothing with either policy; only
an OS crash or power loss can lose up to ~1 s of writes with ``everysec`` (Redis' documented trade-off),
which this script cannot simulate. Exits 1 if ``always`` lost an acknowledged turn, if any turn was stored
twice, or if the run measured nothing (no acknowledged turn before or after a kill). The markdown summary goes
to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import servers

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TURNS_PER_SESSION = 25
STREAM_END = b"data: [DONE]\n\n"
AUTH = {"authorization": "Bearer sk-durability", "content-type": "application/json"}
FAILURE_PAUSE_S = 0.05  # pacing of retries, so an outage is not a busy loop of 503s
REPLAYED = "x-session-replayed"


def progress(message: str) -> None:
    print(f"[durability] {message}", file=sys.stderr, flush=True)


def redis_binary() -> str:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from tests.harness.redis_server import redis_server_binary  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise SystemExit("no redis-server on PATH and tests/harness/redis_server.py not importable") from None
        return found
    return str(redis_server_binary())


async def redis_pong(port: int) -> bool:
    """True once redis answers PING with PONG (not while it is still loading its AOF)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        return (await asyncio.wait_for(reader.readline(), 2)).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class Turn:
    session_id: str
    content: str  # unique; also the turn's Idempotency-Key
    acknowledged: bool = False
    at: float = 0.0  # time.monotonic() when the last attempt's reply ended (or failed)
    first: float = 0.0  # time.monotonic() when its first attempt was sent
    attempts: int = 0
    replayed: bool = False  # acknowledged with the reply an earlier, unanswered attempt stored


@dataclass
class Pass:
    """One fsync policy's run and what it found."""

    fsync: str
    workers: int
    turns: list[Turn] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # per failed attempt
    failed_at: list[tuple[float, str]] = field(default_factory=list)  # (when, session id) of each failed attempt
    started: float = 0.0
    stopped: float = 0.0
    kills: list[float] = field(default_factory=list)  # monotonic time of each SIGKILL
    back: list[float] = field(default_factory=list)  # monotonic time redis answered PING again
    persisted: int = 0
    lost: list[Turn] = field(default_factory=list)
    unacknowledged_persisted: int = 0
    duplicated: int = 0  # user messages stored more than once in their session, beyond the first
    missing_sessions: int = 0  # sessions with acknowledged turns that were not found on read-back
    max_latency_s: float = 0.0  # of one acknowledged attempt
    max_turn_s: float = 0.0  # from a turn's first attempt to its acknowledgement

    @property
    def acknowledged(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.acknowledged]

    @property
    def in_flight(self) -> list[Turn]:
        """Turns still being retried when the run stopped (a worker gives up on no other turn)."""
        return [turn for turn in self.turns if not turn.acknowledged]

    def retried(self) -> int:
        return sum(1 for turn in self.acknowledged if turn.attempts > 1)

    def replays(self) -> int:
        return sum(1 for turn in self.acknowledged if turn.replayed)

    @property
    def duration_s(self) -> float:
        return self.stopped - self.started

    def rps(self) -> float:
        return len(self.acknowledged) / self.duration_s if self.duration_s > 0 else 0.0

    def steady_rps(self) -> float:
        """Acknowledged turns per second before the first kill."""
        end = self.kills[0] if self.kills else self.stopped
        count = sum(1 for turn in self.acknowledged if turn.at < end)
        return count / (end - self.started) if end > self.started else 0.0

    def acks_in_last_second_before_kills(self) -> int:
        return sum(1 for turn in self.acknowledged for kill in self.kills if kill - 1.0 <= turn.at < kill)

    def acks_after_last_restart(self) -> int:
        return sum(1 for turn in self.acknowledged if self.back and turn.at > self.back[-1])


class Redis:
    """A redis-server with AOF in ``data_dir``; ``restart()`` starts it again on the same port from the same dir."""

    def __init__(self, fsync: str, data_dir: Path, log_dir: Path) -> None:
        self.port = servers.free_port()
        self.log_dir = log_dir
        self.argv = [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(data_dir)]
        self.argv += ["--save", "", "--appendonly", "yes", "--appendfsync", fsync]
        self.server: servers.Server | None = None
        self.incarnation = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.incarnation += 1
        name = f"redis-{self.argv[-1]}-{self.incarnation}"
        self.server = await servers.start(name, self.argv, self.port, self.log_dir, lambda: redis_pong(self.port))

    async def kill(self) -> None:
        assert self.server is not None
        assert self.server.process is not None
        process = self.server.process
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)

    def stop(self) -> None:
        if self.server is not None:
            servers.stop(self.server)


async def attempt(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], data: bytes, stream: bool
) -> tuple[str | None, bool]:
    """Send one attempt of a turn: (None when it was acknowledged, else why not; whether it was a replay)."""
    try:
        async with http.post(url, data=data, headers=headers) as response:
            body = await response.read()
            replayed = response.headers.get(REPLAYED) == "true"
            if response.status != 200:
                return f"HTTP {response.status}", False
            if stream:
                return (None if body.endswith(STREAM_END) else "stream without [DONE]"), replayed
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return "unparsable JSON reply", False
            return None, replayed
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, False


async def deliver(
    run: Pass, http: aiohttp.ClientSession, url: str, turn: Turn, stream: bool, stop: asyncio.Event
) -> None:
    """Send ``turn`` until it is acknowledged or the run stops: every attempt the same key and body bytes."""
    payload: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": turn.content}]}
    if stream:
        payload["stream"] = True
    data = orjson.dumps(payload)
    headers = {**AUTH, "session-id": turn.session_id, "idempotency-key": turn.content}
    first = turn.first = time.monotonic()
    while True:
        started = time.monotonic()
        problem, replayed = await attempt(http, url, headers, data, stream)
        turn.attempts += 1
        turn.at = time.monotonic()
        if problem is None:
            turn.acknowledged, turn.replayed = True, replayed
            run.max_latency_s = max(run.max_latency_s, turn.at - started)
            run.max_turn_s = max(run.max_turn_s, turn.at - first)
            return
        run.failures[problem] += 1
        run.failed_at.append((turn.at, turn.session_id))
        if stop.is_set():
            return
        await asyncio.sleep(FAILURE_PAUSE_S)


async def drive(run: Pass, base_url: str, stop: asyncio.Event) -> None:
    """``run.workers`` workers sending sequential turns until ``stop`` is set."""
    url = base_url + "/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=run.workers)
    timeout = aiohttp.ClientTimeout(total=30)
    prefix = f"dur-{run.fsync}-{os.getpid()}-{int(time.time())}"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def worker(index: int) -> None:
            session_number, turn_in_session = 0, 0
            while not stop.is_set():
                if turn_in_session >= TURNS_PER_SESSION:
                    session_number, turn_in_session = session_number + 1, 0
                session_id = f"{prefix}-w{index}-s{session_number}"
                turn = Turn(session_id, f"{session_id}#t{turn_in_session}")
                run.turns.append(turn)
                await deliver(run, http, url, turn, turn_in_session % 2 == 1, stop)
                turn_in_session += 1

        await asyncio.gather(*(worker(i) for i in range(run.workers)))


async def crash_schedule(
    run: Pass, redis: Redis, stop: asyncio.Event, kills: int, phase_s: float, down_s: float
) -> None:
    """Load for ``phase_s``, then ``kills`` times: SIGKILL redis, restart it after ``down_s``, load ``phase_s`` more."""
    await asyncio.sleep(phase_s)
    for number in range(1, kills + 1):
        run.kills.append(time.monotonic())
        await redis.kill()
        progress(f"  {run.fsync}: kill -9 #{number} of redis-server ({len(run.acknowledged)} turns acknowledged)")
        await asyncio.sleep(down_s)  # the outage the load runs through
        await redis.start()
        run.back.append(time.monotonic())
        progress(f"  {run.fsync}: redis-server back after {run.back[-1] - run.kills[-1]:.2f} s (AOF replayed)")
        await asyncio.sleep(phase_s)
    stop.set()


async def history(http: aiohttp.ClientSession, base_url: str, session_id: str) -> list[dict[str, object]] | None:
    """Every stored message of the session, oldest first; None when the session does not exist."""
    messages: list[dict[str, object]] = []
    after = ""
    while True:
        url = f"{base_url}/v1/sessions/{session_id}/messages?limit=100" + (f"&after={after}" if after else "")
        async with http.get(url, headers=AUTH) as response:
            if response.status == 404:
                return None
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"reading {session_id}: HTTP {response.status}: {body[:200]!r}")
        page = orjson.loads(body)
        messages += page["data"]
        if not page.get("has_more") or not page["data"]:
            return messages
        after = str(page["last_id"])


async def verify(run: Pass, base_url: str) -> None:
    """Read every session back and classify every turn."""
    by_session: dict[str, list[Turn]] = {}
    for turn in run.turns:
        by_session.setdefault(turn.session_id, []).append(turn)
    limit = asyncio.Semaphore(16)
    answered: dict[str, set[str]] = {session_id: set() for session_id in by_session}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def read(session_id: str) -> None:
            async with limit:
                messages = await history(http, base_url, session_id)
            if messages is None:
                run.missing_sessions += any(turn.acknowledged for turn in by_session[session_id])
                return
            users: Counter[str] = Counter()
            for message, following in zip(messages, [*messages[1:], None], strict=True):
                if message.get("role") != "user":
                    continue
                users[str(message.get("content"))] += 1
                if following is not None and following.get("role") == "assistant":
                    answered[session_id].add(str(message.get("content")))
            # every user message, answered or not: a turn stored twice is a duplicate either way
            run.duplicated += sum(count - 1 for count in users.values() if count > 1)

        await asyncio.gather(*(read(session_id) for session_id in by_session))

    for session_id, turns in by_session.items():
        for turn in turns:
            found = turn.content in answered[session_id]
            if turn.acknowledged:
                if found:
                    run.persisted += 1
                else:
                    run.lost.append(turn)
            elif found:
                run.unacknowledged_persisted += 1


async def start_stack(
    name: str, store_url: str, args: argparse.Namespace, work_dir: Path, log_dir: Path, started: list[servers.Server]
) -> servers.Server:
    """Start the scripted upstream and the proxy on ``store_url`` (each appended to ``started``); return the proxy."""
    port = servers.free_port()
    argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
    upstream = await servers.start(f"upstream-{name}", argv, port, log_dir, lambda: servers.tcp_ready(port))
    started.append(upstream)
    config = work_dir / f"proxy-{name}.yaml"
    # a turn cut by the kill leaves its session's lease in the AOF: the proxy releases it once redis is back
    config.write_text(f"session_ttl: 1h\nlog_level: warning\nlease_ttl: {args.lease_ttl}s\n")
    proxy_port = servers.free_port()
    argv = [sys.executable, "-m", "statefulproxy", "--upstream", upstream.base_url, "--store", store_url]
    argv += ["--port", str(proxy_port), "--config", str(config)]

    async def proxy_ready() -> bool:
        return await servers.http_status(proxy_port, "/readyz") == 200

    proxy = await servers.start(f"proxy-{name}", argv, proxy_port, log_dir, proxy_ready)
    started.append(proxy)
    return proxy


async def run_pass(fsync: str, args: argparse.Namespace, work_dir: Path, log_dir: Path) -> Pass:
    data_dir = work_dir / f"redis-{fsync}"
    data_dir.mkdir()
    redis = Redis(fsync, data_dir, log_dir)
    run = Pass(fsync=fsync, workers=args.workers)
    started: list[servers.Server] = []
    try:
        await redis.start()
        proxy = await start_stack(fsync, redis.url, args, work_dir, log_dir, started)
        progress(f"{fsync}: redis :{redis.port} (AOF appendfsync {fsync}), proxy :{proxy.port}, {run.workers} workers")
        stop = asyncio.Event()
        run.started = time.monotonic()
        await asyncio.gather(
            drive(run, proxy.base_url, stop), crash_schedule(run, redis, stop, args.kills, args.phase, args.down)
        )
        run.stopped = time.monotonic()
        progress(f"  {fsync}: load stopped; reading {len({t.session_id for t in run.turns})} sessions back")
        await verify(run, proxy.base_url)
    finally:
        for server in reversed(started):
            servers.stop(server)
        redis.stop()
    return run


def verdicts(run: Pass) -> list[str]:
    """Hard failures of this pass (empty: it passed)."""
    problems = []
    if run.fsync == "always" and run.lost:
        problems.append(f"appendfsync always lost {len(run.lost)} acknowledged turns")
    if run.duplicated:
        problems.append(f"{run.fsync}: {run.duplicated} turns stored more than once")
    if run.steady_rps() == 0:
        problems.append(f"{run.fsync}: no turn acknowledged before the first kill")
    if run.acks_after_last_restart() == 0:
        problems.append(f"{run.fsync}: no turn acknowledged after redis came back (the proxy did not recover)")
    return problems


TABLE_HEADER = [
    "| appendfsync | workers | kills | run s | turns/s (before kill) | turns/s (whole run) | acknowledged "
    "| persisted | lost acknowledged | expected loss | acked ≤ 1 s before a kill | failed attempts "
    "| retried turns | answered by replay | in flight at stop | persisted unacknowledged | duplicated |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def table_row(run: Pass, label: str, expected: str, mark: str) -> str:
    """One run's row of TABLE_HEADER; ``mark`` follows its lost count."""
    failed = sum(run.failures.values())
    duplicated = f"{run.duplicated}{' ✗' if run.duplicated else ' ✓'}"
    return (
        f"| {label} | {run.workers} | {len(run.kills)} | {run.duration_s:.1f} | {run.steady_rps():.0f} "
        f"| {run.rps():.0f} | {len(run.acknowledged)} | {run.persisted} | {len(run.lost)}{mark} | {expected} "
        f"| {run.acks_in_last_second_before_kills()} | {failed} | {run.retried()} | {run.replays()} "
        f"| {len(run.in_flight)} | {run.unacknowledged_persisted} | {duplicated} |"
    )


def report(runs: list[Pass], args: argparse.Namespace) -> str:
    command = "python bench/durability.py" + (" --quick" if args.quick else "")
    lines = [f"#### Durability: `kill -9` of redis-server under load (`{command}`)", "", *TABLE_HEADER]
    for run in runs:
        expected = "0" if run.fsync == "always" else "reported (≤ ~1 s of writes on an OS crash)"
        mark = (" ✗" if run.lost else " ✓") if run.fsync == "always" else ""
        lines.append(table_row(run, run.fsync, expected, mark))
    lines += ["", "Notes:", ""]
    for run in runs:
        outages = ", ".join(f"{b - k:.2f}" for k, b in zip(run.kills, run.back, strict=True))
        why = ", ".join(f"{reason} x {count}" for reason, count in run.failures.most_common(4)) or "none"
        most = max((turn.attempts for turn in run.acknowledged), default=0)
        lines.append(
            f"- {run.fsync}: redis down (kill to PONG after AOF replay) {outages} s; failed attempts: {why}; "
            f"sessions with acknowledged turns not found on read-back: {run.missing_sessions}; "
            f"slowest acknowledged attempt {run.max_latency_s:.2f} s, slowest turn with its retries "
            f"{run.max_turn_s:.2f} s ({most} attempts at most); "
            f"turns acknowledged after the last restart: {run.acks_after_last_restart()}"
        )
        for turn in run.lost[:3]:
            lines.append(f"  - lost: {turn.content!r}, acknowledged at +{turn.at - run.started:.3f} s")
    lines.append(
        "- A turn counts as acknowledged when its 200 reply arrived whole. A failed attempt (503 while redis is "
        "down, a stream cut at its commit) is sent again with the same `Idempotency-Key` and body until "
        "acknowledged: *answered by replay* counts turns whose retry got the reply an unanswered attempt had "
        "stored (at-least-once without the key), *duplicated* user messages stored twice (exactly-once: 0). "
        f"Proxy `lease_ttl: {args.lease_ttl:g}s`: a lease a cut attempt left in the AOF is released by the proxy "
        "once redis answers again, so its retry does not wait that long."
    )
    lines.append(
        "- `kill -9` ends the process, not the machine: what Redis wrote to its AOF is in the page cache and survives "
        "unfsynced, so no acknowledged turn should be lost with either policy. everysec's documented loss of up to "
        "~1 s of writes is for an OS crash or power loss, which this script does not simulate."
    )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    if args.cluster:
        import durability_cluster

        return await durability_cluster.main_async(args)
    runs: list[Pass] = []
    with tempfile.TemporaryDirectory(prefix="statefulproxy-durability-") as tmp:
        work_dir = Path(tmp)
        log_dir = work_dir / "logs"
        log_dir.mkdir()
        try:
            for fsync in args.fsync:
                runs.append(await run_pass(fsync, args, work_dir, log_dir))
        except servers.Unavailable as exc:
            print(f"durability: a server did not start: {exc}", file=sys.stderr)
            return 2
        finally:
            if args.keep_logs:
                kept = Path(tempfile.mkdtemp(prefix="statefulproxy-durability-logs-"))
                shutil.copytree(log_dir, kept, dirs_exist_ok=True)
                progress(f"logs kept in {kept}")
    print(report(runs, args))
    problems = [problem for run in runs for problem in verdicts(run)]
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 workers, 1 kill, short phases (~10 s)")
    parser.add_argument("--workers", type=int, help="concurrent workers, one session each (default 16, --quick 8)")
    parser.add_argument("--kills", type=int, help="kill -9 / restart cycles per policy (default 3, --quick 1)")
    parser.add_argument("--phase", type=float, help="seconds of load before, between and after kills (default 4)")
    parser.add_argument("--down", type=float, default=0.5, help="seconds redis stays dead before its restart (0.5)")
    parser.add_argument(
        "--lease-ttl", type=float, default=30.0, help="the proxy's lease_ttl in seconds (30, the proxy's default)"
    )
    parser.add_argument(
        "--fsync", default="everysec,always", help="comma-separated appendfsync policies (default everysec,always)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and print where")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="Redis Cluster of 3 masters + 1 replica each: masters killed, replicas promoted (--fsync, --down unused)",
    )
    args = parser.parse_args(argv)
    args.workers = args.workers or (8 if args.quick else 16)
    args.kills = args.kills if args.kills is not None else (1 if args.quick else 3)
    args.phase = args.phase or (1.5 if args.quick else 4.0)
    args.fsync = [policy.strip() for policy in args.fsync.split(",") if policy.strip()]
    unknown = set(args.fsync) - {"everysec", "always", "no"}
    if unknown or not args.fsync or args.kills < 1 or args.workers < 1 or args.lease_ttl <= 0:
        parser.error("--fsync takes everysec,always,no; --kills and --workers must be >= 1, --lease-ttl > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
