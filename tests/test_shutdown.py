"""Graceful shutdown of a real ``python -m statefulproxy`` process (CONTRACT.md section 7, Shutdown).

A stream is in flight from a scripted upstream that holds its reply; the process gets SIGTERM.
``/readyz`` must turn 503 and new session turns get 503 at once, while the stream goes on. Within
``shutdown_timeout`` the turn finishes and is recorded; past it, it is cut and not recorded. Either
way the process exits 0. The store is Redis, so what was recorded is read back through a second
proxy after the first one is gone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from harness import upstream as reply
from harness.proxy_process import ProxyProcess, clean_environ, proxy_process
from harness.servers import serve
from harness.upstream import ScriptedUpstream
from statefulproxy import ProxyApp, settings_from_mapping

CHAT = "/v1/chat/completions"
KEY = {"authorization": "Bearer sk-drain"}
DRAINING_LINE = "SIGTERM: shutting down"


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@contextlib.contextmanager
def running(redis_url: str, prefix: str, **settings: str) -> Iterator[tuple[str, ProxyProcess, ScriptedUpstream]]:
    upstream = ScriptedUpstream()
    named = {f"STATEFULPROXY_{key.upper()}": value for key, value in settings.items()}
    env = clean_environ(STATEFULPROXY_STORE_PREFIX=prefix, **named)
    with (
        serve(upstream, loop="uvloop") as upstream_url,
        proxy_process(["--upstream", upstream_url, "--store", redis_url], env) as (url, proxy),
    ):
        yield url, proxy, upstream


def recorded(redis_url: str, prefix: str, session_id: str) -> list[dict[str, Any]]:
    """The session's messages as another proxy on the same store reads them."""
    settings = settings_from_mapping(
        {"upstream": "http://127.0.0.1:9", "store": redis_url, "store_prefix": prefix}, source="test"
    )
    with serve(ProxyApp(settings)) as url, httpx2.Client(base_url=url, headers=KEY, timeout=10) as http:
        response = http.get(f"/v1/sessions/{session_id}/messages")
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data


def test_sigterm_refuses_new_turns_and_lets_the_stream_in_flight_finish_and_be_recorded(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with running(redis_url, prefix) as (url, proxy, upstream):
        release = threading.Event()
        upstream.push(reply.hold(release, reply=reply.text("the whole answer, after the signal")))
        body = {"model": "m", "stream": True, "messages": [user("hello")]}
        with (
            httpx2.Client(base_url=url, timeout=10) as http,
            http.stream("POST", CHAT, headers={**KEY, "session-id": "drain-1"}, json=body) as response,
        ):
            assert response.status_code == 200
            chunks = response.iter_raw()
            received = next(chunks)  # the turn is in flight, its reply held upstream
            proxy.send_signal(signal.SIGTERM)
            proxy.wait_for(DRAINING_LINE)
            with httpx2.Client(base_url=url, timeout=10) as other:
                ready = other.get("/readyz")
                assert (ready.status_code, ready.json()["error"]["code"]) == (503, "shutting_down")
                refused = other.post(CHAT, headers={**KEY, "session-id": "drain-2"}, json=body)
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "shutting_down"
                assert refused.headers["connection"] == "close"  # a retry reconnects, to another instance
                anthropic = other.post(
                    "/v1/messages",
                    headers={"x-api-key": "sk-drain", "session-id": "drain-3"},
                    json={"model": "m", "max_tokens": 5, "messages": [user("hi")]},
                )
                assert anthropic.status_code == 503
                assert anthropic.json()["type"] == "error"  # the dialect's own error shape
                assert anthropic.json()["error"]["type"] == "overloaded_error"
                # stateless traffic still flows while the turns drain
                upstream.push(reply.text("stateless"))
                assert other.post(CHAT, headers=KEY, json={"model": "m", "messages": [user("x")]}).status_code == 200
            assert len(upstream.chat_requests) == 2  # the refused turns never reached the upstream
            release.set()
            received += b"".join(chunks)
        assert received.rstrip().endswith(b"data: [DONE]")
        assert proxy.wait() == 0
        output = proxy.output
    assert "ERROR" not in output, output
    messages = recorded(redis_url, prefix, "drain-1")
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "hello"),
        ("assistant", "the whole answer, after the signal"),
    ]


def test_a_turn_still_running_at_shutdown_timeout_is_cut_and_not_recorded(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with running(redis_url, prefix, shutdown_timeout="1s") as (url, proxy, upstream):
        headers = {**KEY, "session-id": "cut-1"}
        upstream.push(reply.text("first answer"))
        with httpx2.Client(base_url=url, timeout=10) as http:
            assert http.post(CHAT, headers=headers, json={"model": "m", "messages": [user("one")]}).status_code == 200
            release = threading.Event()
            upstream.push(reply.hold(release, reply=reply.text("never finished " * 5)))
            body = {"model": "m", "stream": True, "messages": [user("two")]}
            with http.stream("POST", CHAT, headers=headers, json=body) as response:
                chunks = response.iter_raw()
                received = next(chunks)
                proxy.send_signal(signal.SIGTERM)
                proxy.wait_for(DRAINING_LINE)
                # the read ends when the proxy cuts the turn, a second later: an aborted response
                with pytest.raises(httpx2.HTTPError):
                    received += b"".join(chunks)
        assert b"[DONE]" not in received
        assert proxy.wait() == 0
        release.set()
        output = proxy.output
    assert "shutdown_timeout (1 s) passed: cutting 1 request(s)" in output
    assert "ERROR" not in output, output
    assert "Traceback" not in output, output
    messages = recorded(redis_url, prefix, "cut-1")
    assert [m["content"] for m in messages] == ["one", "first answer"]


def test_a_second_signal_cuts_at_once(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with running(redis_url, prefix) as (url, proxy, upstream):  # shutdown_timeout: the default 30 s
        release = threading.Event()
        upstream.push(reply.hold(release, reply=reply.text("never finished " * 5)))
        body = {"model": "m", "stream": True, "messages": [user("hello")]}
        with (
            httpx2.Client(base_url=url, timeout=10) as http,
            http.stream("POST", CHAT, headers={**KEY, "session-id": "hurry-1"}, json=body) as response,
        ):
            chunks = response.iter_raw()
            next(chunks)
            proxy.send_signal(signal.SIGTERM)
            proxy.wait_for(DRAINING_LINE)
            proxy.send_signal(signal.SIGINT)
            with pytest.raises(httpx2.HTTPError):  # long before the 30 s, and within the client's 10 s
                b"".join(chunks)
        assert proxy.wait() == 0
        release.set()
        assert "a second signal: cutting what still runs" in proxy.output
