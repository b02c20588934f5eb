"""Slow clients cannot hold connections (issue 10, defect 8): client_header_timeout and
client_body_timeout, on the real CLI (uvicorn with the proxy's protocol), over raw sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest

from harness.servers import serve
from harness.upstream import ScriptedUpstream

TIMEOUT = 0.4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[str, int]]:
    with serve(ScriptedUpstream(), loop="uvloop") as upstream_url:
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("STATEFULPROXY_")}
        env |= {
            "STATEFULPROXY_CLIENT_HEADER_TIMEOUT": f"{TIMEOUT}s",
            "STATEFULPROXY_CLIENT_BODY_TIMEOUT": f"{TIMEOUT}s",
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "statefulproxy",
                "--upstream",
                upstream_url,
                "--port",
                str(port),
                "--log-level",
                "error",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, "the proxy exited"
                with contextlib.suppress(httpx2.TransportError):
                    if httpx2.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.05)  # polling the process until it listens
            yield f"http://127.0.0.1:{port}", port
        finally:
            process.terminate()
            process.wait(timeout=10)


def closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock``, and what it sent before."""
    sock.settimeout(limit)
    started, received = time.monotonic(), b""
    while chunk := sock.recv(4096):
        received += chunk
    return time.monotonic() - started, received


def test_half_sent_headers_get_a_408_and_the_connection_closes(proxy: tuple[str, int]) -> None:
    _, port = proxy
    connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        for sock in connections:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")  # and nothing more
        for sock in connections:
            waited, received = closed_after(sock, 10)
            assert waited < TIMEOUT + 2
            assert received.startswith(b"HTTP/1.1 408")
    finally:
        for sock in connections:
            sock.close()


def test_a_body_that_stops_coming_closes_the_connection(proxy: tuple[str, int]) -> None:
    _, port = proxy
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"model"')
        waited, _ = closed_after(sock, 10)
    assert waited < TIMEOUT + 2


def test_an_idle_connection_between_requests_and_normal_requests_are_untouched(proxy: tuple[str, int]) -> None:
    url, _ = proxy
    with httpx2.Client(base_url=url, timeout=10) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        assert http.post("/v1/chat/completions", json=body).status_code == 200
