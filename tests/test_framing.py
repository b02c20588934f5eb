"""HTTP framing through the proxy, on raw sockets: ambiguous lengths refused, no request smuggled
to the upstream, hop-by-hop headers never forwarded, pipelined requests answered in order.

Requests are written byte for byte and responses read with their own framing (the socket is
never half-closed: uvicorn closes a connection whose client sends EOF, before it answers).
Where a 400 comes from uvicorn/httptools itself rather than from the proxy, its body is
uvicorn's plain text; either way nothing reaches the upstream.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from harness import upstream as reply
from harness.stack import Since, Stack, running_stack
from statefulproxy.asgi.guards import check_request_head

STREAMS = Path(__file__).parent / "fixtures" / "streams"
CHAT = b"/v1/chat/completions"
PATHS = [CHAT, b"/v1/other"]
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: upstream\r\n\r\n"


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(reader: BinaryIO) -> RawResponse | None:
    """One response from a buffered socket file, framed by its own headers; None at EOF."""
    status_line = reader.readline()
    if not status_line:
        return None
    status = int(status_line.split(b" ", 2)[1])
    headers: list[tuple[bytes, bytes]] = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    fields = dict(headers)
    if b"content-length" in fields:
        body = reader.read(int(fields[b"content-length"]))
    elif fields.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int(reader.readline().split(b";")[0], 16):
            body += reader.read(size)
            reader.readline()
        while reader.readline() not in (b"\r\n", b""):
            pass  # trailers
    else:
        body = reader.read()
    return RawResponse(status, headers, body)


class Connection:
    """One client connection to the proxy, written raw."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> RawResponse:
        response = read_response(self.reader)
        assert response is not None, "the proxy closed the connection without a response"
        return response

    def at_eof(self) -> bool:
        return self.reader.read(1) == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture(scope="module")
def shared_stack() -> Iterator[Stack]:
    with running_stack("memory://") as running:
        yield running


@pytest.fixture
def since(shared_stack: Stack) -> Iterator[Since]:
    yield Since(shared_stack)
    assert shared_stack.upstream.pending == 0


@pytest.fixture
def session_id(request: pytest.FixtureRequest) -> str:
    """An id no other test of the module uses."""
    return "t-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]


@pytest.fixture
def connection(shared_stack: Stack) -> Iterator[Connection]:
    conn = Connection(shared_stack.url)
    try:
        yield conn
    finally:
        conn.close()


def request(method: bytes, path: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    return (
        method + b" " + path + b" HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer key-1\r\n" + headers + b"\r\n" + body
    )


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for piece in pieces) + b"0\r\n\r\n"


def assert_only_sentinel_follows(since: Since, conn: Connection, expected: list[str]) -> None:
    """The upstream received ``expected`` paths, then a sentinel, and nothing else.

    The sentinel goes over the same client connection (answered in order, so anything the proxy
    read from it came first) and, sequentially, over the proxy's one pooled upstream connection
    (answered in order too), so a smuggled request would be recorded before it.
    """
    conn.send(request(b"GET", b"/sentinel"))
    assert conn.response().status == 200
    assert [r.path for r in since.received] == [*expected, "/sentinel"]


def session_status(stack: Stack, session_id: str) -> int:
    with stack.http() as http:
        return http.get(f"/v1/sessions/{session_id}").status_code


# --- ambiguous framing is refused, on chat and non-chat paths ----------------------------------

FRAMINGS = {
    "cl-and-te": b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(chunked(BODY)),
    "te-chunked-and-cl-0": b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
    "duplicate-cl-differing": b"Content-Length: %d\r\nContent-Length: 5\r\n" % len(BODY),
    "cl-non-digits": b"Content-Length: 5x\r\n",
    "cl-signed": b"Content-Length: +%d\r\n" % len(BODY),
    "cl-list": b"Content-Length: %d, %d\r\n" % (len(BODY), len(BODY)),
    "te-gzip-chunked": b"Transfer-Encoding: gzip, chunked\r\n",
    "te-xchunked": b"Transfer-Encoding: xchunked\r\n",
    "te-chunked-gzip": b"Transfer-Encoding: chunked, gzip\r\n",
    "te-identity": b"Transfer-Encoding: identity\r\n",
    "te-twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "te-space-before-colon": b"Transfer-Encoding : chunked\r\n",
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_ambiguous_framing_is_refused(
    shared_stack: Stack, since: Since, connection: Connection, session_id: str, path: bytes, framing: str
) -> None:
    headers = FRAMINGS[framing] + b"Content-Type: application/json\r\nsession-id: " + session_id.encode() + b"\r\n"
    body = chunked(BODY) if b"chunked" in FRAMINGS[framing] else BODY
    connection.send(request(b"POST", path, headers, body + SMUGGLED))
    assert connection.response().status == 400
    # the connection is closed: what follows cannot be read as a request
    assert connection.at_eof()
    assert since.received == []
    assert session_status(shared_stack, session_id) == 404
    assert since.received == []


def test_gzip_transfer_coding_is_refused_by_the_proxy(since: Since, connection: Connection) -> None:
    # httptools de-chunks it and passes it on; the proxy would forward still-gzipped bytes unlabelled
    connection.send(request(b"POST", b"/v1/other", b"Transfer-Encoding: gzip, chunked\r\n", chunked(BODY)))
    response = connection.response()
    assert response.status == 400
    assert response.json() == {
        "error": {
            "message": "The only Transfer-Encoding accepted is 'chunked'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "bad_framing",
        }
    }
    assert response.header(b"connection") == [b"close"]
    assert connection.at_eof()
    assert since.received == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "te", [b"chunked", b"CHUNKED", b"\tchunked ", b", chunked"], ids=["plain", "upper", "spaces", "empty-element"]
)
def test_chunked_bodies_are_forwarded_whole(
    shared_stack: Stack, since: Since, connection: Connection, session_id: str, path: bytes, te: bytes
) -> None:
    headers = b"Transfer-Encoding: " + te + b"\r\nContent-Type: application/json\r\nsession-id: "
    connection.send(request(b"POST", path, headers + session_id.encode() + b"\r\n", chunked(BODY[:10], BODY[10:])))
    assert connection.response().status == 200
    (received,) = since.received
    assert json.loads(received.body) == json.loads(BODY)
    assert_only_sentinel_follows(since, connection, [path.decode()])
    if path == CHAT:  # a session turn: recorded
        assert session_status(shared_stack, session_id) == 200


# --- no request smuggled to the upstream --------------------------------------------------------


def test_request_inside_a_length_framed_body_stays_body(since: Since, connection: Connection) -> None:
    body = b"data\r\n\r\n" + SMUGGLED + b"POST /smuggled2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    headers = b"Content-Length: %d\r\nContent-Type: application/octet-stream\r\n" % len(body)
    connection.send(request(b"POST", b"/echo-bytes", headers, body))
    response = connection.response()
    assert response.status == 200
    assert response.body == body
    assert [(r.path, r.body) for r in since.received] == [("/echo-bytes", body)]
    assert_only_sentinel_follows(since, connection, ["/echo-bytes"])


def test_request_inside_chunk_data_stays_body(since: Since, connection: Connection) -> None:
    # the chunk data itself looks like a last chunk followed by a request
    piece = b"0\r\n\r\n" + SMUGGLED
    headers = b"Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n"
    connection.send(request(b"POST", b"/echo-bytes", headers, chunked(b"abc", piece)))
    response = connection.response()
    assert response.status == 200
    assert response.body == b"abc" + piece
    assert [(r.path, r.body) for r in since.received] == [("/echo-bytes", b"abc" + piece)]
    assert_only_sentinel_follows(since, connection, ["/echo-bytes"])


def test_request_inside_a_session_chat_body_stays_json(since: Since, connection: Connection, session_id: str) -> None:
    content = "x\r\n\r\n" + SMUGGLED.decode() + "0\r\n\r\n"
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()
    headers = b"Content-Length: %d\r\nContent-Type: application/json\r\nsession-id: %s\r\n" % (
        len(body),
        session_id.encode(),
    )
    connection.send(request(b"POST", CHAT, headers, body))
    assert connection.response().status == 200
    (received,) = since.received
    assert received.json["messages"] == [{"role": "user", "content": content}]
    assert_only_sentinel_follows(since, connection, [CHAT.decode()])


@pytest.mark.parametrize("path", PATHS)
def test_unread_body_of_a_refused_request_is_not_read_as_a_request(path: bytes) -> None:
    # the proxy answers 413 without reading the body; the server must skip it by its framing
    with running_stack("memory://", max_body_size=64) as stack:
        conn = Connection(stack.url)
        try:
            body = b'{"model":"m","messages":[],"pad":"' + b"x" * 100 + b'"}' + SMUGGLED
            headers = b"Content-Length: %d\r\nsession-id: big\r\n" % len(body)
            conn.send(request(b"POST", path, headers, body) + request(b"GET", b"/after"))
            first, second = conn.response(), conn.response()
            if path == CHAT:
                assert first.status == 413
                assert [r.path for r in stack.upstream.received] == ["/after"]
            else:  # not a chat request: streamed through, whatever its size
                assert first.status == 200
                assert [r.path for r in stack.upstream.received] == ["/v1/other", "/after"]
                assert stack.upstream.received[0].body == body
            assert second.status == 200
            assert second.json()["path"] == "/after"
        finally:
            conn.close()


# --- malformed header lines: uvicorn/httptools answers 400 itself -----------------------------

MALFORMED = {
    "obs-fold": b"X-Folded: a\r\n b\r\n",
    "obs-fold-hiding-te": b"X-Folded: a\r\n Transfer-Encoding: chunked\r\n",
    "bare-lf": b"X-A: a\nX-B: b\r\n",
    "nul": b"X-A: a\x00b\r\n",
    "bare-cr": b"X-A: a\rb\r\n",
    "space-in-name": b"X A: a\r\n",
    "no-colon": b"X-A a\r\n",
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("malformed", list(MALFORMED))
def test_malformed_header_lines_are_400(
    shared_stack: Stack, since: Since, connection: Connection, session_id: str, path: bytes, malformed: str
) -> None:
    headers = MALFORMED[malformed] + b"Content-Length: %d\r\nsession-id: %s\r\n" % (len(BODY), session_id.encode())
    connection.send(request(b"POST", path, headers, BODY))
    response = connection.response()
    assert response.status == 400
    assert connection.at_eof()
    assert since.received == []
    assert session_status(shared_stack, session_id) == 404


# --- hop-by-hop headers, both ways ----------------------------------------------------------------

HOP_BY_HOP_REQUEST = (
    b"Connection: keep-alive, X-Named, x-other-named\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"TE: trailers\r\n"
    b"Trailer: x-checksum\r\n"
    b"Proxy-Authorization: Basic c2VjcmV0\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Upgrade: h2c\r\n"
    b"X-Named: dropped\r\n"
    b"X-Other-Named: dropped\r\n"
    b"X-Kept: kept\r\n"
)
DROPPED = (
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "upgrade",
    "x-named",
    "x-other-named",
)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("session", [True, False], ids=["session", "stateless"])
def test_hop_by_hop_request_headers_are_not_forwarded(
    since: Since, connection: Connection, session_id: str, path: bytes, session: bool
) -> None:
    headers = HOP_BY_HOP_REQUEST + b"Content-Length: %d\r\nContent-Type: application/json\r\n" % len(BODY)
    if session:
        headers += b"session-id: " + session_id.encode() + b"\r\n"
    connection.send(request(b"POST", path, headers, BODY))
    assert connection.response().status == 200
    (received,) = since.received
    names = {name.lower() for name, _ in received.headers}
    assert names.isdisjoint(DROPPED)
    assert received.header("x-kept") == "kept"
    assert received.header("authorization") == "Bearer key-1"


COMPLETION = {
    "id": "chatcmpl-hop",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hop"}, "finish_reason": "stop"}],
}
HOP_BY_HOP_RESPONSE = [
    ("connection", "x-named, close"),
    ("keep-alive", "timeout=99"),
    ("trailer", "x-checksum"),
    ("proxy-authenticate", "Basic"),
    ("upgrade", "h2c"),
    ("x-named", "secret"),
    ("x-kept", "1"),
]


@pytest.mark.parametrize("kind", ["json", "sse", "other"])
def test_hop_by_hop_response_headers_are_not_relayed(
    shared_stack: Stack, since: Since, connection: Connection, session_id: str, kind: str
) -> None:
    if kind == "json":
        content_type, chunks, path = "application/json", [json.dumps(COMPLETION).encode()], CHAT
    elif kind == "sse":
        content_type, chunks, path = "text/event-stream", [(STREAMS / "plain_text.sse").read_bytes()], CHAT
    else:
        content_type, chunks, path = "text/plain", [b"hello ", b"world"], b"/v1/other"
    reply_headers = [("content-type", content_type), *HOP_BY_HOP_RESPONSE]
    shared_stack.upstream.push(reply.raw(200, reply_headers, chunks), path=path.decode())
    headers = b"Content-Length: %d\r\nContent-Type: application/json\r\nsession-id: %s\r\n" % (
        len(BODY),
        session_id.encode(),
    )
    # two requests on one connection: the upstream's "connection: close" is not the client's
    connection.send(request(b"POST", path, headers, BODY) + request(b"GET", b"/v1/models"))
    response = connection.response()
    assert response.status == 200
    assert response.header(b"x-kept") == [b"1"]
    names = {name.decode() for name, _ in response.headers}
    assert names.isdisjoint((*DROPPED, "proxy-authenticate"))
    assert connection.response().status == 200
    assert [r.path for r in since.received] == [path.decode(), "/v1/models"]
    if kind == "other":
        assert response.body == b"hello world"
    else:  # recorded through the tap all the same
        with shared_stack.http() as http:
            assert http.get(f"/v1/sessions/{session_id}").json()["message_count"] == 2


# --- pipelining -----------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(
    shared_stack: Stack, since: Since, connection: Connection, session_id: str
) -> None:
    def chat(content: str) -> bytes:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()
        return request(b"POST", CHAT, b"Content-Length: %d\r\nsession-id: %s\r\n" % (len(body), sid), body)

    sid = session_id.encode()
    shared_stack.upstream.push(reply.text("answer one"), reply.text("answer two"))
    connection.send(
        request(b"GET", b"/v1/models")
        + chat("one")
        + request(b"GET", b"/first?n=1")
        + chat("two")  # the second turn sees the first: the requests run one after the other
        + request(b"POST", b"/echo-bytes", b"Transfer-Encoding: chunked\r\n", chunked(b"pipe", b"lined"))
        + request(b"GET", b"/v1/sessions/" + sid)
        + request(b"GET", b"/last", b"Connection: close\r\n")
    )
    responses = [connection.response() for _ in range(7)]
    assert connection.at_eof()
    assert [response.status for response in responses] == [200] * 7
    models, one, first, two, echoed, session, last = responses
    assert models.json()["object"] == "list"
    assert one.json()["choices"][0]["message"]["content"] == "answer one"
    assert first.json()["query_string"] == "n=1"
    assert two.json()["choices"][0]["message"]["content"] == "answer two"
    assert echoed.body == b"pipelined"
    assert session.json()["message_count"] == 4
    assert last.json()["path"] == "/last"
    received = since.received
    assert [r.path for r in received] == [
        "/v1/models",
        "/v1/chat/completions",
        "/first",
        "/v1/chat/completions",
        "/echo-bytes",
        "/last",
    ]
    assert [m["content"] for m in received[3].json["messages"]] == ["one", "answer one", "two"]


# --- the same checks without uvicorn in front (another ASGI server may not make them) --------

HEAD = [(b"host", b"proxy"), (b"content-type", b"application/json")]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], "both Content-Length and Transfer-Encoding"),
        ([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"0")], "both Content-Length and Transfer-Encoding"),
        ([(b"transfer-encoding", b"gzip, chunked")], "only Transfer-Encoding accepted is 'chunked'"),
        ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], "only Transfer-Encoding"),
        ([(b"transfer-encoding", b"xchunked")], "only Transfer-Encoding"),
        ([(b"transfer-encoding", b"identity")], "only Transfer-Encoding"),
        ([(b"content-length", b"5"), (b"content-length", b"6")], "not one decimal number"),
        ([(b"content-length", b"5x")], "not one decimal number"),
        ([(b"content-length", b"+5")], "not one decimal number"),
        ([(b"content-length", b"")], "not one decimal number"),
        ([(b"content-length", b"5, 5")], "not one decimal number"),
    ],
)
def test_guard_refuses_ambiguous_framing(headers: list[tuple[bytes, bytes]], message: str) -> None:
    error = check_request_head([*HEAD, *headers], 100, 65536)
    assert error is not None
    assert (error.status, error.code) == (400, "bad_framing")
    assert message in error.message
    assert error.headers == [(b"connection", b"close")]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-length", b"5")],
        [(b"Content-Length", b"5")],
        [(b"content-length", b"5"), (b"content-length", b"05")],  # one number, said twice
        [(b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b" Chunked\t")],
        [(b"transfer-encoding", b", chunked,")],
        [(b"x-content-length", b"x"), (b"transfer-encodings", b"gzip")],
    ],
)
def test_guard_accepts_unambiguous_framing(headers: list[tuple[bytes, bytes]]) -> None:
    assert check_request_head([*HEAD, *headers], 100, 65536) is None


def test_guard_caps_count_before_size_and_size_before_framing() -> None:
    many = [(b"content-length", b"x")] * 3
    error = check_request_head(many, 2, 65536)
    assert error is not None
    assert (error.status, error.code) == (431, "request_header_fields_too_large")
    error = check_request_head(many, 3, 10)
    assert error is not None
    assert (error.status, error.code) == (431, "request_header_fields_too_large")
    error = check_request_head(many, 3, 1000)
    assert error is not None
    assert error.status == 400
