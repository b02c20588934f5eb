"""Soak: many mixed requests through the proxy on a Redis store, then memory, leaked connections and orphan keys.

    python bench/soak.py              # full run: 20,000 requests, 32 workers, ~1 min on 2 cores
    python bench/soak.py --quick      # smoke run, ~15 s

Starts, each in its own process, a redis-server, this script's own upstream (``--serve-upstream``, see below)
and the proxy (``python -m statefulproxy --store redis://...`` with ``session_ttl`` of ``--ttl`` seconds). The
driver sends ``--requests`` requests from ``--workers`` workers, each request's kind drawn (seeded) from:
stateless JSON and streamed; session turns JSON and streamed (client-chosen ids, three credentials, a worker
moves to a new session every few turns, some turns with an ``Idempotency-Key``); sessions created by
``store: true``; management calls (create, list, end, delete); and 5 % client disconnects, cycling through
three kinds, with and without a session:

- ``silent``: a stream whose upstream sends its first event and then nothing; the client leaves after it;
- ``trickle``: a stream whose upstream sends an event every 50 ms; the client leaves after the first;
- ``pending``: a JSON request the upstream never answers; the client leaves after 0.3 s.

The upstream notes when each such request arrived and when its connection was closed (both
``time.monotonic()``, one clock for every process on the machine); the driver notes when it dropped the
connection. Disconnect-to-close is ``closed - max(dropped, arrived)``: how long the proxy kept the upstream
request going after its client left.

Figures: the proxy's RSS (``VmRSS``) after warm-up and at the end; the disconnect-to-close times and any
upstream request still open; and, after waiting ``--ttl`` + a margin, every key left in Redis (SCAN, by this
script only): the per-scope listing index and sequence keys and the shared secret are expected, any other key
is an orphan. Index entries whose sessions are gone are dropped lazily by listings, so they are reported apart.
Exits 1 if an orphan key is left, a disconnect took longer than 1 s to close upstream or never closed, or no
disconnect was measured. The markdown summary goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import httptools
import orjson
import servers
from upstream import COMPLETION, STREAM_BODY_WRITES

BENCH = Path(__file__).resolve().parent
STREAM_END = b"data: [DONE]\n\n"
CREDENTIALS = ("sk-soak-alpha", "sk-soak-beta", "sk-soak-gamma")
DISCONNECT_KINDS = ("silent", "trickle", "pending")
PENDING_ABORT_S = 0.3
TRICKLE_EVERY_S = 0.05
HOLD_LIMIT_S = 20.0  # the upstream gives up on a held request after this long (and counts it as leaked)
TTL_MARGIN_S = 2.0
CLOSE_TARGET_S = 1.0
RSS_FLAT_MIB = 10.0
TURNS_PER_SESSION = 6
# (kind, weight); weights sum to 100
MIX = (
    ("stateless-json", 20),
    ("stateless-stream", 15),
    ("session-json", 24),
    ("session-stream", 24),
    ("store-true", 5),
    ("manage", 7),
    ("disconnect", 5),
)


def progress(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# ---- the upstream (a separate process: python bench/soak.py --serve-upstream --port N)


@dataclass
class HoldBook:
    """What the upstream saw of the requests it held open."""

    arrived: dict[str, float] = field(default_factory=dict)
    closed: dict[str, float] = field(default_factory=dict)
    gave_up: list[str] = field(default_factory=list)
    holding: set[str] = field(default_factory=set)
    connections: int = 0

    def report(self) -> bytes:
        return orjson.dumps(
            {
                "arrived": self.arrived,
                "closed": self.closed,
                "gave_up": self.gave_up,
                "holding": sorted(self.holding),
                "connections": self.connections,
            }
        )


def _head(status: bytes, content_type: bytes, length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %b\r\ncontent-type: %b\r\n%b\r\n\r\n" % (status, content_type, framing)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


FIRST_EVENT = _chunk(
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-soak",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "held"}, "finish_reason": None}],
        }
    )
    + b"\n\n"
)
TRICKLE_EVENT = _chunk(b": still here\n\n")  # an SSE comment: bytes on the wire, nothing to decode


class SoakUpstream(asyncio.Protocol):
    """One connection. Chat requests for model ``hold:<kind>:<id>`` are held open (see the module docstring);
    other chat requests get the benchmark upstream's reply; ``GET /_soak/holds`` reports the HoldBook."""

    def __init__(self, book: HoldBook) -> None:
        self.book = book
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.held: str | None = None
        self.timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.book.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.book.connections -= 1
        self.transport = None
        for timer in self.timers:
            timer.cancel()
        if self.held is not None:
            self.book.closed[self.held] = time.monotonic()
            self.book.holding.discard(self.held)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        if path == b"/_soak/holds":
            report = self.book.report()
            self._write(_head(b"200 OK", b"application/json", len(report)) + report)
            return
        if not path.endswith(b"/chat/completions"):
            self._write(_head(b"200 OK", b"application/json", 2) + b"{}")
            return
        try:
            payload = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            payload = {}
        model = str(payload.get("model", "")) if isinstance(payload, dict) else ""
        if model.startswith("hold:"):
            self._hold(*model.split(":", 2)[1:])
        elif isinstance(payload, dict) and payload.get("stream") is True:
            self._write(_head(b"200 OK", b"text/event-stream", None))
            self._stream_step(0)
        else:
            self._write(_head(b"200 OK", b"application/json", len(COMPLETION)) + COMPLETION)

    def _stream_step(self, index: int) -> None:
        self._write(STREAM_BODY_WRITES[index])
        if index + 1 < len(STREAM_BODY_WRITES):
            asyncio.get_running_loop().call_soon(self._stream_step, index + 1)

    def _hold(self, kind: str, hold_id: str) -> None:
        loop = asyncio.get_running_loop()
        self.held = hold_id
        self.book.arrived[hold_id] = time.monotonic()
        self.book.holding.add(hold_id)
        if kind in ("silent", "trickle"):
            self._write(_head(b"200 OK", b"text/event-stream", None) + FIRST_EVENT)
        if kind == "trickle":
            self.timers.append(loop.call_later(TRICKLE_EVERY_S, self._trickle))
        self.timers.append(loop.call_later(HOLD_LIMIT_S, self._give_up, hold_id))

    def _trickle(self) -> None:
        self._write(TRICKLE_EVENT)
        self.timers.append(asyncio.get_running_loop().call_later(TRICKLE_EVERY_S, self._trickle))

    def _give_up(self, hold_id: str) -> None:
        self.book.gave_up.append(hold_id)
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve_upstream(port: int) -> None:
    book = HoldBook()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SoakUpstream(book), "127.0.0.1", port, reuse_address=True, backlog=1024)
    async with server:
        await server.serve_forever()


# ---- the driver


@dataclass
class Disconnect:
    kind: str
    with_session: bool
    dropped: float | None = None  # monotonic time the client closed its connection


@dataclass
class Soak:
    requests: int
    workers: int
    ttl: float
    proxy_pid: int
    done: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    disconnects: dict[str, Disconnect] = field(default_factory=dict)
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (requests done, VmRSS KiB)
    checkpoints: set[int] = field(default_factory=set)
    started: float = 0.0
    stopped: float = 0.0

    def error(self, kind: str, problem: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(f"{kind}: {problem}")

    def completed(self) -> None:
        self.done += 1
        if self.done in self.checkpoints:
            self.rss_samples.append((self.done, vm_rss_kib(self.proxy_pid)))


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def chat(model: str, content: str, stream: bool = False, **extra: object) -> bytes:
    payload: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


class Worker:
    """One closed-loop worker: its own session, credential rotation and management bookkeeping."""

    def __init__(self, index: int, soak: Soak, http: aiohttp.ClientSession, base_url: str, seed: int) -> None:
        self.index = index
        self.soak = soak
        self.http = http
        self.base_url = base_url
        self.rng = random.Random(seed * 1000 + index)
        self.session_number = 0
        self.turns = 0
        # (credential, session id, when its create was sent) of sessions created through the management API
        self.managed: list[tuple[str, str, float]] = []
        self.prefix = f"soak-{os.getpid()}-w{index}"

    def headers(self, credential: str, session_id: str | None = None) -> dict[str, str]:
        headers = {"authorization": f"Bearer {credential}", "content-type": "application/json"}
        if session_id is not None:
            headers["session-id"] = session_id
        return headers

    def session(self) -> tuple[str, str]:
        """(credential, session id) for the next session turn: a new session every TURNS_PER_SESSION turns."""
        if self.turns >= TURNS_PER_SESSION:
            self.session_number, self.turns = self.session_number + 1, 0
        self.turns += 1
        return CREDENTIALS[self.session_number % len(CREDENTIALS)], f"{self.prefix}-s{self.session_number}"

    async def run(self, number: int) -> None:
        kind = self.rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
        self.soak.kinds[kind] += 1
        started = time.monotonic()
        try:
            problem = await self.send(kind, number)
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            self.soak.error(kind, problem)
        elif kind != "disconnect":
            self.soak.latencies.append(time.monotonic() - started)
        self.soak.completed()

    async def send(self, kind: str, number: int) -> str | None:
        url = self.base_url + "/v1/chat/completions"
        credential = CREDENTIALS[number % len(CREDENTIALS)]
        if kind == "stateless-json":
            return await self.expect("POST", url, chat("m", "hi"), self.headers(credential))
        if kind == "stateless-stream":
            return await self.expect("POST", url, chat("m", "hi", stream=True), self.headers(credential), stream=True)
        if kind in ("session-json", "session-stream"):
            credential, session_id = self.session()
            headers = self.headers(credential, session_id)
            if self.rng.random() < 0.1:
                headers["idempotency-key"] = f"{self.prefix}-k{number}"
            stream = kind == "session-stream"
            return await self.expect("POST", url, chat("m", f"turn {number}", stream=stream), headers, stream=stream)
        if kind == "store-true":
            body = chat("m", f"new session {number}", store=True)
            return await self.expect("POST", url, body, self.headers(credential))
        if kind == "manage":
            return await self.manage(credential)
        return await self.disconnect(number)

    async def manage(self, credential: str) -> str | None:
        sessions = self.base_url + "/v1/sessions"
        choice = self.rng.random()
        # a created session nobody chats on expires after the TTL: end/delete only those well inside it
        fresh_after = time.monotonic() - 0.5 * self.soak.ttl
        self.managed = [entry for entry in self.managed if entry[2] > fresh_after]
        if choice < 0.4 or not self.managed:
            sent = time.monotonic()
            body = orjson.dumps({"title": "soak", "metadata": {"worker": str(self.index)}})
            async with self.http.post(sessions, data=body, headers=self.headers(credential)) as response:
                payload = await response.read()
                if response.status != 201:
                    return f"create: HTTP {response.status}: {payload[:120]!r}"
                self.managed.append((credential, orjson.loads(payload)["id"], sent))
                return None
        if choice < 0.6:
            return await self.expect("GET", sessions + "?limit=20", None, self.headers(credential))
        owner, session_id, _ = self.managed.pop(self.rng.randrange(len(self.managed)))
        if choice < 0.8:
            return await self.expect("POST", f"{sessions}/{session_id}/end", None, self.headers(owner))
        return await self.expect("DELETE", f"{sessions}/{session_id}", None, self.headers(owner))

    async def expect(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], stream: bool = False
    ) -> str | None:
        """Send a request that should succeed; None when it did, else what went wrong."""
        async with self.http.request(method, url, data=body, headers=headers) as response:
            body = await response.read()
            if response.status not in (200, 201):
                return f"HTTP {response.status}: {body[:120]!r}"
            if stream and not body.endswith(STREAM_END):
                return f"stream without [DONE]: ...{body[-60:]!r}"
            return None

    async def disconnect(self, number: int) -> str | None:
        disconnect_kind = DISCONNECT_KINDS[number % len(DISCONNECT_KINDS)]
        hold_id = f"{self.prefix}-d{number}"
        with_session = number % 2 == 0
        record = self.soak.disconnects[hold_id] = Disconnect(disconnect_kind, with_session)
        if with_session:
            credential, session_id = self.session()
            headers = self.headers(credential, session_id)
        else:
            headers = self.headers(CREDENTIALS[0])
        body = chat(f"hold:{disconnect_kind}:{hold_id}", f"turn {number}", stream=disconnect_kind != "pending")
        url = self.base_url + "/v1/chat/completions"
        if disconnect_kind == "pending":
            try:
                async with asyncio.timeout(PENDING_ABORT_S):
                    async with self.http.post(url, data=body, headers=headers) as response:
                        await response.read()
            except TimeoutError:
                record.dropped = time.monotonic()  # the cancelled request closed its connection
                return None
            return f"pending: answered with HTTP {response.status} instead of being held"
        async with self.http.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                record.dropped = time.monotonic()
                return f"{disconnect_kind}: HTTP {response.status}: {(await response.read())[:120]!r}"
            await response.content.readany()
            record.dropped = time.monotonic()
            response.close()  # drops the connection: the client is gone
        return None


async def drive(soak: Soak, base_url: str, seed: int) -> None:
    connector = aiohttp.TCPConnector(limit=soak.workers)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        workers = [Worker(i, soak, http, base_url, seed) for i in range(soak.workers)]
        numbers = iter(range(soak.requests))

        async def loop(worker: Worker) -> None:
            for number in numbers:
                await worker.run(number)

        soak.started = time.monotonic()
        await asyncio.gather(*(loop(worker) for worker in workers))
        soak.stopped = time.monotonic()


async def upstream_holds(port: int) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/_soak/holds") as response,
    ):
        return cast(dict[str, object], orjson.loads(await response.read()))


async def wait_for(condition: Callable[[], Awaitable[bool]], deadline_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + deadline_s
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)
    return True


@dataclass
class Closing:
    """Disconnect-to-close figures per disconnect kind."""

    delays: dict[str, list[float]] = field(default_factory=dict)
    never_forwarded: Counter[str] = field(default_factory=Counter)
    not_closed: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    connections_at_end: int = 0

    def worst(self) -> float:
        return max((max(values) for values in self.delays.values() if values), default=math.nan)

    def measured(self) -> int:
        return sum(len(values) for values in self.delays.values())


def closing_figures(soak: Soak, holds: dict[str, object]) -> Closing:
    arrived = cast(dict[str, float], holds["arrived"])
    closed = cast(dict[str, float], holds["closed"])
    result = Closing(
        not_closed=list(cast(list[str], holds["holding"])),
        gave_up=list(cast(list[str], holds["gave_up"])),
        connections_at_end=cast(int, holds["connections"]),
    )
    for hold_id, record in soak.disconnects.items():
        label = f"{record.kind}, {'session' if record.with_session else 'stateless'}"
        if hold_id not in arrived:
            result.never_forwarded[label] += 1
            continue
        if hold_id not in closed or hold_id in result.gave_up or record.dropped is None:
            continue
        delay = closed[hold_id] - max(record.dropped, arrived[hold_id])
        result.delays.setdefault(label, []).append(max(delay, 0.0))
    return result


@dataclass
class Keys:
    secret: int = 0
    index_keys: int = 0
    index_entries: int = 0
    seq_keys: int = 0
    orphans: list[tuple[str, str, int]] = field(default_factory=list)  # (key, type, pttl ms)


async def scan_keys(url: str) -> Keys:
    import redis.asyncio as aioredis

    found = Keys()
    client = aioredis.Redis.from_url(url)
    try:
        async for raw in client.scan_iter(count=1000):
            key = raw.decode()
            if key == "sp:secret":
                found.secret += 1
            elif key.endswith(":index"):
                found.index_keys += 1
                found.index_entries += int(await client.zcard(key))
            elif key.endswith(":seq"):
                found.seq_keys += 1
            else:
                kind = await client.type(key)
                kind = kind.decode() if isinstance(kind, bytes) else kind
                found.orphans.append((key, kind, int(await client.pttl(key))))
    finally:
        await client.aclose()
    return found


async def list_every_scope(base_url: str) -> int:
    """One ``GET /v1/sessions`` per credential (each drops the dead index entries it passes); sessions listed."""
    listed = 0
    async with aiohttp.ClientSession() as http:
        for credential in CREDENTIALS:
            headers = {"authorization": f"Bearer {credential}"}
            async with http.get(base_url + "/v1/sessions?limit=20", headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"listing: HTTP {response.status}: {body[:200]!r}")
                listed += len(orjson.loads(body)["data"])
    return listed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def rss_slope_kib_per_1000(samples: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS over requests done, KiB per 1,000 requests."""
    if len(samples) < 2:
        return math.nan
    xs, ys = [float(x) for x, _ in samples], [float(y) for _, y in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else math.nan


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def report(
    soak: Soak,
    closing: Closing,
    keys: Keys,
    after_listing: tuple[int, Keys],
    rss_idle_kib: int,
    args: argparse.Namespace,
) -> tuple[str, bool]:
    """The markdown summary, and whether every hard expectation held."""
    warm, end = soak.rss_samples[0], soak.rss_samples[-1]
    growth = end[1] - warm[1]
    worst = closing.worst()
    close_ok = closing.measured() > 0 and worst <= CLOSE_TARGET_S and not closing.not_closed and not closing.gave_up
    orphans_ok = not keys.orphans
    rss_ok = growth < RSS_FLAT_MIB * 1024
    elapsed = soak.stopped - soak.started
    command = "python bench/soak.py" + (" --quick" if args.quick else "")
    mark = {True: "✓", False: "✗"}
    failed = sum(soak.errors.values())
    lines = [
        f"#### Soak: {soak.requests:,} mixed requests, {soak.workers} workers, Redis store, "
        f"session_ttl {args.ttl:g} s (`{command}`)",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        f"| requests / s (mixed) | {soak.requests / elapsed:.0f} ({elapsed:.1f} s) | — |",
        f"| failed requests (not counting the deliberate disconnects) | {failed} | — |",
        f"| latency p50 / p99 / max (completed requests) | {1000 * percentile(soak.latencies, 50):.1f} / "
        f"{1000 * percentile(soak.latencies, 99):.1f} / {1000 * max(soak.latencies, default=math.nan):.0f} ms | — |",
        f"| proxy RSS after warm-up ({warm[0]:,} requests) → end ({end[0]:,}) | {mib(warm[1])} → {mib(end[1])} "
        f"(growth {growth / 1024:+.1f} MiB; slope {rss_slope_kib_per_1000(soak.rss_samples):+.0f} KiB / 1,000 "
        f"requests) {mark[rss_ok]} | flat: growth < {RSS_FLAT_MIB:g} MiB |",
        f"| proxy RSS after the TTL wait (idle) | {mib(rss_idle_kib)} | — |",
        f"| client disconnects measured | {closing.measured()} of {len(soak.disconnects)} | > 0 |",
        f"| disconnect → upstream closed, max (p50) | {1000 * worst:.0f} ms "
        f"({1000 * percentile([d for v in closing.delays.values() for d in v], 50):.1f} ms) {mark[close_ok]} "
        f"| < {1000 * CLOSE_TARGET_S:.0f} ms |",
        f"| held upstream requests still open at the end | {len(closing.not_closed) + len(closing.gave_up)} "
        f"{mark[not closing.not_closed and not closing.gave_up]} | 0 |",
        f"| orphan keys in Redis {args.ttl + TTL_MARGIN_S:g} s after the last request | {len(keys.orphans)} "
        f"{mark[orphans_ok]} | 0 |",
        f"| listing-index entries pending lazy cleanup | {keys.index_entries} in {keys.index_keys} scope indexes | "
        "— (dropped by the next listing that reaches them) |",
        f"| … after one `GET /v1/sessions` per credential | {after_listing[1].index_entries} entries left, "
        f"{after_listing[0]} sessions listed | — |",
        "",
        "Notes:",
        "",
        "- request mix: " + ", ".join(f"{kind} {count}" for kind, count in sorted(soak.kinds.items())),
        "- disconnect → upstream closed by kind: "
        + "; ".join(
            f"{label}: n={len(values)}, max {1000 * max(values):.0f} ms"
            for label, values in sorted(closing.delays.items())
        ),
        f"- keys kept by design: {keys.secret} shared secret, {keys.index_keys} index + {keys.seq_keys} sequence keys "
        "(one each per credential scope; no TTL by design)",
        f"- upstream connections open at the end (the proxy's idle keep-alive pool): {closing.connections_at_end}",
    ]
    if closing.never_forwarded:
        lines.append(
            "- disconnects the proxy never forwarded (client gone before): "
            + ", ".join(f"{label} {count}" for label, count in sorted(closing.never_forwarded.items()))
        )
    if soak.error_examples:
        lines.append("- failures: " + "; ".join(soak.error_examples))
    for key, kind, pttl in keys.orphans[:5]:
        lines.append(f"  - orphan `{key}` ({kind}, pttl {pttl} ms)")
    for hold_id in (closing.not_closed + closing.gave_up)[:5]:
        lines.append(f"  - upstream request of {hold_id} still open after its client left")
    return "\n".join(lines), close_ok and orphans_ok


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="statefulproxy-soak-") as tmp, contextlib.ExitStack() as stack:
        log_dir = Path(tmp)
        started: list[servers.Server] = []
        try:
            redis, redis_server = await servers.start_redis(log_dir, stack)
            if redis_server is not None:
                started.append(redis_server)
            port = servers.free_port()
            argv = [sys.executable, str(BENCH / Path(__file__).name), "--serve-upstream", "--port", str(port)]
            upstream = await servers.start("upstream", argv, port, log_dir, lambda: servers.tcp_ready(port))
            started.append(upstream)
            config = log_dir / "proxy.yaml"
            config.write_text(f"session_ttl: {args.ttl}s\nlog_level: warning\n")
            proxy_port = servers.free_port()
            argv = [sys.executable, "-m", "statefulproxy", "--upstream", upstream.base_url, "--store", redis.url]
            argv += ["--port", str(proxy_port), "--config", str(config)]

            async def ready() -> bool:
                return await servers.http_status(proxy_port, "/readyz") == 200

            proxy = await servers.start("proxy", argv, proxy_port, log_dir, ready)
            started.append(proxy)
            assert proxy.process is not None
            soak = Soak(args.requests, args.workers, args.ttl, proxy.process.pid)
            warm_up = max(1, args.requests // 5)
            soak.checkpoints = {warm_up + (args.requests - warm_up) * i // 10 for i in range(11)}
            progress(f"{args.requests} requests, {args.workers} workers; proxy :{proxy_port} on {redis.how}")
            await drive(soak, proxy.base_url, args.seed)
            progress(f"load done in {soak.stopped - soak.started:.1f} s; waiting for held upstream requests to close")

            async def all_closed() -> bool:
                return not (await upstream_holds(port))["holding"]

            await wait_for(all_closed, 5.0)
            closing = closing_figures(soak, await upstream_holds(port))
            wait_s = args.ttl + TTL_MARGIN_S - (time.monotonic() - soak.stopped)
            progress(f"waiting {max(wait_s, 0):.1f} s for the sessions to pass their TTL")
            await asyncio.sleep(max(wait_s, 0.0))  # the TTL is wall-clock time: nothing to wait on but the clock
            keys = await scan_keys(redis.url)
            listed = await list_every_scope(proxy.base_url)
            after_listing = (listed, await scan_keys(redis.url))
            rss_idle = vm_rss_kib(proxy.process.pid)
            log_text = (log_dir / "proxy.log").read_text(errors="replace")
        except servers.Unavailable as exc:
            print(f"soak: a server did not start: {exc}", file=sys.stderr)
            return 2
        finally:
            for server in reversed(started):
                servers.stop(server)
            if args.keep_logs:
                kept = Path(tempfile.mkdtemp(prefix="statefulproxy-soak-logs-"))
                shutil.copytree(log_dir, kept, dirs_exist_ok=True)
                progress(f"logs kept in {kept}")
    text, ok = report(soak, closing, keys, after_listing, rss_idle, args)
    tracebacks = log_text.count("Traceback")
    if tracebacks:
        text += f"\n- the proxy logged {tracebacks} tracebacks (--keep-logs to read them)"
    print(text)
    if not ok:
        print(
            "FAIL: a hard expectation did not hold (orphan keys, or a disconnect not closed upstream in time)",
            file=sys.stderr,
        )
    return 0 if ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,500 requests, 16 workers (~15 s)")
    parser.add_argument("--requests", type=int, help="requests in all (default 20000, --quick 1500)")
    parser.add_argument("--workers", type=int, help="concurrent workers (default 32, --quick 16)")
    parser.add_argument("--ttl", type=float, default=5.0, help="the proxy's session_ttl in seconds (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix (default 1)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and print where")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.requests = args.requests or (1500 if args.quick else 20000)
    args.workers = args.workers or (16 if args.quick else 32)
    if args.requests < 100 or args.workers < 1 or args.ttl <= 0:
        parser.error("--requests must be >= 100, --workers >= 1, --ttl > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., object] = asyncio.run
    else:
        runner = uvloop.run
    if args.serve_upstream:
        with contextlib.suppress(KeyboardInterrupt):
            runner(serve_upstream(args.port))
        return 0
    return cast(int, runner(main_async(args)))


if __name__ == "__main__":
    sys.exit(main())
