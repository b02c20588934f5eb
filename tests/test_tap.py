from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from statefulproxy.asgi import tap as tap_module
from statefulproxy.asgi.tap import ResponseTap
from statefulproxy.dialects import OPENAI
from statefulproxy.dialects.openai_recorder import ChatStreamRecorder
from statefulproxy.dialects.openai_stream import AssistantReply
from statefulproxy.errors import StoreError
from statefulproxy.types import Message as ASGIMessage

pytestmark = pytest.mark.anyio

STREAMS = Path(__file__).parent / "fixtures" / "streams"
SESSION_ID = "sess-tap-1"
DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
JSON_TYPE = (b"content-type", b"application/json")

Message = dict[str, Any]


@dataclass
class Log:
    """One ordered log of what the tap sent and when it committed."""

    fail_commit: bool = False
    session_gone: bool = False  # the session was deleted or ended while the turn ran
    events: list[tuple[str, Any]] = field(default_factory=list)

    async def send(self, message: ASGIMessage) -> None:
        self.events.append(("send", message))

    async def commit(self, reply: AssistantReply) -> bool:
        # what the client had received when the turn was committed
        self.events.append(("commit", (reply, self.forwarded_body())))
        if self.fail_commit:
            raise StoreError("redis is down")
        return not self.session_gone

    @property
    def sent(self) -> list[Message]:
        return [payload for kind, payload in self.events if kind == "send"]

    @property
    def commits(self) -> list[AssistantReply]:
        return [payload[0] for kind, payload in self.events if kind == "commit"]

    def forwarded_body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def start(self) -> Message:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1
        return starts[0]

    def bodies(self) -> list[Message]:
        return [m for m in self.sent if m["type"] == "http.response.body"]


def start_message(status: int = 200, headers: Iterable[tuple[bytes, bytes]] = SSE_HEADERS) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body_messages(chunks: Iterable[bytes]) -> list[Message]:
    """Body messages for ``chunks``, then the empty closing one."""
    messages: list[Message] = [{"type": "http.response.body", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.response.body", "body": b"", "more_body": False})
    return messages


async def run(log: Log, start: Message, bodies: list[Message]) -> ResponseTap:
    response_tap = ResponseTap(log.send, SESSION_ID, log.commit, OPENAI, streaming=False)
    await response_tap.send_and_record(start)
    for message in bodies:
        await response_tap.send_and_record(message)
    return response_tap


def header(message: Message, name: bytes) -> list[bytes]:
    return [value for key, value in message["headers"] if key.lower() == name]


def fixture(name: str) -> bytes:
    return (STREAMS / name).read_bytes()


def events_of(stream: bytes) -> list[bytes]:
    """The stream split after each blank line, as an upstream sends it event by event."""
    return [part + b"\n\n" for part in stream.split(b"\n\n") if part] if stream.endswith(b"\n\n") else [stream]


def whole_reply(stream: bytes) -> AssistantReply | None:
    recorder = ChatStreamRecorder()
    recorder.feed(stream)
    return recorder.result() if recorder.done else None


COMPLETE = [name for name in sorted(p.name for p in STREAMS.glob("*.sse")) if whole_reply(fixture(name))]
INCOMPLETE = ["cut_before_done.sse", "error_after_content.sse"]


def test_fixtures_classified() -> None:
    assert "plain_text.sse" in COMPLETE
    assert "parallel_tool_calls.sse" in COMPLETE
    assert len(COMPLETE) >= 8
    for name in INCOMPLETE:
        assert whole_reply(fixture(name)) is None


# --- (1) an SSE stream passes through and is committed before [DONE] ---------------------------


async def test_stream_forwarded_unchanged_and_committed_before_done() -> None:
    log = Log()
    start = start_message()
    bodies = body_messages(events_of(fixture("plain_text.sse")))
    response_tap = await run(log, start, bodies)

    forwarded_start = log.start()
    assert forwarded_start["status"] == 200
    assert forwarded_start["headers"] == [*SSE_HEADERS, (b"x-session-id", SESSION_ID.encode())]
    assert start["headers"] == SSE_HEADERS  # the app's own message is not mutated

    assert log.bodies() == bodies  # same bytes, same more_body, same order
    assert all(sent is original for sent, original in zip(log.bodies(), bodies, strict=True))

    assert len(log.commits) == 1
    assert response_tap.committed
    kinds = [kind for kind, _ in log.events]
    commit_at = kinds.index("commit")
    done_at = next(i for i, (kind, m) in enumerate(log.events) if kind == "send" and DONE_EVENT in m.get("body", b""))
    assert commit_at == done_at - 1
    assert log.events[-1] == ("send", bodies[-1])

    reply = log.commits[0]
    assert reply.message == {"role": "assistant", "content": "Hello! How can I help you today?"}
    assert reply.finish_reason == "stop"


@pytest.mark.parametrize("kind", ["sse", "json"])
async def test_app_session_header_replaced_not_duplicated(kind: str) -> None:
    own = (b"X-Session-Id", b"something-else")
    if kind == "sse":
        start, bodies = start_message(200, [*SSE_HEADERS, own]), body_messages([fixture("plain_text.sse")])
    else:
        start, bodies = json_start(COMPLETION_BYTES, own), body_messages([COMPLETION_BYTES])
    log = Log()
    await run(log, start, bodies)
    assert header(log.start(), b"x-session-id") == [SESSION_ID.encode()]
    assert len(log.commits) == 1


async def test_stream_with_tool_calls_records_them() -> None:
    log = Log()
    await run(log, start_message(), body_messages(events_of(fixture("parallel_tool_calls.sse"))))
    assert len(log.commits) == 1
    calls = log.commits[0].message["tool_calls"]
    assert [call["id"] for call in calls] == ["call_paris", "call_tokyo"]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}


async def test_stream_whole_in_one_message() -> None:
    log = Log()
    stream = fixture("plain_text.sse")
    message = {"type": "http.response.body", "body": stream, "more_body": False}
    await run(log, start_message(), [message])
    assert len(log.commits) == 1
    assert [kind for kind, _ in log.events] == ["send", "commit", "send"]
    assert log.bodies() == [message]


async def test_non_body_messages_pass_through() -> None:
    log = Log()
    trailers = {"type": "http.response.trailers", "headers": [(b"x-t", b"1")], "more_trailers": False}
    stream = fixture("plain_text.sse")
    response_tap = ResponseTap(log.send, SESSION_ID, log.commit, OPENAI, streaming=False)
    await response_tap.send_and_record(start_message())
    await response_tap.send_and_record({"type": "http.response.body", "body": stream, "more_body": True})
    await response_tap.send_and_record(trailers)
    assert log.sent[-1] is trailers
    assert len(log.commits) == 1


# --- (2) every split of a stream records the same turn -----------------------------------------


async def check_split(chunks: list[bytes], expected: AssistantReply | None) -> None:
    log = Log()
    bodies = body_messages(chunks)
    await run(log, start_message(), bodies)
    assert log.bodies() == bodies
    stream = b"".join(chunks)
    if expected is None:
        assert log.commits == []
        return
    assert log.commits == [expected]
    (_, seen_at_commit) = next(payload for kind, payload in log.events if kind == "commit")
    # the client cannot have seen the end of the stream before the turn was stored
    assert DONE_EVENT not in seen_at_commit
    assert stream.startswith(seen_at_commit)


@pytest.mark.parametrize("name", [*COMPLETE, *INCOMPLETE])
async def test_stream_split_at_every_offset(name: str) -> None:
    stream = fixture(name)
    expected = whole_reply(stream)
    for offset in range(len(stream) + 1):
        await check_split([stream[:offset], stream[offset:]], expected)


@pytest.mark.parametrize("name", ["plain_text.sse", "multibyte_utf8.sse", "parallel_tool_calls.sse"])
async def test_stream_byte_by_byte(name: str) -> None:
    stream = fixture(name)
    await check_split([stream[i : i + 1] for i in range(len(stream))], whole_reply(stream))


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
async def test_stream_other_line_endings(ending: bytes) -> None:
    stream = fixture("plain_text.sse")
    converted = stream.replace(b"\n", ending)
    log = Log()
    await run(log, start_message(), body_messages([converted[:700], converted[700:]]))
    assert log.commits == [whole_reply(stream)]


# --- (3) incomplete, failed or non-2xx streams are relayed and not recorded -------------------


@pytest.mark.parametrize("name", INCOMPLETE)
async def test_incomplete_stream_relayed_not_recorded(name: str) -> None:
    log = Log()
    bodies = body_messages(events_of(fixture(name)))
    response_tap = await run(log, start_message(), bodies)
    assert log.commits == []
    assert not response_tap.committed
    assert log.bodies() == bodies
    assert log.forwarded_body() == fixture(name)


async def test_in_band_error_before_done_is_not_recorded() -> None:
    stream = fixture("error_after_content.sse")
    assert DONE_EVENT in stream  # the upstream still ends it cleanly
    log = Log()
    await run(log, start_message(), body_messages([stream]))
    assert log.commits == []
    assert log.forwarded_body() == stream


async def test_sse_error_event_is_not_recorded() -> None:
    stream = b'event: error\ndata: {"message":"overloaded"}\n\n' + DONE_EVENT
    log = Log()
    await run(log, start_message(), body_messages([stream]))
    assert log.commits == []
    assert log.forwarded_body() == stream


@pytest.mark.parametrize("status", [400, 429, 500, 503, 101, 304])
async def test_non_2xx_stream_relayed_not_recorded(status: int) -> None:
    log = Log()
    bodies = body_messages(events_of(fixture("plain_text.sse")))
    await run(log, start_message(status), bodies)
    assert log.commits == []
    assert log.start()["status"] == status
    assert header(log.start(), b"x-session-id") == [SESSION_ID.encode()]
    assert log.bodies() == bodies


@pytest.mark.parametrize("status", [400, 500])
async def test_non_2xx_json_relayed_not_recorded(status: int) -> None:
    body = b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}'
    headers = [JSON_TYPE, (b"content-length", str(len(body)).encode())]
    log = Log()
    bodies = body_messages([body])
    await run(log, start_message(status, headers), bodies)
    assert log.commits == []
    assert log.start()["headers"] == [*headers, (b"x-session-id", SESSION_ID.encode())]
    assert log.bodies() == bodies


# --- (4) a JSON reply is held, committed, then sent with metadata.session_id -------------------

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1764000000,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi there."}, "finish_reason": "stop"},
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
COMPLETION_BYTES = orjson.dumps(COMPLETION)


def json_start(body: bytes, *extra: tuple[bytes, bytes]) -> Message:
    return start_message(200, [JSON_TYPE, (b"content-length", str(len(body)).encode()), *extra])


def sent_json(log: Log) -> tuple[Message, dict[str, Any], bytes]:
    start = log.start()
    bodies = log.bodies()
    assert len(bodies) == 1
    assert bodies[0]["more_body"] is False
    raw = bodies[0]["body"]
    assert header(start, b"content-length") == [str(len(raw)).encode()]
    assert header(start, b"x-session-id") == [SESSION_ID.encode()]
    parsed = orjson.loads(raw)
    assert isinstance(parsed, dict)
    return start, parsed, raw


async def test_json_reply_held_committed_then_sent_with_session_id() -> None:
    log = Log()
    half = len(COMPLETION_BYTES) // 2
    response_tap = await run(
        log, json_start(COMPLETION_BYTES), body_messages([COMPLETION_BYTES[:half], COMPLETION_BYTES[half:]])
    )
    assert [kind for kind, _ in log.events] == ["commit", "send", "send"]
    assert response_tap.committed
    _, parsed, raw = sent_json(log)
    assert parsed == {**COMPLETION, "metadata": {"session_id": SESSION_ID}}
    # the key is spliced in; every other byte is as the upstream sent it
    assert raw == b'{"metadata":{"session_id":"' + SESSION_ID.encode() + b'"},' + COMPLETION_BYTES[1:]
    reply = log.commits[0]
    assert reply.message == {"role": "assistant", "content": "Hi there."}
    assert reply.usage == COMPLETION["usage"]


async def test_json_reply_pretty_printed_keeps_its_bytes() -> None:
    body = orjson.dumps(COMPLETION, option=orjson.OPT_INDENT_2)
    log = Log()
    await run(log, json_start(body), [{"type": "http.response.body", "body": body, "more_body": False}])
    _, parsed, raw = sent_json(log)
    assert parsed["metadata"] == {"session_id": SESSION_ID}
    assert raw.endswith(body[1:])


async def test_json_reply_existing_metadata_merged() -> None:
    body = orjson.dumps({**COMPLETION, "metadata": {"user": "u-1", "session_id": "stale"}})
    log = Log()
    await run(log, json_start(body), body_messages([body]))
    _, parsed, _ = sent_json(log)
    assert parsed["metadata"] == {"user": "u-1", "session_id": SESSION_ID}
    assert parsed["choices"] == COMPLETION["choices"]
    assert len(log.commits) == 1


async def test_json_reply_null_metadata_gets_session_id() -> None:
    # Was a bug in tap.py: `"metadata": null` got a second "metadata" key spliced in front,
    # and JSON parsers keep the last one, so the session id was lost.
    body = orjson.dumps({**COMPLETION, "metadata": None})
    log = Log()
    await run(log, json_start(body), body_messages([body]))
    _, parsed, raw = sent_json(log)
    assert parsed["metadata"] == {"session_id": SESSION_ID}
    assert raw.count(b'"metadata"') == 1


async def test_json_reply_content_length_recomputed_and_other_headers_kept() -> None:
    log = Log()
    start = json_start(COMPLETION_BYTES, (b"x-request-id", b"req-1"), (b"openai-processing-ms", b"12"))
    await run(log, start, body_messages([COMPLETION_BYTES]))
    forwarded, _, raw = sent_json(log)
    assert len(raw) > len(COMPLETION_BYTES)
    names = [name for name, _ in forwarded["headers"]]
    assert names.count(b"content-length") == 1
    assert header(forwarded, b"x-request-id") == [b"req-1"]
    assert header(forwarded, b"openai-processing-ms") == [b"12"]
    assert header(forwarded, b"content-type") == [b"application/json"]


async def test_json_reply_with_tool_calls_recorded() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
    body = orjson.dumps({**COMPLETION, "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})
    log = Log()
    await run(log, json_start(body), body_messages([body]))
    assert log.commits[0].message == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert log.commits[0].finish_reason == "tool_calls"


# --- (5) compressed replies are recorded from a decoded copy -----------------------------------


async def test_gzip_json_recorded_and_sent_decoded() -> None:
    compressed = gzip.compress(COMPLETION_BYTES)
    log = Log()
    start = json_start(compressed, (b"Content-Encoding", b"gzip"), (b"vary", b"Accept-Encoding"))
    await run(log, start, body_messages([compressed[:10], compressed[10:]]))
    assert len(log.commits) == 1
    assert log.commits[0].message["content"] == "Hi there."
    forwarded, parsed, _ = sent_json(log)
    assert header(forwarded, b"content-encoding") == []
    assert header(forwarded, b"vary") == [b"Accept-Encoding"]
    assert parsed == {**COMPLETION, "metadata": {"session_id": SESSION_ID}}


async def test_deflate_json_recorded_and_sent_decoded() -> None:
    compressed = zlib.compress(COMPLETION_BYTES)
    log = Log()
    await run(log, json_start(compressed, (b"content-encoding", b"deflate")), body_messages([compressed]))
    assert len(log.commits) == 1
    forwarded, parsed, _ = sent_json(log)
    assert header(forwarded, b"content-encoding") == []
    assert parsed["metadata"] == {"session_id": SESSION_ID}


def gzip_events(events: list[bytes]) -> list[bytes]:
    """A gzip stream flushed after every event, as a compressing server sends SSE."""
    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    pieces = [compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH) for event in events]
    pieces.append(compressor.flush())
    return pieces


async def test_gzip_stream_recorded_and_forwarded_compressed() -> None:
    stream = fixture("plain_text.sse")
    events = events_of(stream)
    pieces = gzip_events(events)
    assert gzip.decompress(b"".join(pieces)) == stream
    headers = [*SSE_HEADERS, (b"content-encoding", b"gzip")]
    log = Log()
    bodies = body_messages(pieces)
    await run(log, start_message(200, headers), bodies)
    assert log.commits == [whole_reply(stream)]
    assert header(log.start(), b"content-encoding") == [b"gzip"]
    assert log.bodies() == bodies  # still compressed, unchanged
    kinds = [kind for kind, _ in log.events]
    # the piece that decodes to the [DONE] event is forwarded right after the commit
    assert kinds.index("commit") == 1 + events.index(DONE_EVENT)


async def test_gzip_stream_split_at_every_offset() -> None:
    stream = fixture("plain_text.sse")
    compressed = gzip.compress(stream)
    expected = whole_reply(stream)
    headers = [*SSE_HEADERS, (b"content-encoding", b"gzip")]
    for offset in range(len(compressed) + 1):
        log = Log()
        bodies = body_messages([compressed[:offset], compressed[offset:]])
        await run(log, start_message(200, headers), bodies)
        assert log.commits == [expected], offset
        assert log.bodies() == bodies


async def test_corrupt_gzip_stream_relayed_not_recorded() -> None:
    garbage = b"\x1f\x8b\x08\x00not really gzip at all" * 3
    log = Log()
    bodies = body_messages([garbage, b"more"])
    await run(log, start_message(200, [*SSE_HEADERS, (b"content-encoding", b"gzip")]), bodies)
    assert log.commits == []
    assert log.bodies() == bodies


async def test_corrupt_gzip_json_relayed_not_recorded() -> None:
    garbage = b"\x1f\x8b\x08\x00not really gzip"
    start = json_start(garbage, (b"content-encoding", b"gzip"))
    log = Log()
    await run(log, start, body_messages([garbage]))
    assert log.commits == []
    assert log.start()["headers"] == [*start["headers"], (b"x-session-id", SESSION_ID.encode())]
    assert log.forwarded_body() == garbage


# --- (6) a failed commit never lets the client take the reply for a recorded one ---------------


async def test_json_commit_failure_is_a_503() -> None:
    log = Log(fail_commit=True)
    response_tap = await run(log, json_start(COMPLETION_BYTES), body_messages([COMPLETION_BYTES]))
    assert not response_tap.committed
    assert len(log.commits) == 1
    start = log.start()
    assert start["status"] == 503
    assert header(start, b"content-type") == [b"application/json"]
    assert header(start, b"x-session-id") == [SESSION_ID.encode()]
    body = log.forwarded_body()
    assert header(start, b"content-length") == [str(len(body)).encode()]
    error = orjson.loads(body)
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert isinstance(error["error"]["message"], str)
    assert error["error"]["message"]
    assert b"Hi there" not in body
    assert log.bodies()[-1]["more_body"] is False


@pytest.mark.parametrize("split", ["events", "whole", "bytes"])
async def test_stream_commit_failure_cuts_the_stream(split: str) -> None:
    stream = fixture("plain_text.sse")
    chunks = {
        "events": events_of(stream),
        "whole": [stream],
        "bytes": [stream[i : i + 1] for i in range(len(stream))],
    }[split]
    log = Log(fail_commit=True)
    bodies = body_messages(chunks)
    response_tap = await run(log, start_message(), bodies)
    assert not response_tap.committed
    assert len(log.commits) == 1
    forwarded = log.bodies()
    assert forwarded == bodies[: len(forwarded)]  # a prefix, unchanged
    assert len(forwarded) < len(bodies)
    assert DONE_EVENT not in log.forwarded_body()
    assert all(m["more_body"] for m in forwarded)  # the response never completes
    (_, seen_at_commit) = next(payload for kind, payload in log.events if kind == "commit")
    assert log.forwarded_body() == seen_at_commit  # nothing at all after the failed commit


# --- (7) an encoding the tap cannot decode is relayed unchanged --------------------------------


@pytest.mark.parametrize("encoding", [b"br", b"zstd", b"gzip, br"])
@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_unknown_encoding_relayed_unchanged(encoding: bytes, kind: str) -> None:
    if kind == "json":
        body = COMPLETION_BYTES  # not really compressed: the tap must not even try to read it
        start = json_start(body, (b"content-encoding", encoding))
    else:
        body = fixture("plain_text.sse")
        start = start_message(200, [*SSE_HEADERS, (b"content-encoding", encoding)])
    log = Log()
    bodies = body_messages([body])
    response_tap = await run(log, start, bodies)
    assert log.commits == []
    assert not response_tap.committed
    assert log.start()["headers"] == [*start["headers"], (b"x-session-id", SESSION_ID.encode())]
    assert log.bodies() == bodies
    assert [kind for kind, _ in log.events] == ["send"] * (1 + len(bodies))


# --- (8) a 200 that is not a chat completion is relayed unchanged ------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"text/plain", b"hello, not json"),
        (b"text/html; charset=utf-8", b"<html>502 Bad Gateway</html>"),
        (b"application/json", b"not json {"),
        (b"application/json", b'{"object":"list","data":[]}'),
        (b"application/json", b'{"error":{"message":"late error","type":"server_error"}}'),
        (b"application/json", b"[1, 2, 3]"),
        (b"application/json", b""),
    ],
)
async def test_non_completion_200_relayed_unchanged(content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    log = Log()
    response_tap = await run(log, start_message(200, headers), [{"type": "http.response.body", "body": body}])
    assert log.commits == []
    assert not response_tap.committed
    assert log.start()["headers"] == [*headers, (b"x-session-id", SESSION_ID.encode())]
    assert log.forwarded_body() == body


async def test_oversized_json_reply_released_unrecorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tap_module, "MAX_HELD_REPLY", 16)
    chunks = [COMPLETION_BYTES[:10], COMPLETION_BYTES[10:20], COMPLETION_BYTES[20:]]
    log = Log()
    await run(log, json_start(COMPLETION_BYTES), body_messages(chunks))
    assert log.commits == []
    assert log.forwarded_body() == COMPLETION_BYTES
    assert log.bodies()[-1]["more_body"] is False
    assert header(log.start(), b"content-length") == [str(len(COMPLETION_BYTES)).encode()]


async def test_a_stream_whose_session_went_away_says_so_after_its_end() -> None:
    # issue 10, defect 8: it looked exactly like a recorded turn
    log = Log(session_gone=True)
    stream = fixture("plain_text.sse")
    await run(log, start_message(), body_messages(events_of(stream)))
    assert log.forwarded_body() == stream + tap_module.NOT_RECORDED_COMMENT
    assert len(log.commits) == 1


async def test_a_json_reply_whose_session_went_away_says_so_in_a_header() -> None:
    log = Log(session_gone=True)
    body = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})
    await run(log, start_message(headers=[JSON_TYPE]), body_messages([body]))
    assert tap_module.NOT_RECORDED_HEADER in log.start()["headers"]
    recorded = Log()
    await run(recorded, start_message(headers=[JSON_TYPE]), body_messages([body]))
    assert tap_module.NOT_RECORDED_HEADER not in recorded.start()["headers"]
