"""The response tap: relays the app's response while reassembling the reply to record.

A streamed reply passes through message by message, unchanged; a copy (decoded if the
upstream compressed it) feeds the dialect's reply decoder. The turn is committed before
the message that carries the dialect's terminator (``[DONE]``, ``message_stop``, ...) is
forwarded, so a client that sends its next request the moment it sees the end finds the
turn stored. A non-streamed JSON reply is small and has to be rewritten anyway
(``metadata.session_id``), so it is held until committed.

If the commit fails the client must not take the reply for a recorded one: a held JSON
reply becomes a 503, a stream is cut (its end is never sent, which aborts the connection).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable

import orjson

from ..dialects.base import AssistantReply, Dialect, ReplyDecoder
from ..errors import ClientError, StoreError
from ..types import Headers, Message, Send

logger = logging.getLogger("statefulproxy")

Commit = Callable[[AssistantReply], Awaitable[bool]]  # False: the session was gone, nothing recorded

# A turn whose session was deleted or ended while it ran is answered, but not recorded: it says so.
NOT_RECORDED_HEADER = (b"x-session-recorded", b"false")
NOT_RECORDED_COMMENT = b": x-session-recorded: false\n\n"
_EVENT_ENDS = (b"\n\n", b"\r\r", b"\r\n\r\n")

# a JSON reply larger than this is relayed without being recorded
MAX_HELD_REPLY = 64 * 1024 * 1024


class ResponseTap:
    """Wraps ``send`` for one chat turn; ``send_and_record`` is the wrapper."""

    def __init__(self, send: Send, session_id: str, commit: Commit, dialect: Dialect, streaming: bool) -> None:
        self._send = send
        self._session_id = session_id.encode()
        self._commit = commit
        self._dialect = dialect
        self._streaming = streaming  # the request asked for a stream: a JSON reply may be one too (Gemini)
        self._mode: str = "relay"  # relay | stream | json | cut
        self._start: Message | None = None
        self._held: list[bytes] = []
        self._held_size = 0
        self._decoder: zlib._Decompress | None = None
        self._recorder: ReplyDecoder | None = None
        self.committed = False
        self.sending_since: float | None = None
        self._sse = False
        self._loop = asyncio.get_running_loop()

    async def send_and_record(self, message: Message) -> None:
        # when the send in progress began: a client that stops reading keeps it from returning
        self.sending_since = self._loop.time()
        try:
            kind = message["type"]
            if kind == "http.response.body":  # the commonest, first
                await self._on_body(message)
            elif kind == "http.response.start":
                await self._on_start(message)
            else:
                await self._send(message)
        finally:
            self.sending_since = None

    async def _on_start(self, message: Message) -> None:
        headers: Headers = [
            (name, value) for name, value in message.get("headers", ()) if name.lower() != b"x-session-id"
        ]
        content_type = encoding = b""
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-type":
                content_type = value.lower()
            elif lowered == b"content-encoding":
                encoding = value.strip().lower()
        headers.append((b"x-session-id", self._session_id))
        message = {**message, "headers": headers}
        status = message["status"]
        decodable = encoding in (b"", b"identity", b"gzip", b"x-gzip", b"deflate")
        if 200 <= status < 300 and decodable:
            if encoding in (b"gzip", b"x-gzip"):
                self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
            elif encoding == b"deflate":
                self._decoder = zlib.decompressobj()
            whole_json = b"json" in content_type and b"ndjson" not in content_type
            # a JSON reply to a streaming request is a stream too in Gemini's JSON-array form
            recorder = self._dialect.stream_decoder(content_type) if self._streaming or not whole_json else None
            if recorder is not None:
                self._mode = "stream"
                self._recorder = recorder
                self._sse = content_type.startswith(b"text/event-stream")
            elif whole_json:
                self._mode = "json"
                self._start = message
                return
        await self._send(message)

    async def _on_body(self, message: Message) -> None:
        if self._mode == "stream":
            await self._on_stream_body(message)
        elif self._mode == "json":
            await self._on_json_body(message)
        elif self._mode == "relay":
            await self._send(message)
        # "cut": the commit failed; swallow the rest so the response never completes

    async def _on_stream_body(self, message: Message) -> None:
        recorder = self._recorder
        assert recorder is not None
        chunk = message.get("body", b"")
        if chunk and not (recorder.done or recorder.failed):
            try:
                recorder.feed(self._decoded(chunk))
            except (ValueError, zlib.error):
                logger.warning("unreadable event stream from upstream; turn not recorded")
                self._mode = "relay"
            if recorder.done and not self.committed:
                try:
                    recorded = await self._commit(recorder.result())
                except StoreError as exc:
                    logger.error("turn not recorded, cutting the stream: %s", exc)
                    self._mode = "cut"
                    return
                self.committed = True
                if not recorded and self._decoder is None and chunk.endswith(_EVENT_ENDS) and self._sse:
                    # the end went out as it came; an SSE comment after it says the turn was not kept
                    await self._send(message)
                    message = {"type": "http.response.body", "body": NOT_RECORDED_COMMENT, "more_body": True}
        await self._send(message)

    async def _on_json_body(self, message: Message) -> None:
        self._held.append(message.get("body", b""))
        self._held_size += len(self._held[-1])
        more_body = message.get("more_body", False)
        if self._held_size > MAX_HELD_REPLY:
            await self._release_unrecorded(more_body)
            return
        if more_body:
            return
        raw = b"".join(self._held)
        try:
            body = self._decoded(raw) if self._decoder is not None else raw
            parsed = orjson.loads(body)
        except (ValueError, zlib.error):
            await self._release_unrecorded(False)
            return
        reply = self._dialect.reply_from_body(parsed)
        if reply is None:
            await self._release_unrecorded(False)
            return
        try:
            recorded = await self._commit(reply)
        except StoreError as exc:
            logger.error("turn not recorded: %s", exc)
            await self._send_store_failure()
            return
        self.committed = True
        if not recorded:
            self._start = (
                {**start, "headers": [*start["headers"], NOT_RECORDED_HEADER]} if (start := self._start) else None
            )
        await self._send_json(
            with_session_id(parsed, body, self._session_id.decode()), drop_encoding=self._decoder is not None
        )

    def _decoded(self, chunk: bytes) -> bytes:
        return chunk if self._decoder is None else self._decoder.decompress(chunk)

    async def _send_json(self, body: bytes, *, drop_encoding: bool) -> None:
        start = self._start
        assert start is not None
        skip = {b"content-length", b"content-encoding"} if drop_encoding else {b"content-length"}
        headers = [(name, value) for name, value in start["headers"] if name.lower() not in skip]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _release_unrecorded(self, more_body: bool) -> None:
        assert self._start is not None
        self._mode = "relay"
        await self._send(self._start)
        held, self._held = self._held, []
        await self._send({"type": "http.response.body", "body": b"".join(held), "more_body": more_body})

    async def _send_store_failure(self) -> None:
        message = "The session store is unavailable; the turn was not recorded."
        body = self._dialect.error_body(ClientError(503, message, type="store_error", code="store_unavailable"))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers.append((b"x-session-id", self._session_id))
        await self._send({"type": "http.response.start", "status": 503, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def with_session_id(parsed: object, body: bytes, session_id: str) -> bytes:
    """A JSON reply naming its session in ``metadata.session_id`` (CONTRACT.md section 4)."""
    if not isinstance(parsed, dict):
        return body
    metadata = parsed.get("metadata")
    if "metadata" not in parsed and body.lstrip().startswith(b"{"):
        # splice the key in rather than re-serialising the whole reply
        start = body.index(b"{") + 1
        rest = body[start:].lstrip()
        separator = b"" if rest.startswith(b"}") else b","
        field = b'"metadata":{"session_id":' + orjson.dumps(session_id) + b"}"
        return body[:start] + field + separator + body[start:]
    if metadata is None or isinstance(metadata, dict):
        parsed["metadata"] = {**(metadata or {}), "session_id": session_id}
        try:
            return orjson.dumps(parsed)
        except orjson.JSONEncodeError:  # nested past what orjson writes: relay it as it came
            return body
    return body
