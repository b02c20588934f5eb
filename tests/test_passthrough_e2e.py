"""Everything that is not a session chat request: forwarded as sent, relayed as answered."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest

from harness import upstream as reply
from harness.stack import Stack, running_stack
from harness.upstream import Exchange, stream_bytes_payload


@pytest.fixture
def stack() -> Iterator[Stack]:
    with running_stack("memory://") as running:
        yield running


def test_paths_queries_and_headers_reach_the_upstream_as_sent(stack: Stack) -> None:
    with stack.http() as http:
        response = http.get(
            "/openai/deployments/d%2F1/odd%20path",
            params={"api-version": "2024-10-21", "q": "a b&c"},
            headers={"x-custom": "kept", "keep-alive": "timeout=5", "x-named": "dropped", "connection": "x-named"},
        )
    assert response.status_code == 200
    received = stack.upstream.received[-1]
    assert received.raw_path == b"/openai/deployments/d%2F1/odd%20path"
    assert received.query_string == b"api-version=2024-10-21&q=a+b%26c"
    assert received.header("x-custom") == "kept"
    assert received.header("authorization") == "Bearer key-1"
    for hop_by_hop in ("keep-alive", "x-named", "te", "proxy-authorization"):
        assert received.header(hop_by_hop) is None
    assert received.header("host") == stack.upstream_url.removeprefix("http://")
    # aiohttp adds nothing the client did not send
    assert received.header("user-agent") == response.request.headers["user-agent"]
    assert received.header("accept-encoding") == response.request.headers["accept-encoding"]


def test_upstream_prefix_is_kept() -> None:
    with running_stack("memory://") as base:
        prefixed = base.upstream_url + "/api"
        with running_stack("memory://", upstream=prefixed) as stack, stack.http() as http:
            http.get("/v1/models")
        # the inner stack's own upstream is unused; the request went to base's upstream under /api
        assert base.upstream.received[-1].raw_path == b"/api/v1/models"


def test_request_and_response_bodies_stream_byte_exact(stack: Stack) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    with stack.http() as http:
        echoed = http.post("/echo-bytes", content=pieces(), headers={"content-type": "application/octet-stream"})
        streamed = http.get("/stream-bytes", params={"n": 64, "size": 1000})
    assert echoed.content == payload
    assert stack.upstream.received[-2].header("transfer-encoding") == "chunked"
    assert streamed.content == stream_bytes_payload(64, 1000)


def test_responses_are_relayed_without_buffering(stack: Stack) -> None:
    release = threading.Event()
    stack.upstream.push(reply.hold(release, after_chunks=1))
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with stack.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        # the first event arrived while the upstream is still holding the rest
        assert first.startswith(b"data: ")
        assert not release.is_set()
        release.set()
        rest = b"".join(chunks)
    assert rest.endswith(b"data: [DONE]\n\n")


def test_upstream_headers_and_status_come_back(stack: Stack) -> None:
    stack.upstream.push(reply.error(418, {"teapot": True}, headers=[("x-upstream", "yes")]))
    with stack.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 418
    assert response.json() == {"teapot": True}
    assert response.headers["x-upstream"] == "yes"
    assert response.headers["x-request-id"].startswith("req-")


def test_client_disconnect_cancels_the_upstream_request(stack: Stack) -> None:
    release = threading.Event()
    stack.upstream.push(reply.hold(release, after_chunks=1))
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    try:
        with stack.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
            next(response.iter_bytes())
            closed_at = time.monotonic()
        assert stack.upstream.disconnected.wait(timeout=2.0)
        assert stack.upstream.disconnected_at is not None
        assert stack.upstream.disconnected_at - closed_at < 1.0
    finally:
        release.set()


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/other"])
def test_content_length_with_transfer_encoding_is_refused(stack: Stack, path: bytes) -> None:
    smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"POST " + path + b" HTTP/1.1\r\nHost: proxy\r\nContent-Length: " + str(len(smuggled)).encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n" + smuggled
    )
    answer = raw_request(stack.url, request)
    assert answer.startswith(b"HTTP/1.1 400")
    assert stack.upstream.received == []


class SlowStart(reply.Reply):
    """An upstream that takes its time before it answers at all."""

    async def respond(self, exchange: Exchange) -> None:
        await asyncio.sleep(3)
        await exchange.start(200, [("content-type", "application/json")])
        await exchange.body(b"{}", more=False)


def test_upstream_timeout_is_504_and_unreachable_is_502() -> None:
    with running_stack("memory://", read_timeout=0.2) as stack, stack.http() as http:
        stack.upstream.push(SlowStart(), path="/slow")
        timed_out = http.get("/slow")
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "timeout"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with running_stack("memory://", upstream=f"http://127.0.0.1:{closed_port}") as stack, stack.http() as http:
        unreachable = http.get("/v1/models")
    assert unreachable.status_code == 502
    assert set(unreachable.json()["error"]) == {"message", "type", "param", "code"}


def test_health_and_readiness(stack: Stack) -> None:
    with stack.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
    assert stack.upstream.received == []


def test_readiness_fails_while_the_store_is_down() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with running_stack(f"redis://127.0.0.1:{closed_port}/0") as stack, stack.http() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 503
        # stateless traffic keeps flowing; a session request is refused rather than sent without history
        assert http.get("/v1/models").status_code == 200
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        refused = http.post("/v1/chat/completions", json=body, headers={"session-id": "s"})
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "store_error"
        assert stack.upstream.chat_requests == []


def test_oversized_chat_body_is_413() -> None:
    with running_stack("memory://", max_body_size=1024) as stack, stack.http() as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * 2048}]}
        response = http.post("/v1/chat/completions", json=body, headers={"session-id": "big"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert http.get("/v1/sessions/big").status_code == 404
    assert stack.upstream.received == []


def test_http_client_sees_the_upstream_gzip_bytes(stack: Stack) -> None:
    stack.upstream.push(reply.gzip_json({"hello": "world"}), path="/gz")
    with stack.http() as http, http.stream("GET", "/gz", headers={"accept-encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw)) == {"hello": "world"}


def test_httpx_against_proxy_uses_keep_alive(stack: Stack) -> None:
    with httpx2.Client(base_url=stack.url) as http:
        for _ in range(3):
            assert http.get("/v1/models").status_code == 200
    assert len(stack.upstream.received) == 3


def test_hop_by_hop_response_headers_are_stripped(stack: Stack) -> None:
    headers = [
        ("content-type", "text/plain"),
        ("x-kept", "1"),
        ("x-named", "2"),
        ("connection", "x-named"),
        ("keep-alive", "timeout=99"),
        ("trailer", "x-checksum"),
    ]
    stack.upstream.push(reply.raw(200, headers, [b"hello ", b"world"]), path="/hop")
    with stack.http() as http:
        response = http.get("/hop")
    assert response.content == b"hello world"
    assert response.headers["x-kept"] == "1"
    for name in ("x-named", "keep-alive", "trailer"):
        assert name not in response.headers
