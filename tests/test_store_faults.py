"""Store faults end to end: a real redis-server stopped and restarted under a running proxy, and a TCP proxy
in front of Redis that adds latency, blackholes or cuts, and clients that disconnect mid-request.

The proxy runs under uvicorn in front of the scripted upstream (harness.stack); nothing is mocked.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson
import pytest

from harness import upstream as reply
from harness.redis_process import RedisProcess
from harness.servers import serve
from harness.stack import Stack, running_stack
from harness.tcp_proxy import TcpProxy
from harness.upstream import ScriptedUpstream
from statefulproxy import ProxyApp, settings_from_mapping
from statefulproxy.stores import store_from_url

RECOVERY_DEADLINE = 10.0
STORE_TIMEOUT = 0.5  # store_timeout of the blackhole test (the default is 5 s)
WATCHDOG_SLACK = STORE_TIMEOUT / 4  # the RespClient checks for overdue replies every timeout / 4


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def chat(http: httpx2.Client, text: str, session_id: str | None = None, **body: Any) -> httpx2.Response:
    headers = {"session-id": session_id} if session_id is not None else {}
    return http.post("/v1/chat/completions", json={"model": "m", "messages": [user(text)], **body}, headers=headers)


def history(http: httpx2.Client, session_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    return [{"role": m["role"], "content": m["content"]} for m in response.json()["data"]]


def assert_store_error(response: httpx2.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "store_error"
    assert isinstance(error["message"], str)
    assert error["message"]
    assert set(error) >= {"message", "type", "param", "code"}


def wait_ready(http: httpx2.Client, deadline: float = RECOVERY_DEADLINE) -> float:
    """Poll /readyz until it answers 200; return how long that took."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < deadline:
        if http.get("/readyz").status_code == 200:
            return elapsed
        time.sleep(0.01)  # polling interval, not synchronisation: the loop waits on readiness
    raise AssertionError(f"/readyz not 200 within {deadline} s")


# 1. Redis stopped mid-run


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_redis_stopped_fails_session_requests_only_and_recovers_on_restart(stop_signal: signal.Signals) -> None:
    with RedisProcess() as redis, running_stack(redis.url) as stack, stack.http() as http:
        assert chat(http, "one", "before").status_code == 200
        assert http.get("/readyz").status_code == 200

        # Redis goes away while a turn is upstream: the reply cannot be recorded, so the client
        # must not take it for a recorded one
        release = threading.Event()
        stack.upstream.push(reply.hold(release))
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(chat, http, "held", "before")
            stack.upstream.wait_for_requests(2)
            redis.stop(stop_signal)
            release.set()
            assert_store_error(in_flight.result())

        forwarded = len(stack.upstream.chat_requests)
        assert_store_error(chat(http, "two", "before"))  # a session with history
        assert_store_error(chat(http, "first", "unknown"))  # a client-named session not seen yet
        assert_store_error(chat(http, "three", store=True, metadata={"session_id": "before"}))
        stream = chat(http, "four", "before", stream=True)
        assert_store_error(stream)
        assert len(stack.upstream.chat_requests) == forwarded, "a session request was forwarded without history"
        assert_store_error(http.get("/readyz"))
        assert http.get("/healthz").status_code == 200
        assert_store_error(http.get("/v1/sessions/before"))

        # stateless traffic keeps flowing
        assert http.get("/v1/models").status_code == 200
        stateless = chat(http, "no session")
        assert stateless.status_code == 200, stateless.text
        assert stack.upstream.chat_requests[-1].json["messages"] == [user("no session")]

        # back on the same port, same proxy: recovery without a restart (a restarted Redis
        # without persistence is empty, so the old session is gone)
        redis.start()
        recovery = wait_ready(http)
        assert recovery < 1.0, f"/readyz took {recovery:.3f} s after Redis answered PING"
        print(f"redis restarted ({stop_signal.name}): /readyz 200 {recovery * 1000:.1f} ms after Redis answered PING")
        again = chat(http, "again", "after")
        more = chat(http, "more", "after")
        assert again.status_code == more.status_code == 200, (again.text, more.text)
        first, second = (response.json()["choices"][0]["message"]["content"] for response in (again, more))
        assert stack.upstream.chat_requests[-1].json["messages"] == [user("again"), assistant(first), user("more")]
        assert history(http, "after") == [user("again"), assistant(first), user("more"), assistant(second)]


def test_a_lease_left_by_a_redis_crash_is_released_when_redis_returns() -> None:
    # The turn's lease is in the AOF when Redis dies; its commit and release fail. Once Redis is
    # back the proxy releases it, instead of the session staying busy for the rest of lease_ttl.
    lease_ttl = 30.0
    with (
        RedisProcess(persistent=True) as redis,
        running_stack(redis.url, lease_ttl=lease_ttl) as stack,
        stack.http() as http,
    ):
        assert chat(http, "one", "crash").status_code == 200
        release = threading.Event()
        stack.upstream.push(reply.hold(release))
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(chat, http, "held", "crash")
            stack.upstream.wait_for_requests(2)
            redis.stop(signal.SIGKILL)
            release.set()
            assert_store_error(in_flight.result())
        redis.start()
        wait_ready(http)
        started = time.monotonic()
        again = chat(http, "two", "crash")  # on_busy: wait, for as long as the lease is held
        waited = time.monotonic() - started
        assert again.status_code == 200, again.text
        assert waited < 5.0, f"the session stayed busy {waited:.2f} s after Redis returned (lease_ttl {lease_ttl} s)"
        assert history(http, "crash") == [user("one"), assistant("reply 1"), user("two"), assistant("reply 3")]
        print(f"lease of a crashed turn released {waited:.3f} s after Redis returned (lease_ttl {lease_ttl:g} s)")


# 2. on_store_error: passthrough


def test_passthrough_on_store_error_forwards_without_history_and_records_nothing() -> None:
    with (
        RedisProcess(persistent=True) as redis,
        running_stack(redis.url, on_store_error="passthrough") as stack,
        stack.http() as http,
    ):
        assert chat(http, "one", "kept").status_code == 200
        redis.stop(signal.SIGKILL)  # appendfsync always: the recorded turn survives

        by_header = chat(http, "two", "kept")
        by_body = chat(http, "three", store=True, metadata={"session_id": "kept", "tag": "x"})
        assert by_header.status_code == 200, by_header.text
        assert by_body.status_code == 200, by_body.text
        assert by_header.json()["choices"][0]["message"]["content"] == "reply 2"
        sent_by_header, sent_by_body = stack.upstream.chat_requests[-2:]
        assert sent_by_header.json["messages"] == [user("two")]
        assert sent_by_header.header("session-id") is None
        assert sent_by_body.json["messages"] == [user("three")]
        assert "store" not in sent_by_body.json
        assert "session_id" not in (sent_by_body.json.get("metadata") or {})

        redis.start()
        wait_ready(http)
        assert history(http, "kept") == [user("one"), assistant("reply 1")]


def test_passthrough_on_store_error_answers_a_new_session_turn_unrecorded() -> None:
    with RedisProcess() as redis, running_stack(redis.url, on_store_error="passthrough") as stack, stack.http() as http:
        assert chat(http, "warm", "warm").status_code == 200  # the scope secret is known from here on
        redis.stop(signal.SIGKILL)
        minted = chat(http, "new", store=True)
        assert minted.status_code == 200, minted.text
        assert stack.upstream.chat_requests[-1].json["messages"] == [user("new")]
        assert "store" not in stack.upstream.chat_requests[-1].json


# 3. slow and blackholed Redis


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[TcpProxy]:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with TcpProxy(host, int(port)) as proxy:
        yield proxy


def proxied_url(proxy: TcpProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0"


def test_slow_redis_still_serves_sessions(redis_proxy: TcpProxy) -> None:
    with running_stack(proxied_url(redis_proxy)) as stack, stack.http() as http:
        assert chat(http, "warm", "slow").status_code == 200
        redis_proxy.set_latency(0.1)  # 200 ms per Redis round trip
        started = time.monotonic()
        response = chat(http, "one more", "slow")
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        # at least a load before forwarding and a commit after: two round trips
        assert elapsed >= 0.4, f"a session turn took {elapsed:.3f} s through a 200 ms round trip"
        assert stack.upstream.chat_requests[-1].json["messages"] == [
            user("warm"),
            assistant("reply 1"),
            user("one more"),
        ]
        assert http.get("/readyz").status_code == 200
        assert chat(http, "stateless").status_code == 200


def test_blackholed_redis_fails_within_the_store_timeout_and_recovers(redis_proxy: TcpProxy) -> None:
    lease_ttl = 1.0
    url = proxied_url(redis_proxy)
    with running_stack(url, lease_ttl=lease_ttl, store_timeout=STORE_TIMEOUT) as stack, stack.http() as http:
        assert chat(http, "one", "dark").status_code == 200
        forwarded = len(stack.upstream.chat_requests)
        redis_proxy.blackhole()

        def timed(request: Callable[[], httpx2.Response]) -> tuple[httpx2.Response, float]:
            started = time.monotonic()
            return request(), time.monotonic() - started

        with ThreadPoolExecutor(2) as pool, stack.http() as other:
            session = pool.submit(timed, lambda: chat(http, "two", "dark"))
            ready = pool.submit(timed, lambda: other.get("/readyz"))
            (session_response, session_elapsed), (ready_response, ready_elapsed) = session.result(), ready.result()
        limit = STORE_TIMEOUT + WATCHDOG_SLACK + 1.5
        assert_store_error(session_response)
        assert_store_error(ready_response)
        # failed by the store timeout, not by anything sooner
        assert STORE_TIMEOUT <= session_elapsed < limit, f"session request took {session_elapsed:.2f} s"
        assert STORE_TIMEOUT <= ready_elapsed < limit, f"/readyz took {ready_elapsed:.2f} s"
        assert len(stack.upstream.chat_requests) == forwarded
        assert http.get("/v1/models").status_code == 200  # stateless traffic flows meanwhile

        redis_proxy.resume()
        resumed = time.monotonic()
        ready_after = wait_ready(http)
        fresh = chat(http, "hello", "fresh")
        fresh_after = time.monotonic() - resumed
        assert fresh.status_code == 200, fresh.text
        # The load of "two", held by the blackhole, reaches Redis on resume and takes the session's
        # lease for a turn that has already failed: "dark" is busy until that lease expires.
        again = chat(http, "three", "dark")
        dark_after = time.monotonic() - resumed
        assert again.status_code == 200, again.text
        assert dark_after < lease_ttl + 2.0
        assert stack.upstream.chat_requests[-1].json["messages"] == [user("one"), assistant("reply 1"), user("three")]
        print(
            f"blackhole: session 503 after {session_elapsed:.2f} s, /readyz 503 after {ready_elapsed:.2f} s; "
            f"after resume: /readyz 200 after {ready_after:.3f} s, new session after {fresh_after:.3f} s, "
            f"the blackholed session after {dark_after:.3f} s (lease_ttl {lease_ttl} s)"
        )


# 4. cancellation safety


class InFlight:
    """Wraps an ASGI app and counts its HTTP requests still running, per ``session-id`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._counts: Counter[str] = Counter()
        self._changed = threading.Condition()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = dict(scope["headers"]).get(b"session-id", b"").decode()
        with self._changed:
            self._counts[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._changed:
                self._counts[key] -= 1
                self._changed.notify_all()

    def wait_idle(self, key: str, timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._counts[key] == 0, timeout):
                raise AssertionError(f"requests on {key!r} still running after {timeout} s")


@contextlib.contextmanager
def tracked_stack(store_url: str) -> Iterator[tuple[Stack, InFlight]]:
    """running_stack, with the proxy app wrapped in an InFlight counter."""
    upstream = ScriptedUpstream()
    with serve(upstream) as upstream_url:
        settings = settings_from_mapping({"upstream": upstream_url, "store": store_url}, source="test")
        store = store_from_url(store_url, ttl=settings.session_ttl, key_prefix=f"t{uuid.uuid4().hex[:12]}")
        tracker = InFlight(ProxyApp(settings, store=store))
        with serve(tracker, loop="uvloop") as url:
            yield Stack(upstream, upstream_url, url), tracker


@dataclass
class Outcome:
    session_id: str
    sent: list[str] = field(default_factory=list)  # user texts, in round order
    completed: dict[str, str] = field(default_factory=dict)  # user text -> the reply the client received
    abandoned: list[str] = field(default_factory=list)  # the client left before any byte of the reply


def raw_request(port: int, session_id: str, text: str, stream: bool) -> bytes:
    body = orjson.dumps({"model": "m", "messages": [user(text)], "stream": stream})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer key-1\r\n"
        f"session-id: {session_id}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def reply_text(response: httpx2.Response, stream: bool) -> str:
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])


SESSIONS = 16
ROUNDS = 4


@pytest.mark.slow
def test_disconnecting_clients_never_cross_replies_between_sessions(redis_proxy: TcpProxy) -> None:
    rng = random.Random(4)
    # per request: leave early (half of them) and if so after how long a client-side timeout
    plans = [[(rng.random() < 0.5, rng.uniform(0.0, 0.2)) for _ in range(ROUNDS)] for _ in range(SESSIONS)]
    with tracked_stack(proxied_url(redis_proxy)) as (stack, tracker):
        port = int(stack.url.rsplit(":", 1)[1])
        redis_proxy.set_latency(0.03)

        def client(index: int) -> Outcome:
            outcome = Outcome(f"cx-{index}")
            with stack.http() as http:
                for round_number, (leave, patience) in enumerate(plans[index]):
                    text = f"{outcome.session_id}:r{round_number}"
                    stream = round_number % 2 == 1
                    outcome.sent.append(text)
                    if not leave:
                        response = chat(http, text, outcome.session_id, stream=stream)
                        assert response.status_code == 200, response.text
                        assert response.headers["x-session-id"] == outcome.session_id
                        outcome.completed[text] = reply_text(response, stream)
                        continue
                    with socket.create_connection(("127.0.0.1", port)) as sock:
                        sock.sendall(raw_request(port, outcome.session_id, text, stream))
                        sock.settimeout(patience)  # the client's own timeout: it gives up and closes
                        try:
                            first = sock.recv(1)
                        except TimeoutError:
                            first = b""
                    if not first:
                        outcome.abandoned.append(text)
                    # one turn at a time per session, whatever the proxy does about leases
                    tracker.wait_idle(outcome.session_id)
            return outcome

        with ThreadPoolExecutor(SESSIONS) as pool:
            outcomes = list(pool.map(client, range(SESSIONS)))

        redis_proxy.set_latency(0)  # the checks need no fault, only time
        chat_requests = stack.upstream.chat_requests
        by_text = {request.json["messages"][-1]["content"]: request for request in chat_requests}
        with stack.http() as http:
            stored_by_session = {outcome.session_id: history(http, outcome.session_id) for outcome in outcomes}
            for outcome in outcomes:
                stored = stored_by_session[outcome.session_id]
                assert [m["role"] for m in stored] == ["user", "assistant"] * (len(stored) // 2)
                users = [m["content"] for m in stored[::2]]
                # exactly its own turns, in order, every completed one among them
                assert users == [text for text in outcome.sent if text in users], (outcome.session_id, users)
                assert set(outcome.completed) <= set(users), (outcome.session_id, users)
                for question, answer in zip(stored[::2], stored[1::2], strict=True):
                    number = int(answer["content"].removeprefix("reply "))
                    asked = chat_requests[number - 1].json["messages"][-1]["content"]
                    assert asked == question["content"], f"{outcome.session_id}: reply {number} answered {asked}"
                for text, received in outcome.completed.items():
                    assert stored[2 * users.index(text) + 1]["content"] == received
                # every forwarded turn carried exactly the turns stored before it, and nothing else
                for text in outcome.sent:
                    if text in by_text:
                        forwarded = by_text[text].json["messages"]
                        assert forwarded == [*turns_before(stored, text), user(text)], (text, forwarded)

            # a final round, one session after another, sees exactly its own history
            for outcome in outcomes:
                before = stored_by_session[outcome.session_id]
                text = f"{outcome.session_id}:final"
                response = chat(http, text, outcome.session_id)
                assert response.status_code == 200, response.text
                assert stack.upstream.chat_requests[-1].json["messages"] == [*before, user(text)]
                assert history(http, outcome.session_id) == [
                    *before,
                    user(text),
                    assistant(reply_text(response, False)),
                ]

    abandoned = sum(len(outcome.abandoned) for outcome in outcomes)
    never_forwarded = sum(1 for outcome in outcomes for text in outcome.abandoned if text not in by_text)
    print(
        f"requests {SESSIONS * ROUNDS}, abandoned before any reply byte {abandoned}, never forwarded {never_forwarded}"
    )
    assert abandoned >= SESSIONS * ROUNDS // 8, "too few clients left mid-request for the test to mean anything"


def turns_before(stored: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The stored (user, assistant) pairs of the rounds before ``text``'s round."""

    def round_of(user_text: str) -> int:
        return int(user_text.rsplit(":r", 1)[1])

    pairs = zip(stored[::2], stored[1::2], strict=True)
    return [
        m for question, answer in pairs if round_of(question["content"]) < round_of(text) for m in (question, answer)
    ]
