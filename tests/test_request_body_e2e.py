"""Session bodies that must be read before they are trusted (issue 10, defect 8): compressed, with a
byte order mark, or holding integers JSON parsers disagree on. Never forwarded as stateless."""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import Iterator

import orjson
import pytest

from harness.stack import Stack, running_stack

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack("memory://", max_body_size="64KiB") as running:
        yield running


def named_body(session_id: str) -> bytes:
    return orjson.dumps(
        {"model": "m", "metadata": {"session_id": session_id}, "messages": [{"role": "user", "content": "x"}]}
    )


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", lambda body: b"\xef\xbb\xbf" + body)],
)
def test_compressed_or_bom_prefixed_session_bodies_are_decoded(stack: Stack, encoding: str, encode: object) -> None:
    session_id = f"enc-{uuid.uuid4().hex[:8]}"
    with stack.http() as http:
        for _ in range(2):
            raw = encode(named_body(session_id))  # type: ignore[operator]
            response = http.post(
                CHAT, content=raw, headers={"content-encoding": encoding, "content-type": "application/json"}
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-session-id"] == session_id
        forwarded = stack.upstream.chat_requests[-1]
    assert forwarded.header("content-encoding") is None  # the proxy's own JSON, uncompressed
    assert len(forwarded.json["messages"]) == 3  # the second turn got the first one's history


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        ({"content-encoding": "br"}, b"\x00\x01", 415),
        ({"content-encoding": "gzip"}, b"not gzip at all", 400),
        ({"content-encoding": "gzip"}, gzip.compress(b" " * 200_000), 413),  # decodes past max_body_size
    ],
)
def test_undecodable_session_bodies_are_refused(
    stack: Stack, headers: dict[str, str], content: bytes, status: int
) -> None:
    before = len(stack.upstream.received)
    with stack.http() as http:
        response = http.post(CHAT, content=content, headers={**headers, "session-id": "refused"})
    assert response.status_code == status
    assert len(stack.upstream.received) == before


def test_a_compressed_stateless_body_goes_on_as_it_came(stack: Stack) -> None:
    raw = gzip.compress(orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
    with stack.http() as http:
        assert http.post(CHAT, content=raw, headers={"content-encoding": "gzip"}).status_code == 200
    received = stack.upstream.received[-1]
    assert received.body == raw
    assert received.header("content-encoding") == "gzip"


@pytest.mark.parametrize("number", ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"])
def test_integers_past_64_bits_are_refused_never_rounded(stack: Stack, number: str) -> None:
    before = len(stack.upstream.received)
    body = b'{"model":"m","seed":' + number.encode() + b',"messages":[{"role":"user","content":"x"}]}'
    with stack.http() as http:
        response = http.post(CHAT, content=body, headers={"session-id": "big", "content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "integer_too_large"
    assert len(stack.upstream.received) == before


def test_long_digit_strings_and_64_bit_integers_are_fine(stack: Stack) -> None:
    body = b'{"model":"m","seed":18446744073709551615,"messages":[{"role":"user","content":"12345678901234567890123"}]}'
    with stack.http() as http:
        response = http.post(CHAT, content=body, headers={"session-id": f"ok-{uuid.uuid4().hex[:6]}"})
    assert response.status_code == 200
    assert b'"seed":18446744073709551615' in stack.upstream.chat_requests[-1].body
