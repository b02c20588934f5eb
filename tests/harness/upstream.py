"""A scripted LLM upstream (OpenAI, Anthropic, Ollama, Gemini): a pure ASGI app that records requests and plays replies.

    upstream = ScriptedUpstream()
    upstream.push(text("hello"), tool_calls([("call_1", "f", '{"a":1}')]))
    with serve(upstream) as url:
        ...                                   # point the proxy / SDK at url + "/v1"
    upstream.received[0].json["messages"]

Routes (matched on the path's ending, so any prefix works):
- ``POST .../chat/completions``: the next scripted reply whose ``path`` matches, else ``text(f"reply {N}")``
  where N counts the chat requests of all dialects (1-based); completion id ``chatcmpl-N``. Honours
  ``"stream": true`` (SSE ending in ``data: [DONE]``) and ``stream_options.include_usage``.
- ``POST .../v1/messages`` (Anthropic), ``.../api/chat`` (Ollama), ``.../models/{m}:generateContent`` and
  ``:streamGenerateContent`` (Gemini): the same, rendered in that provider's format (see ``harness.dialect_replies``;
  its ``ANTHROPIC_PATH``, ``OLLAMA_PATH``, ``GEMINI_PATH``, ``GEMINI_STREAM_PATH`` are ``push`` paths).
- ``GET .../models``: a models list.
- ``.../echo-bytes``: the request body verbatim, with the request's content-type.
- ``.../stream-bytes?n=K&size=S``: K body chunks of S bytes, equal to ``stream_bytes_payload(K, S)``.
- anything else: 200 JSON describing the request (see ``echo_json``).
A scripted reply pushed with another ``path`` is played on the first request whose path ends with it.

Usage is deterministic: prompt_tokens = 10 * number of request messages (Gemini: contents), completion_tokens =
number of characters generated (content + reasoning + refusal + tool-call arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Message, Receive, Scope, Send

from harness.dialect_replies import Wire, is_chat_path, pieces, wire_for_path

__all__ = [
    "CREATED",
    "DEFAULT_MODEL",
    "Completion",
    "Cut",
    "ErrorReply",
    "Exchange",
    "GzipJson",
    "Hold",
    "InbandError",
    "NoDone",
    "Raw",
    "RecordedRequest",
    "Reply",
    "ScriptedUpstream",
    "UpstreamCut",
    "cut",
    "echo_json",
    "error",
    "gzip_json",
    "hold",
    "inband_error",
    "no_done",
    "raw",
    "refusal",
    "stream_bytes_payload",
    "text",
    "tool_calls",
]

CREATED = 1_700_000_000
DEFAULT_MODEL = "scripted-model"
HOLD_POLL_INTERVAL = 0.005


class UpstreamCut(Exception):
    """Raised inside the ASGI app to make uvicorn drop the connection mid-response."""


@dataclass
class RecordedRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[str, str]]
    body: bytes
    json: Any = None
    disconnected_at: float | None = None  # time.monotonic() when the client went away mid-reply

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


class Exchange:
    """Per-request state handed to ``Reply.respond``: the request, its chat parameters, and send helpers."""

    def __init__(self, request: RecordedRequest, number: int, sequence: int, send: Send) -> None:
        self.request = request
        self.number = number  # counts chat requests (all dialects) on chat paths, all requests elsewhere
        self.sequence = sequence  # counts all requests
        self._send = send
        self.disconnected = asyncio.Event()
        self.complete = False
        body = request.json if isinstance(request.json, dict) else {}
        wire_type = wire_for_path(request.path)
        self.stream = wire_type.requests_stream(request, body)
        stream_options = body.get("stream_options")
        self.include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        self.model = body["model"] if isinstance(body.get("model"), str) else DEFAULT_MODEL
        messages = body.get("messages", body.get("contents"))
        self.message_count = len(messages) if isinstance(messages, list) else 0
        self.completion_id = f"chatcmpl-{number}"
        self.wire: Wire = wire_type(self)

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        encoded.append((b"x-request-id", f"req-{self.sequence}".encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": encoded})

    async def body(self, data: bytes, *, more: bool) -> None:
        if not more:
            # From here on uvicorn's receive() reports http.disconnect for a normal end too.
            self.complete = True
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def send_json(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> None:
        data = json.dumps(payload).encode()
        await self.start(
            status, [("content-type", "application/json"), ("content-length", str(len(data))), *(headers or [])]
        )
        await self.body(data, more=False)

    async def start_sse(self) -> None:
        await self.start(200, [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")])

    async def start_stream(self) -> None:
        await self.start(200, self.wire.stream_headers())

    async def send_frames(self, payloads: list[Any], *, end: bool = False) -> None:
        """Send stream payloads in the dialect's framing; with ``end`` the last one also ends the body."""
        for index, payload in enumerate(payloads):
            closing = end and index == len(payloads) - 1
            data = self.wire.frame(payload)
            await self.body(data + self.wire.close() if closing else data, more=not closing)

    async def wait_released(self, release: threading.Event) -> bool:
        """Wait until ``release`` is set (True) or the client disconnects (False)."""
        # A threading.Event cannot be awaited; polling it here keeps tests free of cross-thread loop calls.
        while not release.is_set():
            if self.disconnected.is_set():
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.disconnected.wait(), HOLD_POLL_INTERVAL)
        return True

    def default_reply(self) -> Completion:
        return Completion(content=f"reply {self.number}")


class Reply:
    """Base of scripted replies: ``respond`` writes the whole HTTP response through the exchange."""

    async def respond(self, exchange: Exchange) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Completion(Reply):
    """An assistant turn: content, reasoning, refusal and/or tool calls, streamed in ``chunk_size`` pieces.

    ``signature`` signs the reasoning as an Anthropic thinking block; ``thought_signature`` is Gemini's
    ``thoughtSignature`` (base64); both are ignored by the other dialects.
    """

    content: str | None = None
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    refusal: str | None = None
    chunk_size: int = 4
    finish_reason: str | None = None
    signature: str | None = None
    thought_signature: str | None = None

    @property
    def resolved_finish_reason(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": self.refusal}
        if self.reasoning is not None:
            message[self.reasoning_field] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
                for call_id, name, arguments in self.tool_calls
            ]
        message["annotations"] = []
        return message

    def usage(self, exchange: Exchange) -> dict[str, int]:
        generated = (self.content or "") + (self.reasoning or "") + (self.refusal or "")
        completion = len(generated) + sum(len(arguments) for _, _, arguments in self.tool_calls)
        prompt = 10 * exchange.message_count
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion_json(self, exchange: Exchange) -> dict[str, Any]:
        return {
            "id": exchange.completion_id,
            "object": "chat.completion",
            "created": CREATED,
            "model": exchange.model,
            "choices": [
                {"index": 0, "message": self.message(), "logprobs": None, "finish_reason": self.resolved_finish_reason}
            ],
            "usage": self.usage(exchange),
        }

    def deltas(self) -> list[dict[str, Any]]:
        """The ``delta`` objects of the stream, role first, without the final finish_reason chunk."""
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": "" if self.content is not None else None, "refusal": None}
        ]
        deltas += [{self.reasoning_field: piece} for piece in pieces(self.reasoning or "", self.chunk_size)]
        deltas += [{"content": piece} for piece in pieces(self.content or "", self.chunk_size)]
        deltas += [{"refusal": piece} for piece in pieces(self.refusal or "", self.chunk_size)]
        fragments: list[list[dict[str, Any]]] = []
        for index, (call_id, name, arguments) in enumerate(self.tool_calls):
            first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            rest = [{"index": index, "function": {"arguments": piece}} for piece in pieces(arguments, self.chunk_size)]
            fragments.append([first, *rest])
        # Parallel calls interleave: one fragment of each call in turn.
        for step in range(max((len(f) for f in fragments), default=0)):
            deltas += [{"tool_calls": [f[step]]} for f in fragments if step < len(f)]
        return deltas

    def chunks(self, exchange: Exchange) -> list[dict[str, Any]]:
        """Every ``chat.completion.chunk`` of the stream, in order, including the usage chunk if asked for."""

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            result: dict[str, Any] = {
                "id": exchange.completion_id,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": exchange.model,
                "choices": choices,
            }
            if exchange.include_usage:
                result["usage"] = None
            return result

        chunks = [
            chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]) for delta in self.deltas()
        ]
        chunks.append(
            chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": self.resolved_finish_reason}])
        )
        if exchange.include_usage:
            chunks.append(chunk([]) | {"usage": self.usage(exchange)})
        return chunks

    async def respond(self, exchange: Exchange) -> None:
        if not exchange.stream:
            await exchange.send_json(200, exchange.wire.body(self))
            return
        await exchange.start_stream()
        await exchange.send_frames(exchange.wire.events(self))
        await exchange.send_frames(exchange.wire.terminal(self), end=True)


def _completion(reply: Completion | None, exchange: Exchange) -> Completion:
    return reply if reply is not None else exchange.default_reply()


@dataclass(frozen=True)
class ErrorReply(Reply):
    """A JSON error status; ``body`` None sends the dialect's error object."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()

    async def respond(self, exchange: Exchange) -> None:
        body = exchange.wire.error_body(self.status) if self.body is None else self.body
        await exchange.send_json(self.status, body, list(self.headers))


@dataclass(frozen=True)
class InbandError(Reply):
    """HTTP 200 stream: ``after_chunks`` chunks, then the dialect's error event (OpenAI ``data: {"error": ...}``)
    and a clean end (no [DONE]). ``error`` is the error object inside it; None means a provider's server error."""

    after_chunks: int = 1
    error: Any = None
    reply: Completion | None = None

    async def respond(self, exchange: Exchange) -> None:
        if not exchange.stream:
            await exchange.send_json(200, exchange.wire.error_event(self.error))
            return
        await exchange.start_stream()
        await exchange.send_frames(exchange.wire.events(_completion(self.reply, exchange))[: self.after_chunks])
        await exchange.send_frames([exchange.wire.error_event(self.error)], end=True)


@dataclass(frozen=True)
class Cut(Reply):
    """Send ``after_chunks`` chunks (or half a JSON body), then drop the connection."""

    after_chunks: int = 1
    reply: Completion | None = None

    async def respond(self, exchange: Exchange) -> None:
        completion = _completion(self.reply, exchange)
        if not exchange.stream:
            data = json.dumps(exchange.wire.body(completion)).encode()
            await exchange.start(200, [("content-type", "application/json"), ("content-length", str(len(data)))])
            await exchange.body(data[: len(data) // 2], more=True)
        else:
            await exchange.start_stream()
            await exchange.send_frames(exchange.wire.events(completion)[: self.after_chunks])
        raise UpstreamCut(f"scripted cut of {exchange.completion_id}")


@dataclass(frozen=True)
class NoDone(Reply):
    """A stream that ends cleanly but without ``data: [DONE]`` (or the dialect's end: see ``Wire.unfinished``)."""

    reply: Completion | None = None

    async def respond(self, exchange: Exchange) -> None:
        completion = _completion(self.reply, exchange)
        if not exchange.stream:
            await completion.respond(exchange)
            return
        await exchange.start_stream()
        await exchange.send_frames(exchange.wire.unfinished(completion))
        await exchange.body(exchange.wire.close(), more=False)


@dataclass(frozen=True)
class Hold(Reply):
    """Send ``after_chunks`` chunks, then wait for ``release`` (finish normally) or the client's disconnect (stop)."""

    release: threading.Event
    after_chunks: int = 1
    reply: Completion | None = None

    async def respond(self, exchange: Exchange) -> None:
        completion = _completion(self.reply, exchange)
        if not exchange.stream:
            if await exchange.wait_released(self.release):
                await completion.respond(exchange)
            return
        events = exchange.wire.events(completion)
        await exchange.start_stream()
        await exchange.send_frames(events[: self.after_chunks])
        if not await exchange.wait_released(self.release):
            return
        await exchange.send_frames(events[self.after_chunks :])
        await exchange.send_frames(exchange.wire.terminal(completion), end=True)


@dataclass(frozen=True)
class Raw(Reply):
    """Any status, headers and body chunks, each chunk sent as its own ASGI body message."""

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]

    async def respond(self, exchange: Exchange) -> None:
        await exchange.start(self.status, list(self.headers))
        for chunk in self.chunks:
            await exchange.body(chunk, more=True)
        await exchange.body(b"", more=False)


@dataclass(frozen=True)
class GzipJson(Reply):
    """A JSON body sent gzip-compressed with ``content-encoding: gzip``; a Completion (or None) renders as one."""

    body: Any = None
    status: int = 200

    async def respond(self, exchange: Exchange) -> None:
        payload = self.body
        if payload is None or isinstance(payload, Completion):
            payload = exchange.wire.body(_completion(payload, exchange))
        data = gzip.compress(json.dumps(payload).encode(), mtime=0)
        headers = [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("content-length", str(len(data))),
        ]
        await exchange.start(self.status, headers)
        await exchange.body(data, more=False)


def text(
    content: str,
    *,
    reasoning: str | None = None,
    reasoning_field: str = "reasoning_content",
    chunk_size: int = 4,
    finish_reason: str | None = None,
    signature: str | None = None,
    thought_signature: str | None = None,
) -> Completion:
    """A text answer, optionally with reasoning under ``reasoning_field`` (``reasoning_content`` or ``reasoning``)."""
    return Completion(
        content=content,
        reasoning=reasoning,
        reasoning_field=reasoning_field,
        chunk_size=chunk_size,
        finish_reason=finish_reason,
        signature=signature,
        thought_signature=thought_signature,
    )


def tool_calls(
    calls: list[tuple[str, str, str]],
    content: str | None = None,
    *,
    chunk_size: int = 4,
    reasoning: str | None = None,
    reasoning_field: str = "reasoning_content",
    signature: str | None = None,
    thought_signature: str | None = None,
) -> Completion:
    """Tool calls ``(id, name, arguments_json)``; streamed as id/name fragments then argument pieces, interleaved."""
    return Completion(
        content=content,
        tool_calls=tuple(calls),
        chunk_size=chunk_size,
        reasoning=reasoning,
        reasoning_field=reasoning_field,
        signature=signature,
        thought_signature=thought_signature,
    )


def refusal(message: str, *, chunk_size: int = 4) -> Completion:
    return Completion(refusal=message, chunk_size=chunk_size)


def error(status: int, body_json: Any = None, *, headers: list[tuple[str, str]] | None = None) -> ErrorReply:
    """A non-2xx JSON reply; the default body is the dialect's error object (OpenAI: ``{"error": {...}}``)."""
    return ErrorReply(status, body_json, tuple(headers or ()))


def inband_error(after_chunks: int = 1, *, error: Any = None, reply: Completion | None = None) -> InbandError:
    """``error``: the object inside the dialect's error event (Ollama: its message); None for a server error."""
    return InbandError(after_chunks=after_chunks, error=error, reply=reply)


def cut(after_chunks: int = 1, *, reply: Completion | None = None) -> Cut:
    return Cut(after_chunks=after_chunks, reply=reply)


def no_done(reply: Completion | None = None) -> NoDone:
    return NoDone(reply=reply)


def hold(release: threading.Event, *, after_chunks: int = 1, reply: Completion | None = None) -> Hold:
    return Hold(release=release, after_chunks=after_chunks, reply=reply)


def raw(status: int, headers: list[tuple[str, str]], chunks: list[bytes]) -> Raw:
    return Raw(status, tuple(headers), tuple(chunks))


def gzip_json(body: Any = None, *, status: int = 200) -> GzipJson:
    return GzipJson(body, status)


def stream_bytes_payload(n: int, size: int) -> bytes:
    """The exact bytes ``.../stream-bytes?n=N&size=SIZE`` streams (N chunks of SIZE bytes)."""
    return b"".join(_stream_bytes_chunk(i, size) for i in range(n))


def _stream_bytes_chunk(i: int, size: int) -> bytes:
    pattern = bytes(range(256)) * (size // 256 + 2)
    offset = (i * 7) % 256
    return pattern[offset : offset + size]


def echo_json(request: RecordedRequest) -> dict[str, Any]:
    """What the catch-all route answers: the request described as JSON (body decoded as latin-1, lossless)."""
    return {
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path.decode("latin-1"),
        "query_string": request.query_string.decode("latin-1"),
        "headers": [[name, value] for name, value in request.headers],
        "body": request.body.decode("latin-1"),
        "json": request.json,
    }


class ScriptedUpstream:
    """A scripted LLM upstream ASGI app that records every request and answers from a script (see module doc)."""

    def __init__(self, *, models: tuple[str, ...] = (DEFAULT_MODEL,)) -> None:
        self.models = models
        self.disconnected = threading.Event()
        self.disconnected_at: float | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._received: list[RecordedRequest] = []
        self._script: deque[tuple[str, Reply]] = deque()
        self.request_count = 0
        self.chat_count = 0

    def push(self, *replies: Reply, path: str = "/chat/completions") -> None:
        """Queue replies for the next requests whose path ends with ``path`` (e.g. ``"/v1/messages"``)."""
        with self._lock:
            self._script.extend((path, reply) for reply in replies)

    @property
    def received(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._lock:
            return list(self._received)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [request for request in self.received if request.path.endswith("/chat/completions")]

    @property
    def pending(self) -> int:
        """How many scripted replies have not been played yet."""
        with self._lock:
            return len(self._script)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests have arrived; raise TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, timeout):
                raise TimeoutError(f"expected {count} requests, got {len(self._received)} within {timeout} s")
            return list(self._received)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"ScriptedUpstream does not serve {scope['type']!r}")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        request = self._record(scope, bytes(body))
        path = request.path
        with self._lock:
            self.request_count += 1
            is_chat = is_chat_path(path)
            if is_chat:
                self.chat_count += 1
            number = self.chat_count if is_chat else self.request_count
            sequence = self.request_count
            reply = self._take(path)
            self._received.append(request)
            self._changed.notify_all()

        exchange = Exchange(request, number, sequence, send)
        if reply is None and is_chat and request.method == "POST":
            reply = exchange.default_reply()
        if reply is not None:
            await self._play(reply, exchange, receive)
        elif request.method == "GET" and path.endswith("/models"):
            await exchange.send_json(200, self._models())
        elif path.endswith("/echo-bytes"):
            content_type = request.header("content-type") or "application/octet-stream"
            await exchange.start(200, [("content-type", content_type), ("content-length", str(len(request.body)))])
            await exchange.body(request.body, more=False)
        elif path.endswith("/stream-bytes"):
            await self._stream_bytes(request, exchange)
        else:
            await exchange.send_json(200, echo_json(request))

    def _take(self, path: str) -> Reply | None:
        for index, (suffix, reply) in enumerate(self._script):
            if path.endswith(suffix):
                del self._script[index]
                return reply
        return None

    def _record(self, scope: Scope, body: bytes) -> RecordedRequest:
        parsed: Any = None
        if body:
            with contextlib.suppress(ValueError):
                parsed = json.loads(body)
        return RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            raw_path=scope.get("raw_path") or scope["path"].encode(),
            query_string=scope.get("query_string", b""),
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]],
            body=body,
            json=parsed,
        )

    async def _play(self, reply: Reply, exchange: Exchange, receive: Receive) -> None:
        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not exchange.complete:
                        self._on_disconnect(exchange)
                    return

        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
        try:
            await reply.respond(exchange)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _on_disconnect(self, exchange: Exchange) -> None:
        now = time.monotonic()
        exchange.request.disconnected_at = now
        self.disconnected_at = now
        exchange.disconnected.set()
        self.disconnected.set()

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": CREATED, "owned_by": "scripted"} for model in self.models
            ],
        }

    async def _stream_bytes(self, request: RecordedRequest, exchange: Exchange) -> None:
        query = parse_qs(request.query_string.decode("latin-1"))
        n = int(query.get("n", ["4"])[0])
        size = int(query.get("size", ["16"])[0])
        await exchange.start(200, [("content-type", "application/octet-stream")])
        for i in range(n):
            await exchange.body(_stream_bytes_chunk(i, size), more=True)
        await exchange.body(b"", more=False)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
