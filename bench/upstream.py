"""A fast scripted OpenAI-compatible upstream for the benchmark.

A raw asyncio.Protocol HTTP/1.1 server (httptools parser, uvloop when installed) so that the
upstream is never the bottleneck:

- ``POST .../chat/completions`` answers a fixed ``chat.completion`` JSON, or, for ``"stream": true``,
  an SSE stream of 20 ``chat.completion.chunk`` events and ``data: [DONE]``, sent chunked in 4 writes
  on successive loop iterations (as a real provider flushes its stream in bursts);
- anything else answers 200 with a small JSON body.

Keep-alive is honoured; responses are answered in request order (pipelining safe).

    python bench/upstream.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque
from typing import cast

import httptools
import orjson

STREAM_WRITES = 4

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    }
)
OTHER = b'{"object":"list","data":[]}'


def _chunk_event(delta: dict[str, object], finish_reason: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _stream_writes() -> list[bytes]:
    """The SSE body as HTTP/1.1 chunks: 20 events + [DONE], grouped into STREAM_WRITES writes."""
    words = [f"word{i}" for i in range(18)]
    events = [_chunk_event({"role": "assistant", "content": ""}, None)]
    events += [_chunk_event({"content": w + " "}, None) for w in words]
    events.append(_chunk_event({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    per_write = -(-len(events) // STREAM_WRITES)
    groups = [b"".join(events[i : i + per_write]) for i in range(0, len(events), per_write)]
    writes = [b"%x\r\n%b\r\n" % (len(g), g) for g in groups]
    writes[-1] += b"0\r\n\r\n"
    return writes


STREAM_BODY_WRITES = _stream_writes()


def _head(status: bytes, content_type: bytes, keep_alive: bool, length: int | None) -> bytes:
    lines = [b"HTTP/1.1 " + status, b"content-type: " + content_type]
    if length is None:
        lines.append(b"transfer-encoding: chunked")
        lines.append(b"cache-control: no-cache")
    else:
        lines.append(b"content-length: %d" % length)
    lines.append(b"connection: keep-alive" if keep_alive else b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parse requests, answer them in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.pending: deque[tuple[bytes, bytes, bytes, bool]] = deque()
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_head(b"400 Bad Request", b"text/plain", False, 0))
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.pending.append((method, self.url, b"".join(self.body), self.parser.should_keep_alive()))
        if not self.streaming:
            self._answer_pending()

    def _answer_pending(self) -> None:
        while self.pending and not self.streaming and self.transport is not None:
            method, url, body, keep_alive = self.pending.popleft()
            path = url.split(b"?", 1)[0]
            if method == b"POST" and path.endswith(b"/chat/completions"):
                if _wants_stream(body):
                    self._start_stream(keep_alive)
                    return
                self._write(_head(b"200 OK", b"application/json", keep_alive, len(COMPLETION)) + COMPLETION)
            else:
                self._write(_head(b"200 OK", b"application/json", keep_alive, len(OTHER)) + OTHER)
            if not keep_alive and self.transport is not None:
                self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _start_stream(self, keep_alive: bool) -> None:
        self.streaming = True
        self._write(_head(b"200 OK", b"text/event-stream", keep_alive, None))
        asyncio.get_running_loop().call_soon(self._stream_step, 0, keep_alive)

    def _stream_step(self, index: int, keep_alive: bool) -> None:
        self._write(STREAM_BODY_WRITES[index])
        if index + 1 < len(STREAM_BODY_WRITES):
            asyncio.get_running_loop().call_soon(self._stream_step, index + 1, keep_alive)
            return
        self.streaming = False
        if not keep_alive:
            if self.transport is not None:
                self.transport.close()
            return
        self._answer_pending()


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("stream") is True


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, reuse_address=True, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))


if __name__ == "__main__":
    main()
